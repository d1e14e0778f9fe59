"""The fault suite (issue 19): a private mesh under a steady load of concurrent clients,
and one fault after another (SIGKILL of each process, a slow, reset or blackholed link
between services, Triton stopped with SIGSTOP, accounts' PostgreSQL restarted mid-commit,
a full disk under retention's blobs). After each:

- every request was answered OK or with a documented retryable status;
- credits charged == results delivered, and the holds return to zero;
- no half-written kept result (the account's kept results are exactly those delivered);
- every service is SERVING again by itself (a killed process is started again on its
  port, as its supervisor would; nothing else is touched).

The private mesh runs with short timeouts (holds lapse after 20 s, a commit waits 3 s) so
the whole file stays bounded; `FAULT_TABLE` is printed at the end (docs/operations/faults.md).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from sqlmodel import Session, create_engine, select

from cutout.v1 import account_pb2, cutout_pb2, cutout_pb2_grpc, options_pb2
from services.common.errors import error_details
from services.launcher import Mesh, ServiceProcess, free_port, gateway_process
from services.retention.models import KeptResult
from tests.conftest import FAST_LEVEL, Customer, another_gateway, encode, new_account
from tests.faultproxy import FaultProxy

CLIENTS = 3
# The statuses docs/operations/faults.md documents as "retry": nothing else may come back.
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
}
FAULT_TABLE: list[dict[str, object]] = []


@dataclass
class Tally:
    sent: int = 0
    ok: int = 0
    kept: int = 0
    retryable: int = 0
    other: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)  # ErrorInfo reasons of the retryable errors
    lock: threading.Lock = field(default_factory=threading.Lock)


class Load:
    """CLIENTS threads calling RemoveBackground back to back (the first keeps its results)."""

    def __init__(self, gateway: ServiceProcess, account: Customer, photo: bytes) -> None:
        self.gateway, self.account, self.photo = gateway, account, photo
        self.tally = Tally()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(CLIENTS)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)

    def _client(self, number: int) -> None:
        options = options_pb2.RemoveBackgroundOptions(keep_result=number == 0)
        with self.gateway.channel() as channel:
            stub = cutout_pb2_grpc.CutoutStub(channel)
            while not self.stopping.is_set():
                request = cutout_pb2.RemoveBackgroundRequest(
                    image=self.photo, options=options, idempotency_key=f"load-{uuid.uuid4()}"
                )
                with self.tally.lock:
                    self.tally.sent += 1
                try:
                    response = stub.RemoveBackground(request, metadata=self.account.metadata, timeout=30)
                except grpc.RpcError as error:
                    with self.tally.lock:
                        if error.code() in RETRYABLE:
                            self.tally.retryable += 1
                            for detail in error_details(error):
                                if isinstance(detail, error_details_pb2.ErrorInfo):
                                    self.tally.reasons[detail.reason] += 1
                        else:
                            self.tally.other.append(f"{error.code().name}: {error.details()}")
                    time.sleep(0.2)  # a client backs off a little
                    continue
                with self.tally.lock:
                    self.tally.ok += 1
                    self.tally.kept += bool(response.kept.result_id)


def _serving(process: ServiceProcess) -> bool:
    try:
        with process.channel() as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1).status
        return status == health_pb2.HealthCheckResponse.SERVING
    except grpc.RpcError:
        return False


@dataclass
class Rig:
    mesh: Mesh
    gateway: ServiceProcess
    proxies: dict[str, FaultProxy]
    photo: bytes

    @property
    def processes(self) -> list[ServiceProcess]:
        return [self.mesh.inference, self.mesh.accounts, self.mesh.retention, self.gateway]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, model_paths, astronaut: Image.Image) -> Iterator[Rig]:
    mesh = Mesh(
        data_dir=tmp_path_factory.mktemp("faults"),
        env={
            **FAST_LEVEL,
            "CUTOUT_ACCOUNTS_SIGNUP_CREDITS": "3",
            "CUTOUT_ACCOUNTS_HOLD_TIMEOUT_S": "20",
            "CUTOUT_ACCOUNTS_SWEEP_INTERVAL_S": "1",
            "CUTOUT_GATEWAY_SOURCE_RATE_PER_S": "1000",
            "CUTOUT_GATEWAY_SOURCE_RATE_BURST": "1000",
            "CUTOUT_GATEWAY_ACCOUNTS_TIMEOUT_S": "2",
            "CUTOUT_GATEWAY_COMMIT_RETRY_S": "3",
            "CUTOUT_GATEWAY_INFERENCE_TIMEOUT_S": "20",
            "CUTOUT_GATEWAY_RETENTION_TIMEOUT_S": "4",
            "CUTOUT_INFERENCE_TRITON_TIMEOUT_S": "15",
            "CUTOUT_INFERENCE_CANARY_INTERVAL_S": "1",
            "CUTOUT_INFERENCE_CANARY_TIMEOUT_S": "4",
        },
    )
    mesh.start()
    # The mesh's own gateway gives way to one whose calls to the others pass through proxies.
    proxies = {name: FaultProxy(mesh.service(name).address).start() for name in ("inference", "accounts", "retention")}
    own = mesh.gateway
    assert own.stop() == 0
    gateway = gateway_process(
        mesh.run_dir,
        mesh.env,
        inference=proxies["inference"].address,
        accounts=proxies["accounts"].address,
        retention=proxies["retention"].address,
        pki=mesh.pki,
    )
    mesh.services[mesh.services.index(own)] = gateway
    gateway.start()
    gateway.wait_serving()
    try:
        yield Rig(mesh, gateway, proxies, encode(astronaut.resize((96, 96)), "JPEG", quality=85))
    finally:
        for proxy in proxies.values():
            proxy.heal()
        mesh.stop()  # killed processes were started again, so each stops (its status is not judged)
        for proxy in proxies.values():
            proxy.stop()
        if FAULT_TABLE:
            print("\n" + table())


def table() -> str:
    lines = [
        "| fault | sent | OK | retryable | charged | delivered | lost | back to SERVING |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in FAULT_TABLE:
        lines.append(
            "| {fault} | {sent} | {ok} | {retryable} | {charged} | {delivered} | {lost} | {recovery_s:.1f} s |".format(
                **row
            )
        )
    return "\n".join(lines)


def _kill_and_restart(process_of: Callable[[Rig], ServiceProcess]) -> Callable[[Rig], Callable[[], None]]:
    def fault(rig: Rig) -> Callable[[], None]:
        process = process_of(rig)
        assert process.process is not None
        os.kill(process.process.pid, signal.SIGKILL)
        process.process.wait(10)
        return process.start  # its supervisor starts it again, on the same port

    return fault


def _kill_triton(rig: Rig) -> Callable[[], None]:
    triton = rig.mesh.triton
    assert triton is not None and triton.process is not None
    os.kill(triton.process.pid, signal.SIGKILL)
    triton.process.wait(10)
    return triton.start


def _stop_triton(rig: Rig) -> Callable[[], None]:
    triton = rig.mesh.triton
    assert triton is not None and triton.process is not None
    os.kill(triton.process.pid, signal.SIGSTOP)
    return lambda: os.kill(triton.process.pid, signal.SIGCONT)  # type: ignore[union-attr]


def _link(name: str, how: Callable[[FaultProxy], None]) -> Callable[[Rig], Callable[[], None]]:
    def fault(rig: Rig) -> Callable[[], None]:
        how(rig.proxies[name])
        return rig.proxies[name].heal

    return fault


FAULTS: dict[str, Callable[[Rig], Callable[[], None]]] = {
    "SIGKILL gateway": _kill_and_restart(lambda rig: rig.gateway),
    "SIGKILL inference": _kill_and_restart(lambda rig: rig.mesh.inference),
    "SIGKILL accounts": _kill_and_restart(lambda rig: rig.mesh.accounts),
    "SIGKILL retention": _kill_and_restart(lambda rig: rig.mesh.retention),
    "SIGKILL Triton": _kill_triton,
    "SIGSTOP Triton (4 s)": _stop_triton,
    "gateway→inference +300 ms per chunk": _link("inference", lambda proxy: proxy.delay(0.3)),
    "gateway→accounts resets": _link("accounts", lambda proxy: proxy.reset()),
    "gateway→accounts blackhole": _link("accounts", lambda proxy: proxy.blackhole()),
    "gateway→inference blackhole": _link("inference", lambda proxy: proxy.blackhole()),
    "gateway→retention blackhole": _link("retention", lambda proxy: proxy.blackhole()),
}


def _ledger(rig: Rig, account: Customer) -> account_pb2.ListLedgerResponse:
    with rig.gateway.channel() as channel:
        return cutout_pb2_grpc.CutoutStub(channel).ListLedger(
            account_pb2.ListLedgerRequest(limit=1000), metadata=account.metadata, timeout=10
        )


def _kept_results(rig: Rig, account: Customer) -> int:
    with rig.gateway.channel() as channel:
        listed = cutout_pb2_grpc.CutoutStub(channel).ListResults(
            cutout_pb2.ListResultsRequest(limit=1000), metadata=account.metadata, timeout=10
        )
    return len(listed.results)


def _until(predicate: Callable[[], bool], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_fault_under_load_loses_nothing_and_heals(rig: Rig, fault: str) -> None:
    hold_s = 4.0 if "SIGSTOP" in fault or "→" in fault else 1.0
    _fault_under_load(rig, fault, FAULTS[fault], hold_s)


def _new_account(rig: Rig) -> Customer:
    """A funded account, once the gateway reaches accounts (it may have just been restarted)."""
    deadline = time.monotonic() + 60
    with rig.gateway.channel() as channel:
        while True:
            try:
                return new_account(channel, rig.mesh.admin_token, credits=100_000)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def _fault_under_load(
    rig: Rig,
    fault: str,
    inject: Callable[[Rig], Callable[[], None]],
    hold_s: float,
    seen: Callable[[Tally], bool] = lambda tally: True,
) -> tuple[Customer, Tally]:
    """Runs the load, injects the fault, holds it `hold_s` and until the callers have `seen`
    it (a slow machine may send nothing in `hold_s`), heals it, and checks the invariants."""
    account = _new_account(rig)
    with Load(rig.gateway, account, rig.photo) as load:
        time.sleep(1.0)  # steady state
        recover = inject(rig)
        time.sleep(hold_s)
        _until(lambda: seen(load.tally), 30)
        kept_before = load.tally.kept
        recover()
        healed_at = time.monotonic()
        assert _until(lambda: all(_serving(p) for p in rig.processes), 90), "every service SERVING again"
        ok_before = load.tally.ok
        assert _until(lambda: load.tally.ok > ok_before + CLIENTS, 60), "requests succeed again"
        recovery_s = time.monotonic() - healed_at
        assert _until(lambda: load.tally.kept > kept_before, 60), "results are kept again"
    tally = load.tally
    assert not tally.other, tally.other[:5]
    # Holds come back to zero: released by the gateway, or lapsed (20 s) if the gateway died.
    assert _until(lambda: _ledger(rig, account).balance.held == 0, 45)
    entries = _ledger(rig, account).entries
    charged = -sum(e.held for e in entries if e.kind == "commit") - sum(e.amount for e in entries if e.kind == "refund")
    # A result perhaps kept for a failed call (its store's answer lost) is deleted by a task
    # that retries until retention answers: nothing half-done stays, once that has run.
    _until(lambda: _kept_results(rig, account) == tally.kept, 30)
    kept = _kept_results(rig, account)
    FAULT_TABLE.append(
        {
            "fault": fault,
            "sent": tally.sent,
            "ok": tally.ok,
            "retryable": tally.retryable,
            "charged": charged,
            "delivered": tally.ok,
            "lost": abs(charged - tally.ok),
            "recovery_s": recovery_s,
        }
    )
    assert charged == tally.ok, f"{charged} charged for {tally.ok} delivered"
    assert kept == tally.kept, f"{kept} kept results for {tally.kept} delivered with keep_result"
    return account, tally


# -- PostgreSQL restarted mid-commit ---------------------------------------------------


def _postgres_bin() -> Path | None:
    """The folder of initdb and pg_ctl: on PATH (/usr/local/bin links), else Debian's layout."""
    found = shutil.which("initdb") or shutil.which("initdb", path="/usr/local/bin")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return candidates[-1].parent if candidates else None


class PrivatePostgres:
    """A PostgreSQL cluster of the test's own (initdb), on a free loopback port, so that
    restarting it disturbs no other user of the machine's server. PostgreSQL refuses to run
    as root, so as root the cluster belongs to the `postgres` user and runs as it."""

    def __init__(self, bin_dir: Path, data_dir: Path) -> None:
        self.bin_dir, self.data_dir = bin_dir, data_dir
        self.port = free_port()
        self.log = data_dir.parent / "postgres.log"
        self.user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.user, *args], check=True, capture_output=True, timeout=120, cwd=self.data_dir.parent)

    def init(self) -> None:
        self.data_dir.mkdir()
        if self.user:
            shutil.chown(self.data_dir.parent, "postgres")
            shutil.chown(self.data_dir, "postgres")
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "-A", "trust", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data_dir}"
        pg_ctl = str(self.bin_dir / "pg_ctl")
        self._run(pg_ctl, "-D", str(self.data_dir), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """`immediate` is a crash: open transactions die where they are, recovery runs at the next start."""
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w", "stop")


@pytest.fixture
def postgres_accounts(rig: Rig) -> Iterator[PrivatePostgres]:
    """Accounts on a private PostgreSQL for one test, then back on its SQLite file."""
    bin_dir = _postgres_bin()
    if bin_dir is None or not (bin_dir / "pg_ctl").exists():
        pytest.skip("initdb/pg_ctl not found (PATH, /usr/local/bin, /usr/lib/postgresql/*/bin)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root and no runuser to start PostgreSQL as another user")
    work = Path(tempfile.mkdtemp(prefix="cutout-faults-pg-"))
    work.chmod(0o755)
    postgres = PrivatePostgres(bin_dir, work / "data")
    try:
        postgres.init()
    except (subprocess.CalledProcessError, KeyError, LookupError) as error:
        shutil.rmtree(work, ignore_errors=True)
        pytest.skip(f"initdb failed here ({type(error).__name__}); cannot run a private PostgreSQL")
    postgres.start()
    accounts = rig.mesh.accounts
    sqlite_url = accounts.env["CUTOUT_ACCOUNTS_DATABASE_URL"]
    assert accounts.stop() == 0
    accounts.env["CUTOUT_ACCOUNTS_DATABASE_URL"] = postgres.url
    accounts.start()  # migrates the new database, on the same port
    accounts.wait_serving()
    try:
        yield postgres
    finally:
        accounts.stop()
        accounts.env["CUTOUT_ACCOUNTS_DATABASE_URL"] = sqlite_url
        accounts.start()
        accounts.wait_serving()
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            postgres.stop("immediate")
        shutil.rmtree(work, ignore_errors=True)


def test_postgres_restarted_mid_commit_loses_nothing(rig: Rig, postgres_accounts: PrivatePostgres) -> None:
    def restart(_: Rig) -> Callable[[], None]:
        postgres_accounts.stop("immediate")  # commits in flight die mid-transaction
        return postgres_accounts.start

    _, tally = _fault_under_load(
        rig, "PostgreSQL (accounts) restarted mid-commit", restart, 2.0, seen=lambda tally: tally.retryable > 0
    )
    assert tally.retryable > 0, "the outage was seen by callers (else nothing was tested)"


# -- a full disk for blobs -------------------------------------------------------------


@pytest.fixture
def small_blob_disk(rig: Rig) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted over retention's blob folder for one test (the folder's own
    contents are hidden meanwhile and come back at the unmount)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full disk needs a small filesystem mounted by the test: needs root and mount")
    blobs = Path(rig.mesh.retention.env["CUTOUT_RETENTION_BLOB_DIR"])
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(blobs)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield blobs
    finally:
        subprocess.run(["umount", "--lazy", str(blobs)], check=True, timeout=30)


def test_full_blob_disk_keeps_nothing_half_and_recovers(rig: Rig, small_blob_disk: Path) -> None:
    filler = small_blob_disk / ".filler"

    def fill(_: Rig) -> Callable[[], None]:
        with filler.open("wb") as out, contextlib.suppress(OSError):  # ENOSPC: the disk is full
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        return filler.unlink

    account, tally = _fault_under_load(
        rig, "blob disk full", fill, 4.0, seen=lambda tally: tally.reasons["STORAGE_UNAVAILABLE"] > 0
    )
    assert tally.reasons["STORAGE_UNAVAILABLE"] > 0, tally.reasons
    names = sorted(p.name for p in small_blob_disk.iterdir())
    assert not [name for name in names if name.endswith(".partial")], names
    left = [name for name in names if not name.startswith(".")]
    assert len(left) == tally.kept, f"{len(left)} blobs for {tally.kept} kept results"
    engine = create_engine(rig.mesh.retention.env["CUTOUT_RETENTION_DATABASE_URL"])
    try:
        with Session(engine) as session:
            rows = session.exec(select(KeptResult).where(KeptResult.account_id == account.account_id)).all()
    finally:
        engine.dispose()
    assert sorted(row.state for row in rows) == ["ready"] * tally.kept, "no pending (half-kept) result left"


# -- overload ----------------------------------------------------------------------------


def test_overload_is_refused_with_retry_info_not_queued(rig: Rig, tmp_path: Path) -> None:
    """More removals at once than a gateway's WORK_IN_FLIGHT: the excess is refused at once
    with OVERLOADED and a RetryInfo (never left waiting), and only what was delivered is
    charged. (bench/overload.py measures the same at 4x capacity, with timings.)"""
    env = {**rig.mesh.env, "CUTOUT_GATEWAY_WORK_IN_FLIGHT": "2"}
    with another_gateway(rig.mesh, tmp_path, env) as gateway, gateway.channel() as channel:
        account = new_account(channel, rig.mesh.admin_token, credits=1000)
        stub = cutout_pb2_grpc.CutoutStub(channel)
        request = cutout_pb2.RemoveBackgroundRequest(image=rig.photo)
        calls = [stub.RemoveBackground.future(request, metadata=account.metadata, timeout=60) for _ in range(24)]
        ok, refused, other = 0, [], []
        for call in calls:
            try:
                call.result()
                ok += 1
            except grpc.RpcError as error:
                (refused if error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else other).append(error)
        assert not other, [f"{e.code().name}: {e.details()}" for e in other]
        assert ok >= 2 and refused, f"{ok} OK, {len(refused)} refused"
        for error in refused:
            details = error_details(error)
            assert [d.reason for d in details if isinstance(d, error_details_pb2.ErrorInfo)] == ["OVERLOADED"]
            assert any(isinstance(d, error_details_pb2.RetryInfo) for d in details)
        assert _until(lambda: _ledger_at(channel, account).balance.held == 0, 30)
        ledger = _ledger_at(channel, account)
        charged = 1000 - ledger.balance.available
        assert charged == ok, f"{charged} charged for {ok} delivered"
        # Every slot came back: two calls at once are admitted again.
        again = [stub.RemoveBackground.future(request, metadata=account.metadata, timeout=60) for _ in range(2)]
        assert all(call.result().result.width for call in again)


def test_one_accounts_flood_leaves_slots_to_the_others(rig: Rig, tmp_path: Path) -> None:
    """An account holds at most WORK_PER_ACCOUNT of the gateway's WORK_IN_FLIGHT: while one
    floods the gateway, another's calls are still admitted."""
    env = {**rig.mesh.env, "CUTOUT_GATEWAY_WORK_IN_FLIGHT": "4", "CUTOUT_GATEWAY_WORK_PER_ACCOUNT": "2"}
    with another_gateway(rig.mesh, tmp_path, env) as gateway, gateway.channel() as channel:
        flooder = new_account(channel, rig.mesh.admin_token, credits=100)
        other = new_account(channel, rig.mesh.admin_token, credits=100)
        stub = cutout_pb2_grpc.CutoutStub(channel)
        request = cutout_pb2.RemoveBackgroundRequest(image=rig.photo)
        flood = [stub.RemoveBackground.future(request, metadata=flooder.metadata, timeout=60) for _ in range(16)]
        others = [stub.RemoveBackground.future(request, metadata=other.metadata, timeout=60) for _ in range(2)]
        assert all(call.result().result.width for call in others), "the other account was crowded out"
        refused = [call.exception() for call in flood if call.exception() is not None]
        assert refused, "the flood was never refused"
        assert all(error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for error in refused)


def _ledger_at(channel: grpc.Channel, account: Customer) -> account_pb2.ListLedgerResponse:
    return cutout_pb2_grpc.CutoutStub(channel).ListLedger(
        account_pb2.ListLedgerRequest(page_size=10), metadata=account.metadata, timeout=10
    )
