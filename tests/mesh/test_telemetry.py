"""OpenTelemetry across the mesh, received by a real OTLP receiver on loopback."""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import Iterator

import grpc
import pytest
from PIL import PngImagePlugin

from cutout.v1 import cutout_pb2, cutout_pb2_grpc, options_pb2
from services.launcher import Mesh, ServiceProcess, free_port
from tests.conftest import FAST_LEVEL, Customer, encode, new_account
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

MARKER = "cutout-telemetry-private-marker-51c2"
REMOVE = "/cutout.v1.Cutout/RemoveBackground"
SEGMENT = "/cutout.v1.Inference/Segment"


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def traced_mesh(tmp_path_factory, receiver, model_paths) -> Iterator[Mesh]:
    mesh = Mesh(
        data_dir=tmp_path_factory.mktemp("traced"),
        env={
            **FAST_LEVEL,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_METRIC_EXPORT_INTERVAL": "300",
            # "A key just seen" must still be remembered when the next call comes, however
            # long the first took on a loaded machine (5 s by default).
            "CUTOUT_GATEWAY_ADMITTED_KEY_TTL_S": "60",
        },
    )
    mesh.start()
    yield mesh
    mesh.stop()


@pytest.fixture(scope="module")
def customer(traced_mesh) -> Customer:
    with traced_mesh.gateway.channel() as channel:
        return new_account(channel, traced_mesh.admin_token)


@pytest.fixture(scope="module")
def one_removal(traced_mesh, receiver, astronaut, customer) -> cutout_pb2.RemoveBackgroundResponse:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", MARKER)
    photo = encode(astronaut, "PNG", pnginfo=info)
    with traced_mesh.gateway.channel() as channel:
        response = cutout_pb2_grpc.CutoutStub(channel).RemoveBackground(
            cutout_pb2.RemoveBackgroundRequest(
                image=photo, options=options_pb2.RemoveBackgroundOptions(keep_result=True)
            ),
            metadata=customer.metadata,
            timeout=60,
        )
    receiver.wait_for(lambda: any(s.span.name == "inference.batch" for s in receiver.spans()))
    receiver.wait_for(
        lambda: (
            {"rpc.server.call.duration", "cutout.inference.images", "cutout.credits", "cutout.retention.stored"}
            <= receiver.metric_names()
        )
    )
    return response


def only(spans: list[ReceivedSpan], service: str, name: str) -> ReceivedSpan:
    found = [s for s in spans if s.service == service and s.span.name == name]
    assert len(found) == 1, (service, name, [(s.service, s.span.name) for s in spans])
    return found[0]


def test_one_kept_removal_is_one_trace_across_the_four_services(receiver, one_removal):
    assert one_removal.kept.token
    spans = receiver.spans()
    gateway_server = only(spans, "cutout-gateway", REMOVE)
    gateway_client = only(spans, "cutout-gateway", SEGMENT)
    inference_server = only(spans, "cutout-inference", SEGMENT)
    trace_id = gateway_server.span.trace_id
    assert gateway_server.span.parent_span_id == b"", "the gateway's span is the root"
    assert gateway_client.span.parent_span_id == gateway_server.span.span_id
    assert inference_server.span.parent_span_id == gateway_client.span.span_id
    assert {gateway_client.span.trace_id, inference_server.span.trace_id} == {trace_id}

    # The key's first call: admission asks accounts, then the reservation looks the key up again.
    calls = [("accounts", f"/cutout.v1.Accounts/{m}") for m in ("Authenticate", "AuthorizeAndReserve", "Commit")]
    for service, method in [*calls, ("retention", "/cutout.v1.Retention/Store")]:
        client = only(spans, "cutout-gateway", method)
        server = only(spans, f"cutout-{service}", method)
        assert client.span.parent_span_id == gateway_server.span.span_id, method
        assert server.span.parent_span_id == client.span.span_id, method
        assert {client.span.trace_id, server.span.trace_id} == {trace_id}

    stages = {s.span.name: s for s in spans if s.service == "cutout-inference" and s.span.trace_id == trace_id}
    for name in ("decode", "preprocess", "batch", "postprocess", "encode"):
        assert stages[name].span.parent_span_id == inference_server.span.span_id, name
    assert stages["encode"].attributes["cutout.output_format"] == "OUTPUT_FORMAT_PNG"


def test_the_triton_call_links_to_the_requests_it_served(receiver, one_removal):
    spans = receiver.spans()
    request_batch_span = next(s for s in spans if s.span.name == "batch" and s.service == "cutout-inference")
    batch = next(
        s
        for s in spans
        if s.span.name == "inference.batch"
        and any(link.span_id == request_batch_span.span.span_id for link in s.span.links)
    )
    assert batch.span.trace_id != request_batch_span.span.trace_id, "a batch has no single parent request"
    assert batch.attributes["cutout.model"] == "selfie_segmentation"
    assert batch.attributes["cutout.batch_size"] == one_removal.timings.batch_size
    triton_call = [s for s in spans if s.span.parent_span_id == batch.span.span_id]
    assert [s.span.name for s in triton_call] == ["/inference.GRPCInferenceService/ModelInfer"]


def test_metrics_are_exported(receiver, one_removal):
    names = receiver.metric_names()
    assert {
        "rpc.server.call.duration",
        "cutout.inference.batch_size",
        "cutout.inference.batch_wait",
        "cutout.inference.images",
        "cutout.credits",
        "cutout.retention.stored",
    } <= names


def test_nothing_private_is_exported(receiver, one_removal, customer):
    exported = list(receiver.all_strings())
    assert exported, "the receiver got telemetry"
    private = (
        MARKER,  # bytes of the image
        customer.api_key,
        customer.email,
        customer.password,
        customer.account_id,  # operators may see account ids in logs; telemetry never needs them
        one_removal.kept.token,
        "127.0.0.1",  # the caller's address
        "grpc-python",  # the caller's user agent
    )
    for secret in private:
        leaks = [text for text in exported if secret in text]
        assert not leaks, f"{secret!r} was exported: {leaks[:3]}"


def test_errors_mark_spans_with_the_code_only(traced_mesh, receiver, customer):
    with traced_mesh.gateway.channel() as channel:
        with pytest.raises(grpc.RpcError):
            cutout_pb2_grpc.CutoutStub(channel).RemoveBackground(
                cutout_pb2.RemoveBackgroundRequest(image=MARKER.encode()), metadata=customer.metadata, timeout=30
            )

    def failed_spans() -> list[ReceivedSpan]:
        return [s for s in receiver.spans() if s.span.name == REMOVE and s.span.status.code == 2]

    receiver.wait_for(lambda: failed_spans())
    span = failed_spans()[0]
    assert span.span.status.message == "INVALID_ARGUMENT"
    assert span.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert span.attributes["rpc.response.status_code"] == "INVALID_ARGUMENT"
    assert span.attributes["rpc.method"] == REMOVE.lstrip("/")
    # The log line about the refusal (the gateway's: a body that is no image is refused before
    # any credit is reserved or inference called) carries the same trace id.
    log_lines = traced_mesh.gateway.log_path.read_text().splitlines()
    refusals = [line for line in log_lines if "RemoveBackground refused: INVALID_ARGUMENT" in line]
    assert any(f"trace={span.span.trace_id.hex()}" in line for line in refusals), refusals


def test_with_exporting_off_nothing_connects_anywhere(tmp_path, monkeypatch, astronaut_png):
    for name in [n for n in __import__("os").environ if n.startswith("OTEL_")]:
        monkeypatch.delenv(name)
    # The OTLP default endpoint: anything trying to export would connect here.
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 4317))
    except OSError:
        pytest.skip("port 4317 is taken on this machine; cannot watch the default OTLP endpoint")
    listener.listen()
    listener.settimeout(0.1)
    gateway = ServiceProcess("gateway", {"CUTOUT_GATEWAY_INFERENCE_TARGET": f"127.0.0.1:{free_port()}"}, tmp_path)
    gateway.start()
    try:
        with gateway.channel() as channel, pytest.raises(grpc.RpcError):
            cutout_pb2_grpc.CutoutStub(channel).RemoveBackground(
                cutout_pb2.RemoveBackgroundRequest(image=astronaut_png), timeout=10
            )
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            with pytest.raises(TimeoutError):
                listener.accept()
    finally:
        gateway.stop()
        listener.close()
    assert "telemetry on" not in gateway.log_path.read_text()


def test_a_removal_with_a_key_just_seen_makes_one_accounts_call_before_its_commit(
    traced_mesh, receiver, one_removal, customer, astronaut_jpeg
):
    with traced_mesh.gateway.channel() as channel:
        remove = functools.partial(
            cutout_pb2_grpc.CutoutStub(channel).RemoveBackground,
            cutout_pb2.RemoveBackgroundRequest(image=astronaut_jpeg),
            metadata=customer.metadata,
            timeout=60,
        )
        remove()  # the key is seen (ADMITTED_KEY_TTL_S is 60 s in this mesh) ...
        started_ns = time.time_ns()
        remove()  # ... and this call is traced

    def this_call() -> list[ReceivedSpan]:
        return [
            s
            for s in receiver.spans()
            if s.span.name == REMOVE and s.service == "cutout-gateway" and s.span.start_time_unix_nano >= started_ns
        ]

    receiver.wait_for(lambda: len(this_call()) == 1)
    trace_id = this_call()[0].span.trace_id
    receiver.wait_for(
        lambda: any(
            s.span.trace_id == trace_id and s.span.name.endswith("/Commit") and s.service == "cutout-accounts"
            for s in receiver.spans()
        )
    )
    methods = sorted(
        s.span.name for s in receiver.spans() if s.span.trace_id == trace_id and s.service == "cutout-accounts"
    )
    assert methods == ["/cutout.v1.Accounts/AuthorizeAndReserve", "/cutout.v1.Accounts/Commit"]
