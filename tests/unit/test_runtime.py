"""The shared service runtime, in process: health follows readiness, reflection, port file."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.server import ServiceSpec, start_service
from services.common.settings import ServiceSettings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_health_follows_dependencies_and_reflection_lists_services(tmp_path):
    async def scenario():
        dependency_up = False

        async def ready() -> bool:
            return dependency_up

        spec = ServiceSpec(service_names=["cutout.v1.Example"], register=lambda server: None, ready=ready)
        settings = ServiceSettings(port=0, port_file=tmp_path / "port", health_interval_s=0.02)
        running = await start_service(spec, settings)
        assert int((tmp_path / "port").read_text()) == running.port
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def status(name: str = "") -> int:
                return (await health.Check(health_pb2.HealthCheckRequest(service=name))).status

            seen = [await status(), await status("cutout.v1.Example")]
            dependency_up = True
            await asyncio.sleep(0.1)
            seen += [await status(), await status("cutout.v1.Example")]
            dependency_up = False
            await asyncio.sleep(0.1)
            seen.append(await status())

            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            names = [s.name async for reply in replies for s in reply.list_services_response.service]
        await running.stop()
        return seen, names

    seen, names = asyncio.run(scenario())
    assert seen == [NOT_SERVING, NOT_SERVING, SERVING, SERVING, NOT_SERVING]
    assert "cutout.v1.Example" in names and "grpc.health.v1.Health" in names
