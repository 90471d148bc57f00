"""stma: semi-supervised video object segmentation with STMA.

    from stma_core import VideoSession, load_model, InferenceConfig

    session = VideoSession.from_pretrained(device="auto")          # the shipped model
    session.add_mask(0, first_mask)                                 # HxW uint8, pixel = object id 1..254
    for index, mask in session.propagate(frames): ...               # frames: HxWx3 uint8 RGB

The names are imported on first use, so `import stma_core` stays light (no torch until needed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["InferenceConfig", "ModelConfig", "StmaInputError", "VideoSession", "load_model", "resolve_device",
           "session_factory"]

_HOMES = {
    "InferenceConfig": "stma_core.config",
    "ModelConfig": "stma_core.config",
    "VideoSession": "stma_core.inference.session",
    "session_factory": "stma_core.inference.session",
    "load_model": "stma_core.checkpoint",
    "resolve_device": "stma_core.device",
    "StmaInputError": "stma_core.errors",
}

if TYPE_CHECKING:
    from stma_core.checkpoint import load_model
    from stma_core.config import InferenceConfig, ModelConfig
    from stma_core.device import resolve_device
    from stma_core.errors import StmaInputError
    from stma_core.inference.session import VideoSession, session_factory


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'stma_core' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_HOMES[name]), name)
