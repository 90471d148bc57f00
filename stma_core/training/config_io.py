"""Loads a TrainConfig from YAML (nested `model:` section = ModelConfig); unknown keys are errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from stma_core.config import ModelConfig
from stma_core.errors import StmaInputError
from stma_core.training.config import TrainConfig


def _build(cls: type, data: dict[str, Any], path: Path) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise StmaInputError(f"{path}: unknown {cls.__name__} keys {unknown}; valid keys: {sorted(fields)}")
    kwargs = {}
    for key, value in data.items():
        if key == "model" and cls is TrainConfig:
            value = _build(ModelConfig, value or {}, path)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def load_train_config(path: str | Path) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise StmaInputError(f"{path}: training config not found; pass --config with a YAML file (see configs/)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise StmaInputError(f"{path}: invalid YAML ({str(exc).splitlines()[0]}); fix the syntax") from exc
    if not isinstance(data, dict):
        raise StmaInputError(f"{path}: expected a mapping of config keys; see configs/ for examples")
    return _build(TrainConfig, data, path)
