"""A user's rights through the real mesh: export, correction, restriction, objection,
erasure (with a crash in the middle), the owner's access log; administration on its own
listener with named admins, throttling and an append-only audit log.

The tests run on a cell of their own (accounts, retention and a gateway on the session's
inference), so that its databases, blob folder and logs hold only what these tests did,
and so that retention can be killed without disturbing the session."""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import sqlite3
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from PIL import Image

from cutout.v1 import account_pb2, cutout_pb2, cutout_pb2_grpc, options_pb2, rights_pb2
from services.accounts.admin import admins_line
from services.accounts.mail import CODE_HEADER, latest_code, messages_to
from services.common.errors import error_details
from services.common.telemetry import RPC_SERVER_DURATION
from services.launcher import (
    AdminEndpoint,
    Mesh,
    ServiceProcess,
    accounts_process,
    admin_address,
    free_port,
    gateway_process,
    retention_process,
    write_secret,
)
from services.retention import crypto
from tests.conftest import Customer, encode, new_account, sign_up_code
from tests.otlp_receiver import OtlpReceiver, value_of

ERASE_INTERVAL_S = 1.5  # between an erasure's blob deletions: room to kill retention midway


@dataclass
class Cell:
    run_dir: Path
    retention_dir: Path
    accounts: ServiceProcess
    retention: ServiceProcess
    gateway: ServiceProcess
    admin: AdminEndpoint
    alice: AdminEndpoint  # a second named admin
    receiver: OtlpReceiver

    @property
    def accounts_db(self) -> Path:
        return self.run_dir / "accounts.db"

    @property
    def retention_db(self) -> Path:
        return self.retention_dir / "retention.db"

    @property
    def blob_dir(self) -> Path:
        return self.retention_dir / "blobs"

    def master_key(self) -> crypto.MasterKeys:
        return crypto.MasterKeys.parse((self.retention_dir / "master-keys").read_text())


@pytest.fixture(scope="module")
def cell(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cell]:
    run_dir = tmp_path_factory.mktemp("rights")
    receiver = OtlpReceiver().start()
    alice_token = secrets.token_urlsafe(32)
    admins = write_secret(
        run_dir / "admins",
        f"# named admins\n{admins_line(mesh.admin_name, mesh.admin_token)}\n{admins_line('alice', alice_token)}\n",
    )
    env = {
        **mesh.cell_env,
        "CUTOUT_ACCOUNTS_MAIL_OUTBOX_DIR": str(run_dir / "outbox"),  # sign-up codes (tests.conftest finds them)
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
        "CUTOUT_RETENTION_ERASE_DELETE_INTERVAL_S": str(ERASE_INTERVAL_S),
        "CUTOUT_ACCOUNTS_ERASURE_WAIT_S": "30",
        "CUTOUT_ACCOUNTS_ERASURE_RESUME_INTERVAL_S": "1",
    }
    retention_dir = run_dir / "retention"
    retention = retention_process(run_dir, retention_dir, env, mesh.pki)
    accounts = accounts_process(run_dir, f"sqlite:///{run_dir / 'accounts.db'}", admins, env, mesh.pki)
    accounts.env["CUTOUT_ACCOUNTS_ADMIN_PORT"] = str(free_port())  # kept when a test restarts accounts
    gateway = gateway_process(run_dir, env, inference=mesh.inference.address, accounts="", retention="", pki=mesh.pki)
    started: list[ServiceProcess] = []
    try:
        for service in (retention, accounts, gateway):
            if service is accounts:
                accounts.env["CUTOUT_ACCOUNTS_RETENTION_TARGET"] = retention.address
            if service is gateway:
                gateway.env["CUTOUT_GATEWAY_ACCOUNTS_TARGET"] = accounts.address
                gateway.env["CUTOUT_GATEWAY_RETENTION_TARGET"] = retention.address
            service.start()
            started.append(service)
            service.wait_serving()
        yield Cell(
            run_dir,
            retention_dir,
            accounts,
            retention,
            gateway,
            AdminEndpoint(admin_address(run_dir), mesh.admin_token, mesh.pki),
            AdminEndpoint(admin_address(run_dir), alice_token, mesh.pki),
            receiver,
        )
    finally:
        for service in reversed(started):
            service.stop()
        receiver.stop()


@pytest.fixture(scope="module")
def channel(cell: Cell) -> Iterator[grpc.Channel]:
    with cell.gateway.channel() as channel:
        yield channel


@pytest.fixture(scope="module")
def photos(astronaut: Image.Image) -> list[bytes]:
    return [encode(astronaut.resize((size, size)), "PNG") for size in (96, 112, 128)]


def sign_up(channel: grpc.Channel, cell: Cell, credits: int = 10, name: str = "") -> Customer:
    customer = new_account(channel, cell.admin, credits=credits)
    if name:
        cutout_pb2_grpc.CutoutStub(channel).UpdateProfile(
            account_pb2.UpdateProfileRequest(display_name=name, update_fields=["display_name"]),
            metadata=customer.metadata,
            timeout=30,
        )
    return customer


def keep(channel: grpc.Channel, customer: Customer, image: bytes) -> cutout_pb2.RemoveBackgroundResponse:
    return cutout_pb2_grpc.CutoutStub(channel).RemoveBackground(
        cutout_pb2.RemoveBackgroundRequest(image=image, options=options_pb2.RemoveBackgroundOptions(keep_result=True)),
        metadata=customer.metadata,
        timeout=120,
    )


def fails(call, *args, **kwargs) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, timeout=60, **kwargs)
    return caught.value


def reason(error: grpc.RpcError) -> str:
    return next((d.reason for d in error_details(error) if hasattr(d, "reason")), "")


def fetch_by_token(channel: grpc.Channel, token: str, timeout: float = 60) -> bytes:
    chunks = cutout_pb2_grpc.CutoutStub(channel).FetchResult(
        cutout_pb2.FetchResultRequest(token=token), timeout=timeout
    )
    return b"".join(chunk.data for chunk in chunks)


def export(channel: grpc.Channel, customer: Customer, include_results: bool = True) -> zipfile.ZipFile:
    chunks = cutout_pb2_grpc.CutoutStub(channel).ExportAccount(
        rights_pb2.ExportAccountRequest(include_results=include_results), metadata=customer.metadata, timeout=120
    )
    return zipfile.ZipFile(io.BytesIO(b"".join(chunk.data for chunk in chunks)))


# -- export ------------------------------------------------------------------------------


def test_the_export_holds_the_profile_the_ledger_and_the_three_kept_results(cell, channel, photos):
    customer = sign_up(channel, cell, credits=10, name="Export Person")
    kept = [keep(channel, customer, photo) for photo in photos]

    archive = export(channel, customer)
    assert archive.testzip() is None
    names = set(archive.namelist())
    assert {"manifest.json", "profile.json", "api_keys.json", "ledger.json", "results.json", "access_log.json"} <= names
    profile = json.loads(archive.read("profile.json"))
    assert profile["profile"]["accountId"] == customer.account_id
    assert profile["profile"]["email"] == customer.email
    assert profile["profile"]["displayName"] == "Export Person"
    assert profile["consents"]["ageConfirmed"] is True and profile["consents"]["usageStatsOptOut"] is False

    ledger = json.loads(archive.read("ledger.json"))
    kinds = [entry["kind"] for entry in ledger["entries"]]
    assert kinds.count("reserve") == 3 and kinds.count("commit") == 3 and "grant" in kinds
    assert ledger["balance"]["available"] == "7"  # 10 granted in all, 3 spent (int64 is a JSON string)

    results = json.loads(archive.read("results.json"))["results"]
    assert {r["resultId"] for r in results} == {k.kept.result_id for k in kept}
    for response in kept:
        name = f"results/{response.kept.result_id}.png"
        assert archive.read(name) == response.result.image == fetch_by_token(channel, response.kept.token)
    assert all("token" not in r or not r["token"] for r in results), "tokens are never exported (only hashes kept)"

    keys = json.loads(archive.read("api_keys.json"))["keys"]
    assert len(keys) == 1 and customer.api_key not in archive.read("api_keys.json").decode()
    actions = {(e["service"], e["action"]) for e in json.loads(archive.read("access_log.json"))["entries"]}
    assert {("accounts", "export"), ("retention", "store")} <= actions


def test_export_without_results_holds_their_metadata_only(cell, channel, photos):
    customer = sign_up(channel, cell)
    keep(channel, customer, photos[0])
    archive = export(channel, customer, include_results=False)
    assert len(json.loads(archive.read("results.json"))["results"]) == 1
    assert not [name for name in archive.namelist() if name.startswith("results/")]


# -- correction ----------------------------------------------------------------------------


def test_after_an_email_correction_the_old_address_cannot_log_in_and_the_new_one_can(cell, channel):
    stub = cutout_pb2_grpc.CutoutStub(channel)
    customer = sign_up(channel, cell)
    new = "Corrected.Person+work@Example.ORG".replace("Person", secrets.token_hex(3))
    canonical = new.lower().replace("+work", "")  # the sign-up rules: lower case, +tag dropped

    wrong = fails(
        stub.ChangeEmail,
        rights_pb2.ChangeEmailRequest(new_email=new, password="not it at all"),
        metadata=customer.metadata,
    )
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
    bad = fails(
        stub.ChangeEmail,
        rights_pb2.ChangeEmailRequest(new_email="two@@example.org", password=customer.password),
        metadata=customer.metadata,
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT

    asked = change_email(stub, customer, new)
    assert asked.email_verification_required and asked.email == customer.email, "nothing changes before the code"
    profile = change_email(stub, customer, new, code=latest_code(cell.run_dir / "outbox", canonical) or "")
    assert profile.email == canonical and not profile.email_verification_required
    old_login = fails(
        stub.CreateApiKey, account_pb2.CreateApiKeyRequest(email=customer.email, password=customer.password)
    )
    assert old_login.code() == grpc.StatusCode.UNAUTHENTICATED and reason(old_login) == "WRONG_CREDENTIALS"
    created = stub.CreateApiKey(account_pb2.CreateApiKeyRequest(email=new, password=customer.password), timeout=30)
    assert created.api_key.startswith("ck_")
    # The old address is gone from the database file, not only from the row, and from the outbox.
    assert customer.email.encode() not in cell.accounts_db.read_bytes()
    assert not messages_to(cell.run_dir / "outbox", customer.email)


def change_email(stub, customer: Customer, new: str, code: str = "") -> account_pb2.Profile:  # type: ignore[no-untyped-def]
    return stub.ChangeEmail(
        rights_pb2.ChangeEmailRequest(new_email=new, password=customer.password, code=code),
        metadata=customer.metadata,
        timeout=30,
    )


def test_change_email_answers_alike_for_a_taken_and_a_free_address_and_waits_for_the_code(cell, channel):
    stub = cutout_pb2_grpc.CutoutStub(channel)
    customer, other = sign_up(channel, cell), sign_up(channel, cell)
    free = f"free-{secrets.token_hex(4)}@example.org"
    answers = [change_email(stub, customer, address) for address in (other.email, free)]
    # The same answer: nothing changed, a code (or, for the taken address, a notice) was mailed.
    assert answers[0] == answers[1] and answers[0].email_verification_required
    assert answers[0].email == customer.email
    outbox = cell.run_dir / "outbox"
    notice = messages_to(outbox, other.email)[-1]  # the taken address got a notice, no code
    assert not notice[CODE_HEADER] and "already has a Cutout account" in notice.get_content()
    # No code for the taken address exists to finish with; a guessed one is refused.
    guessed = fails(
        stub.ChangeEmail,
        rights_pb2.ChangeEmailRequest(new_email=other.email, password=customer.password, code="123456"),
        metadata=customer.metadata,
    )
    assert guessed.code() == grpc.StatusCode.UNAUTHENTICATED and reason(guessed) == "VERIFICATION_FAILED"
    # The free address's code belongs to that address: not another one, not a wrong code.
    code = latest_code(outbox, free)
    assert code
    for address, attempt in ((free, code + "0"), (f"x{free}", code)):
        refused = fails(
            stub.ChangeEmail,
            rights_pb2.ChangeEmailRequest(new_email=address, password=customer.password, code=attempt),
            metadata=customer.metadata,
        )
        assert reason(refused) == "VERIFICATION_FAILED"
    assert stub.GetProfile(account_pb2.GetProfileRequest(), metadata=customer.metadata, timeout=30).email == (
        customer.email
    )
    assert change_email(stub, customer, free, code=code).email == free


def test_an_unproven_change_never_blocks_the_owner_of_the_address(cell, channel):
    stub = cutout_pb2_grpc.CutoutStub(channel)
    squatter = sign_up(channel, cell)
    victim = f"victim-{secrets.token_hex(4)}@example.org"
    password = "a long victim passphrase 42"
    # The owner's sign-up waits for its code; a stranger asks to move their account there and
    # signs the address up again with a password of their own.
    stub.SignUp(account_pb2.SignUpRequest(email=victim, password=password, region="eu", age_confirmed=True))
    owners_code = latest_code(cell.run_dir / "outbox", victim)
    change_email(stub, squatter, victim)
    stub.SignUp(
        account_pb2.SignUpRequest(
            email=victim, password="the stranger's own passphrase 7", region="eu", age_confirmed=True
        )
    )
    assert latest_code(cell.run_dir / "outbox", victim) != owners_code
    # The owner's code still opens the owner's account.
    verified = stub.VerifySignUp(account_pb2.VerifySignUpRequest(email=victim, password=password, code=owners_code))
    assert verified.profile.email == victim and verified.api_key
    # The stranger's change can no longer finish, whatever code of that mailbox they try.
    codes = [str(m[CODE_HEADER]) for m in messages_to(cell.run_dir / "outbox", victim) if m[CODE_HEADER]]
    assert len(codes) == 3  # the owner's sign-up, the stranger's change, the stranger's sign-up
    for code in codes:
        refused = fails(
            stub.ChangeEmail,
            rights_pb2.ChangeEmailRequest(new_email=victim, password=squatter.password, code=code),
            metadata=squatter.metadata,
        )
        assert reason(refused) == "VERIFICATION_FAILED"


# -- restriction and objection -------------------------------------------------------------


def test_a_restricted_account_is_kept_but_not_processed(cell, channel, photos):
    stub = cutout_pb2_grpc.CutoutStub(channel)
    customer = sign_up(channel, cell, credits=5)
    kept = keep(channel, customer, photos[0])
    profile = stub.UpdateProfile(
        account_pb2.UpdateProfileRequest(processing_restricted=True, update_fields=["processing_restricted"]),
        metadata=customer.metadata,
        timeout=30,
    )
    assert profile.processing_restricted
    refused = fails(
        stub.RemoveBackground, cutout_pb2.RemoveBackgroundRequest(image=photos[1]), metadata=customer.metadata
    )
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION and reason(refused) == "ACCOUNT_RESTRICTED"
    assert "restricted" in refused.details()
    # Kept: the balance, the results and the profile are all still there and readable.
    assert stub.GetBalance(account_pb2.GetBalanceRequest(), metadata=customer.metadata, timeout=30).available == 4
    listed = stub.ListResults(cutout_pb2.ListResultsRequest(), metadata=customer.metadata, timeout=30).results
    assert [r.result_id for r in listed] == [kept.kept.result_id]
    stream = list(
        stub.RemoveBackgroundStream(
            iter([cutout_pb2.StreamRequest(item=cutout_pb2.StreamItem(id="a", image=photos[1]))]),
            metadata=customer.metadata,
            timeout=60,
        )
    )
    assert stream[0].item.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]

    stub.UpdateProfile(
        account_pb2.UpdateProfileRequest(processing_restricted=False, update_fields=["processing_restricted"]),
        metadata=customer.metadata,
        timeout=30,
    )
    assert stub.RemoveBackground(
        cutout_pb2.RemoveBackgroundRequest(image=photos[1]), metadata=customer.metadata, timeout=120
    ).result.image


def _latest(receiver: OtlpReceiver, service: str, metric: str, **attributes: object) -> float:
    """The latest exported cumulative value (a histogram's count, a sum's value) of `metric`
    from `service` for data points with `attributes` (0 if none yet)."""
    with receiver._lock:
        requests = list(receiver.metric_requests)
    latest = 0.0
    for request in requests:
        for resource_metrics in request.resource_metrics:
            resource = {a.key: value_of(a.value) for a in resource_metrics.resource.attributes}
            if resource.get("service.name") != f"cutout-{service}":
                continue
            values: list[float] = []
            for scope_metrics in resource_metrics.scope_metrics:
                for found in scope_metrics.metrics:
                    if found.name != metric:
                        continue
                    points = found.histogram.data_points if found.HasField("histogram") else found.sum.data_points
                    for point in points:
                        labels = {a.key: value_of(a.value) for a in point.attributes}
                        if all(labels.get(k) == v for k, v in attributes.items()):
                            values.append(
                                point.count if found.HasField("histogram") else (point.as_int or point.as_double)
                            )
            if values:
                latest = sum(values)
    return latest


def _settled(receiver: OtlpReceiver, services: tuple[str, ...] = ("gateway", "accounts", "retention")) -> None:
    """Waits until every service has exported twice more since now (so what was recorded before is in)."""
    with receiver._lock:
        seen = len(receiver.metric_requests)

    def exported_twice() -> bool:
        with receiver._lock:
            newer = receiver.metric_requests[seen:]
        names = [
            value_of(a.value)
            for request in newer
            for resource_metrics in request.resource_metrics
            for a in resource_metrics.resource.attributes
            if a.key == "service.name"
        ]
        return all(names.count(f"cutout-{service}") >= 2 for service in services)

    receiver.wait_for(exported_twice, timeout_s=60)


def test_an_account_that_objects_is_in_no_metric(cell, channel, photos):
    stub = cutout_pb2_grpc.CutoutStub(channel)
    objector = sign_up(channel, cell, credits=5)
    profile = stub.UpdateProfile(
        account_pb2.UpdateProfileRequest(usage_stats_opt_out=True, update_fields=["usage_stats_opt_out"]),
        metadata=objector.metadata,
        timeout=30,
    )
    assert profile.usage_stats_opt_out
    counted = sign_up(channel, cell, credits=5)
    watched = [
        ("gateway", RPC_SERVER_DURATION, {"rpc.method": "cutout.v1.Cutout/RemoveBackground"}),
        ("gateway", "cutout.credits", {"operation": "commit"}),
        ("accounts", RPC_SERVER_DURATION, {"rpc.method": "cutout.v1.Accounts/AuthorizeAndReserve"}),
        ("accounts", RPC_SERVER_DURATION, {"rpc.method": "cutout.v1.Accounts/Commit"}),
        ("retention", RPC_SERVER_DURATION, {"rpc.method": "cutout.v1.Retention/Store"}),
        ("retention", "cutout.retention.stored", {}),
    ]

    def snapshot() -> list[float]:
        _settled(cell.receiver)
        return [_latest(cell.receiver, service, metric, **attrs) for service, metric, attrs in watched]

    before = snapshot()
    for photo in photos[:2]:
        keep(channel, objector, photo)
    stub.GetBalance(account_pb2.GetBalanceRequest(), metadata=objector.metadata, timeout=30)
    after_objector = snapshot()
    assert after_objector == before, "the objector's removals were counted"
    keep(channel, counted, photos[0])
    after_counted = snapshot()
    assert [b - a for a, b in zip(after_objector, after_counted, strict=True)] == [1, 1, 1, 1, 1, 1], (
        "an ordinary account's removal is counted in each metric watched"
    )


# -- the owner's access log ---------------------------------------------------------------


def test_the_owner_sees_every_read_delete_export_and_admin_look_up(cell, channel, photos):
    stub = cutout_pb2_grpc.CutoutStub(channel)
    customer = sign_up(channel, cell, credits=5)
    first, second = keep(channel, customer, photos[0]), keep(channel, customer, photos[1])
    fetch_by_token(channel, first.kept.token)
    list(stub.FetchResult(cutout_pb2.FetchResultRequest(result_id=second.kept.result_id), metadata=customer.metadata))
    stub.DeleteResult(cutout_pb2.DeleteResultRequest(result_id=second.kept.result_id), metadata=customer.metadata)
    export(channel, customer, include_results=False)
    with cell.alice.channel() as admin_channel:
        cutout_pb2_grpc.AdminStub(admin_channel).LookupAccount(
            account_pb2.LookupAccountRequest(email=customer.email), metadata=cell.alice.metadata, timeout=30
        )

    entries = stub.ListAccessLog(rights_pb2.OwnerAccessLogRequest(), metadata=customer.metadata, timeout=30).entries
    seen = [(e.service, e.actor, e.action, e.result_id) for e in entries]
    assert ("retention", "token", "read", first.kept.result_id) in seen
    assert ("retention", "owner", "read", second.kept.result_id) in seen
    assert ("retention", "owner", "delete", second.kept.result_id) in seen
    assert ("accounts", "owner", "export", "") in seen
    assert ("accounts", "admin:alice", "lookup", "") in seen
    stamps = [e.at.ToNanoseconds() for e in entries]
    assert stamps == sorted(stamps, reverse=True) and all(stamps), "newest first, every entry timed"
    # Another account sees none of it.
    stranger = sign_up(channel, cell)
    theirs = stub.ListAccessLog(rights_pb2.OwnerAccessLogRequest(), metadata=stranger.metadata, timeout=30).entries
    assert not {e.result_id for e in theirs} & {first.kept.result_id, second.kept.result_id}


# -- erasure -------------------------------------------------------------------------------


def _wrapped_key(cell: Cell, account_id: str) -> bytes | None:
    with sqlite3.connect(f"file:{cell.retention_db}?mode=ro", uri=True) as db:
        row = db.execute(
            "SELECT wrapped_key FROM retention_account_keys WHERE account_id = ?", (account_id,)
        ).fetchone()
    return None if row is None else row[0]


def _assert_undecryptable(cell: Cell, account_id: str, blobs: dict[str, bytes]) -> None:
    """Tries to open every blob with the master key and every wrapped key and object key
    the retention database still holds: none opens."""
    master = cell.master_key()
    with sqlite3.connect(f"file:{cell.retention_db}?mode=ro", uri=True) as db:
        account_keys = db.execute(
            "SELECT account_id, master_key_id, wrapped_key FROM retention_account_keys"
        ).fetchall()
        objects = db.execute("SELECT id, account_id, wrapped_object_key FROM retention_results").fetchall()
    assert account_id not in {row[0] for row in account_keys}
    opened_keys = []
    for owner, key_id, wrapped in account_keys:
        opened_keys.append(master.unwrap(key_id, wrapped, owner))
        with pytest.raises(crypto.TamperedError):  # bound to its own account: it never opens as ours
            master.unwrap(key_id, wrapped, account_id)
    for result_id, sealed in blobs.items():
        context = crypto.object_context(account_id, result_id)
        for key in opened_keys:
            for _, _, wrapped_object in objects:
                with pytest.raises(crypto.TamperedError):
                    crypto.unseal(crypto.unseal(key, wrapped_object, context), sealed, context)
            with pytest.raises(crypto.TamperedError):
                crypto.unseal(key, sealed, context)


def _files(*roots: Path) -> list[Path]:
    found = []
    for root in roots:
        found += [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
    return found


def test_deleting_an_account_erases_it_everywhere(cell, channel, photos):
    stub = cutout_pb2_grpc.CutoutStub(channel)
    name = f"Erasable Person {secrets.token_hex(4)}"
    customer = sign_up(channel, cell, credits=5, name=name)
    with cell.admin.channel() as admin_channel:
        cutout_pb2_grpc.AdminStub(admin_channel).GrantCredits(
            account_pb2.GrantCreditsRequest(account_id=customer.account_id, amount=4, source="purchase"),
            metadata=cell.admin.metadata,
            timeout=30,
        )
    kept = [keep(channel, customer, photo) for photo in photos]
    ids = [k.kept.result_id for k in kept]
    copies = {result_id: (cell.blob_dir / result_id).read_bytes() for result_id in ids}  # a "backup" of the blobs
    wrapped = _wrapped_key(cell, customer.account_id)
    assert wrapped is not None and wrapped in cell.retention_db.read_bytes() + _wal(cell.retention_db)

    wrong = fails(
        stub.DeleteAccount, rights_pb2.DeleteAccountRequest(password="not the password"), metadata=customer.metadata
    )
    assert wrong.code() == grpc.StatusCode.UNAUTHENTICATED
    assert stub.GetBalance(account_pb2.GetBalanceRequest(), metadata=customer.metadata, timeout=30).available

    deleted = stub.DeleteAccount(
        rights_pb2.DeleteAccountRequest(password=customer.password), metadata=customer.metadata, timeout=120
    )
    assert deleted.state == "done", deleted
    # The key fails on the very next call.
    gone = fails(stub.GetBalance, account_pb2.GetBalanceRequest(), metadata=customer.metadata)
    assert gone.code() == grpc.StatusCode.UNAUTHENTICATED
    # The tokens fetch NOT_FOUND.
    for response in kept:
        assert fails(fetch_by_token, channel, response.kept.token).code() == grpc.StatusCode.NOT_FOUND
    # The copies cannot be decrypted, even with the master key; the wrapped key is gone from the files.
    _assert_undecryptable(cell, customer.account_id, copies)
    assert wrapped not in cell.retention_db.read_bytes() + _wal(cell.retention_db)
    assert not [p for p in _files(cell.blob_dir) if p.name in ids]
    # Neither the e-mail nor the display name is anywhere: databases, blobs, logs.
    for path in _files(cell.run_dir):
        data = path.read_bytes()
        for secret in (customer.email, name):
            assert secret.encode() not in data, f"{path.name} still holds {secret!r}"
    # What must outlive the account: the purchase, under a pseudonym that leads nowhere.
    with sqlite3.connect(f"file:{cell.accounts_db}?mode=ro", uri=True) as db:
        retained = db.execute("SELECT pseudonym, kind, amount FROM retained_financial_records").fetchall()
        assert not db.execute("SELECT 1 FROM accounts WHERE id = ?", (customer.account_id,)).fetchall()
        for table in ("api_keys", "credit_grants", "reservations", "ledger_entries", "account_access_log"):
            rows = db.execute(f"SELECT count(*) FROM {table} WHERE account_id = ?", (customer.account_id,)).fetchone()
            assert rows == (0,), table
    mine = [row for row in retained if row[1:] == ("purchase", 4000)]  # millicredits
    assert mine and all(row[0] != customer.account_id for row in mine)
    with cell.admin.channel() as admin_channel:
        lookup = fails(
            cutout_pb2_grpc.AdminStub(admin_channel).LookupAccount,
            account_pb2.LookupAccountRequest(account_id=customer.account_id),
            metadata=cell.admin.metadata,
        )
    assert lookup.code() == grpc.StatusCode.NOT_FOUND


def _wal(db: Path) -> bytes:
    wal = db.with_name(db.name + "-wal")
    return wal.read_bytes() if wal.exists() else b""


def _retention_state(cell: Cell, account_id: str) -> tuple[bool, bool, int]:
    """(erasure recorded, key present, result rows) in retention's database."""
    with sqlite3.connect(f"file:{cell.retention_db}?mode=ro", uri=True, timeout=5) as db:
        recorded = db.execute("SELECT 1 FROM retention_erasures WHERE account_id = ?", (account_id,)).fetchone()
        key = db.execute("SELECT 1 FROM retention_account_keys WHERE account_id = ?", (account_id,)).fetchone()
        rows = db.execute("SELECT count(*) FROM retention_results WHERE account_id = ?", (account_id,)).fetchone()[0]
    return recorded is not None, key is not None, rows


def _kill_in_the_middle_of_an_erasure(cell, channel, customer, process) -> object:
    """Deletes the customer's account on a thread and SIGKILLs `process` once retention has
    destroyed the key but not yet the blobs (the middle of the erasure); DeleteAccount's
    answer (a reply or the RpcError)."""
    answer: list[object] = []

    def delete() -> None:
        try:
            answer.append(
                cutout_pb2_grpc.CutoutStub(channel).DeleteAccount(
                    rights_pb2.DeleteAccountRequest(password=customer.password), metadata=customer.metadata, timeout=120
                )
            )
        except grpc.RpcError as error:
            answer.append(error)

    deleting = threading.Thread(target=delete)
    deleting.start()
    deadline = time.monotonic() + 60
    while True:
        recorded, key, _ = _retention_state(cell, customer.account_id)
        if recorded and not key:
            break
        assert time.monotonic() < deadline, "the erasure never started in retention"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deleting.join(timeout=120)
    assert answer, "DeleteAccount never answered"
    return answer[0]


def test_an_erasure_interrupted_by_sigkill_of_retention_finishes_by_itself(cell, channel, photos):
    stub = cutout_pb2_grpc.CutoutStub(channel)
    customer = sign_up(channel, cell, credits=5, name=f"Crash Person {secrets.token_hex(4)}")
    ids = [keep(channel, customer, photo).kept.result_id for photo in photos]

    answer = _kill_in_the_middle_of_an_erasure(cell, channel, customer, cell.retention.process)
    assert not isinstance(answer, grpc.RpcError), answer
    assert answer.state == "pending"  # type: ignore[attr-defined]

    # Killed midway: the rows and (some) blobs are still there, and the key is not.
    left = {p.name: p.read_bytes() for p in _files(cell.blob_dir) if p.name in ids}
    assert left and _retention_state(cell, customer.account_id)[2] == len(ids)
    assert fails(stub.GetBalance, account_pb2.GetBalanceRequest(), metadata=customer.metadata).code() == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    _assert_undecryptable(cell, customer.account_id, left)

    cell.retention.start()  # on the same port, as a supervisor would restart it
    cell.retention.wait_serving()
    with cell.admin.channel() as admin_channel:
        admin = cutout_pb2_grpc.AdminStub(admin_channel)
        deadline = time.monotonic() + 90
        while True:
            try:
                admin.LookupAccount(
                    account_pb2.LookupAccountRequest(account_id=customer.account_id),
                    metadata=cell.admin.metadata,
                    timeout=30,
                )
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.NOT_FOUND, error
                break
            assert time.monotonic() < deadline, "accounts never finished the erasure"
            time.sleep(0.2)
    assert _retention_state(cell, customer.account_id) == (True, False, 0)
    assert not [p for p in _files(cell.blob_dir) if p.name in ids]
    # The gateway finds the restarted retention again (for the tests after this one).
    probe = sign_up(channel, cell)
    deadline = time.monotonic() + 30
    while True:
        try:
            stub.ListResults(cutout_pb2.ListResultsRequest(), metadata=probe.metadata, timeout=10)
            break
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline, error
            time.sleep(0.1)


def _until_the_gateway_reaches_accounts(stub: cutout_pb2_grpc.CutoutStub) -> None:
    """Waits out the gateway's reconnection to a restarted accounts (backoff up to 1 s)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            stub.GetBalance(account_pb2.GetBalanceRequest(), metadata=[("x-api-key", "ck_probe")], timeout=10)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE:
                return  # accounts answered (the probe key is unknown)
        assert time.monotonic() < deadline, "the gateway never reached the restarted accounts"
        time.sleep(0.1)


def test_an_erasure_interrupted_by_sigkill_of_accounts_finishes_by_itself(cell, channel, photos):
    stub = cutout_pb2_grpc.CutoutStub(channel)
    name = f"Accounts Crash {secrets.token_hex(4)}"
    customer = sign_up(channel, cell, credits=5, name=name)
    ids = [keep(channel, customer, photo).kept.result_id for photo in photos[:2]]
    answer = _kill_in_the_middle_of_an_erasure(cell, channel, customer, cell.accounts.process)
    assert isinstance(answer, grpc.RpcError), "the caller learns that accounts went away"
    with sqlite3.connect(f"file:{cell.accounts_db}?mode=ro", uri=True) as db:
        pending = db.execute("SELECT state FROM erasures WHERE account_id = ?", (customer.account_id,)).fetchall()
        revoked = db.execute("SELECT revoked_at FROM api_keys WHERE account_id = ?", (customer.account_id,)).fetchall()
    assert pending == [("pending",)] and revoked and all(at is not None for (at,) in revoked)

    cell.accounts.start()  # same port; its resume job finishes what the crash left
    cell.accounts.wait_serving()
    _until_the_gateway_reaches_accounts(stub)
    assert fails(stub.GetBalance, account_pb2.GetBalanceRequest(), metadata=customer.metadata).code() == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    deadline = time.monotonic() + 90
    while True:
        with sqlite3.connect(f"file:{cell.accounts_db}?mode=ro", uri=True) as db:
            state = db.execute("SELECT state FROM erasures WHERE account_id = ?", (customer.account_id,)).fetchall()
        if state == [("done",)]:
            break
        assert time.monotonic() < deadline, f"accounts never finished the erasure: {state}"
        time.sleep(0.2)
    assert _retention_state(cell, customer.account_id) == (True, False, 0)
    assert not [p for p in _files(cell.blob_dir) if p.name in ids]
    for path in (cell.accounts_db, cell.retention_db):
        assert customer.email.encode() not in path.read_bytes() + _wal(path)
        assert name.encode() not in path.read_bytes() + _wal(path)


# -- administration ------------------------------------------------------------------------


def test_administration_is_not_served_on_the_public_port(cell, channel, raw_channel, mesh):
    for public in (channel, raw_channel):  # this cell's gateway and the session's
        error = fails(
            cutout_pb2_grpc.AdminStub(public).LookupAccount,
            account_pb2.LookupAccountRequest(account_id="x"),
            metadata=cell.admin.metadata,
        )
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert cell.admin.address.startswith("127.0.0.1:") and cell.admin.address != cell.gateway.address


def test_admin_calls_are_made_by_named_admins_and_audited_append_only(cell, channel):
    customer = sign_up(channel, cell)
    with cell.alice.channel() as admin_channel:
        admin = cutout_pb2_grpc.AdminStub(admin_channel)
        admin.GrantCredits(
            account_pb2.GrantCreditsRequest(account_id=customer.account_id, amount=3),
            metadata=cell.alice.metadata,
            timeout=30,
        )
        with_key = fails(
            admin.LookupAccount, account_pb2.LookupAccountRequest(email=customer.email), metadata=customer.metadata
        )
        assert with_key.code() == grpc.StatusCode.UNAUTHENTICATED and reason(with_key) == "ADMIN_TOKEN_INVALID"
    with sqlite3.connect(cell.accounts_db) as db:
        audit = db.execute("SELECT admin, method, account_id, outcome FROM admin_audit").fetchall()
        assert ("alice", "GrantCredits", customer.account_id, "OK") in audit
        assert ("unknown", "LookupAccount", "", "UNAUTHENTICATED") in audit
        assert customer.email not in repr(audit)
        for statement in ("UPDATE admin_audit SET admin = 'someone else'", "DELETE FROM admin_audit"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute(statement)
        assert (
            db.execute("SELECT admin, method, account_id, outcome FROM admin_audit").fetchall()[: len(audit)] == audit
        )


def test_an_admin_erases_a_childs_account_with_a_reason(cell, channel, photos):
    customer = sign_up(channel, cell, credits=3)
    token = keep(channel, customer, photos[0]).kept.token
    with cell.alice.channel() as admin_channel:
        admin = cutout_pb2_grpc.AdminStub(admin_channel)
        no_reason = fails(
            admin.DeleteAccount,
            rights_pb2.AdminDeleteAccountRequest(account_id=customer.account_id),
            metadata=cell.alice.metadata,
        )
        assert no_reason.code() == grpc.StatusCode.INVALID_ARGUMENT
        done = admin.DeleteAccount(
            rights_pb2.AdminDeleteAccountRequest(account_id=customer.account_id, reason="guardian: account of a child"),
            metadata=cell.alice.metadata,
            timeout=120,
        )
    assert done.state == "done"
    stub = cutout_pb2_grpc.CutoutStub(channel)
    assert fails(stub.GetBalance, account_pb2.GetBalanceRequest(), metadata=customer.metadata).code() == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert fails(fetch_by_token, channel, token).code() == grpc.StatusCode.NOT_FOUND
    with sqlite3.connect(f"file:{cell.accounts_db}?mode=ro", uri=True) as db:
        audit = db.execute("SELECT admin, outcome, detail FROM admin_audit WHERE method = 'DeleteAccount'").fetchall()
        erasure = db.execute("SELECT requested_by, state FROM erasures WHERE account_id = ?", (customer.account_id,))
        assert erasure.fetchall() == [("admin:alice", "done")]
    assert ("alice", "OK", "guardian: account of a child") in audit


def test_wrong_admin_tokens_are_throttled(mesh: Mesh, tmp_path):
    """Before, the admin token took ~390 guesses a second on the public port."""
    admins = write_secret(tmp_path / "admins", admins_line("operator", mesh.admin_token) + "\n")
    accounts = accounts_process(tmp_path, f"sqlite:///{tmp_path / 'accounts.db'}", admins, {}, mesh.pki)
    accounts.start()
    try:
        accounts.wait_serving()
        endpoint = AdminEndpoint(admin_address(tmp_path), mesh.admin_token, mesh.pki)
        with endpoint.channel() as admin_channel:
            admin = cutout_pb2_grpc.AdminStub(admin_channel)
            codes = []
            for _ in range(10):
                try:
                    admin.LookupAccount(
                        account_pb2.LookupAccountRequest(account_id="x"),
                        metadata=[("x-admin-token", secrets.token_urlsafe(32))],
                        timeout=10,
                    )
                except grpc.RpcError as error:
                    codes.append((error.code(), reason(error)))
        # ADMIN_FAILURES_FREE (3) wrong tokens, then one more is checked and starts the backoff
        # (2 s, then 4, 8, ...): the next guess is refused unchecked.
        wrong = (grpc.StatusCode.UNAUTHENTICATED, "ADMIN_TOKEN_INVALID")
        throttled = (grpc.StatusCode.RESOURCE_EXHAUSTED, "ADMIN_THROTTLED")
        assert codes[:5] == [wrong] * 4 + [throttled], codes
        assert codes.count(wrong) <= 5 and set(codes) == {wrong, throttled}
        with sqlite3.connect(f"file:{tmp_path / 'accounts.db'}?mode=ro", uri=True) as db:
            outcomes = [row[0] for row in db.execute("SELECT outcome FROM admin_audit ORDER BY id")]
        assert outcomes == [code.name for code, _ in codes], "refusals are audited too"
    finally:
        assert accounts.stop() == 0


def test_the_audit_log_is_append_only_on_postgresql_too(postgres_url):
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    from services.accounts.db import make_engine, migrate

    engine = make_engine(postgres_url)
    migrate(engine)
    try:
        with engine.begin() as db:
            db.execute(
                text(
                    "INSERT INTO admin_audit (at, admin, method, account_id, outcome, source, detail) "
                    "VALUES (now(), 'alice', 'LookupAccount', '', 'OK', '', '')"
                )
            )
        for statement in (
            "UPDATE admin_audit SET admin = 'mallory'",
            "DELETE FROM admin_audit",
            "TRUNCATE admin_audit",
        ):
            with pytest.raises(SQLAlchemyError, match="append-only"), engine.begin() as db:
                db.execute(text(statement))
        with engine.connect() as db:
            assert "alice" in [row[0] for row in db.execute(text("SELECT admin FROM admin_audit"))]
    finally:
        engine.dispose()


# -- the command line ------------------------------------------------------------------------


def test_the_cli_exports_corrects_restricts_and_erases_and_its_admin_verbs_work(mesh, raw_channel, tmp_path, photos):
    import subprocess
    import sys

    customer = new_account(raw_channel, mesh.admin_token, credits=5)
    keep(raw_channel, customer, photos[0])

    def cli(*args: str, stdin: str = "", admin: bool = False) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "CUTOUT_GATEWAY": mesh.gateway.address,
            "CUTOUT_CA_FILE": str(mesh.ca_file),
            "CUTOUT_API_KEY": customer.api_key,
            "CUTOUT_CONFIG": os.devnull,
            "CUTOUT_ADMIN_ENDPOINT": mesh.admin_address if admin else "",
            "CUTOUT_ADMIN_TOKEN": mesh.admin_token if admin else "",
        }
        command = [str(Path(sys.executable).parent / "cutout"), *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, input=stdin)

    exported = cli("account", "export", "-o", str(tmp_path / "mine.zip"))
    assert exported.returncode == 0, exported.stderr
    with zipfile.ZipFile(tmp_path / "mine.zip") as archive:
        assert json.loads(archive.read("profile.json"))["profile"]["email"] == customer.email
        assert len([name for name in archive.namelist() if name.startswith("results/")]) == 1
    restricted = cli("account", "restrict")
    assert restricted.returncode == 0 and "processing restricted" in restricted.stdout, restricted.stderr
    assert cli("account", "restrict", "--off").returncode == 0
    new_email = f"cli-{secrets.token_hex(4)}@example.org"
    asked = cli("account", "email", new_email, "--password-stdin", stdin=customer.password + "\n")
    assert asked.returncode == 0 and "--code" in asked.stdout, asked.stderr  # a code went to the new address
    code = sign_up_code(new_email)  # the code e-mailed to the new address (the session mesh's outbox)
    corrected = cli("account", "email", new_email, "--code", code, "--password-stdin", stdin=customer.password + "\n")
    assert corrected.returncode == 0 and new_email in corrected.stdout, corrected.stderr

    assert cli("admin", "lookup", customer.account_id).returncode == 2, "no admin endpoint or token: refused"
    looked_up = cli("admin", "lookup", "--email", new_email, admin=True)
    assert looked_up.returncode == 0 and customer.account_id in looked_up.stdout, looked_up.stderr
    granted = cli("admin", "grant", customer.account_id, "2", admin=True)
    assert granted.returncode == 0 and "6 credits available" in granted.stdout, granted.stderr
    log = cli("account", "access-log")
    assert "admin:operator" in log.stdout and "lookup" in log.stdout and "export" in log.stdout, log.stdout

    erased = cli("account", "delete", "--yes", "--password-stdin", stdin=customer.password + "\n")
    assert erased.returncode == 0 and ": done" in erased.stdout, erased.stderr
    after = cli("account", "show")
    assert after.returncode == 1 and "UNAUTHENTICATED" in after.stderr


def test_accounts_certificate_may_erase_in_retention_and_nothing_else(mesh, funded_account):
    from cutout.v1 import retention_pb2, retention_pb2_grpc

    with mesh.retention.channel(as_name="accounts") as retention_channel:
        retention = retention_pb2_grpc.RetentionStub(retention_channel)
        refused = fails(retention.ListOwned, retention_pb2.ListOwnedRequest(account_id=funded_account.account_id))
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED and reason(refused) == "CALLER_NOT_ALLOWED"
        erased = retention.EraseAccount(
            retention_pb2.EraseAccountRequest(account_id=f"gone-{secrets.token_hex(8)}"), timeout=30
        )
        assert erased.results_erased == 0
    with mesh.retention.channel(as_name="inference") as retention_channel:
        other = fails(
            retention_pb2_grpc.RetentionStub(retention_channel).EraseAccount,
            retention_pb2.EraseAccountRequest(account_id=funded_account.account_id),
        )
        assert other.code() == grpc.StatusCode.PERMISSION_DENIED
