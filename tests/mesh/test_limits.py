"""Limits before work at the public port, through the real mesh (services/gateway/admission.py)."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from google.rpc import error_details_pb2

from cutout.v1 import account_pb2, cutout_pb2, cutout_pb2_grpc
from services.common.channels import channel_options
from services.common.errors import error_details
from services.common.limits import FairSlots
from services.common.settings import API_KEY_METADATA
from services.launcher import Mesh, ServiceProcess, gateway_process
from tests.conftest import Customer, another_gateway, new_account

SIGN_UP = "/cutout.v1.Cutout/SignUp"
GET_BALANCE = "/cutout.v1.Cutout/GetBalance"


def reason_and_retry(error: grpc.RpcError) -> tuple[str, float | None]:
    details = error_details(error)
    reasons = [d.reason for d in details if isinstance(d, error_details_pb2.ErrorInfo)]
    retry = [d.retry_delay.ToMilliseconds() / 1000 for d in details if isinstance(d, error_details_pb2.RetryInfo)]
    return (reasons or [""])[0], (retry or [None])[0]


async def header_only_calls(
    gateway: ServiceProcess, method: str, count: int, metadata: tuple[tuple[str, str], ...] = ()
) -> tuple[list[grpc.aio.StreamUnaryCall], asyncio.Event, grpc.aio.Channel]:
    """`count` calls that send their headers and never a request message (the channel stays open)."""
    channel = grpc.aio.secure_channel(gateway.address, gateway.credentials(), options=channel_options())
    never = asyncio.Event()

    async def nothing() -> AsyncIterator[bytes]:
        await never.wait()
        return
        yield b""

    call = channel.stream_unary(method)
    calls = [call(nothing(), metadata=metadata, timeout=60) for _ in range(count)]
    return calls, never, channel


async def settled(calls: list[grpc.aio.StreamUnaryCall], wait_s: float) -> list[grpc.aio.AioRpcError]:
    """The calls that have ended within `wait_s` (each with its error)."""
    await asyncio.sleep(wait_s)
    ended = []
    for call in calls:
        if call.done():
            try:
                await call
            except grpc.aio.AioRpcError as error:
                ended.append(error)
    return ended


def test_header_only_calls_without_a_key_cannot_starve_keyed_calls(mesh: Mesh, funded_account: Customer):
    """300 calls that never send their message: before, they filled MAX_CONCURRENT_RPCS (256)
    and keyed calls got RESOURCE_EXHAUSTED until they left."""

    async def scenario() -> tuple[list[grpc.aio.AioRpcError], int]:
        calls, never, channel = await header_only_calls(mesh.gateway, SIGN_UP, 300)
        try:
            refused = await settled(calls, 2.0)
            async with grpc.aio.secure_channel(
                mesh.gateway.address, mesh.gateway.credentials(), options=channel_options()
            ) as own:
                balance = await cutout_pb2_grpc.CutoutStub(own).GetBalance(
                    account_pb2.GetBalanceRequest(), metadata=funded_account.metadata, timeout=10
                )
        finally:
            never.set()
            for call in calls:
                call.cancel()
            await channel.close()
        return refused, balance.available

    refused, available = asyncio.run(scenario())
    assert available > 0
    # The budget for calls without a key (32 by default) admits a few; the rest are refused at once.
    assert len(refused) >= 300 - 32, len(refused)
    for error in refused:
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
        reason, retry = reason_and_retry(error)
        assert reason == "TOO_MANY_CALLS_WITHOUT_KEY" and retry and retry > 0


def test_a_bad_key_is_refused_before_its_request_is_read(mesh: Mesh):
    async def scenario() -> list[grpc.aio.AioRpcError]:
        calls, never, channel = await header_only_calls(
            mesh.gateway, "/cutout.v1.Cutout/RemoveBackground", 3, ((API_KEY_METADATA, "ck_not-a-real-key"),)
        )
        try:
            return await settled(calls, 2.0)
        finally:
            never.set()
            await channel.close()

    refused = asyncio.run(scenario())
    assert [error.code() for error in refused] == [grpc.StatusCode.UNAUTHENTICATED] * 3


@pytest.fixture
def limited_gateway(mesh: Mesh, tmp_path, request) -> Iterator[ServiceProcess]:
    """A gateway of the session's cell with the limits the test asks for (indirect parameter)."""
    env = {**mesh.env, **{f"CUTOUT_GATEWAY_{name.upper()}": str(value) for name, value in request.param.items()}}
    with another_gateway(mesh, tmp_path, env) as gateway:
        yield gateway


def balances(channel: grpc.Channel, customer: Customer, count: int) -> list[grpc.RpcError | None]:
    stub = cutout_pb2_grpc.CutoutStub(channel)
    outcomes: list[grpc.RpcError | None] = []
    for _ in range(count):
        try:
            stub.GetBalance(account_pb2.GetBalanceRequest(), metadata=customer.metadata, timeout=10)
            outcomes.append(None)
        except grpc.RpcError as error:
            outcomes.append(error)
    return outcomes


@pytest.mark.parametrize("limited_gateway", [{"key_rate_per_s": 2, "key_rate_burst": 5}], indirect=True)
def test_each_key_has_a_rate_and_others_are_not_slowed(mesh: Mesh, raw_channel, limited_gateway):
    first = new_account(raw_channel, mesh.admin_token)
    second = new_account(raw_channel, mesh.admin_token)
    with limited_gateway.channel() as channel:
        outcomes = balances(channel, first, 12)
        refused = [error for error in outcomes if error is not None]
        assert 12 - len(refused) <= 5 + 2  # the burst, and what refilled meanwhile
        assert refused, "12 calls at once went over 2/s with a burst of 5"
        for error in refused:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            reason, retry = reason_and_retry(error)
            assert reason == "RATE_LIMITED" and retry is not None and 0 < retry <= 0.5 + 0.01
        assert balances(channel, second, 3) == [None, None, None]
        time.sleep(max(reason_and_retry(refused[-1])[1] or 0, 0.5))
        assert balances(channel, first, 1) == [None], "served again after the RetryInfo delay"


@pytest.mark.parametrize("limited_gateway", [{"calls_per_key": 2}], indirect=True)
def test_each_key_has_a_bound_on_calls_in_flight(mesh: Mesh, raw_channel, limited_gateway):
    customer = new_account(raw_channel, mesh.admin_token)

    async def scenario() -> list[grpc.aio.AioRpcError]:
        calls, never, channel = await header_only_calls(limited_gateway, GET_BALANCE, 4, tuple(customer.metadata))
        try:
            return await settled(calls, 2.0)
        finally:
            never.set()
            await channel.close()

    refused = asyncio.run(scenario())
    assert len(refused) == 2
    assert {reason_and_retry(error)[0] for error in refused} == {"TOO_MANY_CALLS_IN_FLIGHT"}


REDIS = ("127.0.0.1", 6379)


def redis_reachable() -> bool:
    try:
        with socket.create_connection(REDIS, timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def redis_pair(mesh: Mesh, tmp_path) -> Iterator[list[ServiceProcess]]:
    """Two gateways that share their rate counters in Redis (10 calls per 10 s per key)."""
    if not redis_reachable():
        pytest.skip(f"no Redis at {REDIS[0]}:{REDIS[1]}; start one to test shared rate limits")
    env = {
        **mesh.env,
        "CUTOUT_GATEWAY_REDIS_URL": f"redis://{REDIS[0]}:{REDIS[1]}/0",
        "CUTOUT_GATEWAY_KEY_RATE_PER_S": "1",
        "CUTOUT_GATEWAY_KEY_RATE_BURST": "10",
    }
    pair = [
        gateway_process(
            tmp_path / str(n),
            env,
            inference=mesh.inference.address,
            accounts=mesh.accounts.address,
            retention=mesh.retention.address,
            pki=mesh.pki,
        )
        for n in range(2)
    ]
    try:
        for gateway in pair:
            gateway.run_dir.mkdir()
            gateway.start()
            gateway.wait_serving()
        yield pair
    finally:
        for gateway in pair:
            assert gateway.stop() in (0, None)


def test_replicas_share_one_rate_per_key_through_redis(mesh: Mesh, raw_channel, redis_pair):
    customer = new_account(raw_channel, mesh.admin_token)
    while time.time() % 10 > 6:  # all calls inside one 10 s window
        time.sleep(0.2)
    served = 0
    for gateway in redis_pair:
        with gateway.channel() as channel:
            served += balances(channel, customer, 8).count(None)
    assert served == 10, "10 per window in all, however the calls spread over the replicas"


def test_fair_slots_keep_one_owner_from_holding_them_all():
    async def scenario() -> tuple[bool, bool]:
        slots = FairSlots(total=4, per_owner=2)
        await slots.acquire("a")
        await slots.acquire("a")
        third = asyncio.create_task(slots.acquire("a"))
        await asyncio.sleep(0.05)
        waits = not third.done()
        await asyncio.wait_for(slots.acquire("b"), 1)  # another owner still gets one
        slots.release("a")
        await asyncio.wait_for(third, 1)
        return waits, True

    assert asyncio.run(scenario()) == (True, True)


def test_one_account_streams_do_not_take_every_stream_slot(mesh: Mesh, raw_channel, astronaut_png, tmp_path):
    """A gateway with 4 stream slots in all and 2 per account, in front of an inference
    service that is frozen (SIGSTOP): one account's stream items all wait in it, each
    holding a slot. Another account's item still gets a slot (its empty id is refused
    at once, so it needs no inference). Before, the first account's items took all 4
    slots and the other waited until one let go (here: never)."""
    inference = ServiceProcess(
        "inference", {**mesh.env, "CUTOUT_INFERENCE_TRITON_URL": mesh.triton.url}, tmp_path, pki=mesh.pki
    )
    env = {
        **mesh.env,
        "CUTOUT_GATEWAY_PROCESS_STREAM_ITEMS_IN_FLIGHT": "4",
        "CUTOUT_GATEWAY_ACCOUNT_STREAM_ITEMS_IN_FLIGHT": "2",
    }
    inference.start()
    gateway = None
    try:
        inference.wait_serving()
        gateway = gateway_process(
            tmp_path,
            env,
            inference=inference.address,
            accounts=mesh.accounts.address,
            retention=mesh.retention.address,
            pki=mesh.pki,
        )
        gateway.start()
        gateway.wait_serving()
        busy = new_account(raw_channel, mesh.admin_token, credits=60)
        other = new_account(raw_channel, mesh.admin_token)
        assert inference.process is not None
        inference.process.send_signal(signal.SIGSTOP)
        with gateway.channel() as channel:
            stub = cutout_pb2_grpc.CutoutStub(channel)

            def items(prefix: str, count: int) -> Iterator[cutout_pb2.StreamRequest]:
                for n in range(count):
                    yield cutout_pb2.StreamRequest(item=cutout_pb2.StreamItem(id=f"{prefix}{n}", image=astronaut_png))

            hog = [
                stub.RemoveBackgroundStream(items(f"h{n}-", 8), metadata=busy.metadata, timeout=60) for n in range(2)
            ]
            time.sleep(2)  # the busy account's items are waiting in the frozen inference
            bad_id = iter([cutout_pb2.StreamRequest(item=cutout_pb2.StreamItem(id="", image=astronaut_png))])
            try:
                answers = list(stub.RemoveBackgroundStream(bad_id, metadata=other.metadata, timeout=20))
            finally:
                for call in hog:
                    call.cancel()
        assert answers[0].item.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert answers[-1].summary.items_failed == 1
    finally:
        if inference.process is not None and inference.process.poll() is None:
            inference.process.send_signal(signal.SIGCONT)
        if gateway is not None:
            assert gateway.stop() == 0
        assert inference.stop() == 0
