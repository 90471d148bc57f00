"""Typed configuration. A ModelConfig is saved next to every checkpoint and rebuilds the network."""

from __future__ import annotations

import dataclasses
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
    top_k: int = 30  # memory readout keeps the k best matches per query position (0 = all)
    vit_weights: str | None = None  # optional timm-format ViT-B/16 weight file for backbone="vitb"

    @staticmethod
    def vitb(vit_weights: str | None = None) -> "ModelConfig":
        return ModelConfig(backbone="vitb", embed_dim=768, stml_depth=12, num_heads=12, mlp_ratio=4.0,
                           key_dim=64, value_dim=256, decoder_dims=(128, 64, 32), vit_weights=vit_weights)


@dataclass
class InferenceConfig:
    """Per-video inference settings (memories, processing size, device)."""

    size: int = 480  # short side the network sees; outputs are at the input's resolution
    device: str = "auto"  # auto | cpu | cuda | mps
    spatial_capacity: int = 2  # reference frames kept besides the pinned first-appearance frames
    spatial_every: int = 3  # a frame enters the spatial memory every k frames
    temporal_capacity: int = 8  # frames kept in the temporal memory (besides first-appearance frames)
    temporal_every: int = 3  # a frame enters the temporal memory every k frames
    amp: bool = True  # autocast on CUDA


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
