"""The detail levels through the real mesh: each level's model and refinement, the fine level
against the same model and matting run in-process, the refusal of an unknown level, and the
opt-in gate of the AGPL quality tier."""

from __future__ import annotations

import io
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from cutout.v1 import cutout_pb2, cutout_pb2_grpc, options_pb2
from services.common.assets import NpmAsset
from services.inference import detail, matting
from services.inference.model import (
    FINE_MODEL,
    GENERAL_MODEL,
    ISNET,
    MODEL_FILES,
    MODEL_REPOSITORY,
    MODEL_SLOTS,
    PERSON_MODEL,
    U2NET,
    fetch_models,
)
from services.inference.profiles import ModelProfile, load_config
from services.inference.settings import InferenceSettings
from services.inference.triton_local import model_counts
from tests.conftest import WithApiKey, decode, new_account
from tests.mesh.test_credits import balance
from tests.mesh.test_models import photo, rembg_probability

LEVELS = {
    options_pb2.DETAIL_FAST: PERSON_MODEL,  # AUTO keeps the person model's confident portrait
    options_pb2.DETAIL_BALANCED: GENERAL_MODEL,
    options_pb2.DETAIL_FINE: FINE_MODEL,
}


def remove(gateway, image: bytes, **options: object) -> cutout_pb2.RemoveBackgroundResponse:
    request = cutout_pb2.RemoveBackgroundRequest(image=image, options=options_pb2.RemoveBackgroundOptions(**options))
    return gateway.RemoveBackground(request, timeout=180)


@pytest.mark.parametrize("level", list(LEVELS), ids=lambda level: options_pb2.Detail.Name(level))
def test_each_level_runs_its_model_once(mesh, gateway, astronaut_png, level):
    expected = LEVELS[level]
    before = model_counts(mesh.triton, expected)[0]
    response = remove(gateway, astronaut_png, detail=level)
    assert response.result.model == expected
    assert model_counts(mesh.triton, expected)[0] == before + 1


@pytest.mark.parametrize("name", ["coffee", "chelsea"])
def test_the_fine_level_is_full_u2net_then_matting_as_run_in_process(gateway, name):
    data = photo(name)
    response = remove(gateway, data, detail=options_pb2.DETAIL_FINE, format=options_pb2.OUTPUT_FORMAT_MASK)
    assert response.result.model == FINE_MODEL
    served = np.asarray(Image.open(io.BytesIO(response.result.image)).convert("L"), np.float32) / 255
    image = Image.open(io.BytesIO(data)).convert("RGB")
    probability = rembg_probability(U2NET.source(), image)
    reference = detail.bounded_matte(InferenceSettings())(image, probability).astype(np.float32) / 255
    plain = matting.upsample(probability, image.size).astype(np.float32) / 255
    assert np.abs(served - reference).mean() < 0.01, "the served alpha is the in-process pipeline's"
    # ... and it is the matted alpha, not the model's mask upsampled.
    assert np.abs(served - plain).mean() > 5 * np.abs(served - reference).mean()


def test_an_unknown_level_is_refused_before_any_work_and_not_charged(mesh, raw_channel, astronaut_png):
    customer = new_account(raw_channel, mesh.admin_token)
    cutout = cutout_pb2_grpc.CutoutStub(grpc.intercept_channel(raw_channel, WithApiKey(customer.api_key)))
    before = balance(raw_channel, customer)
    with pytest.raises(grpc.RpcError) as caught:
        remove(cutout, astronaut_png, detail=99)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "DETAIL_FINE" in caught.value.details()
    assert balance(raw_channel, customer).available_decimal == before.available_decimal


def test_the_services_own_default_is_the_fine_level():
    settings = InferenceSettings()
    assert settings.default_detail == "fine"
    assert detail.level(options_pb2.RemoveBackgroundOptions(), settings).general_model == FINE_MODEL
    fast = InferenceSettings(default_detail="fast")
    assert detail.level(options_pb2.RemoveBackgroundOptions(), fast).person_first


def test_a_cut_out_at_the_fine_level_is_a_clean_transparent_png(gateway, astronaut_png):
    result = remove(gateway, astronaut_png, detail=options_pb2.DETAIL_FINE).result
    alpha = np.asarray(decode(result.image).getchannel("A"))
    assert alpha.shape == (512, 512) and 0.2 < (alpha >= 128).mean() < 0.8


# --- the quality tier's opt-in gate ---


def test_no_agpl_file_is_among_the_models_fetched_by_default(tmp_path: Path):
    assert all(not isinstance(file.asset, NpmAsset) for file in MODEL_FILES)
    assert ISNET.file.model not in {file.model for file in MODEL_FILES}
    fetch_models(tmp_path)  # what `make up` and `make test` run, into an empty repository
    assert not (tmp_path / ISNET.file.model).exists()
    assert "Affero" in ISNET.notice and "opt in" in ISNET.notice


def test_the_opt_in_models_slot_config_is_a_valid_profile():
    config = load_config(MODEL_SLOTS / ISNET.file.model / "config.pbtxt")
    profile = ModelProfile.from_config(config)
    assert (profile.width, profile.height, profile.output) == (1024, 1024, "probability")
    # (x - 128) / 256 on 0-255 pixels, written as (x / 255 - mean) / std
    value = np.float32(200)
    assert abs((value / 255 - profile.mean[0]) / profile.std[0] - (value - 128) / 256) < 1e-6


def test_the_quality_tier_is_not_served_unless_an_operator_opted_in(gateway, astronaut_png):
    if (MODEL_REPOSITORY / ISNET.file.model).exists():
        pytest.skip("an operator opted in to IS-Net on this machine (services/inference/model_repository/isnet)")
    with pytest.raises(grpc.RpcError) as caught:
        remove(gateway, astronaut_png, model=ISNET.file.model)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown model 'isnet'" in caught.value.details()


def test_the_fine_level_estimates_the_foreground_colour_at_the_edge(gateway, astronaut_png, astronaut):
    fine = options_pb2.DETAIL_FINE
    mask = np.asarray(
        decode(remove(gateway, astronaut_png, detail=fine, format=options_pb2.OUTPUT_FORMAT_MASK).result.image).convert(
            "L"
        )
    )
    cutout = np.asarray(decode(remove(gateway, astronaut_png, detail=fine).result.image))
    edge = (mask > 20) & (mask < 235)
    assert edge.sum() > 200
    assert np.array_equal(cutout[..., 3], mask), "the same alpha as the mask"
    changed = np.abs(cutout[..., :3].astype(int) - np.asarray(astronaut, int)).max(axis=-1) > 8
    assert changed[edge].mean() > 0.5, "edge colours are the foreground's estimate, not the photo's mix"
    assert changed[mask == 255].mean() < 0.01, "inside the subject the photo's colours stay"


@pytest.mark.parametrize(
    ("photo_name", "detected"), [("astronaut", options_pb2.SUBJECT_PERSON), ("coffee", options_pb2.SUBJECT_ANY)]
)
def test_auto_at_the_fine_level_still_says_what_it_saw(gateway, astronaut_png, photo_name, detected):
    data = astronaut_png if photo_name == "astronaut" else photo(photo_name)
    result = remove(gateway, data, detail=options_pb2.DETAIL_FINE).result
    assert result.model == FINE_MODEL, "the fine level's model cuts it out ..."
    assert result.subject == detected, "... and the person model's look at it says what it is"
    assert 0.5 < result.confidence <= 1.0
