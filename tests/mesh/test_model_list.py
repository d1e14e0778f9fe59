"""ListModels (issue #29) on gRPC, on the HTTP edge (GET /v1/models) and in the CLI, and the
detected subject and the mask's confidence in every answer."""

from __future__ import annotations

import grpc
import pytest
import requests

from cutout.v1 import cutout_pb2, cutout_pb2_grpc, options_pb2
from services.launcher import Mesh
from tests.conftest import Customer
from tests.mesh.test_cli import run_cli

EXPECTED = {  # name: (input size, what it serves by default)
    "selfie_segmentation": ((256, 256), options_pb2.SUBJECT_PERSON),
    "u2netp": ((320, 320), options_pb2.SUBJECT_ANY),
}


def test_every_served_model_is_listed_with_its_licence_and_price(gateway, raw_channel):
    listed = {model.name: model for model in gateway.ListModels(options_pb2.ListModelsRequest(), timeout=30).models}
    assert set(EXPECTED) <= set(listed)
    for name, (size, default_for) in EXPECTED.items():
        model = listed[name]
        assert model.served and model.license == "Apache-2.0" and model.purpose
        assert (model.input_width, model.input_height) == size and model.default_for == default_for
        assert model.price_decimal == "1"
    with pytest.raises(grpc.RpcError) as caught:
        cutout_pb2_grpc.CutoutStub(raw_channel).ListModels(options_pb2.ListModelsRequest(), timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_models_over_http_and_in_the_cli(mesh: Mesh, funded_account: Customer):
    answer = requests.get(
        f"{mesh.edge.url}/v1/models",
        headers={"X-Api-Key": funded_account.api_key},
        verify=str(mesh.ca_file),
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    models = {model["name"]: model for model in answer.json()["models"]}
    assert models["u2netp"]["license"] == "Apache-2.0" and models["u2netp"]["inputWidth"] == 320
    assert models["selfie_segmentation"]["served"] is True
    printed = run_cli(mesh, "models", api_key=funded_account.api_key)
    assert printed.returncode == 0, printed.stderr
    rows = {line.split()[0]: line for line in printed.stdout.splitlines()[1:]}
    assert "Apache-2.0" in rows["u2netp"] and "320x320" in rows["u2netp"] and " any " in rows["u2netp"]
    assert "256x256" in rows["selfie_segmentation"] and " person " in rows["selfie_segmentation"]


@pytest.mark.parametrize(
    ("subject", "detected"),
    [
        (options_pb2.SUBJECT_AUTO, options_pb2.SUBJECT_PERSON),  # the astronaut is a portrait
        (options_pb2.SUBJECT_PERSON, options_pb2.SUBJECT_PERSON),
        (options_pb2.SUBJECT_ANY, options_pb2.SUBJECT_ANY),
    ],
)
def test_answers_carry_the_subject_and_a_confidence(gateway, astronaut_png: bytes, subject: int, detected: int):
    request = cutout_pb2.RemoveBackgroundRequest(
        image=astronaut_png, options=options_pb2.RemoveBackgroundOptions(subject=subject)
    )
    result = gateway.RemoveBackground(request, timeout=120).result
    assert result.subject == detected
    assert 0.5 < result.confidence <= 1.0  # a mask's pixels above 0.5 average more than 0.5
