"""One contract source: the committed generated code matches protos/, and the services serve it."""

from __future__ import annotations

from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tools.protos import stale_files


def test_generated_code_matches_the_protos():
    assert stale_files() == [], "run `make protos` and commit the result"


def test_gateway_serves_the_public_contract_by_reflection(mesh):
    with mesh.gateway.channel() as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(stub.ServerReflectionInfo(iter([request])))
    names = {service.name for service in reply.list_services_response.service}
    assert {"cutout.v1.Cutout", "grpc.health.v1.Health"} <= names
    assert "cutout.v1.Admin" not in names, "administration is on accounts' own listener, not the public port"
    assert "cutout.v1.Inference" not in names, "the internal service is not on the public gateway"
    assert "cutout.v1.Accounts" not in names, "the internal service is not on the public gateway"
