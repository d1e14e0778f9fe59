"""Images are processed in memory: nothing is written and nothing of them is logged;
no API key, password or e-mail appears in any log line."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
from PIL import PngImagePlugin

from cutout.v1 import account_pb2, cutout_pb2, cutout_pb2_grpc, erase_pb2
from services.common.settings import ADMIN_TOKEN_METADATA, API_KEY_METADATA
from tests.conftest import encode, new_account

MARKER = b"cutout-private-marker-7f3a9c"


def snapshot(root: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_requests_write_nothing_and_log_nothing_of_the_image(mesh, gateway, raw_channel, funded_account, astronaut):
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", MARKER.decode())
    marked_png = encode(astronaut, "PNG", pnginfo=info)
    assert MARKER in marked_png
    broken = MARKER * 100  # fails to decode: error paths must not echo it either
    before = snapshot(mesh.data_dir)

    gateway.RemoveBackground(cutout_pb2.RemoveBackgroundRequest(image=marked_png), timeout=60)
    with pytest.raises(grpc.RpcError) as caught:
        gateway.RemoveBackground(cutout_pb2.RemoveBackgroundRequest(image=broken), timeout=60)
    assert MARKER.decode() not in caught.value.details()
    # The same two images as items of a stream: one result, one per-item error that echoes nothing.
    items = [cutout_pb2.StreamItem(id="marked", image=marked_png), cutout_pb2.StreamItem(id="broken", image=broken)]
    answers = list(
        cutout_pb2_grpc.CutoutStub(raw_channel).RemoveBackgroundStream(
            iter([cutout_pb2.StreamRequest(item=item) for item in items]), metadata=funded_account.metadata, timeout=60
        )
    )
    outcomes = {a.item.id: a.item.WhichOneof("outcome") for a in answers if a.HasField("item")}
    assert outcomes == {"marked": "response", "broken": "error"}
    assert all(MARKER.decode() not in a.item.error.message for a in answers)
    # Erasing: the picture and a mask that carry the marker, and a broken mask.
    marked_mask = encode(astronaut.convert("L").point(lambda v: 255 if v > 200 else 0), "PNG", pnginfo=info)
    for mask, fails in ((marked_mask, False), (broken, True)):
        request = erase_pb2.EraseRegionsRequest(image=marked_png, regions=erase_pb2.EraseRegions(mask=mask))
        if fails:
            with pytest.raises(grpc.RpcError) as caught:
                gateway.EraseRegions(request, timeout=60)
            assert MARKER.decode() not in caught.value.details()
        else:
            gateway.EraseRegions(request, timeout=60)

    after = snapshot(mesh.data_dir)
    assert set(after) == set(before), "no file may appear"
    changed = [p for p in after if after[p] != before[p]]
    # Only logs and the credit ledger (the charge) change; both are scanned for the image below.
    assert all(p.suffix == ".log" or p.name.startswith("accounts.db") for p in changed), changed
    for path in after:
        assert MARKER not in path.read_bytes(), f"{path} holds image bytes"


def test_no_api_key_password_or_email_in_any_log_line(mesh, raw_channel, admin_channel, funded_account, astronaut_jpeg):
    """Every account path (good and bad) runs, then every service log is searched."""
    public = cutout_pb2_grpc.CutoutStub(raw_channel)
    admin = cutout_pb2_grpc.AdminStub(admin_channel)
    account = new_account(raw_channel, mesh.admin_token, credits=5)
    new_password = "privacy: a brand new password"
    calls = [
        lambda: public.SignUp(
            account_pb2.SignUpRequest(email=account.email, password=account.password, region="eu", age_confirmed=True)
        ),
        lambda: public.CreateApiKey(account_pb2.CreateApiKeyRequest(email=account.email, password="wrong password!")),
        lambda: public.GetBalance(
            account_pb2.GetBalanceRequest(), metadata=[(API_KEY_METADATA, account.api_key + "x")]
        ),
        lambda: public.RemoveBackground(
            cutout_pb2.RemoveBackgroundRequest(image=astronaut_jpeg, idempotency_key="p1"), metadata=account.metadata
        ),
        lambda: public.RemoveBackground(
            cutout_pb2.RemoveBackgroundRequest(image=b"junk", idempotency_key="p2"), metadata=account.metadata
        ),
        lambda: public.ChangePassword(
            account_pb2.ChangePasswordRequest(current_password=account.password, new_password=new_password),
            metadata=account.metadata,
        ),
        lambda: admin.LookupAccount(
            account_pb2.LookupAccountRequest(email=account.email), metadata=[(ADMIN_TOKEN_METADATA, mesh.admin_token)]
        ),
        lambda: admin.LookupAccount(
            account_pb2.LookupAccountRequest(email=account.email), metadata=[(ADMIN_TOKEN_METADATA, account.api_key)]
        ),
    ]
    for call in calls:
        try:
            call()
        except grpc.RpcError as error:
            assert account.email not in error.details() and account.password not in error.details()
    key = public.CreateApiKey(
        account_pb2.CreateApiKeyRequest(name="p", password=new_password), metadata=account.metadata, timeout=30
    )
    public.RevokeApiKey(
        account_pb2.RevokeApiKeyRequest(id=key.key.id, password=new_password), metadata=account.metadata, timeout=30
    )

    secrets = [account.email, account.password, account.api_key, key.api_key, new_password, mesh.admin_token]
    secrets += [funded_account.email, funded_account.password, funded_account.api_key]
    logs = sorted(mesh.run_dir.glob("*.log"))
    assert {path.stem for path in logs} >= {"gateway", "accounts", "inference"}
    for path in logs:
        text = path.read_text(errors="replace")
        assert "account created" in text or path.stem != "accounts", "the accounts log is the one written"
        for secret in secrets:
            assert secret not in text, f"{path.name} holds a secret"
        # Any e-mail or key of any test in the session, not only the ones above.
        assert not re.search(r"[\w.+-]+@example\.com", text), f"{path.name} holds an e-mail"
        assert not re.search(r"ck_[A-Za-z0-9_-]{20,}", text), f"{path.name} holds an API key"
