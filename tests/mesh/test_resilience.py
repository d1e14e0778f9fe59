"""Dead dependencies give UNAVAILABLE and are found again; SIGTERM drains in-flight work.

These tests start their own processes (on free ports) so that what they stop and
kill is theirs, not the session mesh that other tests use.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from cutout.v1 import account_pb2, cutout_pb2, cutout_pb2_grpc, inference_pb2, inference_pb2_grpc, options_pb2
from services.accounts.db import make_engine
from services.accounts.ledger import Ledger
from services.common.channels import channel_options
from services.common.credits import MILLI
from services.common.errors import error_details
from services.common.settings import API_KEY_METADATA, MIB
from services.common.tls import channel_credentials
from services.inference.triton_local import LocalTriton
from services.launcher import ROOT, ServiceProcess, free_port, gateway_process
from services.retention.store import READY
from tests.conftest import FAST_LEVEL, Customer, encode, new_account


def balance_of(channel: grpc.Channel, account) -> tuple[int, int]:
    shown = cutout_pb2_grpc.CutoutStub(channel).GetBalance(
        account_pb2.GetBalanceRequest(), metadata=account.metadata, timeout=10
    )
    return shown.available, shown.held


def health_status(service: ServiceProcess) -> int:
    with service.channel() as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2).status


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"not {what} after {timeout_s:.0f}s")


@pytest.fixture
def own_triton(tmp_path, model_paths, mesh) -> Iterator[LocalTriton]:
    triton = LocalTriton(grpc_port=free_port(), work_dir=tmp_path / "triton", pki=mesh.pki)
    triton.work_dir.mkdir()
    triton.start()
    triton.wait_ready()
    yield triton
    triton.stop()


def test_triton_down_gives_unavailable_and_inference_recovers_when_it_is_back(
    tmp_path, own_triton, astronaut_png, mesh, raw_channel
):
    inference = ServiceProcess(
        "inference", {**FAST_LEVEL, "CUTOUT_INFERENCE_TRITON_URL": own_triton.url}, tmp_path, pki=mesh.pki
    )
    inference.start()
    gateway = gateway_process(
        tmp_path,
        {},
        inference=inference.address,
        accounts=mesh.accounts.address,
        retention=mesh.retention.address,
        pki=mesh.pki,
    )
    account = new_account(raw_channel, mesh.admin_token, credits=5)
    try:
        inference.wait_serving()
        gateway.start()
        with (
            inference.channel(as_name="gateway") as channel,
            gateway.channel() as public,
        ):
            segment = inference_pb2_grpc.InferenceStub(channel).Segment
            request = inference_pb2.SegmentRequest(image=astronaut_png)
            assert segment(request, timeout=60).result.width == 512

            own_triton.stop()
            with pytest.raises(grpc.RpcError) as caught:
                segment(request, timeout=60)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "Triton" in caught.value.details() and "retry" in caught.value.details()
            assert [d.reason for d in error_details(caught.value)] == ["MODEL_UNAVAILABLE"]
            # Through the gateway: the same error, and the failed removal is not charged.
            with pytest.raises(grpc.RpcError) as caught:
                cutout_pb2_grpc.CutoutStub(public).RemoveBackground(
                    cutout_pb2.RemoveBackgroundRequest(image=astronaut_png), metadata=account.metadata, timeout=60
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert [d.reason for d in error_details(caught.value)] == ["MODEL_UNAVAILABLE"]
            assert balance_of(public, account) == (5, 0)
            wait_until(
                lambda: health_status(inference) == health_pb2.HealthCheckResponse.NOT_SERVING,
                10,
                "NOT_SERVING",
            )

            own_triton.start()  # same port, as a restarted pod would be
            own_triton.wait_ready()
            wait_until(lambda: health_status(inference) == health_pb2.HealthCheckResponse.SERVING, 30, "SERVING again")
            assert segment(request, timeout=60).result.width == 512
    finally:
        assert gateway.stop() in (0, None)
        assert inference.stop() == 0


def test_gateway_reports_a_dead_inference_service_as_unavailable_and_charges_nothing(
    tmp_path, astronaut_png, mesh, raw_channel
):
    gateway = gateway_process(
        tmp_path,
        {},
        inference=f"127.0.0.1:{free_port()}",
        accounts=mesh.accounts.address,
        retention=mesh.retention.address,
        pki=mesh.pki,
    )
    gateway.start()
    account = new_account(raw_channel, mesh.admin_token, credits=5)
    try:
        gateway.wait_serving()
        with gateway.channel() as channel:
            # Readiness that degrades (issue 19): still in rotation, each call told UNAVAILABLE.
            assert health_status(gateway) == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.RpcError) as caught:
                cutout_pb2_grpc.CutoutStub(channel).RemoveBackground(
                    cutout_pb2.RemoveBackgroundRequest(image=astronaut_png, idempotency_key="retry-me"),
                    metadata=account.metadata,
                    timeout=30,
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert caught.value.details() == "the inference service is unavailable; retry shortly"
            assert balance_of(channel, account) == (5, 0)
            ledger = cutout_pb2_grpc.CutoutStub(channel).ListLedger(
                account_pb2.ListLedgerRequest(), metadata=account.metadata, timeout=10
            )
            assert [(e.kind, e.amount) for e in ledger.entries][:2] == [("release", 1), ("reserve", -1)]
    finally:
        assert gateway.stop() == 0


def test_gateway_stays_serving_without_accounts_and_answers_unavailable(tmp_path, mesh, astronaut_png, funded_account):
    gateway = gateway_process(
        tmp_path,
        {},
        inference=mesh.inference.address,
        accounts=f"127.0.0.1:{free_port()}",
        retention=mesh.retention.address,
        pki=mesh.pki,
    )
    gateway.start()
    try:
        time.sleep(1.5)
        # Readiness that degrades (issue 19): the gateway stays in rotation and says what is unavailable.
        assert health_status(gateway) == health_pb2.HealthCheckResponse.SERVING
        with gateway.channel() as channel:
            with pytest.raises(grpc.RpcError) as caught:
                cutout_pb2_grpc.CutoutStub(channel).RemoveBackground(
                    cutout_pb2.RemoveBackgroundRequest(image=astronaut_png),
                    metadata=funded_account.metadata,
                    timeout=30,
                )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert caught.value.details() == "the accounts service is unavailable; retry shortly"
    finally:
        assert gateway.stop() == 0


def _cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def test_sigterm_during_a_request_lets_it_finish_then_exits_zero(tmp_path, mesh, astronaut, funded_account):
    """Gateway and inference both get SIGTERM while a slow request is inside them."""
    inference = ServiceProcess(
        "inference", {**FAST_LEVEL, "CUTOUT_INFERENCE_TRITON_URL": mesh.triton.url}, tmp_path, pki=mesh.pki
    )
    inference.start()
    inference.wait_serving()
    gateway = gateway_process(
        tmp_path,
        {},
        inference=inference.address,
        accounts=mesh.accounts.address,
        retention=mesh.retention.address,
        pki=mesh.pki,
    )
    gateway.start()
    gateway.wait_serving()
    # 12 MP encoded with the most compression effort: seconds of work on two cores.
    big = encode(astronaut.resize((4000, 3000)), "JPEG", quality=90)
    options = options_pb2.RemoveBackgroundOptions(compression_effort=9)
    with gateway.channel() as channel:
        idle_cpu_s = _cpu_seconds(inference.process.pid)
        call = cutout_pb2_grpc.CutoutStub(channel).RemoveBackground.future(
            cutout_pb2.RemoveBackgroundRequest(image=big, options=options),
            metadata=funded_account.metadata,
            timeout=120,
        )
        # Inside inference: it has spent CPU on the picture (decoding 12 MP alone takes more
        # than this; idle, it spends next to none). A fixed sleep raced the gateway's own
        # checks on a loaded machine, and SIGTERM then met a call inference never got.
        deadline = time.monotonic() + 60
        while _cpu_seconds(inference.process.pid) - idle_cpu_s < 0.3:
            assert time.monotonic() < deadline and not call.done(), "the request never reached inference"
            time.sleep(0.02)
        assert not call.done(), "the request must still be in flight when SIGTERM arrives"
        gateway.process.send_signal(signal.SIGTERM)
        inference.process.send_signal(signal.SIGTERM)
        response = call.result()
    assert (response.result.width, response.result.height) == (4000, 3000)
    assert gateway.process.wait(30) == 0
    assert inference.process.wait(30) == 0


def test_signals_during_the_drain_are_already_handled(tmp_path):
    """A Ctrl-C's SIGINT, then SIGTERM after SIGTERM (a launcher's, late) until the process is gone: exit 0."""
    nowhere = f"127.0.0.1:{free_port()}"
    gateway = gateway_process(tmp_path, {}, inference=nowhere, accounts=nowhere, retention=nowhere)
    gateway.start()
    gateway.process.send_signal(signal.SIGINT)
    while gateway.process.poll() is None:  # through the drain, the loop's close and the interpreter's exit
        gateway.process.send_signal(signal.SIGTERM)
        time.sleep(0.005)
    assert gateway.process.returncode == 0
    log = gateway.log_path.read_text()
    assert log.count("draining: in-flight calls") == 1 and "SIGTERM received; already draining" in log


def processes_with(env_entry: str) -> list[int]:
    """Pids of the processes whose environment holds `env_entry` (what one launcher started)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if env_entry.encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:  # gone meanwhile, or not ours
            pass
    return found


def test_ctrl_c_in_a_terminal_drains_the_mesh_and_everything_exits_zero(tmp_path, astronaut, astronaut_png):
    """`make up` and Ctrl-C: the terminal sends SIGINT to every process of the foreground group.

    Two requests are in flight in the gateway (one keeps its result); both must be answered,
    stored and charged once, though accounts and retention are stopping too.
    """
    data_dir = tmp_path / "data"
    (data_dir / "samples").mkdir(parents=True)
    (data_dir / "samples" / "astronaut.png").write_bytes(astronaut_png)  # the demo's photo, not fetched again
    marker = f"CUTOUT_DATA_DIR={data_dir}"  # every process the launcher starts inherits it
    launcher = subprocess.Popen(
        [sys.executable, "-m", "services.launcher"],
        env={
            **os.environ,
            "CUTOUT_DATA_DIR": str(data_dir),
            "CUTOUT_GATEWAY_PORT": str(free_port()),
            "CUTOUT_EDGE_PORT": str(free_port()),
        },
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a foreground job
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(launcher.stdout), daemon=True).start()
    try:
        wait_until(lambda: any("Ctrl-C stops everything" in line for line in lines), 240, "started")
        assert launcher.poll() is None, "".join(lines)
        api_key = next(re.search(r"CUTOUT_API_KEY=(\S+)", line).group(1) for line in lines if "CUTOUT_API_KEY=" in line)
        address = next(line.split()[-1] for line in lines if line.startswith("gateway listening on"))
        login = json.loads((data_dir / "demo" / "account.json").read_text())
        credentials = channel_credentials(data_dir / "pki" / "ca.pem")  # the cell CA `make up` made
        with grpc.secure_channel(address, credentials, options=channel_options()) as channel:
            cutout = cutout_pb2_grpc.CutoutStub(channel)
            profile = cutout.GetProfile(account_pb2.GetProfileRequest(), metadata=[(API_KEY_METADATA, api_key)])
            account = Customer(profile.account_id, login["email"], login["password"], api_key)
            available, held = balance_of(channel, account)
            assert held == 0
            # 12 MP, its mask encoded with the most effort: seconds of work, a small answer.
            big = encode(astronaut.resize((4000, 3000)), "JPEG", quality=90)
            options = {"format": options_pb2.OUTPUT_FORMAT_MASK, "compression_effort": 9}
            calls = {
                key: cutout.RemoveBackground.future(
                    cutout_pb2.RemoveBackgroundRequest(
                        image=big,
                        options=options_pb2.RemoveBackgroundOptions(**options, keep_result=keep),
                        idempotency_key=key,
                    ),
                    metadata=account.metadata,
                    timeout=120,
                )
                for key, keep in [("ctrl-c-kept", True), ("ctrl-c-plain", False)]
            }
            wait_until(lambda: balance_of(channel, account) == (available - 2, 2), 30, "both requests in")
            assert not any(call.done() for call in calls.values()), "requests must be in flight at Ctrl-C"
            os.killpg(launcher.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
            responses = {key: call.result() for key, call in calls.items()}
        assert launcher.wait(120) == 0, "".join(lines)
    finally:
        if launcher.poll() is None:
            launcher.terminate()  # an orderly stop of what it started
            launcher.wait(120)
        leftovers = processes_with(marker)
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
    assert not leftovers, "processes of the launcher outlived it"
    stopped = next(line for line in lines if line.startswith("stopped:"))
    # In the reverse of their start: accounts calls retention (erasures), so it starts after it.
    assert stopped.split(": ", 1)[1].strip().split(", ") == [
        f"{name} exit 0" for name in ["edge", "gateway", "accounts", "retention", "inference", "triton"]
    ]

    for response in responses.values():
        assert (response.result.width, response.result.height) == (4000, 3000)
    kept = responses["ctrl-c-kept"].kept
    assert kept.result_id and kept.token and not responses["ctrl-c-plain"].HasField("kept")
    # Charged once each, nothing left held: read from the stopped mesh's own database.
    ledger = Ledger(make_engine(f"sqlite:///{data_dir / 'accounts' / 'accounts.db'}"), hold_timeout=timedelta(hours=1))
    entries, balance = ledger.entries(account.account_id)
    # (The ledger's own unit: millicredits.)
    assert (balance.available, balance.held) == ((available - 2) * MILLI, 0)
    assert sorted((key, row.kind, row.amount) for row, key in entries if key in calls) == [
        ("ctrl-c-kept", "commit", 0),
        ("ctrl-c-kept", "reserve", -MILLI),
        ("ctrl-c-plain", "commit", 0),
        ("ctrl-c-plain", "reserve", -MILLI),
    ]
    # The kept result was stored whole, not left pending.
    retention = make_engine(f"sqlite:///{data_dir / 'retention' / 'retention.db'}")
    with retention.connect() as db:
        state = db.exec_driver_sql("SELECT state FROM retention_results WHERE id = ?", (kept.result_id,)).scalar()
    assert state == READY
    assert (data_dir / "retention" / "blobs" / kept.result_id).is_file()


def test_a_file_of_almost_50_mib_is_served(gateway):
    noise = np.random.default_rng(7).integers(0, 256, (4300, 4000, 3), dtype=np.uint8)
    photo = encode(Image.fromarray(noise), "PNG", compress_level=0)
    assert 49 * MIB < len(photo) < 50 * MIB
    response = gateway.RemoveBackground(
        cutout_pb2.RemoveBackgroundRequest(
            image=photo, options=options_pb2.RemoveBackgroundOptions(format=options_pb2.OUTPUT_FORMAT_MASK)
        ),
        timeout=120,
    )
    assert (response.result.width, response.result.height) == (4000, 4300)


def test_large_photos_go_through(gateway, astronaut):
    """12 MP and 25 MP photos end to end (inputs past gRPC's default 4 MiB message limit)."""
    for size in [(4000, 3000), (6000, 4166)]:
        photo = encode(astronaut.resize(size, Image.Resampling.BILINEAR), "JPEG", quality=95)
        response = gateway.RemoveBackground(
            cutout_pb2.RemoveBackgroundRequest(
                image=photo, options=options_pb2.RemoveBackgroundOptions(format=options_pb2.OUTPUT_FORMAT_PNG)
            ),
            timeout=120,
        )
        assert (response.result.width, response.result.height) == size
        assert 0.3 < response.result.foreground_fraction < 0.8
