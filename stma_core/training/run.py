"""Builds a ready-to-run trainer from a config file, a data root and a run folder."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from stma_core.errors import StmaInputError
from stma_core.training.config_io import load_train_config
from stma_core.training.feature_cache import build_cache, load_cache, read_split
from stma_core.training.trainer import CachedFeatureTrainer


def find_split_file(root: Path, split: str) -> Path:
    for year in ("2017", "2016"):
        candidate = root / "ImageSets" / year / f"{split}.txt"
        if candidate.is_file():
            return candidate
    raise StmaInputError(f"{root}: no ImageSets/2017/{split}.txt or ImageSets/2016/{split}.txt; "
                         "pass --data with a DAVIS-layout root")


def prepare_trainer(config_path: Path, data: Path, out: Path, resume: bool = False,
                    cache_dir: Path | None = None, log: Callable[[str], None] | None = None) -> CachedFeatureTrainer:
    cfg = load_train_config(config_path)
    if not cfg.cache_features or cfg.model.backbone != "lite" or cfg.train_trunk:
        raise StmaInputError(f"{config_path}: this build trains with cached features of a frozen lite trunk only; "
                             "set cache_features: true, train_trunk: false, model.backbone: lite")
    state = out / "state.pt"
    if state.exists() and not resume:
        raise StmaInputError(f"{out}: already holds a run (state.pt); pass --resume to continue or choose a new --out")
    if resume and (out / "train_config.json").exists():
        saved = json.loads((out / "train_config.json").read_text())
        if saved.get("model") != asdict(cfg.model) | {"decoder_dims": list(cfg.model.decoder_dims)}:
            raise StmaInputError(f"{out}: the run was started with another model config; resume with the same --config")
    split_file = find_split_file(data, cfg.split)
    names = read_split(data, split_file)
    cache = cache_dir or out / "cache"
    cache = cache / f"{data.name}_{cfg.split}_{cfg.frame_size[0]}x{cfg.frame_size[1]}"
    if log:
        log(f"caching trunk features of {len(names)} sequences in {cache}")
    build_cache(data, names, cache, size=tuple(cfg.frame_size))
    trainer = CachedFeatureTrainer(cfg, load_cache(cache, names), out)
    if resume and trainer.resume() and log:
        log(f"resumed at step {trainer.step}")
    return trainer
