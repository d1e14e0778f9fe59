"""A segmentation model's profile: how a picture becomes its input and its output an alpha.

The profile is data, declared in the model's Triton `config.pbtxt` beside Triton's own
settings, so a model is added by adding its folder and nothing else:

- the input's `dims` and `format` (FORMAT_NHWC or FORMAT_NCHW) give the size and layout;
  the whole picture is resized to that size (aspect ratio not kept), RGB, with the filter
  `cutout.resize` names (`bilinear`, the default, or `lanczos`);
- `cutout.scale` brings pixels to [0, 1]: `255` (the default) divides by 255, `max` by the
  picture's brightest value, as U²-Net was trained;
- `cutout.mean` and `cutout.std` then normalise each channel: (x - mean) / std;
- the first declared output is the mask; `cutout.output` says how it becomes a
  probability: `probability` (already one), `sigmoid` (logits) or `minmax` (a relative
  saliency map, scaled to [0, 1] per image);
- `cutout.task: segmentation` marks the model as one that cuts out;
- `cutout.max_queue` (optional) bounds the images waiting for this model in each
  inference replica, for slow models.

The inference service reads it from Triton (`get_model_config`), so a remote GPU
Triton's models bring their own profiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from PIL import Image
from tritonclient.grpc import model_config_pb2

TASK = "segmentation"
OUTPUT_TRANSFORMS = ("probability", "sigmoid", "minmax")
_LAYOUTS = {model_config_pb2.ModelInput.FORMAT_NHWC: "NHWC", model_config_pb2.ModelInput.FORMAT_NCHW: "NCHW"}
_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "lanczos": Image.Resampling.LANCZOS}
SCALES = ("255", "max")


class ProfileError(ValueError):
    """A model config that does not declare a usable profile."""


def load_config(path: Path) -> model_config_pb2.ModelConfig:
    """A config.pbtxt as Triton reads it (raises text_format.ParseError on a field Triton would refuse)."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def is_segmentation(config: model_config_pb2.ModelConfig) -> bool:
    return config.parameters["cutout.task"].string_value == TASK if "cutout.task" in config.parameters else False


@dataclass(frozen=True)
class ModelProfile:
    name: str
    input_name: str
    output_name: str
    layout: str  # "NHWC" or "NCHW"
    width: int
    height: int
    resize: str  # a key of _FILTERS
    scale: str  # one of SCALES
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    output: str  # one of OUTPUT_TRANSFORMS
    max_batch_size: int  # Triton's; 0 means the model takes no batch dimension
    max_queue: int | None  # images waiting for this model per replica; None: the service's default
    # What ListModels says of it (config parameters cutout.license, an SPDX id, and cutout.purpose).
    license: str = ""
    purpose: str = ""

    @classmethod
    def from_config(cls, config: model_config_pb2.ModelConfig) -> ModelProfile:
        name = config.name
        if len(config.input) != 1 or not config.output:
            raise ProfileError(f"model {name}: a segmentation model has one input and at least one output")
        tensor = config.input[0]
        if tensor.data_type != model_config_pb2.TYPE_FP32:
            raise ProfileError(f"model {name}: input {tensor.name} must be TYPE_FP32")
        layout = _LAYOUTS.get(tensor.format)
        dims = list(tensor.dims)
        if layout is None or len(dims) != 3:
            raise ProfileError(f"model {name}: input {tensor.name} needs format FORMAT_NHWC or FORMAT_NCHW and 3 dims")
        height, width, channels = dims if layout == "NHWC" else (dims[1], dims[2], dims[0])
        if channels != 3 or height <= 0 or width <= 0:
            raise ProfileError(f"model {name}: input {tensor.name} must be a fixed-size RGB image, not {dims}")
        params = {key: value.string_value for key, value in config.parameters.items()}
        output = params.get("cutout.output", "probability")
        if output not in OUTPUT_TRANSFORMS:
            raise ProfileError(f"model {name}: cutout.output {output!r} is not one of {', '.join(OUTPUT_TRANSFORMS)}")
        resize = params.get("cutout.resize", "bilinear")
        if resize not in _FILTERS:
            raise ProfileError(f"model {name}: cutout.resize {resize!r} is not one of {', '.join(_FILTERS)}")
        scale = params.get("cutout.scale", "255")
        if scale not in SCALES:
            raise ProfileError(f"model {name}: cutout.scale {scale!r} is not one of {', '.join(SCALES)}")
        max_queue = params.get("cutout.max_queue")
        return cls(
            name=name,
            input_name=tensor.name,
            output_name=config.output[0].name,
            layout=layout,
            width=width,
            height=height,
            resize=resize,
            scale=scale,
            mean=_triple(name, "cutout.mean", params.get("cutout.mean", "0,0,0")),
            std=_triple(name, "cutout.std", params.get("cutout.std", "1,1,1")),
            output=output,
            max_batch_size=config.max_batch_size,
            max_queue=int(max_queue) if max_queue else None,
            license=params.get("cutout.license", ""),
            purpose=params.get("cutout.purpose", ""),
        )

    def tensor(self, image: Image.Image) -> np.ndarray:
        """An RGB picture as this model's input: float32, its size, layout and normalisation."""
        # reducing_gap 2: an integer box reduction first, then the filter over at most 2x:
        # 3.1 ms at 1 MP against 5.0 ms for the bilinear 256² input, a mask no metric tells apart.
        pixels = np.asarray(image.resize((self.width, self.height), _FILTERS[self.resize], reducing_gap=2.0))
        # (x / top - mean) / std as one multiply-add per channel.
        top = max(1, int(pixels.max())) if self.scale == "max" else 255
        std = np.asarray(self.std, np.float32)
        scale = 1 / (top * std)
        offset = -np.asarray(self.mean, np.float32) / std
        values = pixels.astype(np.float32)  # then in place: half the time of pixels * scale + offset
        values *= scale
        values += offset
        return np.ascontiguousarray(values.transpose(2, 0, 1)) if self.layout == "NCHW" else values

    def probability(self, output: np.ndarray) -> np.ndarray:
        """This model's output for one image as a float32 (H, W) probability of foreground."""
        mask = np.asarray(output, np.float32).reshape(_spatial(output.shape))
        if self.output == "sigmoid":
            return 1 / (1 + np.exp(-mask))
        if self.output == "minmax":
            low, high = float(mask.min()), float(mask.max())
            return (mask - low) / (high - low) if high > low else np.zeros_like(mask)
        return mask


def _spatial(shape: tuple[int, ...]) -> tuple[int, int]:
    """(H, W) of a mask shaped (H, W), (1, H, W) or (H, W, 1)."""
    sides = [side for side in shape if side != 1]
    if len(sides) != 2:
        raise ProfileError(f"a mask output must have one channel and two spatial sides, not shape {shape}")
    return sides[0], sides[1]


def _triple(model: str, key: str, text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or (key == "cutout.std" and 0 in values):
        raise ProfileError(f"model {model}: {key} must be three numbers (R,G,B){', none 0' * (key == 'cutout.std')}")
    return values  # type: ignore[return-value]
