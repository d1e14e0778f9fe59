"""Readiness that degrades: the gateway keeps serving what its live dependencies allow (a
retention outage fails keep_result with UNAVAILABLE while removals go on), and the
inference service's readiness includes a canary inference (a Triton whose model says
READY but cannot infer is not ready)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cutout.v1 import account_pb2, cutout_pb2, cutout_pb2_grpc, options_pb2
from services.common.errors import error_details
from services.launcher import Mesh, ServiceProcess
from tests.conftest import another_gateway, encode, new_account
from tests.faultproxy import FaultProxy


def _health(process: ServiceProcess, service: str = "") -> int:
    with process.channel() as channel:
        try:
            return (
                health_pb2_grpc.HealthStub(channel)
                .Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                .status
            )
        except grpc.RpcError:
            return health_pb2.HealthCheckResponse.UNKNOWN


def _until(predicate, within_s: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


@pytest.fixture
def retention_behind_proxy(mesh: Mesh, tmp_path) -> Iterator[tuple[ServiceProcess, FaultProxy]]:
    proxy = FaultProxy(mesh.retention.address).start()
    env = {**mesh.env, "CUTOUT_GATEWAY_RETENTION_TIMEOUT_S": "3"}
    try:
        with another_gateway(mesh, tmp_path, env, retention=proxy.address) as gateway:
            yield gateway, proxy
            proxy.heal()  # before the gateway stops
    finally:
        proxy.stop()


def test_a_retention_outage_fails_keeping_and_leaves_removals_serving(
    mesh, raw_channel, astronaut, retention_behind_proxy
):
    gateway, proxy = retention_behind_proxy
    account = new_account(raw_channel, mesh.admin_token, credits=10)
    photo = encode(astronaut.resize((128, 128)), "JPEG")
    keep = options_pb2.RemoveBackgroundOptions(keep_result=True)
    proxy.reset()
    time.sleep(3)  # a few of the gateway's health rounds
    with gateway.channel() as channel:
        stub = cutout_pb2_grpc.CutoutStub(channel)
        assert _health(gateway) == health_pb2.HealthCheckResponse.SERVING, "still in rotation"
        assert stub.RemoveBackground(
            cutout_pb2.RemoveBackgroundRequest(image=photo), metadata=account.metadata, timeout=60
        ).result.image
        with pytest.raises(grpc.RpcError) as caught:
            stub.RemoveBackground(
                cutout_pb2.RemoveBackgroundRequest(image=photo, options=keep), metadata=account.metadata, timeout=60
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
        infos = [d for d in error_details(caught.value) if isinstance(d, error_details_pb2.ErrorInfo)]
        assert infos[0].reason == "DEPENDENCY_UNAVAILABLE" and "keep" in caught.value.details()
        balance = stub.GetBalance(account_pb2.GetBalanceRequest(), metadata=account.metadata, timeout=10)
        assert (balance.available, balance.held) == (9, 0), "only the removal that was served is charged"

        proxy.heal()

        def kept() -> bool:
            try:
                request = cutout_pb2.RemoveBackgroundRequest(image=photo, options=keep)
                return bool(stub.RemoveBackground(request, metadata=account.metadata, timeout=60).kept.result_id)
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE
                return False

        assert _until(kept), "keeping works again once retention is back"


@pytest.mark.parametrize("fault", ["answers held", "blackhole"])
def test_a_keep_whose_answer_is_lost_leaves_nothing_kept(mesh, raw_channel, astronaut, retention_behind_proxy, fault):
    """Retention keeps the result but its answer is held past the gateway's retention timeout
    (3 s), or the store itself is held: the call fails uncharged, and once the link heals
    nothing of it stays kept (the gateway deletes by the id it chose; a store that arrives
    after its caller gave up is undone by retention)."""
    gateway, proxy = retention_behind_proxy
    account = new_account(raw_channel, mesh.admin_token, credits=10)
    request = cutout_pb2.RemoveBackgroundRequest(
        image=encode(astronaut.resize((128, 128)), "JPEG"),
        options=options_pb2.RemoveBackgroundOptions(keep_result=True),
    )
    with gateway.channel() as channel:
        stub = cutout_pb2_grpc.CutoutStub(channel)

        def listed() -> int:
            return len(stub.ListResults(cutout_pb2.ListResultsRequest(), metadata=account.metadata, timeout=30).results)

        assert stub.RemoveBackground(request, metadata=account.metadata, timeout=60).kept.result_id
        assert listed() == 1
        proxy.hold_answers() if fault == "answers held" else proxy.blackhole()
        with pytest.raises(grpc.RpcError) as caught:
            stub.RemoveBackground(request, metadata=account.metadata, timeout=60)
        assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        proxy.heal()
        time.sleep(2)  # the held store reaches retention; the gateway's delete retries
        assert _until(lambda: listed() == 1), "the failed call's result was deleted"
        time.sleep(2)
        assert listed() == 1, "nothing of the failed call came back"
        balance = stub.GetBalance(account_pb2.GetBalanceRequest(), metadata=account.metadata, timeout=10)
        assert (balance.available, balance.held) == (9, 0), "only the call that was served is charged"


def test_inference_is_ready_only_while_a_canary_inference_answers(mesh, tmp_path):
    """Triton's models say READY either way; only the canary tells them apart. A canary
    that cannot answer in time (1 ms) keeps the service NOT_SERVING and says why.
    (Stopping a model's Python-backend stub instead crashed Triton 2.51 itself.)"""
    inference = ServiceProcess(
        "inference",
        {
            **mesh.env,
            "CUTOUT_INFERENCE_TRITON_URL": mesh.triton.url,
            "CUTOUT_INFERENCE_CANARY_INTERVAL_S": "0.5",
            "CUTOUT_INFERENCE_CANARY_TIMEOUT_S": "0.001",
        },
        tmp_path,
        pki=mesh.pki,
    )
    inference.start()
    try:
        assert _until(lambda: "canary inference on" in inference.log_path.read_text(), 60)
        time.sleep(1.5)  # more rounds: it stays out
        assert _health(inference) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert _health(inference, "liveness") == health_pb2.HealthCheckResponse.SERVING
        assert _health(mesh.inference) == health_pb2.HealthCheckResponse.SERVING  # same Triton, real canary
    finally:
        assert inference.stop() == 0
