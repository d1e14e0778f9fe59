"""The learned inpainting slot end to end: a tiny ONNX model built here (IMAGE_OUT = max(IMAGE,
MASK), so marked pixels come back white) served by the embedded Triton through the slot's
Python-backend form, and used by a real inference service's Erase."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from cutout.v1 import cutout_pb2_grpc, erase_pb2, inference_pb2, inference_pb2_grpc
from services.common.channels import channel_options
from services.inference.inpainting import EraseMethod
from services.inference.model import GENERAL_MODEL, MODEL_REPOSITORY, PERSON_MODEL, REQUIRED_MODELS
from services.inference.triton_local import LocalTriton
from services.launcher import ServiceProcess, free_port
from tests.conftest import decode, encode, new_account
from tests.mesh.test_bad_input import reasons
from tests.mesh.test_credits import balance

SLOTS = MODEL_REPOSITORY.parent / "model_slots"


def white_fill_model() -> bytes:
    graph = helper.make_graph(
        [helper.make_node("Max", ["IMAGE", "MASK"], ["IMAGE_OUT"])],
        "white_fill",
        [
            helper.make_tensor_value_info("IMAGE", TensorProto.UINT8, ["h", "w", 3]),
            helper.make_tensor_value_info("MASK", TensorProto.UINT8, ["h", "w", 1]),
        ],
        [helper.make_tensor_value_info("IMAGE_OUT", TensorProto.UINT8, ["h", "w", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


@pytest.fixture(scope="module")
def inference_with_a_model(tmp_path_factory, model_paths: list[Path]) -> Iterator[str]:
    """Triton with the segmentation models and the slot filled, and an inference service using it."""
    work = tmp_path_factory.mktemp("inpainting-slot")
    repository = work / "models"
    ignore = shutil.ignore_patterns("__pycache__")
    for name in REQUIRED_MODELS:
        shutil.copytree(MODEL_REPOSITORY / name, repository / name, ignore=ignore)
    shutil.copytree(SLOTS / "inpainting", repository / "inpainting", ignore=ignore)
    (repository / "inpainting" / "1").mkdir()
    (repository / "inpainting" / "1" / "model.onnx").write_bytes(white_fill_model())
    triton = LocalTriton(grpc_port=free_port(), work_dir=work / "triton", model_repository=repository)
    triton.work_dir.mkdir()
    inference = ServiceProcess(
        "inference",
        {"CUTOUT_INFERENCE_TRITON_URL": triton.url, "CUTOUT_INFERENCE_ERASE_MODEL_NAME": "inpainting"},
        work,
    )
    try:
        triton.start()
        triton.wait_ready((PERSON_MODEL, GENERAL_MODEL, "inpainting"))
        inference.start()
        inference.wait_serving()  # SERVING only once the inpainting model is ready too
        yield inference.address
    finally:
        assert inference.stop() in (0, None)
        triton.stop()


def test_erase_uses_the_model_in_the_slot(inference_with_a_model, astronaut):
    photo = np.asarray(astronaut.resize((120, 90)))
    mask = np.zeros((90, 120), bool)
    mask[10:14, 5:100] = True
    mask[40:70, 60:90] = True
    with grpc.insecure_channel(inference_with_a_model, options=channel_options()) as channel:
        stub = inference_pb2_grpc.InferenceStub(channel)

        def erase(method: int) -> erase_pb2.EraseRegionsResponse:
            regions = erase_pb2.EraseRegions(
                mask=encode(Image.fromarray(mask), "PNG"), options=erase_pb2.EraseOptions(method=method)
            )
            request = inference_pb2.EraseRequest(image=encode(Image.fromarray(photo), "PNG"), regions=regions)
            return stub.Erase(request, timeout=60)

        learned = erase(EraseMethod.ERASE_METHOD_AUTO)  # AUTO takes the model when the server has one
        out = np.asarray(decode(learned.result.image))
        assert (out[mask] == 255).all()  # what the model computed
        assert np.array_equal(out[~mask], photo[~mask])
        assert {r.method for r in learned.regions} == {EraseMethod.ERASE_METHOD_MODEL}
        classical = erase(EraseMethod.ERASE_METHOD_TELEA)  # a classical fill can still be asked for
        assert not (np.asarray(decode(classical.result.image))[mask] == 255).all()


def test_asking_for_the_model_where_there_is_none_is_a_failed_precondition(mesh, raw_channel, astronaut):
    account = new_account(raw_channel, mesh.admin_token, credits=3)
    request = erase_pb2.EraseRegionsRequest(
        image=encode(astronaut.resize((64, 64)), "PNG"),
        regions=erase_pb2.EraseRegions(
            boxes=[erase_pb2.Box(x=1, y=1, width=8, height=8)],
            options=erase_pb2.EraseOptions(method=EraseMethod.ERASE_METHOD_MODEL),
        ),
    )
    with pytest.raises(grpc.RpcError) as caught:
        cutout_pb2_grpc.CutoutStub(raw_channel).EraseRegions(request, metadata=account.metadata, timeout=60)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reasons(caught.value) == ["NO_INPAINTING_MODEL"]
    assert balance(raw_channel, account).available == 3
