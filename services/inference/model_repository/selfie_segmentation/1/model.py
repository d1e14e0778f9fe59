"""Triton Python-backend model: MediaPipe Selfie Segmentation with ai-edge-litert.

Requests that Triton's dynamic batcher groups are concatenated into one tensor and
run in a single interpreter invocation; the interpreter is resized only when the
batch size changes.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from ai_edge_litert.interpreter import Interpreter


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        model_file = Path(args["model_repository"]) / args["model_version"] / params["model_file"]
        self.interpreter = Interpreter(model_path=str(model_file), num_threads=int(params["num_threads"]))
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        self.output_index = self.interpreter.get_output_details()[0]["index"]
        self.batch_size = 0

    def execute(self, requests: list) -> list:
        images = [pb_utils.get_input_tensor_by_name(r, "IMAGE").as_numpy() for r in requests]
        batch = np.concatenate(images).astype(np.float32)
        batch *= 1.0 / 255.0
        if len(batch) != self.batch_size:
            self.interpreter.resize_tensor_input(self.input_index, list(batch.shape))
            self.interpreter.allocate_tensors()
            self.batch_size = len(batch)
        self.interpreter.set_tensor(self.input_index, batch)
        self.interpreter.invoke()
        masks = self.interpreter.get_tensor(self.output_index)
        responses = []
        start = 0
        for image in images:
            end = start + len(image)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("MASK", masks[start:end].copy())]))
            start = end
        return responses
