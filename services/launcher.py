"""The embedded mesh on one machine: Triton, then inference, accounts, retention, then the gateway.

    python -m services.launcher                  # `make up`: start, run a demo removal, serve until Ctrl-C
    python -m services.launcher --cells eu,us    # `make up CELLS=eu,us`: one cell per region, side by side

Each service runs as its own process (`python -m services.<name>`), configured only
through its environment variables, exactly as on Kubernetes. Tests use `Mesh` too.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.accounts.admin import admins_line
from services.common.assets import ASTRONAUT
from services.common.channels import channel_options
from services.common.orphans import guarded
from services.common.processes import owner_only_log, owner_only_tree, terminate
from services.common.tls import CellPki
from services.inference.model import MODEL_REPOSITORY, fetch_models
from services.inference.triton_local import LocalTriton

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = ROOT / ".data"
# Service logs of earlier starts are kept this many days (CUTOUT_LOG_DAYS), then deleted.
DEFAULT_LOG_DAYS = 14.0
# glibc's malloc for services that pass megabyte buffers between threads (gRPC's, the
# worker pools): few arenas, and buffers over 128 KiB always mapped and unmapped, never
# parked in an arena. Without it the gateway's resident memory crept up with every test
# it served (peak 402 MiB after five test files, 560 MiB late in the suite; 320 MiB with it).
# The images set the same (Dockerfile); the caller's environment may override both.
MALLOC_ENV = {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
# Cell i of `--cells` serves its gateway on the base port + CELL_PORT_STEP * i (its HTTP edge too).
CELL_PORT_STEP = 10
# The services that listen for callers from outside the cell: TLS without client certificates.
PUBLIC_SERVICES = ("gateway", "edge")


def free_port(host: str = "127.0.0.1") -> int:
    """A port free right now (for Triton, which cannot listen on port 0 and report it)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass
class ServiceProcess:
    """One service as a child process, started on port 0 unless told otherwise."""

    name: str  # the module under services/, e.g. "inference"
    env: dict[str, str]
    run_dir: Path
    port: int = 0
    # The cell's CA: the service gets its certificate (mutual TLS inside; TLS only on the
    # gateway's public port). None: plaintext on loopback (tests of one service alone).
    pki: CellPki | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def prefix(self) -> str:
        return f"CUTOUT_{self.name.upper()}_"

    @property
    def log_path(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def tls_env(self) -> dict[str, str]:
        if self.pki is None:
            return {}
        own = self.pki.ensure(self.name)
        env = {
            f"{self.prefix}TLS_CERT_FILE": str(own.cert_file),
            f"{self.prefix}TLS_KEY_FILE": str(own.key_file),
            f"{self.prefix}MESH_CA_FILE": str(own.ca_file),
            f"{self.prefix}MESH_CERT_FILE": str(own.cert_file),
            f"{self.prefix}MESH_KEY_FILE": str(own.key_file),
        }
        if self.name not in PUBLIC_SERVICES:  # the public ports ask no client certificate
            env[f"{self.prefix}TLS_CLIENT_CA_FILE"] = str(own.ca_file)
        return env

    def credentials(self, as_name: str = "mesh") -> grpc.ChannelCredentials | None:
        """What a caller presents to this service: the cell certificate named `as_name`
        (the launcher's own, "mesh", may only ask health), or None if it is plaintext."""
        return None if self.pki is None else self.pki.ensure(as_name).channel_credentials()

    def channel(self, as_name: str = "mesh") -> grpc.Channel:
        """A channel to this service as a caller named `as_name` would open it."""
        credentials = self.credentials(as_name)
        if credentials is None:
            return grpc.insecure_channel(self.address, options=channel_options())
        return grpc.secure_channel(self.address, credentials, options=channel_options())

    def start(self) -> None:
        port_file = self.run_dir / f"{self.name}.port"
        port_file.unlink(missing_ok=True)
        env = {
            **MALLOC_ENV,
            **os.environ,
            **self.tls_env(),
            **self.env,
            f"{self.prefix}PORT": str(self.port),
            f"{self.prefix}PORT_FILE": str(port_file),
        }
        with owner_only_log(self.log_path) as log:
            self.process = subprocess.Popen(
                # Dies with the launcher (SIGTERM: it drains), even after a `kill -9` of it.
                guarded([sys.executable, "-m", f"services.{self.name}"]),
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                umask=0o077,  # its databases, blobs, mail and logs: owner-only
                # Out of the terminal's process group: Ctrl-C reaches the launcher alone, which
                # stops the services one by one (see `Mesh.stop`).
                start_new_session=True,
            )
        self.port = int(_wait_for_file(port_file, self.process, self.log_path))

    @property
    def url(self) -> str:
        """The HTTP edge's base URL (https with the cell's certificate)."""
        return f"{'https' if self.pki else 'http'}://127.0.0.1:{self.port}"

    def _wait_http(self, deadline: float, timeout_s: float) -> None:
        """The HTTP edge: GET /healthz, which follows the gateway's health."""
        import http.client
        import ssl

        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if self.pki is None:
                    connection: http.client.HTTPConnection = http.client.HTTPConnection(
                        "127.0.0.1", self.port, timeout=1
                    )
                else:
                    context = ssl.create_default_context(cafile=str(self.pki.ca_file))
                    connection = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=1, context=context)
                try:
                    connection.request("GET", "/healthz")
                    if connection.getresponse().status == 200:
                        return
                finally:
                    connection.close()
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not SERVING after {timeout_s:.0f}s; see {self.log_path}")

    def wait_serving(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        if self.name == "edge":
            return self._wait_http(deadline, timeout_s)
        with self.channel() as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                self.check_alive()
                try:
                    if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == (
                        health_pb2.HealthCheckResponse.SERVING
                    ):
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.1)
        raise TimeoutError(f"{self.name} not SERVING after {timeout_s:.0f}s; see {self.log_path}")

    def stop(self, timeout_s: float = 40.0) -> int | None:
        """SIGTERM, then wait for the drain; returns the exit status."""
        return terminate(self.process, timeout_s)

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")


def _wait_for_file(path: Path, process: subprocess.Popen[bytes], log_path: Path, timeout_s: float = 60.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            return path.read_text()
        if process.poll() is not None:
            raise RuntimeError(f"{path.stem} exited with {process.returncode} before listening; see {log_path}")
        time.sleep(0.05)
    raise TimeoutError(f"{path.stem} did not start listening within {timeout_s:.0f}s; see {log_path}")


def write_secret(path: Path, text: str) -> Path:
    """A file only its owner can read (the admin token, the demo credentials)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return path


def accounts_process(
    run_dir: Path,
    database_url: str,
    admins_file: Path,
    env: dict[str, str],
    pki: CellPki | None = None,
    *,
    retention: str = "",
) -> ServiceProcess:
    """Accounts, with its admin listener on a free loopback port (written to
    run_dir/accounts-admin.port) and the named admins of `admins_file`."""
    return ServiceProcess(
        "accounts",
        {
            # Its e-mails (sign-up codes) next to its logs, unless the cell says where.
            "CUTOUT_ACCOUNTS_MAIL_OUTBOX_DIR": str(run_dir / "outbox"),
            **env,
            "CUTOUT_ACCOUNTS_DATABASE_URL": database_url,
            "CUTOUT_ACCOUNTS_ADMINS_FILE": str(admins_file),
            "CUTOUT_ACCOUNTS_ADMIN_PORT": "0",
            "CUTOUT_ACCOUNTS_ADMIN_PORT_FILE": str(run_dir / "accounts-admin.port"),
            "CUTOUT_ACCOUNTS_RETENTION_TARGET": retention,
        },
        run_dir,
        pki=pki,
    )


def admin_address(run_dir: Path) -> str:
    """The admin listener of the accounts process started under run_dir."""
    return f"127.0.0.1:{(run_dir / 'accounts-admin.port').read_text()}"


@dataclass(frozen=True)
class AdminEndpoint:
    """Where a named admin reaches cutout.v1.Admin (an accounts admin listener), with their token."""

    address: str
    token: str
    pki: CellPki | None = None

    def channel(self) -> grpc.Channel:
        """TLS trusting the cell's CA (admins present a token, no client certificate)."""
        if self.pki is None:
            return grpc.insecure_channel(self.address, options=channel_options())
        return grpc.secure_channel(
            self.address, self.pki.ensure("mesh").channel_credentials(), options=channel_options()
        )

    @property
    def metadata(self) -> list[tuple[str, str]]:
        from services.common.settings import ADMIN_TOKEN_METADATA

        return [(ADMIN_TOKEN_METADATA, self.token)]


# The admin endpoint of each running Mesh, by its admin token (tests find it from the token).
ADMINS: dict[str, AdminEndpoint] = {}


def retention_process(run_dir: Path, data_dir: Path, env: dict[str, str], pki: CellPki | None = None) -> ServiceProcess:
    """Retention on a SQLite file and a blob folder under data_dir, with its master key there.

    The key is made once and kept (owner-only), so results kept by one `make up` can
    still be read by the next; a new data_dir gets a new key.
    """
    master_keys = data_dir / "master-keys"
    if not master_keys.exists():
        write_secret(master_keys, f"local1:{base64.b64encode(os.urandom(32)).decode()}")
    return ServiceProcess(
        "retention",
        {
            **env,
            "CUTOUT_RETENTION_DATABASE_URL": f"sqlite:///{data_dir / 'retention.db'}",
            "CUTOUT_RETENTION_BLOB_DIR": str(data_dir / "blobs"),
            "CUTOUT_RETENTION_MASTER_KEYS_FILE": str(master_keys),
        },
        run_dir,
        pki=pki,
    )


def gateway_process(
    run_dir: Path,
    env: dict[str, str],
    *,
    inference: str,
    accounts: str,
    retention: str,
    port: int = 0,
    pki: CellPki | None = None,
) -> ServiceProcess:
    return ServiceProcess(
        "gateway",
        {
            **env,
            "CUTOUT_GATEWAY_INFERENCE_TARGET": inference,
            "CUTOUT_GATEWAY_ACCOUNTS_TARGET": accounts,
            "CUTOUT_GATEWAY_RETENTION_TARGET": retention,
        },
        run_dir,
        port=port,
        pki=pki,
    )


def edge_process(
    run_dir: Path, env: dict[str, str], *, gateway: str, port: int = 0, pki: CellPki | None = None
) -> ServiceProcess:
    """The HTTP edge, a client of `gateway`'s public port (TLS trusting the cell's CA)."""
    tls = {"CUTOUT_EDGE_GATEWAY_CA_FILE": str(pki.ca_file)} if pki else {"CUTOUT_EDGE_GATEWAY_PLAINTEXT": "1"}
    return ServiceProcess("edge", {**env, **tls, "CUTOUT_EDGE_GATEWAY_TARGET": gateway}, run_dir, port=port, pki=pki)


@dataclass
class Mesh:
    """Triton, inference, accounts, retention and gateway on loopback; `start()` returns once all are SERVING."""

    data_dir: Path = DEFAULT_DATA_DIR
    gateway_port: int = 0
    edge_port: int = 0
    # Extra environment for the services (e.g. batcher settings in tests).
    env: dict[str, str] = field(default_factory=dict)
    # Accounts' database: a SQLite file under data_dir unless given (e.g. PostgreSQL).
    database_url: str | None = None
    # The token of the named admin "operator" for cutout.v1.Admin, new for every start; accounts
    # gets only its hash, in the admins file.
    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    admin_name: str = "operator"
    # The Triton model repository (tests add models in a copy of it).
    model_repository: Path = MODEL_REPOSITORY
    triton: LocalTriton | None = None
    services: list[ServiceProcess] = field(default_factory=list)
    # The cell's CA and certificates (keys 0600), under data_dir/pki; made at start.
    pki: CellPki | None = None
    # The region this cell serves (accounts refuses sign-ups for any other), and where
    # the other regions' cells answer (named in that refusal).
    region: str = "eu"
    region_endpoints: dict[str, str] = field(default_factory=dict)
    log_days: float = DEFAULT_LOG_DAYS

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    def service(self, name: str) -> ServiceProcess:
        return next(service for service in self.services if service.name == name)

    @property
    def gateway(self) -> ServiceProcess:
        return self.service("gateway")

    @property
    def inference(self) -> ServiceProcess:
        return self.service("inference")

    @property
    def edge(self) -> ServiceProcess:
        """The HTTP edge (remove.bg's API, Cutout's as JSON): `mesh.edge.url`."""
        return self.service("edge")

    @property
    def accounts(self) -> ServiceProcess:
        return self.service("accounts")

    @property
    def retention(self) -> ServiceProcess:
        return self.service("retention")

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "accounts" / "accounts.db"

    @property
    def admin_address(self) -> str:
        """Accounts' admin listener (loopback only), where cutout.v1.Admin is served."""
        return admin_address(self.run_dir)

    @property
    def admin(self) -> AdminEndpoint:
        return AdminEndpoint(self.admin_address, self.admin_token, self.pki)

    @property
    def outbox(self) -> Path:
        """Where accounts puts the e-mails it sends (sign-up codes, notices)."""
        return self.data_dir / "outbox"

    @property
    def cell_env(self) -> dict[str, str]:
        """What every service of the cell is told about the cell (under the caller's `env`)."""
        env = {"CUTOUT_ACCOUNTS_REGION": self.region, "CUTOUT_ACCOUNTS_MAIL_OUTBOX_DIR": str(self.outbox)}
        if self.region_endpoints:
            env["CUTOUT_ACCOUNTS_REGION_ENDPOINTS"] = json.dumps(self.region_endpoints)
        return {**env, **self.env}

    @property
    def ca_file(self) -> Path:
        """The CA a client of the gateway trusts (`cutout --ca`, CUTOUT_CA_FILE)."""
        return self.data_dir / "pki" / "ca.pem"

    def start(self) -> None:
        owner_only_tree(self.data_dir)  # databases, blobs, keys, mail and logs: 0600 in 0700 folders
        self.run_dir.mkdir(parents=True, exist_ok=True)
        rotate_logs(self.run_dir, time.time(), self.log_days)
        self.pki = CellPki(self.data_dir / "pki")
        for name in ("triton", "inference", "accounts", "retention", "gateway", "edge"):
            self.pki.issue(name)  # a fresh certificate for every start
        try:
            self.triton = LocalTriton(
                grpc_port=free_port(),
                work_dir=self.data_dir / "triton",
                model_repository=self.model_repository,
                pki=self.pki,
            )
            self.triton.work_dir.mkdir(parents=True, exist_ok=True)
            self.triton.start()
            self.triton.wait_ready()
            inference = ServiceProcess(
                "inference",
                {**self.cell_env, "CUTOUT_INFERENCE_TRITON_URL": self.triton.url},
                self.run_dir,
                pki=self.pki,
            )
            self.services.append(inference)
            inference.start()
            inference.wait_serving()
            # Retention first: accounts' erasures call it.
            retention = retention_process(self.run_dir, self.data_dir / "retention", self.cell_env, self.pki)
            self.services.append(retention)
            retention.start()
            retention.wait_serving()
            accounts = accounts_process(
                self.run_dir,
                self.database_url or f"sqlite:///{self.sqlite_path}",
                write_secret(self.run_dir / "admins", admins_line(self.admin_name, self.admin_token) + "\n"),
                self.cell_env,
                self.pki,
                retention=retention.address,
            )
            self.services.append(accounts)
            accounts.start()
            accounts.wait_serving()
            # A restart (a supervisor's, or a test's) listens for administration on the same port too.
            accounts.env["CUTOUT_ACCOUNTS_ADMIN_PORT"] = self.admin_address.rsplit(":", 1)[1]
            ADMINS[self.admin_token] = self.admin
            gateway = gateway_process(
                self.run_dir,
                self.cell_env,
                inference=inference.address,
                accounts=accounts.address,
                retention=retention.address,
                port=self.gateway_port,
                pki=self.pki,
            )
            self.services.append(gateway)
            gateway.start()
            gateway.wait_serving()
            edge = edge_process(self.run_dir, self.cell_env, gateway=gateway.address, port=self.edge_port, pki=self.pki)
            self.services.append(edge)
            edge.start()
            edge.wait_serving()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> dict[str, int | None]:
        """Stops in reverse order of start, Triton last; returns each one's exit status.

        The order matters: a call in flight in the gateway still needs accounts (to commit
        its credits) and retention (to store a kept result), so they must not be draining
        before the gateway has finished. That is why the services do not share the
        launcher's process group, which a terminal's Ctrl-C would signal all at once.
        """
        statuses = {service.name: service.stop() for service in reversed(self.services)}
        if self.triton:
            statuses["triton"] = self.triton.stop()
        return statuses


def rotate_logs(run_dir: Path, now: float, keep_days: float) -> list[Path]:
    """Moves the last start's service logs aside (`name.log.<time>`) and deletes those older
    than `keep_days` (log lines carry ids, never e-mails or images, but ids are personal
    data too); returns the deleted files."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    for log in run_dir.glob("*.log"):
        log.rename(log.with_name(f"{log.name}.{stamp}"))
    deleted = []
    for old in run_dir.glob("*.log.*"):
        if old.stat().st_mtime <= now - keep_days * 86400:
            old.unlink()
            deleted.append(old)
    return deleted


DEMO_CREDITS = 100


def demo_account(
    gateway: str,
    admin_token: str,
    data_dir: Path,
    credits: int = DEMO_CREDITS,
    ca_file: Path | None = None,
    region: str = "eu",
    *,
    admin: str,
) -> str:
    """A demo account topped up to `credits`; returns a new API key for it.

    Its e-mail and password are kept in a private file under data_dir, so later runs
    log in to the same account; the previous demo keys are revoked. A new one is signed
    up and verified with the code from the cell's outbox (data_dir/outbox).
    """
    from cutout.client import CutoutClient, open_channel
    from cutout.v1 import account_pb2, cutout_pb2_grpc
    from services.common.settings import ADMIN_TOKEN_METADATA

    credentials_file = data_dir / "demo" / "account.json"
    if credentials_file.exists():
        login = json.loads(credentials_file.read_text())
    else:
        login = {"email": f"demo-{secrets.token_hex(4)}@example.com", "password": secrets.token_urlsafe(18)}
        write_secret(credentials_file, json.dumps(login))
    with CutoutClient(gateway, api_key="", ca_file=ca_file) as client:
        try:
            created = client.create_api_key(name="demo", email=login["email"], password=login["password"])
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAUTHENTICATED:  # type: ignore[attr-defined]
                raise
            client.sign_up(login["email"], login["password"], display_name="Demo", region=region, age_confirmed=True)
            code = wait_for_code(data_dir / "outbox", login["email"])
            created = client.verify_sign_up(login["email"], login["password"], code, key_name="demo")
        client.api_key = created.api_key
        for key in client.list_api_keys().keys:
            if key.name == "demo" and key.id != created.key.id and not key.HasField("revoked_at"):
                client.revoke_api_key(key.id, password=login["password"])
    # Administration is not on the public port: the admin listener, inside the cell.
    with open_channel(admin, ca_file=ca_file) as channel:
        stub = cutout_pb2_grpc.AdminStub(channel)
        metadata = [(ADMIN_TOKEN_METADATA, admin_token)]
        looked_up = stub.LookupAccount(account_pb2.LookupAccountRequest(email=login["email"]), metadata=metadata)
        # Exactly up to `credits`: the balance may hold fractions (previews at 0.25).
        missing = Decimal(credits) - Decimal(looked_up.balance.available_decimal or looked_up.balance.available)
        if missing > 0:
            stub.GrantCredits(
                account_pb2.GrantCreditsRequest(account_id=looked_up.profile.account_id, amount_decimal=str(missing)),
                metadata=metadata,
            )
    return created.api_key


def wait_for_code(outbox: Path, email: str, timeout_s: float = 10.0) -> str:
    """The newest sign-up code in a cell's outbox for `email` (normalised), waiting a little for it."""
    from services.accounts.mail import latest_code

    deadline = time.monotonic() + timeout_s
    while True:
        code = latest_code(outbox, email)
        if code is not None:
            return code
        if time.monotonic() > deadline:
            raise TimeoutError(f"no sign-up code for that address in {outbox}")
        time.sleep(0.05)


def run_demo(gateway: str, data_dir: Path, api_key: str, ca_file: Path | None = None) -> Path:
    """The main job: remove the background of a real photo through the running mesh."""
    from cutout.client import CutoutClient

    photo = ASTRONAUT.fetch(data_dir / "samples" / "astronaut.png")
    output = data_dir / "demo" / "astronaut-cutout.png"
    output.parent.mkdir(parents=True, exist_ok=True)
    with CutoutClient(gateway, api_key=api_key, ca_file=ca_file) as client:
        response = client.remove_background(photo.read_bytes())
    output.write_bytes(response.result.image)
    print(
        f"demo: {photo.name} -> {output} ({response.result.width}x{response.result.height}, "
        f"{response.result.foreground_fraction:.0%} kept, {response.timings.total_ms:.0f} ms)"
    )
    return output


def cells_from(spec: str, base_port: int, data_dir: Path, edge_port: int = 0) -> list[Mesh]:
    """`eu,us` -> one Mesh per region, each with its own data folder (databases, blobs, PKI,
    outbox, logs) and gateway port, and every other cell's address as its region's endpoint."""
    regions = [region.strip() for region in spec.split(",") if region.strip()]
    if len(regions) <= 1:
        region = regions[0] if regions else "eu"
        return [Mesh(data_dir=data_dir, gateway_port=base_port, edge_port=edge_port, region=region)]
    ports = {region: base_port + CELL_PORT_STEP * i for i, region in enumerate(regions)}
    endpoints = {region: f"127.0.0.1:{port}" for region, port in ports.items()}
    return [
        Mesh(
            data_dir=data_dir / "cells" / region,
            gateway_port=ports[region],
            edge_port=edge_port + CELL_PORT_STEP * i if edge_port else 0,
            region=region,
            region_endpoints=endpoints,
        )
        for i, region in enumerate(regions)
    ]


def _say(*parts: object, **_: object) -> None:
    """print, flushed, for `make up`: a stdout that broke (`make up | tee log`, and Ctrl-C
    stopped tee first) must never stop the launcher from stopping its services, so what can
    no longer be written is dropped (and stdout pointed at /dev/null for the rest)."""
    try:
        print(*parts, flush=True)
    except (BrokenPipeError, OSError, ValueError):
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # for the rest of the process


def main(argv: list[str] | None = None) -> int:
    """`make up`; exits 0 once everything has stopped with status 0 (after Ctrl-C too)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m services.launcher", description="the embedded Cutout mesh")
    parser.add_argument(
        "--cells",
        default=os.environ.get("CUTOUT_CELLS", "eu"),
        help="regions to run, one cell each, side by side (e.g. eu,us); default eu",
    )
    args = parser.parse_args(argv)
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        # Only the first signal interrupts: a second Ctrl-C must not cut the orderly stop short.
        nonlocal stopping
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal was closed
        signal.signal(signum, request_stop)
    fetch_models()
    port = int(os.environ.get("CUTOUT_GATEWAY_PORT", "50051"))
    data_dir = Path(os.environ.get("CUTOUT_DATA_DIR", DEFAULT_DATA_DIR))
    edge_port = int(os.environ.get("CUTOUT_EDGE_PORT", "8443"))
    cells = cells_from(args.cells, port, data_dir, edge_port)
    for mesh in cells:
        mesh.log_days = float(os.environ.get("CUTOUT_LOG_DAYS", DEFAULT_LOG_DAYS))
    statuses: dict[str, int | None] = {}
    started: list[Mesh] = []
    try:
        for mesh in cells:
            # One cell prints as `make up` always has; several are told apart by region.
            tag = f"[{mesh.region}] " if len(cells) > 1 else ""
            _say(f"{tag}starting Triton, inference, accounts, retention, gateway and HTTP edge ...", flush=True)
            started.append(mesh)
            mesh.start()
            api_key = demo_account(
                mesh.gateway.address,
                mesh.admin_token,
                mesh.data_dir,
                ca_file=mesh.ca_file,
                region=mesh.region,
                admin=mesh.admin_address,
            )
            run_demo(mesh.gateway.address, mesh.data_dir, api_key, ca_file=mesh.ca_file)
            _say(f"{tag}gateway listening on {mesh.gateway.address}")
            _say(
                f"{tag}a demo account (topped up to {DEMO_CREDITS} credits before the demo); its new API key, "
                "shown once:"
            )
            exports = f"CUTOUT_GATEWAY={mesh.gateway.address} CUTOUT_API_KEY={api_key} CUTOUT_CA_FILE={mesh.ca_file}"
            _say(f"  export {exports}")
            _say("  cutout balance; cutout remove photo.jpg -o photo.png")
            _say(f"{tag}HTTP edge (remove.bg's API v1.0, Cutout's as JSON) on {mesh.edge.url}:")
            _say(
                f"  curl --cacert {mesh.ca_file} -H 'X-Api-Key: {api_key}' -F image_file=@photo.jpg "
                f"-o photo.png {mesh.edge.url}/v1.0/removebg"
            )
            _say(f"{tag}administration (inside the cell only), admin {mesh.admin_name}'s token:")
            _say(f"  export CUTOUT_ADMIN_ENDPOINT={mesh.admin_address} CUTOUT_ADMIN_TOKEN={mesh.admin_token}")
            _say(f"{tag}logs in {mesh.run_dir}, e-mails (sign-up codes) in {mesh.outbox}", flush=True)
        _say("Ctrl-C stops everything", flush=True)
        while True:
            for mesh in cells:
                for service in mesh.services:
                    service.check_alive()
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stopping = True  # from here on, signals change nothing
        _say("stopping ...", flush=True)
        for mesh in reversed(started):
            for name, code in mesh.stop().items():
                statuses[f"{mesh.region}/{name}" if len(cells) > 1 else name] = code
        _say("stopped: " + ", ".join(f"{name} exit {code}" for name, code in statuses.items()), flush=True)
    return 0 if all(code == 0 for code in statuses.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
