"""Loads a TrainConfig from YAML (nested `model:` section = ModelConfig); unknown keys are errors.

A file may hold several stages of one recipe: keys at the top are shared, and a `stages:` mapping
holds per-stage overrides (`stages: {static: {...}, main: {...}}`), picked with `--stage NAME`.
Values are type-checked here so a typo fails at once with the key's name, not mid-run.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml

from stma_core.config import MIN_SIZE, ModelConfig, model_config_problems
from stma_core.errors import StmaInputError
from stma_core.io.text import read_user_text
from stma_core.training.config import STAGES, TrainConfig


def _check_scalar(kind: str, value: Any) -> Any:
    """Returns the value converted to `kind` (int, float, bool, str), or raises TypeError."""
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind == "float" and isinstance(value, str):  # YAML 1.1 reads `lr: 1e-4` (no dot) as a string
        try:
            number = float(value)
        except ValueError:
            raise TypeError(kind) from None
        if math.isfinite(number):
            return number
    if kind == "str" and isinstance(value, str):
        return value
    raise TypeError(kind)


def _coerce(type_text: str, value: Any) -> Any:
    """Checks a YAML value against a dataclass field's annotation (as text, e.g. 'tuple[int, ...]')."""
    type_text = type_text.replace(" ", "")
    if type_text.endswith("|None"):
        return None if value is None else _coerce(type_text[:-5], value)
    if type_text.startswith("tuple["):
        inner = type_text[6:-1].split(",")
        if not isinstance(value, (list, tuple)):
            raise TypeError(type_text)
        if inner[-1] != "..." and len(value) != len(inner):
            raise TypeError(f"a list of {len(inner)} {inner[0]}s")
        return tuple(_check_scalar(inner[0], v) for v in value)
    return _check_scalar(type_text, value)


def _build(cls: type, data: dict[str, Any], path: Path) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise StmaInputError(f"{path}: unknown {cls.__name__} keys {unknown}; valid keys: {sorted(fields)}")
    kwargs = {}
    for key, value in data.items():
        if key == "model" and cls is TrainConfig:
            if value is not None and not isinstance(value, dict):
                raise StmaInputError(f"{path}: `model` must be a mapping of ModelConfig keys")
            value = _build(ModelConfig, value or {}, path)
        else:
            try:
                value = _coerce(str(fields[key].type), value)
            except TypeError as exc:
                raise StmaInputError(f"{path}: `{key}: {value!r}` is not {exc} (expected {fields[key].type}); "
                                     "fix the value") from None
        kwargs[key] = value
    return cls(**kwargs)


def validate(cfg: TrainConfig, path: Path) -> None:
    """Value checks that would otherwise fail deep inside a training step."""
    problems = []
    if cfg.stage not in STAGES:
        problems.append(f"stage {cfg.stage!r} is not one of {list(STAGES)}")
    for key in ("steps", "batch_size", "checkpoint_every", "log_every", "static_frame_every"):
        if getattr(cfg, key) < 1:
            problems.append(f"{key} must be >= 1")
    if cfg.clip_length < 2:
        problems.append("clip_length must be >= 2 (frame 0 is the given mask)")
    if any(v <= 0 or v % 16 for v in (*cfg.crop, *cfg.frame_size)):
        problems.append("crop and frame_size must be positive multiples of 16")
    if min(cfg.frame_size) < MIN_SIZE:  # checkpoints recommend it as their processing size (InferenceConfig.size)
        problems.append(f"frame_size {list(cfg.frame_size)} must be at least {MIN_SIZE} on each side "
                        "(the smallest size the network gives masks at)")
    if cfg.stage == "main" and (cfg.crop[0] > cfg.frame_size[0] or max(cfg.crop[1], 160) > cfg.frame_size[1]):
        problems.append(f"crop {list(cfg.crop)} must fit in frame_size {list(cfg.frame_size)} (width >= 160)")
    if cfg.static_mix_prob > 0 and cfg.stage != "main":
        problems.append("static_mix_prob is for stage main (the static stage is all static clips)")
    for key in ("static_distractor_prob", "static_region_prob", "multi_object_prob", "static_mix_prob"):
        if not 0 <= getattr(cfg, key) <= 1:
            problems.append(f"{key} must be in [0, 1]")
    if cfg.data_threads < 0:
        problems.append("data_threads must be >= 0")
    if cfg.trunk_top_lr < 0:
        problems.append("trunk_top_lr must be >= 0 (0 keeps the trunk frozen)")
    if cfg.trunk_top_lr > 0 and cfg.model.backbone != "lite":
        problems.append("trunk_top_lr trains the lite trunk's top stages; use model.backbone: lite")
    if cfg.static_holdout < 0:
        problems.append("static_holdout must be >= 0")
    if (cfg.static_images is None) != (cfg.static_masks is None):
        problems.append("static_images and static_masks go together (an image folder and its mask folder)")
    if cfg.static_max_objects < 2:
        problems.append("static_max_objects must be >= 2")
    # the optimizer's numbers: a negative grad_clip flips every gradient (the loss climbs, no error) and 0
    # zeroes them; lr <= 0 trains nothing or backwards; the rest fail mid-run or sample nonsense clips
    for key in ("lr", "grad_clip", "lr_decay_factor"):
        if not getattr(cfg, key) > 0:
            problems.append(f"{key} must be > 0")
    for key in ("weight_decay", "bootstrap_warmup", "bootstrap_ramp", "threads"):
        if getattr(cfg, key) < 0:
            problems.append(f"{key} must be >= 0")
    if cfg.num_refs < 1:
        problems.append("num_refs must be >= 1 (frame 0 is always a reference)")
    if cfg.max_gap_low < 1 or cfg.max_gap_high < cfg.max_gap_low:
        problems.append("max_gap_low must be >= 1 and max_gap_high >= max_gap_low")
    if any(s < 0 for s in cfg.lr_decay_steps):
        problems.append("lr_decay_steps must be steps >= 0")
    problems += [f"model.{p}" for p in model_config_problems(cfg.model)]
    if problems:
        raise StmaInputError(f"{path}: {'; '.join(problems)}; fix the config")


def load_train_config(path: str | Path, stage: str | None = None) -> TrainConfig:
    """Reads PATH; `stage` picks a section of `stages:` (or, without one, overrides the `stage` key)."""
    path = Path(path)
    if not path.is_file():
        raise StmaInputError(f"{path}: training config not found; pass --config with a YAML file (see configs/)")
    try:
        text = read_user_text(path, "YAML training config", "pass --config with a YAML file (see configs/)")
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise StmaInputError(f"{path}: invalid YAML ({str(exc).splitlines()[0]}); fix the syntax") from exc
    if not isinstance(data, dict):
        raise StmaInputError(f"{path}: expected a mapping of config keys; see configs/ for examples")
    stages = data.pop("stages", None)
    if stages is not None:
        if not isinstance(stages, dict) or not all(isinstance(v, dict) for v in stages.values()):
            raise StmaInputError(f"{path}: `stages` must map stage names to mappings of config keys")
        if stage is None or stage not in stages:
            given = "no --stage" if stage is None else f"--stage {stage}"
            raise StmaInputError(f"{path}: {given}; this recipe has stages {list(stages)}, pick one with --stage")
        section = dict(stages[stage])
        model_overrides = section.pop("model", None) or {}
        data = {**data, **section}
        if model_overrides:
            data["model"] = {**(data.get("model") or {}), **model_overrides}
        data.setdefault("stage", stage)
    elif stage is not None:
        data["stage"] = stage
    cfg = _build(TrainConfig, data, path)
    validate(cfg, path)
    return cfg
