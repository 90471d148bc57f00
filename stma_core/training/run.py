"""Builds a ready-to-run trainer from a config file, a data root and a run folder.

All input checks happen here, before any heavy work, so bad input is one clear error line.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from stma_core.checkpoint import RUN_MODEL, resolve_checkpoint
from stma_core.config import ModelConfig, from_dict
from stma_core.errors import StmaInputError
from stma_core.eval.datasets import short_list
from stma_core.io.atomic import atomic_write_text
from stma_core.io.text import read_split_names
from stma_core.model.lite_backbone import LiteTrunk
from stma_core.training import distributed
from stma_core.training.config import TrainConfig
from stma_core.training.config_io import load_train_config
from stma_core.training.feature_cache import (build_cache, changed_sequences, check_sequences, data_record,
                                              load_cache)
from stma_core.training.static_data import list_still_folder, list_still_pairs, stills_without_mask
from stma_core.training.trainer import Trainer, cache_trunk_error, check_init_checkpoint, trunk_changes


def find_split_file(root: Path, split: str) -> Path:
    """The split file: `split` itself when it names a .txt file (a list of sequence folders, one a line),
    else ImageSets/2017/<split>.txt or ImageSets/2016/<split>.txt under the data root."""
    if split.endswith(".txt"):
        given = Path(split).expanduser()
        for candidate in (given, root / given):  # as typed (from where the command runs), or inside the data root
            if candidate.is_file():
                return candidate
        raise StmaInputError(f"{given}: split file not found (the config's `split:`; looked from the current folder "
                             f"and in {root}); list the sequence folders of JPEGImages/480p in it, one a line, or set "
                             "`split:` to a split name")
    for year in ("2017", "2016"):
        candidate = root / "ImageSets" / year / f"{split}.txt"
        if candidate.is_file():
            return candidate
    frames = root / "JPEGImages" / "480p"
    found = sum(1 for p in frames.iterdir() if p.is_dir()) if frames.is_dir() else 0
    flat = sum(1 for p in frames.parent.iterdir() if p.is_dir() and p.name != "480p") if frames.parent.is_dir() else 0
    where = (f"{found} sequence folder(s) found under {frames}" if found else
             f"no sequence folders under {frames}, but {flat} under {frames.parent}: training reads the DAVIS layout, "
             "so move them (and Annotations/'s) into a 480p/ folder" if flat else f"no sequence folders under {frames}")
    raise StmaInputError(f"{root}: no ImageSets/2017/{split}.txt or ImageSets/2016/{split}.txt ({where}); "
                         f"create ImageSets/2017/{split}.txt listing the sequence folders to train on, one a line "
                         "(or set `split:` in the config to such a .txt file)")


# settings a resumed run may change: `steps` extends (or shortens) it; the others do not touch what is trained
RESUME_MAY_CHANGE = ("steps", "log_every", "checkpoint_every", "threads", "data_threads")
DATA_RECORD = "train_data.json"


def _comparable(config: dict) -> dict:
    """A train_config.json mapping with the keys --resume may change dropped, the others as JSON gives them
    (tuples as lists) and folder paths resolved (a relative --static-images from another directory is the same)."""
    defaults = json.loads(json.dumps(asdict(TrainConfig())))  # keys a run saved before they existed
    out = {**defaults, **json.loads(json.dumps(config))}
    for key in (*RESUME_MAY_CHANGE, "init_from", "model"):  # init_from, model: checked on their own
        out.pop(key, None)
    for key in ("static_images", "static_masks"):
        if out.get(key):
            out[key] = str(Path(out[key]).expanduser().resolve())
    return out


def check_resumed_config(out: Path, saved: dict, cfg_dict: dict) -> None:
    """A resumed run must train what it started to: any changed setting other than RESUME_MAY_CHANGE is one
    line naming the keys (before, lr or frame_size changes went through and overwrote train_config.json)."""
    before, now = _comparable(saved), _comparable(cfg_dict)
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if changed:
        shown = short_list([f"{k} ({before.get(k)!r} -> {now.get(k)!r})" for k in changed], 6)
        raise StmaInputError(f"{out}: --resume with another config than the run started with: {shown}; resume "
                             f"with the run's settings ({out / 'train_config.json'}; only "
                             f"{', '.join(RESUME_MAY_CHANGE)} may change) or start a new --out")


def check_resumed_data(out: Path, current: dict) -> None:
    """A resumed run must see the data it started on (train_data.json): another root or edited frames or
    annotations are one line. Runs from before the record start one."""
    path = out / DATA_RECORD
    if not path.is_file():
        return
    record = json.loads(path.read_text())
    if record.get("data") != current["data"]:
        raise StmaInputError(f"--data {current['data']}: the run in {out} was started on {record.get('data')}; "
                             "resume with its data, or start a new --out to train on this one")
    changed = sorted(changed_sequences(record, current) + sorted(set(record.get("sequences", {})) -
                                                                  set(current["sequences"])))
    if changed:
        raise StmaInputError(f"{current['data']}: frames or annotations of {len(changed)} sequence(s) "
                             f"({short_list(changed, 4)}) changed since the run in {out} started; resume needs "
                             "the data it started on: restore it, or start a new --out on the changed data")


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


def check_objects(sequences: list, split_file: Path, log: Callable[[str], None] | None) -> None:
    """Masks with no object at all (every pixel background or void, e.g. inverted or blank exports) trained the
    network to answer 'nothing' without a word: none in the whole split is one line; sequences without any
    object (they give no clips) are a note naming them."""
    empty = [s.name for s in sequences if not ((s.masks > 0) & (s.masks < 255)).any()]
    if len(empty) == len(sequences):
        raise StmaInputError(f"{split_file}: no annotation of its {len(sequences)} sequence(s) holds an object (every "
                             "pixel is background 0 or void 255); masks are id PNGs whose pixel value is the object's "
                             "id (1, 2, ...): check how they were exported")
    if empty and log:
        log(f"note: {len(empty)} sequence(s) have no object in any annotation and give no clips: "
            f"{short_list(empty, 4)}")


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
        init_from = resolve_checkpoint(init_from)  # a run folder means its model.safetensors
        cfg.init_from = str(init_from)
    elif cfg.init_from and Path(cfg.init_from).is_dir():
        cfg.init_from = str(resolve_checkpoint(cfg.init_from))
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
    if not state.exists() and (out / RUN_MODEL).exists():  # a model a fresh run would overwrite at its first save
        raise StmaInputError(f"{out}: holds a {RUN_MODEL} but no state.pt, so not a run to resume, and a new run "
                             "would overwrite that model; choose a new --out, or move the model away")
    saved: dict = {}
    if resume and (out / "train_config.json").exists():
        saved = json.loads((out / "train_config.json").read_text())
        if from_dict(ModelConfig, saved.get("model", {})) != cfg.model:  # from_dict restores tuples
            raise StmaInputError(f"{out}: the run was started with another model config; resume with the same --config")
        if state.exists():
            check_resumed_config(out, saved, asdict(cfg))
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
    if fresh and cfg.init_from:  # before anything is written: a file that is no stma model, or not this one
        check_init_checkpoint(Path(cfg.init_from), cfg.model)
    if fresh and cfg.init_from and cfg.stage == "main":  # before the feature cache: a trunk it cannot serve
        check_init_trunk(Path(cfg.init_from), cfg.model.lite_variant)
    if fresh and cfg.init_from:  # train_config.json records it: as typed (relative to where the command ran) it
        cfg.init_from = str(Path(cfg.init_from).resolve())  # named nothing from elsewhere (reused as --config)
    rank = distributed.current()
    mix = cfg.stage == "main" and cfg.static_mix_prob > 0
    if mix and cfg.static_images is None:
        raise StmaInputError(f"{config_path}: static_mix_prob {cfg.static_mix_prob:g} mixes in clips made from still "
                             "images, and none were given; pass --static-images/--static-masks (or static_images/"
                             "static_masks in the config), or set static_mix_prob: 0 to train on the videos alone "
                             "(configs/lite2_finetune_videos_cpu.yaml does, from the shipped model)")
    folder_stills, held_out = list_still_folder(Path(cfg.static_images), Path(cfg.static_masks),
                                                cfg.static_holdout) if stills or mix else ([], [])
    if mix and log and rank.is_main:
        log(f"main stage mixes in static clips ({cfg.static_mix_prob:.0%} of batches) from {len(folder_stills)} stills")
    if stills:
        train_data = folder_stills
        if log and rank.is_main:
            skipped = stills_without_mask(Path(cfg.static_images), Path(cfg.static_masks))
            unpaired = (f"; {len(skipped)} image(s) without a .png mask of the same name in {cfg.static_masks} "
                        f"left out: {', '.join(p.name for p in skipped[:3])}{', …' if len(skipped) > 3 else ''}"
                        if skipped else "")
            log(f"static stage: {len(train_data)} still image + mask pairs from {cfg.static_images} "
                f"({len(held_out)} held out{unpaired})")
    else:
        split_file = find_split_file(data, cfg.split)
        names = read_split_names(split_file)
        check_sequences(data, names, split_file, every_mask=cfg.stage == "main")
        record = data_record(data, names)
        if not fresh:
            check_resumed_data(out, record)
        if rank.is_main:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / DATA_RECORD, json.dumps({"split": str(split_file.resolve()), **record},
                                                            indent=1) + "\n")
        if cfg.stage == "static":
            train_data = list_still_pairs(data, names, cfg.static_frame_every)
            if log and rank.is_main:
                log(f"static stage: {len(train_data)} still image + mask pairs from {len(names)} sequences")
        else:
            cache = cache_dir or out / "cache"
            variant = "" if cfg.model.lite_variant == "lite0" else f"_{cfg.model.lite_variant}"  # lite0: old name
            cache = cache / f"{data.name}_{split_file.stem}_{cfg.frame_size[0]}x{cfg.frame_size[1]}{variant}"
            if rank.is_main:
                if log:
                    log(f"trunk feature cache of {len(names)} sequences: {cache} (built where missing or stale)")
                build_cache(data, names, cache, size=tuple(cfg.frame_size), variant=cfg.model.lite_variant,
                            device=device, note=log, current=record)
            distributed.barrier()
            train_data = load_cache(cache, names)
            check_objects(train_data, split_file, log if rank.is_main else None)
    for key in ("static_images", "static_masks"):  # recorded in train_config.json: full paths, as init_from
        if getattr(cfg, key):
            setattr(cfg, key, str(Path(getattr(cfg, key)).expanduser().resolve()))
    trainer = Trainer(cfg, train_data, out, device=device, stills=folder_stills if mix else None)
    if not fresh:
        trainer.resume()
        if log and rank.is_main:
            log(f"resumed at step {trainer.step}")
    elif rank.is_main:  # a new run: the log of an attempt that stopped before its first checkpoint (no state.pt)
        trainer.truncate_log()  # was appended to, so log.jsonl and curves.png showed steps 1.. twice
    if fresh and cfg.init_from:
        trainer.load_initial_weights(Path(cfg.init_from))
        if log and rank.is_main:
            log(f"initialized from {cfg.init_from}")
    return trainer
