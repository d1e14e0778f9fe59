"""A small synchronous client for cutout.v1.Cutout (used by the command line).

The API key comes from the argument, else CUTOUT_API_KEY, else the config file
(~/.config/cutout/config.toml, or $CUTOUT_CONFIG), which holds `api_key = "..."`
and optionally `gateway = "host:port"` and `ca = "/path/to/ca.pem"`.

The channel is TLS: the server's certificate is checked against the CA file (the
argument, else CUTOUT_CA_FILE, else the config's `ca`) or, without one, the system's
trusted roots. Plaintext only when asked (`plaintext=True`, CUTOUT_PLAINTEXT=1) and
only to this machine, so a key or a password never crosses a network in clear.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import grpc

from cutout.transport import API_KEY_METADATA, channel_credentials, channel_options, is_loopback
from cutout.v1 import account_pb2, cutout_pb2, cutout_pb2_grpc, erase_pb2, options_pb2, rights_pb2

DEFAULT_GATEWAY = "127.0.0.1:50051"


def credits_text(decimal: str, whole: int) -> str:
    """An amount of credits as the server gave it: the exact decimal ("0.25"), or the whole
    credits of the older field from a server that sends no decimal."""
    return decimal or str(whole)


def signed(credits: str) -> str:
    """A change of credits with its sign: "+0.25", "-1", "+0"."""
    return credits if credits.startswith("-") else f"+{credits}"


def config_path() -> Path:
    if os.environ.get("CUTOUT_CONFIG"):
        return Path(os.environ["CUTOUT_CONFIG"])
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "cutout" / "config.toml"


def read_config() -> dict[str, str]:
    path = config_path()
    if not path.exists():
        return {}
    with path.open("rb") as config:
        data = tomllib.load(config)
    return {key: str(value) for key, value in data.items() if key in ("api_key", "gateway", "ca")}


def save_config(**values: str) -> Path:
    """Merges `values` into the config file, readable by its owner only (it holds a key)."""
    path = config_path()
    data = {**read_config(), **values}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("".join(f'{key} = "{value}"\n' for key, value in sorted(data.items())))
    os.replace(tmp, path)
    return path


def open_channel(target: str, ca_file: Path | str | None = None, plaintext: bool = False) -> grpc.Channel:
    """A channel to a gateway: TLS checked against `ca_file` (else the system roots), or
    plaintext when asked, to a loopback address only."""
    if plaintext:
        if not is_loopback(target):
            raise ValueError(f"plaintext is allowed to this machine only, not to {target}; use TLS (--ca)")
        return grpc.insecure_channel(target, options=channel_options())
    credentials = channel_credentials(Path(ca_file) if ca_file else None)
    return grpc.secure_channel(target, credentials, options=channel_options())


class CutoutClient:
    def __init__(
        self,
        target: str | None = None,
        api_key: str | None = None,
        *,
        ca_file: Path | str | None = None,
        plaintext: bool | None = None,
    ) -> None:
        config = read_config()
        self.target = target or os.environ.get("CUTOUT_GATEWAY") or config.get("gateway") or DEFAULT_GATEWAY
        if api_key is None:
            api_key = os.environ.get("CUTOUT_API_KEY") or config.get("api_key", "")
        self.api_key = api_key
        ca_file = ca_file or os.environ.get("CUTOUT_CA_FILE") or config.get("ca") or None
        if plaintext is None:
            plaintext = os.environ.get("CUTOUT_PLAINTEXT", "").lower() in ("1", "true", "yes")
        self.channel = open_channel(self.target, ca_file, plaintext)
        self._stub = cutout_pb2_grpc.CutoutStub(self.channel)

    def remove_background(
        self,
        image: bytes,
        options: options_pb2.RemoveBackgroundOptions | None = None,
        *,
        idempotency_key: str = "",
        timeout_s: float = 120.0,
    ) -> cutout_pb2.RemoveBackgroundResponse:
        request = cutout_pb2.RemoveBackgroundRequest(image=image, options=options, idempotency_key=idempotency_key)
        return self._stub.RemoveBackground(request, timeout=timeout_s, metadata=self._metadata())

    def erase_regions(
        self,
        image: bytes,
        regions: erase_pb2.EraseRegions,
        *,
        idempotency_key: str = "",
        timeout_s: float = 120.0,
    ) -> erase_pb2.EraseRegionsResponse:
        request = erase_pb2.EraseRegionsRequest(image=image, regions=regions, idempotency_key=idempotency_key)
        return self._stub.EraseRegions(request, timeout=timeout_s, metadata=self._metadata())

    def remove_background_stream(
        self, requests: Iterator[cutout_pb2.StreamRequest], *, timeout_s: float | None = None
    ) -> grpc.Future:
        """RemoveBackgroundStream: iterate the call for the answers, `.cancel()` it to stop."""
        return self._stub.RemoveBackgroundStream(requests, timeout=timeout_s, metadata=self._metadata())

    def fetch_result(self, *, token: str = "", result_id: str = "") -> tuple[options_pb2.KeptResult, bytes]:
        """A kept result: by token (no API key needed) or by id as its owner."""
        request = (
            cutout_pb2.FetchResultRequest(token=token) if token else cutout_pb2.FetchResultRequest(result_id=result_id)
        )
        chunks = list(self._stub.FetchResult(request, timeout=120, metadata=self._metadata()))
        return chunks[0].result, b"".join(chunk.data for chunk in chunks)

    def list_results(self, page_size: int = 100, page_token: str = "") -> cutout_pb2.ListResultsResponse:
        """One page, newest first; its next_page_token (empty on the last page) asks for the next."""
        request = cutout_pb2.ListResultsRequest(page_size=page_size, page_token=page_token)
        return self._stub.ListResults(request, timeout=30, metadata=self._metadata())

    def iter_results(self, page_size: int = 100) -> Iterator[options_pb2.KeptResult]:
        """Every kept result, newest first, page after page."""
        return self._every(self._stub.ListResults, cutout_pb2.ListResultsRequest(page_size=page_size), "results")

    def _every(self, method: Any, request: Any, items: str) -> Iterator[Any]:
        """The items of every page of a list call (AIP-158), following next_page_token."""
        while True:
            page = method(request, timeout=30, metadata=self._metadata())
            yield from getattr(page, items)
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def delete_result(self, result_id: str) -> None:
        self._stub.DeleteResult(
            cutout_pb2.DeleteResultRequest(result_id=result_id), timeout=30, metadata=self._metadata()
        )

    def sign_up(
        self,
        email: str,
        password: str,
        *,
        display_name: str = "",
        region: str = "eu",
        age_confirmed: bool,
        marketing_opt_in: bool = False,
    ) -> account_pb2.SignUpResponse:
        request = account_pb2.SignUpRequest(
            email=email,
            password=password,
            display_name=display_name,
            region=region,
            age_confirmed=age_confirmed,
            marketing_opt_in=marketing_opt_in,
        )
        return self._stub.SignUp(request, timeout=30)

    def verify_sign_up(
        self, email: str, password: str, code: str, *, key_name: str = ""
    ) -> account_pb2.VerifySignUpResponse:
        """Opens the account a sign-up asked for (the code from the e-mail); returns its first key."""
        request = account_pb2.VerifySignUpRequest(email=email, password=password, code=code, key_name=key_name)
        return self._stub.VerifySignUp(request, timeout=30)

    def create_api_key(
        self, name: str = "", *, email: str = "", password: str = ""
    ) -> account_pb2.CreateApiKeyResponse:
        """With email and password (the first key), or with this client's key and the password."""
        request = account_pb2.CreateApiKeyRequest(email=email, password=password, name=name)
        metadata = [] if email else self._metadata()
        return self._stub.CreateApiKey(request, timeout=30, metadata=metadata)

    def list_api_keys(self, page_size: int = 0, page_token: str = "") -> account_pb2.ListApiKeysResponse:
        """One page of keys, oldest first (page_size 0: the server's default, 100)."""
        request = account_pb2.ListApiKeysRequest(page_size=page_size, page_token=page_token)
        return self._stub.ListApiKeys(request, timeout=30, metadata=self._metadata())

    def iter_api_keys(self, page_size: int = 0) -> Iterator[account_pb2.ApiKey]:
        """Every key of the account, oldest first, page after page."""
        return self._every(self._stub.ListApiKeys, account_pb2.ListApiKeysRequest(page_size=page_size), "keys")

    def revoke_api_key(self, key_id: str, password: str = "") -> account_pb2.RevokeApiKeyResponse:
        """A key may revoke itself; any other key of the account needs the password too."""
        return self._stub.RevokeApiKey(
            account_pb2.RevokeApiKeyRequest(id=key_id, password=password), timeout=30, metadata=self._metadata()
        )

    def list_models(self) -> options_pb2.ListModelsResponse:
        return self._stub.ListModels(options_pb2.ListModelsRequest(), timeout=30, metadata=self._metadata())

    def balance(self) -> account_pb2.Balance:
        return self._stub.GetBalance(account_pb2.GetBalanceRequest(), timeout=30, metadata=self._metadata())

    def ledger(self, page_size: int = 0, page_token: str = "") -> account_pb2.ListLedgerResponse:
        """One page of the ledger, newest first (page_size 0: the server's default, 100), and the balance."""
        request = account_pb2.ListLedgerRequest(page_size=page_size, page_token=page_token)
        return self._stub.ListLedger(request, timeout=30, metadata=self._metadata())

    # -- your data --------------------------------------------------------------------

    def export_account(self, out: BinaryIO, *, include_results: bool = True, timeout_s: float = 600.0) -> int:
        """Writes the export archive (a zip) to `out` as it arrives; returns its size in bytes."""
        written = 0
        request = rights_pb2.ExportAccountRequest(include_results=include_results)
        for chunk in self._stub.ExportAccount(request, timeout=timeout_s, metadata=self._metadata()):
            out.write(chunk.data)
            written += len(chunk.data)
        return written

    def profile(self) -> account_pb2.Profile:
        return self._stub.GetProfile(account_pb2.GetProfileRequest(), timeout=30, metadata=self._metadata())

    def update_profile(self, **fields: object) -> account_pb2.Profile:
        """Changes only the fields given: display_name, marketing_opt_in, usage_stats_opt_out,
        processing_restricted."""
        request = account_pb2.UpdateProfileRequest(**fields)  # type: ignore[arg-type]
        request.update_mask.paths.extend(fields)  # AIP-134: exactly these change
        return self._stub.UpdateProfile(request, timeout=30, metadata=self._metadata())

    def change_email(self, new_email: str, password: str, code: str = "") -> account_pb2.Profile:
        """Without `code`: a code goes to new_email (email_verification_required); with it: changed."""
        request = rights_pb2.ChangeEmailRequest(new_email=new_email, password=password, code=code)
        return self._stub.ChangeEmail(request, timeout=30, metadata=self._metadata())

    def delete_account(self, password: str) -> rights_pb2.DeleteAccountResponse:
        request = rights_pb2.DeleteAccountRequest(password=password)
        return self._stub.DeleteAccount(request, timeout=120, metadata=self._metadata())

    def access_log(self, page_size: int = 0, page_token: str = "") -> rights_pb2.OwnerAccessLogResponse:
        """One page of who accessed your data, newest first (page_size 0: the server's default, 1000)."""
        request = rights_pb2.OwnerAccessLogRequest(page_size=page_size, page_token=page_token)
        return self._stub.ListAccessLog(request, timeout=30, metadata=self._metadata())

    def iter_access_log(self, page_size: int = 0) -> Iterator[rights_pb2.AccessRecord]:
        """The whole access log, newest first, page after page."""
        request = rights_pb2.OwnerAccessLogRequest(page_size=page_size)
        return self._every(self._stub.ListAccessLog, request, "entries")

    def _metadata(self) -> list[tuple[str, str]]:
        return [(API_KEY_METADATA, self.api_key)] if self.api_key else []

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> CutoutClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
