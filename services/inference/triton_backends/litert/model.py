"""Triton Python-based backend "litert": runs a model's .tflite file with ai-edge-litert.

Any model whose config says `backend: "litert"` is served by this one file: the
version folder holds only the weights (`default_model_filename`, else model.tflite).
The input arrives exactly as the model takes it (the inference service applies the
model's profile), so nothing here is specific to one model. Requests that Triton's
dynamic batcher groups run in one interpreter invocation; the interpreter is resized
only when the batch size changes.

Parameters: `num_threads` (default 1).
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
        filename = config.get("default_model_filename") or "model.tflite"
        model_file = Path(args["model_repository"]) / args["model_version"] / filename
        self.interpreter = Interpreter(model_path=str(model_file), num_threads=int(params.get("num_threads", "1")))
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.output_dims = [int(d) for d in config["output"][0]["dims"]]
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        self.output_index = self.interpreter.get_output_details()[0]["index"]
        self.batch_size = 0

    def execute(self, requests: list) -> list:
        inputs = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        batch = np.concatenate(inputs)
        if len(batch) != self.batch_size:
            self.interpreter.resize_tensor_input(self.input_index, list(batch.shape))
            self.interpreter.allocate_tensors()
            self.batch_size = len(batch)
        self.interpreter.set_tensor(self.input_index, batch)
        self.interpreter.invoke()
        outputs = self.interpreter.get_tensor(self.output_index).reshape(len(batch), *self.output_dims)
        responses = []
        start = 0
        for tensor in inputs:
            end = start + len(tensor)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, outputs[start:end].copy())]))
            start = end
        return responses
