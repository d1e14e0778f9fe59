"""Fuzzing, bounded for CI (issue 19): each atheris harness in fuzz/ for a few seconds over its
committed corpus, the regressions the long runs found, and a structure-aware fuzz of the public
RPCs through the session's real mesh with hypothesis. Long runs: `make fuzz`."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cutout.v1 import account_pb2, cutout_pb2, cutout_pb2_grpc, erase_pb2, options_pb2, rights_pb2
from fuzz.common import TinyProfile
from services.common import output_spec
from services.common.errors import ServiceError, status_details
from services.gateway import validation
from services.inference import imaging
from services.launcher import ROOT, Mesh
from tests.conftest import Customer, new_account

CORPUS = ROOT / "fuzz" / "corpus"
LIMITS = imaging.DecodeLimits(max_bytes=50 * 2**20, max_pixels=25_000_000)


# -- the atheris harnesses, briefly ------------------------------------------------------


@pytest.mark.parametrize("harness", ["decode", "options"])
def test_atheris_harness_runs_clean_over_its_corpus(harness: str, tmp_path: Path) -> None:
    """Every committed input (seeds and past findings) first, then 12 s of new ones."""
    seeds = CORPUS / harness
    assert len(list(seeds.iterdir())) >= 10
    command = [
        sys.executable,
        "-m",
        f"fuzz.{harness}",
        str(tmp_path / "work"),
        str(seeds),
        "-max_total_time=12",
        "-timeout=20",
        "-rss_limit_mb=3072",
        f"-artifact_prefix={tmp_path}/",
        "-print_final_stats=1",
    ]
    (tmp_path / "work").mkdir()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    executed = re.findall(r"stat::number_of_executed_units: (\d+)", output)
    assert executed and int(executed[-1]) > len(list(seeds.iterdir())), output[-2000:]


# -- what the long runs found ------------------------------------------------------------


def _truncated_png() -> bytes:
    out = io.BytesIO()
    Image.radial_gradient("L").resize((8, 6)).convert("RGB").save(out, "PNG")
    return out.getvalue()[:97]


def test_a_truncated_png_is_refused_as_corrupt_not_an_internal_error() -> None:
    """fuzz/decode.py's first finding (seed truncated.png): the header reads, then prepare()'s
    EXIF look-up decoded the whole file and raised OSError outside decode's error mapping."""
    header = imaging.open_image(_truncated_png(), LIMITS)
    spec = output_spec.OutputSpec.from_proto(options_pb2.RemoveBackgroundOptions(), output_spec.EncoderDefaults())
    with pytest.raises(ServiceError) as caught:
        imaging.prepare(header, spec, TinyProfile())
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field == "image"
    assert "truncated" in caught.value.message


def test_a_truncated_png_through_the_mesh_is_invalid_argument(gateway: cutout_pb2_grpc.CutoutStub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        gateway.RemoveBackground(cutout_pb2.RemoveBackgroundRequest(image=_truncated_png()), timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert "corrupt or truncated" in caught.value.details()


ICCP_AFTER_PIXELS = CORPUS / "decode" / "finding-iccp-after-idat.png"


def test_a_png_whose_late_iccp_chunk_is_cut_short_is_refused_as_corrupt() -> None:
    """fuzz/decode.py, 2026-11-23: an iCCP chunk after the pixels, cut short, made Pillow's
    chunk parser raise IndexError, which no error mapping caught (INTERNAL through the mesh)."""
    data = ICCP_AFTER_PIXELS.read_bytes()
    spec = output_spec.OutputSpec.from_proto(options_pb2.RemoveBackgroundOptions(), output_spec.EncoderDefaults())
    with pytest.raises(ServiceError) as caught:
        imaging.prepare(imaging.open_image(data, LIMITS), spec, TinyProfile())
    assert (caught.value.code, caught.value.field) == (grpc.StatusCode.INVALID_ARGUMENT, "image")


def test_the_cut_short_iccp_png_through_the_mesh_is_invalid_argument(gateway: cutout_pb2_grpc.CutoutStub) -> None:
    data = ICCP_AFTER_PIXELS.read_bytes()
    erase = erase_pb2.EraseRegions(boxes=[erase_pb2.Box(x=0, y=0, width=2, height=2)])
    for call, request in (
        (gateway.RemoveBackground, cutout_pb2.RemoveBackgroundRequest(image=data)),
        (gateway.EraseRegions, erase_pb2.EraseRegionsRequest(image=data, regions=erase)),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=60)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
        assert "corrupt or truncated" in caught.value.details()


def test_an_unknown_subject_is_refused_before_any_credit_is_reserved() -> None:
    """Found while writing the RPC fuzz (reading the gateway's checks): a subject only inference
    checked was refused after the gateway had reserved its credits (a ledger entry for a refusal)."""
    for options in (
        options_pb2.RemoveBackgroundOptions(subject=99),
        options_pb2.RemoveBackgroundOptions(subject=options_pb2.SUBJECT_PERSON, model="u2netp"),
    ):
        with pytest.raises(ServiceError) as caught:
            validation.check_removal((CORPUS / "decode" / "rgb.png").read_bytes(), options, LIMITS.max_bytes)
        assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.field in ("options.subject", "options.model")


# -- the public RPCs through the running gateway ------------------------------------------

# Statuses docs/api/errors.md documents for the public API; UNKNOWN never, INTERNAL only with an error id.
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.INTERNAL,
}
# What a Python exception's text looks like in a message.
EXCEPTION_TEXT = re.compile(r"Traceback|File \"|\b[A-Z]\w*(Error|Exception)\b|Exception calling application")

IMAGES = sorted(p.read_bytes() for p in (CORPUS / "decode").iterdir())
INT_EDGES = {
    descriptor.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    descriptor.FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    descriptor.FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    descriptor.FieldDescriptor.TYPE_ENUM: (-(2**31), 2**31 - 1),
    descriptor.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    descriptor.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    descriptor.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    descriptor.FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    descriptor.FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    descriptor.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    descriptor.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _integers(low: int, high: int, enum: descriptor.EnumDescriptor | None) -> st.SearchStrategy[int]:
    edges = st.sampled_from([v for v in (low, high, 0, 1, -1, 7, 100, 101, 3650 * 86400 + 1) if low <= v <= high])
    known = st.sampled_from([v.number for v in enum.values]) if enum is not None else st.integers(0, 120)
    return st.one_of(known, known, known, edges, st.integers(low, high))


def _scalar(field: descriptor.FieldDescriptor) -> st.SearchStrategy[object]:
    kind = field.type
    if kind in INT_EDGES:
        return _integers(*INT_EDGES[kind], field.enum_type)
    if kind == descriptor.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind in (descriptor.FieldDescriptor.TYPE_DOUBLE, descriptor.FieldDescriptor.TYPE_FLOAT):
        width = 32 if kind == descriptor.FieldDescriptor.TYPE_FLOAT else 64
        return st.floats(width=width, allow_nan=True, allow_infinity=True)
    if kind == descriptor.FieldDescriptor.TYPE_STRING:
        colours = st.sampled_from(["white", "#1e90ff", "rgb(99999999999,0,0)", "u2netp", "x" * 100_000])
        return st.one_of(st.text(max_size=40), colours, st.text(st.characters(codec="utf-8"), max_size=300))
    # bytes: an image of the corpus, a broken one, or noise
    broken = st.builds(lambda data, cut: data[:cut], st.sampled_from(IMAGES), st.integers(0, 400))
    return st.one_of(st.sampled_from(IMAGES), st.sampled_from(IMAGES), broken, st.binary(max_size=200))


@st.composite
def messages(draw: st.DrawFn, kind: type[Message], depth: int = 0) -> Message:
    """A `kind` with random values in a random subset of its fields (oneofs: one member)."""
    message = kind()
    for field in kind.DESCRIPTOR.fields:
        if field.containing_oneof is not None and message.WhichOneof(field.containing_oneof.name):
            continue
        # A request's own field is set one time in two, a nested one (an option) one time in eight, an
        # image and a stream item's id always: many requests come near a valid one, so removals get
        # past validation and charging is fuzzed too, and each may carry a bad value.
        if field.name not in ("image", "id") and draw(st.integers(0, 1 if depth == 0 else 7)):
            continue
        repeated = field.is_repeated
        if field.type == descriptor.FieldDescriptor.TYPE_MESSAGE:
            if depth > 3:
                continue
            sub = field.message_type._concrete_class
            if field.message_type.GetOptions().map_entry:
                continue
            if repeated:
                for item in draw(st.lists(messages(sub, depth + 1), max_size=3)):
                    getattr(message, field.name).add().CopyFrom(item)
            else:
                getattr(message, field.name).CopyFrom(draw(messages(sub, depth + 1)))
        elif repeated:
            getattr(message, field.name).extend(draw(st.lists(_scalar(field), max_size=3)))
        else:
            setattr(message, field.name, draw(_scalar(field)))
    return message


def _profile_update(request: account_pb2.UpdateProfileRequest) -> account_pb2.UpdateProfileRequest:
    # A restricted account refuses every removal (a documented status): the fuzz would end there.
    request.processing_restricted = False
    return request


# The RPCs fuzzed, by group: (method, request type, how the answer comes: "unary", "stream"
# (responses), "bidi"), and each group's share of the examples. Not fuzzed: RevokeApiKey and
# DeleteAccount (a random hit would end the fuzzing account; both are tested in test_accounts.py
# and test_rights.py), SignUp and VerifySignUp (test_signup.py).
GROUPS: dict[str, tuple[list[tuple[str, type[Message], str]], int]] = {
    "removal": ([("RemoveBackground", cutout_pb2.RemoveBackgroundRequest, "unary")], 50),
    "stream": ([("RemoveBackgroundStream", cutout_pb2.StreamRequest, "bidi")], 25),
    "erase": ([("EraseRegions", erase_pb2.EraseRegionsRequest, "unary")], 15),
    "account": (
        [
            ("GetBalance", account_pb2.GetBalanceRequest, "unary"),
            ("ListLedger", account_pb2.ListLedgerRequest, "unary"),
            ("ListApiKeys", account_pb2.ListApiKeysRequest, "unary"),
            ("GetProfile", account_pb2.GetProfileRequest, "unary"),
            ("UpdateProfile", account_pb2.UpdateProfileRequest, "unary"),
            ("ListResults", cutout_pb2.ListResultsRequest, "unary"),
            ("FetchResult", cutout_pb2.FetchResultRequest, "stream"),
            ("DeleteResult", cutout_pb2.DeleteResultRequest, "unary"),
            ("ListAccessLog", rights_pb2.OwnerAccessLogRequest, "unary"),
            ("ExportAccount", rights_pb2.ExportAccountRequest, "stream"),
            ("ChangePassword", account_pb2.ChangePasswordRequest, "unary"),
            ("ChangeEmail", rights_pb2.ChangeEmailRequest, "unary"),
            ("CreateApiKey", account_pb2.CreateApiKeyRequest, "unary"),
        ],
        30,
    ),
}
# CI's bound; `make fuzz` runs more (CUTOUT_FUZZ_SCALE=20: twenty times the examples).
SCALE = float(os.environ.get("CUTOUT_FUZZ_SCALE", "1"))


@st.composite
def calls(draw: st.DrawFn, group: str) -> tuple[str, str, list[Message], str]:
    """A call: method, how it answers, its request(s) and which key it sends ("own", "none", "bad")."""
    method, kind, shape = draw(st.sampled_from(GROUPS[group][0]))
    if shape == "bidi":
        requests = draw(st.lists(messages(kind), min_size=1, max_size=4))
    else:
        requests = [draw(messages(kind))]
    if method == "UpdateProfile":
        requests = [_profile_update(r) for r in requests]  # type: ignore[arg-type]
    return method, shape, requests, draw(st.sampled_from(["own"] * 8 + ["none", "bad"]))


def _check_status(code: grpc.StatusCode, message: str, status: status_pb2.Status | None, where: str) -> None:
    assert code in DOCUMENTED, f"{where}: undocumented {code.name}: {message!r}"
    if code == grpc.StatusCode.OK:
        return
    assert message, f"{where}: {code.name} without a message"
    assert not EXCEPTION_TEXT.search(message), f"{where}: exception text in {code.name}: {message!r}"
    if code == grpc.StatusCode.INTERNAL:
        infos = [d for d in status_details(status) if isinstance(d, error_details_pb2.ErrorInfo)] if status else []
        assert infos and (infos[0].metadata.get("error_id") or infos[0].reason == "DEPENDENCY_FAILED"), (
            f"{where}: INTERNAL without an error id: {message!r}"
        )


def _status_of(error: grpc.RpcError) -> status_pb2.Status | None:
    from grpc_status import rpc_status

    return rpc_status.from_call(error)  # type: ignore[arg-type]


def _charged(stub: cutout_pb2_grpc.CutoutStub, account: Customer) -> tuple[Decimal, Decimal]:
    """(credits charged for good: commits less refunds, credits held) from the ledger."""
    ledger = stub.ListLedger(account_pb2.ListLedgerRequest(limit=1000), metadata=account.metadata, timeout=30)
    charged = -sum((Decimal(e.held_decimal) for e in ledger.entries if e.kind == "commit"), Decimal(0))
    charged -= sum((Decimal(e.amount_decimal) for e in ledger.entries if e.kind == "refund"), Decimal(0))
    return charged, Decimal(ledger.balance.held_decimal or "0")


class RpcFuzz:
    """The fuzzing account, what was delivered to it, and the calls' checks."""

    def __init__(self, mesh: Mesh, channel: grpc.Channel, account: Customer) -> None:
        self.mesh = mesh
        self.channel = channel
        self.stub = cutout_pb2_grpc.CutoutStub(channel)
        self.account = account
        self.delivered = Decimal(0)
        self.outcomes: Counter[str] = Counter()  # "Method CODE", printed at the end (pytest -s)

    def metadata(self, key: str) -> list[tuple[str, str]]:
        if key == "own":
            return self.account.metadata
        return [] if key == "none" else [("x-api-key", "ck_" + "0" * 43)]

    def _delivered(self, method: str, response: Message) -> None:
        """Counts what a delivered response was charged (erasures: PRICE_PER_ERASE, 1 by default)."""
        if isinstance(response, cutout_pb2.RemoveBackgroundResponse) and response.result.image:
            self.delivered += Decimal(response.credits_charged_decimal)
        elif isinstance(response, erase_pb2.EraseRegionsResponse) and response.result.image:
            self.delivered += 1
        elif isinstance(response, cutout_pb2.StreamResponse) and response.WhichOneof("kind") == "item":
            item = response.item
            if item.WhichOneof("outcome") == "response":
                self._delivered(method, item.response)
            elif item.WhichOneof("outcome") == "erased":
                self._delivered(method, item.erased)
            elif item.WhichOneof("outcome") == "error":
                code = _status_code(item.error.code)
                _check_status(code, item.error.message, item.error, f"{method} item")
                self.outcomes[f"{method} item {code.name} {_why(item.error)}".rstrip()] += 1
                return
            self.outcomes[f"{method} item OK"] += 1

    def call(self, method: str, shape: str, requests: list[Message], key: str) -> None:
        callable_ = getattr(self.stub, method)
        where = f"{method}({', '.join(str(r)[:300] for r in requests)!r})"
        try:
            if shape == "unary":
                self._delivered(method, callable_(requests[0], metadata=self.metadata(key), timeout=60))
            elif shape == "stream":
                for chunk in callable_(requests[0], metadata=self.metadata(key), timeout=60):
                    self._delivered(method, chunk)
            else:
                for response in callable_(iter(requests), metadata=self.metadata(key), timeout=60):
                    self._delivered(method, response)
        except grpc.RpcError as error:
            status = _status_of(error)
            _check_status(error.code(), error.details() or "", status, where)
            self.outcomes[f"{method} {error.code().name} {_why(status)}".rstrip()] += 1
        else:
            self.outcomes[f"{method} OK"] += 1
        self.check_mesh()
        self.check_ledger(where)

    def check_mesh(self) -> None:
        for service in self.mesh.services:
            service.check_alive()
        triton = self.mesh.triton
        assert triton is None or triton.process is None or triton.process.poll() is None, "Triton died"

    def check_ledger(self, where: str) -> None:
        """Charged == delivered once nothing is held (holds are settled right after the call)."""
        deadline = time.monotonic() + 15
        while True:
            charged, held = _charged(self.stub, self.account)
            if held == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert held == 0, f"after {where}: {held} credits still held"
        assert charged == self.delivered, f"after {where}: charged {charged}, delivered {self.delivered}"


def _why(status: status_pb2.Status | None) -> str:
    """An error's reason and fields, for the tally."""
    details = status_details(status) if status else []
    why = [d.reason for d in details if isinstance(d, error_details_pb2.ErrorInfo)]
    why += [v.field for d in details if isinstance(d, error_details_pb2.BadRequest) for v in d.field_violations]
    return " ".join(why)


def _status_code(number: int) -> grpc.StatusCode:
    return next(code for code in grpc.StatusCode if code.value[0] == number)


@pytest.fixture(scope="module")
def rpc_fuzz(mesh: Mesh, raw_channel: grpc.Channel) -> Iterator[RpcFuzz]:
    examples = sum(share for _, share in GROUPS.values()) * SCALE
    fuzz = RpcFuzz(mesh, raw_channel, new_account(raw_channel, mesh.admin_token, credits=round(examples * 5)))
    yield fuzz
    print(f"\nRPC fuzz: {fuzz.outcomes.total()} calls, {fuzz.delivered} credits delivered and charged")
    for outcome, times in sorted(fuzz.outcomes.items()):
        print(f"  {outcome}: {times}")


@pytest.mark.parametrize("group", GROUPS)
def test_public_rpcs_answer_documented_statuses_and_charge_what_they_deliver(rpc_fuzz: RpcFuzz, group: str) -> None:
    """Random requests built from the messages' fields: every answer OK or a documented status
    with a message (never UNKNOWN, INTERNAL only with an error id, no exception text), no
    process of the mesh dies, and the ledger charges exactly what was delivered."""

    @settings(
        max_examples=max(1, round(GROUPS[group][1] * SCALE)),
        deadline=None,
        database=None,  # the same examples in every run of the suite; `make fuzz` varies them
        derandomize=SCALE == 1,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(call=calls(group))
    def fuzz(call: tuple[str, str, list[Message], str]) -> None:
        rpc_fuzz.call(*call)

    fuzz()
