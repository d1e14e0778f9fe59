"""Triton Python-backend model: an ONNX inpainting model (IMAGE, MASK -> IMAGE_OUT) run by onnxruntime."""

import json
from pathlib import Path

import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        model_file = Path(args["model_repository"]) / args["model_version"] / params["model_file"]
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(params["num_threads"])
        self.session = onnxruntime.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:  # max_batch_size 0: pictures of any size, one at a time
            feeds = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in ("IMAGE", "MASK")}
            (filled,) = self.session.run(["IMAGE_OUT"], feeds)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("IMAGE_OUT", filled)]))
        return responses
