"""Builds a ready-to-run trainer from a config file, a data root and a run folder.

All input checks happen here, before any heavy work, so bad input is one clear error line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from stma_core.config import ModelConfig, from_dict
from stma_core.errors import StmaInputError
from stma_core.io.text import read_split_names
from stma_core.model.lite_backbone import LiteTrunk
from stma_core.training import distributed
from stma_core.training.config_io import load_train_config
from stma_core.training.feature_cache import build_cache, check_sequences, load_cache
from stma_core.training.static_data import list_still_folder, list_still_pairs
from stma_core.training.trainer import Trainer, cache_trunk_error, trunk_changes


def find_split_file(root: Path, split: str) -> Path:
    for year in ("2017", "2016"):
        candidate = root / "ImageSets" / year / f"{split}.txt"
        if candidate.is_file():
            return candidate
    raise StmaInputError(f"{root}: no ImageSets/2017/{split}.txt or ImageSets/2016/{split}.txt; "
                         "pass --data with a DAVIS-layout root")


def check_init_trunk(path: Path, variant: str) -> None:
    """The feature cache holds the ImageNet trunk's maps: a starting checkpoint whose trunk differs below
    the top stages cannot train on it (one line); trained top stages are fine (the trainer recomputes
    their maps)."""
    from safetensors.torch import load_file

    reference = LiteTrunk(variant)
    state = {k[len("trunk."):]: v for k, v in load_file(str(path)).items() if k.startswith("trunk.")}
    if state.keys() != reference.state_dict().keys():
        return  # another model config: load_initial_weights says so
    if trunk_changes(state, reference.state_dict(), reference.top_start)[1]:
        raise StmaInputError(cache_trunk_error(path))


def prepare_trainer(config_path: Path, data: Path | None, out: Path, resume: bool = False,
                    cache_dir: Path | None = None, log: Callable[[str], None] | None = None,
                    stage: str | None = None, init_from: Path | None = None,
                    device: str | torch.device = "cpu", static_images: Path | None = None,
                    static_masks: Path | None = None) -> Trainer:
    """Config + data checks, feature cache (stage main; rank 0 builds it), trainer, resume or init weights.

    `data` is a DAVIS-layout root; the static stage may instead read a still-image folder pair
    (`static_images`/`static_masks`, overriding the config's), and then needs no `data`.
    """
    cfg = load_train_config(config_path, stage)
    if init_from is not None:
        cfg.init_from = str(init_from)
    if (static_images is None) != (static_masks is None):
        raise StmaInputError(f"{static_images or static_masks}: --static-images and --static-masks go together; "
                             "pass both folders")
    if static_images is not None:
        cfg.static_images, cfg.static_masks = str(static_images), str(static_masks)
    stills = cfg.stage == "static" and cfg.static_images is not None
    if data is None and not stills:
        raise StmaInputError(f"{config_path}: stage {cfg.stage} needs --data, a DAVIS-layout root (the static "
                             "stage can read --static-images/--static-masks instead)")
    if not cfg.cache_features or cfg.model.backbone != "lite" or cfg.train_trunk:
        raise StmaInputError(f"{config_path}: this build trains with cached features of a frozen lite trunk only; "
                             "set cache_features: true, train_trunk: false, model.backbone: lite")
    if data is not None and not data.is_dir():
        raise StmaInputError(f"{data}: data root not found; pass --data with a DAVIS-layout folder "
                             "(JPEGImages/480p, Annotations/480p, ImageSets/)")
    state = out / "state.pt"
    if state.exists() and not resume:
        raise StmaInputError(f"{out}: already holds a run (state.pt); pass --resume to continue or choose a new --out")
    saved: dict = {}
    if resume and (out / "train_config.json").exists():
        saved = json.loads((out / "train_config.json").read_text())
        if from_dict(ModelConfig, saved.get("model", {})) != cfg.model:  # from_dict restores tuples
            raise StmaInputError(f"{out}: the run was started with another model config; resume with the same --config")
        if (saved.get("trunk_top_lr", 0) > 0) != (cfg.trunk_top_lr > 0):
            raise StmaInputError(f"{out}: the run was started with trunk_top_lr {saved.get('trunk_top_lr', 0)} "
                                 "(trainable trunk stages or not); resume with the same --config")
    fresh = not (resume and state.exists())
    if not fresh and "init_from" in saved:  # a resumed run continues from its state: keep the record of its start
        recorded = saved["init_from"]
        if init_from is not None and (recorded is None or Path(recorded).resolve() != Path(init_from).resolve()):
            raise StmaInputError(f"--init-from: {init_from} is not what the run in {out} started from "
                                 f"({recorded or 'no checkpoint'}) and a resumed run continues from its own state; "
                                 "drop --init-from (or pass the same one), or choose a new --out to start from it")
        cfg.init_from = recorded
    if fresh and cfg.init_from and not Path(cfg.init_from).is_file():
        raise StmaInputError(f"{cfg.init_from}: init_from checkpoint not found; train the earlier stage first "
                             "or fix init_from / --init-from")
    if fresh and cfg.init_from and cfg.stage == "main":  # before the feature cache: a trunk it cannot serve
        check_init_trunk(Path(cfg.init_from), cfg.model.lite_variant)
    rank = distributed.current()
    mix = cfg.stage == "main" and cfg.static_mix_prob > 0
    if mix and cfg.static_images is None:
        raise StmaInputError(f"{config_path}: static_mix_prob needs static_images and static_masks "
                             "(or --static-images/--static-masks)")
    folder_stills, held_out = list_still_folder(Path(cfg.static_images), Path(cfg.static_masks),
                                                cfg.static_holdout) if stills or mix else ([], [])
    if mix and log and rank.is_main:
        log(f"main stage mixes in static clips ({cfg.static_mix_prob:.0%} of batches) from {len(folder_stills)} stills")
    if stills:
        train_data = folder_stills
        if log and rank.is_main:
            log(f"static stage: {len(train_data)} still image + mask pairs from {cfg.static_images} "
                f"({len(held_out)} held out)")
    else:
        split_file = find_split_file(data, cfg.split)
        names = read_split_names(split_file)
        check_sequences(data, names, split_file)
        if cfg.stage == "static":
            train_data = list_still_pairs(data, names, cfg.static_frame_every)
            if log and rank.is_main:
                log(f"static stage: {len(train_data)} still image + mask pairs from {len(names)} sequences")
        else:
            cache = cache_dir or out / "cache"
            variant = "" if cfg.model.lite_variant == "lite0" else f"_{cfg.model.lite_variant}"  # lite0: old name
            cache = cache / f"{data.name}_{cfg.split}_{cfg.frame_size[0]}x{cfg.frame_size[1]}{variant}"
            if rank.is_main:
                if log:
                    log(f"caching trunk features of {len(names)} sequences in {cache}")
                build_cache(data, names, cache, size=tuple(cfg.frame_size), variant=cfg.model.lite_variant,
                            device=device)
            distributed.barrier()
            train_data = load_cache(cache, names)
    trainer = Trainer(cfg, train_data, out, device=device, stills=folder_stills if mix else None)
    if not fresh:
        trainer.resume()
        if log and rank.is_main:
            log(f"resumed at step {trainer.step}")
    elif cfg.init_from:
        trainer.load_initial_weights(Path(cfg.init_from))
        if log and rank.is_main:
            log(f"initialized from {cfg.init_from}")
    return trainer
