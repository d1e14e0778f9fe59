"""Concurrent requests share Triton model executions (Triton's own statistics say so)."""

from __future__ import annotations

from cutout.v1 import cutout_pb2
from services.inference.model import PERSON_MODEL
from services.inference.triton_local import model_counts


def test_sixteen_requests_at_once_take_fewer_than_sixteen_model_executions(mesh, gateway, astronaut_png):
    inferences_before, executions_before = model_counts(mesh.triton, PERSON_MODEL)
    request = cutout_pb2.RemoveBackgroundRequest(image=astronaut_png)
    calls = [gateway.RemoveBackground.future(request, timeout=120) for _ in range(16)]
    responses = [call.result() for call in calls]
    inferences_after, executions_after = model_counts(mesh.triton, PERSON_MODEL)

    assert inferences_after - inferences_before == 16
    executions = executions_after - executions_before
    assert executions < 16, f"16 requests took {executions} model executions"
    assert max(r.timings.batch_size for r in responses) > 1
