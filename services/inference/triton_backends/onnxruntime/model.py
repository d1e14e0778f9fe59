"""Triton Python-based backend "onnxruntime", for the embedded (pip) Triton only.

The pip wheel's Triton has only the Python backend, so this file stands in for
Triton's own ONNX Runtime backend, which the NGC image ships and which serves the
same model folder on GPU clusters: the same `backend: "onnxruntime"`, the same
model.onnx, the same declared inputs and outputs, the same `intra_op_thread_count`
parameter. It runs onnxruntime on the CPU. Requests that Triton's dynamic batcher
groups run as one batch.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        filename = config.get("default_model_filename") or "model.onnx"
        model_file = Path(args["model_repository"]) / args["model_version"] / filename
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_thread_count", "0"))
        options.inter_op_num_threads = 1
        # No memory pattern (one block planned for a whole run, sized by the batch): U²-Net-p
        # peaks at 2.4 GiB instead of 4.0 at a batch of 8, 1.1 instead of 1.8 at 4, and runs
        # no slower (docs/benchmarks.md#memory-bounds). Turning the arena off instead saved as much
        # but cost a quarter of the throughput.
        options.enable_mem_pattern = False
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        # max_batch_size 0: no batch dimension (say, pictures of any size), one request at a time.
        self.batches = int(config.get("max_batch_size", 0)) > 0

    def execute(self, requests: list) -> list:
        inputs = [
            {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names}
            for request in requests
        ]
        if not self.batches:
            return [self._answer(self.session.run(self.output_names, given)) for given in inputs]
        feeds = {name: np.concatenate([given[name] for given in inputs]) for name in self.input_names}
        outputs = self.session.run(self.output_names, feeds)
        responses = []
        start = 0
        for given in inputs:
            end = start + len(given[self.input_names[0]])
            responses.append(self._answer([out[start:end] for out in outputs]))
            start = end
        return responses

    def _answer(self, outputs: list) -> object:
        tensors = [pb_utils.Tensor(name, out.copy()) for name, out in zip(self.output_names, outputs, strict=True)]
        return pb_utils.InferenceResponse(tensors)
