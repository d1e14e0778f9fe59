"""Any subject: the person model and U²-Net-p, chosen per request, each model declared as data.

Through the real mesh: products and animals are cut out by the general model under the
default options, portraits keep the fast person model, PERSON and ANY reach their models
(Triton's own statistics), a third model is served from its folder alone. Offline: every
model config is a valid Triton ModelConfig with a usable profile.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import text_format
from PIL import Image
from tritonclient.grpc import model_config_pb2

from cutout.v1 import account_pb2, cutout_pb2, cutout_pb2_grpc, options_pb2
from services.common.assets import CHELSEA, COFFEE, WheelAsset
from services.inference.model import (
    GENERAL_MODEL,
    MODEL_REPOSITORY,
    PERSON_MODEL,
    REQUIRED_MODELS,
    TRITON_BACKENDS,
    U2NETP,
    dynamic_batch,
)
from services.inference.models import PersonRule, looks_like_person
from services.inference.profiles import ModelProfile, ProfileError, load_config
from services.inference.settings import InferenceSettings
from services.inference.triton_local import model_counts
from services.launcher import Mesh
from tests.conftest import CACHE, FAST_LEVEL, WithApiKey, decode, new_account
from tests.mesh.test_end_to_end import BACKDROP, FACE

PHOTOS = {"coffee": COFFEE, "chelsea": CHELSEA}


def photo(name: str) -> bytes:
    asset = PHOTOS[name]
    return asset.fetch(CACHE / "samples" / Path(asset.member).name).read_bytes()


def rembg_probability(model_file: Path, image: Image.Image) -> np.ndarray:
    """A U²-Net file run directly with rembg's own preprocessing: the min-max normalised 320x320 map."""
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    pixels = np.asarray(image.convert("RGB").resize((320, 320), Image.Resampling.LANCZOS), np.float64)
    pixels = pixels / pixels.max()
    tensor = ((pixels - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)).transpose(2, 0, 1)[None].astype(np.float32)
    prediction = session.run(None, {session.get_inputs()[0].name: tensor})[0][0, 0]
    return (prediction - prediction.min()) / (prediction.max() - prediction.min())


def rembg_u2netp_mask(image: Image.Image) -> np.ndarray:
    """U²-Net-p run directly on the published file with rembg's own pre- and post-processing."""
    prediction = rembg_probability(U2NETP.source(), image)
    mask = Image.fromarray((prediction * 255).astype(np.uint8), "L").resize(image.size, Image.Resampling.LANCZOS)
    return np.asarray(mask) >= 128


def alpha_of(response: cutout_pb2.RemoveBackgroundResponse) -> np.ndarray:
    return np.asarray(decode(response.result.image).getchannel("A")) >= 128


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def remove(gateway, image: bytes, **options: object) -> cutout_pb2.RemoveBackgroundResponse:
    request = cutout_pb2.RemoveBackgroundRequest(image=image, options=options_pb2.RemoveBackgroundOptions(**options))
    return gateway.RemoveBackground(request, timeout=180)


@pytest.mark.parametrize("name", ["coffee", "chelsea"])
def test_products_and_animals_are_cut_out_by_the_general_model_by_default(gateway, name):
    data = photo(name)
    response = remove(gateway, data)
    assert response.result.model == GENERAL_MODEL, "AUTO found no person, so the general model cuts it out"
    reference = rembg_u2netp_mask(Image.open(io.BytesIO(data)))
    overlap = iou(alpha_of(response), reference)
    assert overlap >= 0.9, f"{name}: IoU {overlap:.3f} with U²-Net-p run directly with rembg's preprocessing"


def test_person_and_any_each_reach_their_model_and_the_response_names_it(mesh, gateway, astronaut_png):
    for subject, expected in ((options_pb2.SUBJECT_PERSON, PERSON_MODEL), (options_pb2.SUBJECT_ANY, GENERAL_MODEL)):
        before = {name: model_counts(mesh.triton, name)[0] for name in (PERSON_MODEL, GENERAL_MODEL)}
        response = remove(gateway, astronaut_png, subject=subject)
        after = {name: model_counts(mesh.triton, name)[0] for name in (PERSON_MODEL, GENERAL_MODEL)}
        assert response.result.model == expected
        ran = {name: after[name] - before[name] for name in after}
        assert ran == {expected: 1, ({PERSON_MODEL, GENERAL_MODEL} - {expected}).pop(): 0}, subject


def test_a_model_can_be_named_and_unknown_ones_are_refused_without_charge(mesh, raw_channel, astronaut_png):
    customer = new_account(raw_channel, mesh.admin_token, credits=5)
    cutout = cutout_pb2_grpc.CutoutStub(grpc.intercept_channel(raw_channel, WithApiKey(customer.api_key)))
    assert remove(cutout, astronaut_png, model=GENERAL_MODEL).result.model == GENERAL_MODEL
    for options, words in (
        ({"model": "no_such_model"}, "unknown model 'no_such_model'"),
        ({"model": GENERAL_MODEL, "subject": options_pb2.SUBJECT_PERSON}, "set one of them"),
        ({"subject": 99}, "unknown subject 99"),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            remove(cutout, astronaut_png, **options)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, options
        assert words in caught.value.details()
    assert cutout.GetBalance(account_pb2.GetBalanceRequest(), timeout=30).available == 4


def test_the_fast_model_is_not_held_up_behind_the_slow_one(gateway, astronaut_png):
    """Each model has its own batcher: a portrait finishes while general-model work is still queued."""
    general = cutout_pb2.RemoveBackgroundRequest(
        image=photo("coffee"), options=options_pb2.RemoveBackgroundOptions(subject=options_pb2.SUBJECT_ANY)
    )
    slow = [gateway.RemoveBackground.future(general, timeout=300) for _ in range(4)]
    person = cutout_pb2.RemoveBackgroundRequest(
        image=astronaut_png, options=options_pb2.RemoveBackgroundOptions(subject=options_pb2.SUBJECT_PERSON)
    )
    assert gateway.RemoveBackground(person, timeout=120).result.model == PERSON_MODEL
    still_running = sum(not call.done() for call in slow)
    assert all(call.result().result.model == GENERAL_MODEL for call in slow)
    assert still_running >= 1, "the portrait waited for every general-model request"


# --- a third model, added as a folder and nothing else ---

LANDSCAPE = WheelAsset(
    requirement="mediapipe==0.10.14",
    member="mediapipe/modules/selfie_segmentation/selfie_segmentation_landscape.tflite",
    sha256="a77d03f4659b9f6b6c1f5106947bf40e99d7655094b6527f214ea7d451106edd",
)
LANDSCAPE_CONFIG = """
name: "selfie_segmentation_landscape"
backend: "litert"
default_model_filename: "selfie_segmentation_landscape.tflite"
max_batch_size: 8
input [ { name: "IMAGE" data_type: TYPE_FP32 format: FORMAT_NHWC dims: [ 144, 256, 3 ] } ]
output [ { name: "MASK" data_type: TYPE_FP32 dims: [ 144, 256, 1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
dynamic_batching { }
parameters { key: "cutout.task" value: { string_value: "segmentation" } }
parameters { key: "cutout.mean" value: { string_value: "0,0,0" } }
parameters { key: "cutout.std" value: { string_value: "1,1,1" } }
parameters { key: "cutout.output" value: { string_value: "probability" } }
"""


@pytest.fixture(scope="module")
def mesh_with_a_third_model(tmp_path_factory: pytest.TempPathFactory, model_paths: list[Path]) -> Iterator[Mesh]:
    repository = tmp_path_factory.mktemp("models")
    for name in REQUIRED_MODELS:
        shutil.copytree(MODEL_REPOSITORY / name, repository / name)
    folder = repository / "selfie_segmentation_landscape"
    LANDSCAPE.fetch(folder / "1" / "selfie_segmentation_landscape.tflite")
    (folder / "config.pbtxt").write_text(LANDSCAPE_CONFIG)
    mesh = Mesh(data_dir=tmp_path_factory.mktemp("mesh3"), model_repository=repository, env=FAST_LEVEL)
    mesh.start()
    yield mesh
    assert all(code == 0 for code in mesh.stop().values())


def test_a_third_model_is_served_from_its_folder_and_selected_by_name(mesh_with_a_third_model, astronaut_png):
    mesh = mesh_with_a_third_model
    with mesh.gateway.channel() as channel:
        customer = new_account(channel, mesh.admin_token)
        cutout = cutout_pb2_grpc.CutoutStub(grpc.intercept_channel(channel, WithApiKey(customer.api_key)))
        before = model_counts(mesh.triton, "selfie_segmentation_landscape")[0]
        response = remove(cutout, astronaut_png, model="selfie_segmentation_landscape")
    assert response.result.model == "selfie_segmentation_landscape"
    assert model_counts(mesh.triton, "selfie_segmentation_landscape")[0] == before + 1
    alpha = np.asarray(decode(response.result.image).getchannel("A"), np.float32) / 255
    assert alpha[FACE].mean() > 0.9 and alpha[BACKDROP].mean() < 0.1


# --- the model configs, offline ---


def model_configs() -> list[Path]:
    return sorted([*MODEL_REPOSITORY.glob("*/config.pbtxt"), *MODEL_REPOSITORY.glob("*/configs/*.pbtxt")])


@pytest.mark.parametrize("path", model_configs(), ids=lambda path: str(path.relative_to(MODEL_REPOSITORY)))
def test_every_model_config_is_a_triton_model_config_with_a_profile(path):
    config = load_config(path)  # strict: a field Triton does not know fails here
    profile = ModelProfile.from_config(config)
    assert config.name == path.parent.name if path.name == "config.pbtxt" else path.parent.parent.name
    assert (TRITON_BACKENDS / config.backend / "model.py").exists(), f"no embedded backend {config.backend}"
    kinds = {group.kind for group in config.instance_group}
    gpu = path.parent.name == "configs" and path.stem.startswith("gpu")
    assert kinds == {
        model_config_pb2.ModelInstanceGroup.KIND_GPU if gpu else model_config_pb2.ModelInstanceGroup.KIND_CPU
    }
    assert config.dynamic_batching.default_queue_policy.max_queue_size > 0, "Triton's queue is bounded"
    embedded = ModelProfile.from_config(load_config(MODEL_REPOSITORY / config.name / "config.pbtxt"))
    assert (profile.input_name, profile.output_name, profile.width, profile.height) == (
        embedded.input_name,
        embedded.output_name,
        embedded.width,
        embedded.height,
    )
    assert (profile.resize, profile.scale, profile.mean, profile.std, profile.output) == (
        embedded.resize,
        embedded.scale,
        embedded.mean,
        embedded.std,
        embedded.output,
    )


def test_the_gpu_configs_use_onnxruntime_on_the_gpu_and_tensorrt_fp16_is_an_option():
    gpu = load_config(MODEL_REPOSITORY / GENERAL_MODEL / "configs" / "gpu.pbtxt")
    assert gpu.backend == "onnxruntime" and gpu.max_batch_size >= 8
    trt = load_config(MODEL_REPOSITORY / GENERAL_MODEL / "configs" / "gpu-tensorrt-fp16.pbtxt")
    (accelerator,) = trt.optimization.execution_accelerators.gpu_execution_accelerator
    assert (accelerator.name, accelerator.parameters["precision_mode"]) == ("tensorrt", "FP16")


def test_a_config_without_a_usable_profile_is_refused_with_the_reason():
    config = text_format.Parse(LANDSCAPE_CONFIG, model_config_pb2.ModelConfig())
    config.input[0].format = model_config_pb2.ModelInput.FORMAT_NONE
    with pytest.raises(ProfileError, match="FORMAT_NHWC or FORMAT_NCHW"):
        ModelProfile.from_config(config)
    config = text_format.Parse(LANDSCAPE_CONFIG, model_config_pb2.ModelConfig())
    config.parameters["cutout.std"].string_value = "1,0,1"
    with pytest.raises(ProfileError, match=r"cutout\.std"):
        ModelProfile.from_config(config)


def test_a_profile_normalises_and_lays_out_the_input_as_declared():
    profile = ModelProfile.from_config(load_config(MODEL_REPOSITORY / GENERAL_MODEL / "config.pbtxt"))
    image = Image.new("RGB", (640, 480), (200, 100, 0))
    tensor = profile.tensor(image)
    assert tensor.shape == (3, 320, 320) and tensor.dtype == np.float32
    # Divided by the brightest value (200), as U²-Net was trained, then ImageNet's mean and std.
    expected = [(1.0 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (0.0 - 0.406) / 0.225]
    assert np.allclose(tensor[:, 100, 100], expected, atol=1e-5)
    saliency = np.linspace(0.2, 0.6, 320 * 320, dtype=np.float32).reshape(1, 320, 320)
    probability = profile.probability(saliency)
    assert probability.shape == (320, 320)
    assert (probability.min(), probability.max()) == (0.0, 1.0), "min-max normalised like rembg"


def test_the_general_model_batched_equals_the_published_file_one_image_at_a_time():
    published = ort.InferenceSession(str(U2NETP.source()), providers=["CPUExecutionProvider"])
    batched = ort.InferenceSession(dynamic_batch(U2NETP.source().read_bytes()), providers=["CPUExecutionProvider"])
    images = np.random.default_rng(7).random((3, 3, 320, 320), np.float32)
    together = batched.run(["1959"], {"input.1": images})[0]
    for index in range(3):
        alone = published.run(["1959"], {"input.1": images[index : index + 1]})[0]
        assert np.abs(together[index] - alone[0]).max() < 1e-4


def test_auto_keeps_a_confident_person_and_rejects_guesses():
    rule = PersonRule(
        **{
            name.removeprefix("auto_person_"): value
            for name, value in InferenceSettings().model_dump().items()
            if name.startswith("auto_person_")
        }
    )
    person = np.zeros((256, 256), np.float32)
    person[60:, 70:190] = 0.98  # a confident torso reaching the bottom edge
    assert looks_like_person(person, rule)
    assert not looks_like_person(np.zeros((256, 256), np.float32), rule), "nothing found"
    assert not looks_like_person(np.full((256, 256), 0.97, np.float32), rule), "the whole frame"
    unsure = np.zeros((256, 256), np.float32)
    unsure[60:, 60:200] = 0.55  # found something, but is not sure
    assert not looks_like_person(unsure, rule)
    floating = np.zeros((256, 256), np.float32)
    floating[60:200, 60:200] = 0.98  # confident, but a shape in mid-frame: a product, a logo
    assert not looks_like_person(floating, rule)
