"""Typed configuration, the one place settings are defined.

ModelConfig: the architecture, saved in every checkpoint, rebuilds the network (unknown keys of old
checkpoints, such as a `top_k` that moved to InferenceConfig, are ignored).
InferenceConfig: per-video settings (processing size, memory readout and capacities); a checkpoint
carries the one it recommends, and `resolve_inference_config` merges it with what the user asked for.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ModelConfig:
    """Architecture of the STMA network (section 3 of the paper)."""

    backbone: str = "lite"  # "lite": EfficientNet-Lite conv stages + STML blocks; "vitb": ViT-B/16 blocks as STML
    lite_variant: str = "lite0"
    embed_dim: int = 128  # C: width of STML tokens (768 for vitb)
    stml_depth: int = 2  # number of STML blocks (12 for vitb)
    num_heads: int = 4
    mlp_ratio: float = 2.0
    key_dim: int = 64  # temporal-memory key width
    value_dim: int = 128  # ID value width
    decoder_dims: tuple[int, int, int] = (96, 64, 32)  # stride 16, 8, 4
    vit_weights: str | None = None  # optional timm-format ViT-B/16 weight file for backbone="vitb"

    @staticmethod
    def vitb(vit_weights: str | None = None) -> "ModelConfig":
        return ModelConfig(backbone="vitb", embed_dim=768, stml_depth=12, num_heads=12, mlp_ratio=4.0,
                           key_dim=64, value_dim=256, decoder_dims=(128, 64, 32), vit_weights=vit_weights)


BACKBONES = ("lite", "vitb")
LITE_VARIANTS = ("lite0", "lite1", "lite2")  # EfficientNet-Lite trunks with stage tables in model/lite_backbone.py


def model_config_problems(config: ModelConfig) -> list[str]:
    """What makes a ModelConfig unbuildable, as short phrases (empty when it is fine). One check for the
    training config's `model:` section and a checkpoint's model_config metadata, so neither fails deep
    inside the network's constructor (an assertion, a ZeroDivisionError, a negative tensor size)."""
    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    problems = []
    if config.backbone not in BACKBONES:
        problems.append(f"backbone {config.backbone!r} is not one of {list(BACKBONES)}")
    if config.backbone == "lite" and config.lite_variant not in LITE_VARIANTS:
        problems.append(f"lite_variant {config.lite_variant!r} is not one of {list(LITE_VARIANTS)}")
    for key in ("embed_dim", "stml_depth", "num_heads", "key_dim", "value_dim"):
        value = getattr(config, key)
        if not whole(value) or value < 1:
            problems.append(f"{key} {value!r} must be a whole number >= 1")
    dims = config.decoder_dims
    if not isinstance(dims, (list, tuple)) or len(dims) != 3 or not all(whole(d) and d >= 1 for d in dims):
        problems.append(f"decoder_dims {dims!r} must be 3 whole numbers >= 1 (stride 16, 8, 4)")
    ratio = config.mlp_ratio
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not ratio > 0:
        problems.append(f"mlp_ratio {ratio!r} must be a number > 0")
    embed, heads = config.embed_dim, config.num_heads
    if whole(embed) and whole(heads) and embed >= 1 and heads >= 1:
        if embed % heads:
            problems.append(f"embed_dim {embed} must be divisible by num_heads {heads}")
        elif embed % 4:  # the sinusoidal positional embedding splits it in four
            problems.append(f"embed_dim {embed} must be a multiple of 4")
    return problems


class Direction(enum.Enum):
    """Which way `VideoSession.propagate` runs through a video (`stma segment --direction`)."""

    FORWARD = "forward"  # from frame 0 on; frames before the first mask come out empty (streams any iterable)
    BACKWARD = "backward"  # from the last frame back to 0; frames after the last mask come out empty
    BOTH = "both"  # forward from the first mask, then backward from the last mask over the frames before it


TOKEN_CELL = 16  # pixels per stride-16 token: the least the network can compute on at all
# Smallest processing size (short side) a user may ask for: the network sees 16-pixel cells, and with fewer
# than 4 rows of them the masks collapse (car-shadow, mean J over 40 frames, shipped model: 0.80 at 80,
# 0.67 at 64 (the car lost in the last 3 frames), 0.21 at 48, 0 at 32; the CPU-trained weights before it:
# 0.73 at 64, 0.20 at 48, 0 at 32 and 16). A floor, not a recommendation: small objects need far more
# (480 is the default). --size and InferenceConfig.size are checked against it.
MIN_SIZE = 64
SIZE_TOO_SMALL = (f"too small for the network (it sees {TOKEN_CELL}-pixel cells and its masks "
                  f"collapse below {MIN_SIZE})")


@dataclass
class InferenceConfig:
    """Per-video inference settings: processing size, memory readout and memory capacities.

    The device is not a per-video setting: it is chosen when the model is loaded.
    """

    size: int = 480  # short side the network sees (never up-scaled); outputs are at the input's resolution
    top_k: int = 30  # memory readout keeps the k best matches per query position (0 = all)
    kernel_sigma: int = 0  # memory readout's Gaussian kernel (KMN) sigma in stride-16 cells (0 = none)
    spatial_capacity: int = 2  # reference frames kept besides the pinned first-appearance frames
    spatial_every: int = 3  # a frame enters the spatial memory every k frames
    temporal_capacity: int = 8  # frames kept in the temporal memory (besides first-appearance frames)
    temporal_every: int = 3  # a frame enters the temporal memory every k frames
    amp: bool = True  # autocast on CUDA

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raises ValueError naming a setting below its minimum (VideoSession re-checks: fields are mutable)."""
        for name, least in SETTING_MINIMUMS.items():
            value = getattr(self, name)
            is_int = isinstance(value, int) and not isinstance(value, bool)
            if not is_int or value < least:
                why = f", {SIZE_TOO_SMALL}" if name == "size" and is_int else ""
                example = f", e.g. {InferenceConfig.size} (the default)" if name == "size" else ""
                raise ValueError(f"InferenceConfig.{name} is {value!r}{why}; use an integer of at least {least}"
                                 f"{example}")


# smallest allowed value of each integer InferenceConfig setting
SETTING_MINIMUMS = {"size": MIN_SIZE, "top_k": 0, "kernel_sigma": 0, "spatial_capacity": 0, "spatial_every": 1,
                    "temporal_capacity": 0, "temporal_every": 1}


def resolve_inference_config(recommended: dict[str, Any] | InferenceConfig | None = None,
                             base: InferenceConfig | None = None, **overrides: Any) -> InferenceConfig:
    """The one place settings are resolved (segment, eval, export and the Python API all call it).

    Priority: explicit `overrides` (None values mean "not given") > `base` (a whole config the caller
    passed) > `recommended` (what the checkpoint recommends) > InferenceConfig defaults.
    `recommended` may be a checkpoint's metadata-style dict (unknown keys ignored).
    """
    values: dict[str, Any] = {}
    if isinstance(recommended, InferenceConfig):
        values.update(to_dict(recommended))
    elif recommended:
        names = {f.name for f in dataclasses.fields(InferenceConfig)}
        values.update({k: v for k, v in recommended.items() if k in names})
    if base is not None:
        values.update(to_dict(base))
    unknown = [k for k in overrides if k not in {f.name for f in dataclasses.fields(InferenceConfig)}]
    if unknown:
        raise TypeError(f"unknown inference setting(s) {unknown}; see stma_core.config.InferenceConfig")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return InferenceConfig(**values)


def to_dict(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Builds a dataclass from a dict, ignoring unknown keys and restoring tuples."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key in names:
            if isinstance(value, list) and "tuple" in str(names[key].type):
                value = tuple(value)
            kwargs[key] = value
    return cls(**kwargs)


def save_json(obj: Any, path: Path) -> None:
    path.write_text(json.dumps(to_dict(obj), indent=2) + "\n")
