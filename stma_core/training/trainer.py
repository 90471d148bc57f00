"""Training loop: clips -> unrolled sequence loss -> AdamW, with exact resume and JSON-lines logs.

Stage "main" samples video clips from cached trunk maps; stage "static" synthesizes clips from
still images and runs the frozen trunk on them (image mode). Everything after the trunk is trained
the same way in both. Under torchrun the clip loss runs through DistributedDataParallel (gradients
averaged over ranks), each rank draws its own clips (seed + rank), and rank 0 writes the run folder.

Exact resume: state.pt holds the step, weights, optimizer, and every RNG that decides a step
(torch, each rank's Python RNG, CUDA), so `--until N` + `--resume` reproduces an uninterrupted run; so does
a stop by time budget (`run(deadline=...)`, `stma train --max-minutes M`), which also ends at a step boundary.
"""

from __future__ import annotations

import json
import random
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Union

import numpy as np
import torch
from torch import nn

from stma_core.checkpoint import check_state_fits, read_config, recommended_inference, resolve_checkpoint, save_model
from stma_core.config import InferenceConfig, ModelConfig, to_dict
from stma_core.errors import StmaInputError
from stma_core.io.atomic import atomic_write, atomic_write_text
from stma_core.model.network import STMANetwork
from stma_core.training import distributed
from stma_core.training.cached_data import STRIDES, collate, curriculum_max_gap, sample_clip
from stma_core.training.config import TrainConfig
from stma_core.training.curves import write_curves
from stma_core.training.feature_cache import CachedSequence
from stma_core.training.losses import bootstrap_fraction
from stma_core.training.static_data import StillPair, collate_static, synth_clip
from stma_core.training.unroll import unroll_sequence

TrainData = Union[list[CachedSequence], list[StillPair]]


def learning_rate(cfg: TrainConfig, step: int, base: float | None = None) -> float:
    """The learning rate at `step`: `base` (default cfg.lr) times the decay factor per passed decay step."""
    return (cfg.lr if base is None else base) * cfg.lr_decay_factor ** sum(step >= s for s in cfg.lr_decay_steps)


def _inference_fields(settings: dict) -> dict:
    """The InferenceConfig fields of a checkpoint's recommended settings (older files may hold others)."""
    return {k: v for k, v in settings.items() if k in InferenceConfig.__dataclass_fields__}


def trunk_changes(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], top_start: int
                  ) -> tuple[bool, bool]:
    """Two LiteTrunk state dicts -> (a top stage differs, something below the top stages differs)."""
    top = below = False
    for key, value in state.items():
        if torch.equal(value.detach().cpu(), reference[key].detach().cpu()):
            continue
        if key.startswith("_blocks.") and int(key.split(".")[1]) >= top_start:
            top = True
        else:
            below = True
    return top, below


def check_init_checkpoint(path: Path, model: ModelConfig) -> dict[str, str]:
    """A checkpoint to start training from (init_from / --init-from): a stma model (read_config's one-line
    errors for a .pt, a text file, a safetensors file without model_config), of the training config's
    `model:` (the differing keys named), whose tensors fit that model. Returns its metadata.
    Cheap enough (headers, a CPU network without pretrained weights) to run before anything is written."""
    from safetensors import safe_open

    config, metadata = read_config(path)
    ours, theirs = to_dict(model), to_dict(config)
    changed = [k for k in ours if ours[k] != theirs.get(k)]
    if changed:
        shown = ", ".join(f"{k}: {theirs.get(k)!r} in the checkpoint, {ours[k]!r} in the config" for k in changed)
        raise StmaInputError(f"{path}: init_from checkpoint has another model config than the training config's "
                             f"`model:` ({shown}); set the config's `model:` section to the checkpoint's "
                             f"({path.with_suffix('.json').name} beside it lists it) or start from another checkpoint")
    with safe_open(str(path), framework="pt") as f:  # shapes from the header, no tensor data read
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    check_state_fits(STMANetwork(config, pretrained_trunk=False), {k: torch.empty(v, device="meta")
                                                                    for k, v in shapes.items()}, path)
    return metadata


def cache_trunk_error(source: Path) -> str:
    return (f"{source}: its trunk differs from the ImageNet weights below the stride-16 stages, which the "
            "feature cache holds; start from a checkpoint trained by stma train (only the top stages ever train)")


class ClipLoss(nn.Module):
    """Trunk maps of a clip batch -> unrolled loss, as one module call so DDP can sync gradients."""

    def __init__(self, network: STMANetwork, num_refs: int, train_trunk_top: bool = False) -> None:
        super().__init__()
        self.network = network
        self.num_refs = num_refs
        # stride-16 maps from the network's own top stages instead of the cache's: where they train, and
        # where the starting weights' top stages differ from the ImageNet ones the cache was made with
        self.recompute_top = train_trunk_top

    def forward(self, maps: dict[str, torch.Tensor], masks: torch.Tensor, top_fraction: float,
                rng: random.Random) -> torch.Tensor:
        """maps key -> (B, T, C, h, w), masks (B, T, n, H, W). With train_trunk_top the stride-16 maps
        are recomputed from the stride-8 ones by the trunk's (trainable) top stages."""
        length = masks.shape[1]
        if self.recompute_top:
            f8 = maps["f8"]
            maps = {**maps, "f16": self.network.trunk.forward_top(f8.flatten(0, 1)).unflatten(0, f8.shape[:2])}
        frames = [self.network.embed({k: v[:, t] for k, v in maps.items()}) for t in range(length)]
        loss, _ = unroll_sequence(self.network, frames, masks, top_fraction, rng, self.num_refs)
        return loss


class Trainer:
    """Trains everything after the frozen trunk (token projection, STML, memory, decoder), and the
    trunk's top stages too where cfg.trunk_top_lr > 0."""

    def __init__(self, cfg: TrainConfig, data: TrainData, run_dir: Path, network: STMANetwork | None = None,
                 device: str | torch.device = "cpu", stills: list[StillPair] | None = None) -> None:
        """data: cached video sequences (stage main) or still pairs (stage static); stills: the still
        pairs that a main stage mixes in (cfg.static_mix_prob of its batches are synthetic clips)."""
        self.cfg = cfg
        self.data = data
        self.stills = data if cfg.stage == "static" else (stills or [])
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.dist = distributed.current()
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.network = network or STMANetwork(cfg.model, pretrained_trunk=True)
        self.network.train()
        self.network.trunk.eval()  # BatchNorm statistics stay ImageNet's, also where top stages train
        params = [p for n, p in self.network.named_parameters() if not n.startswith("trunk.")]
        for name, p in self.network.named_parameters():
            p.requires_grad_(not name.startswith("trunk."))
        groups = [{"params": params}]
        self.base_lrs = [cfg.lr]  # per optimizer group, before decay
        train_top = cfg.trunk_top_lr > 0
        if train_top:
            top = self.network.trunk.top_parameters()
            for p in top:
                p.requires_grad_(True)
            groups.append({"params": top})
            self.base_lrs.append(cfg.trunk_top_lr)
        self.network.to(self.device)
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.clip_loss: nn.Module = ClipLoss(self.network, cfg.num_refs, train_top)
        self._loss = self.clip_loss  # the ClipLoss itself, also once DDP wraps it
        # the trunk as constructed (ImageNet weights: those the feature cache is made with)
        self._cache_trunk = {k: v.detach().clone() for k, v in self.network.trunk.state_dict().items()} \
            if cfg.model.backbone == "lite" else {}
        if self.dist.world_size > 1:
            self.clip_loss = nn.parallel.DistributedDataParallel(
                self.clip_loss, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                # one STML block: object tokens never reach the test stream, so their weights get no grad
                find_unused_parameters=cfg.model.backbone != "lite" or cfg.model.stml_depth < 2)
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.amp_dtype = torch.bfloat16 if self.use_amp and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.rng = random.Random(cfg.seed + self.dist.rank)
        self.step = 0
        self.saved_step: int | None = None  # the step state.pt holds (save_state, resume): where --resume goes on
        # inference settings the saved models recommend: a run from scratch, the scale it learns at; a
        # fine-tune (init_from) keeps its starting model's (the shipped model's 480, chosen on full val)
        self.recommended: dict = {"size": min(cfg.frame_size)}
        self._pool: ThreadPoolExecutor | None = None  # static clip synthesis (cfg.data_threads > 0)
        if self.dist.is_main:
            atomic_write_text(self.run_dir / "train_config.json", json.dumps(asdict(cfg), indent=2) + "\n")

    # ---- checkpoints -----------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.run_dir / "state.pt"

    def save_state(self) -> None:
        """Collective under torchrun (gathers RNGs and replica digests); rank 0 writes, atomically."""
        py_rngs = distributed.all_gather(json.dumps(self.rng.getstate()))
        digests = distributed.all_gather(distributed.parameter_digest(self.network)) \
            if self.dist.world_size > 1 else []
        if not self.dist.is_main:
            return
        state = {
            "step": self.step,
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "py_rng": py_rngs[0],
            "rank_py_rngs": py_rngs,
            "recommended_inference": json.dumps(self.recommended),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        atomic_write(self.state_path, lambda tmp: torch.save(state, tmp))
        self.saved_step = self.step
        save_model(self.network, self.cfg.model, self.run_dir / "model.safetensors",
                   {"train_step": str(self.step), "train_stage": self.cfg.stage},
                   inference=InferenceConfig(**self.recommended))
        write_curves(self.run_dir / "log.jsonl", self.run_dir / "curves.png")
        if digests:
            atomic_write_text(self.run_dir / "replicas.json",
                               json.dumps({"step": self.step, "parameter_sha1": digests}) + "\n")
            if len(set(digests)) > 1:
                raise RuntimeError(f"replicas diverged at step {self.step}: parameter digests {digests}")

    def _read_state(self) -> dict:
        """state.pt as save_state wrote it, or one line: a damaged file (copied in part, cut off by a full disk,
        another file under its name) or another model's state was a PyTorch traceback."""
        path = self.state_path
        model = self.run_dir / "model.safetensors"
        fix = (f"start a new --out (with --init-from {model} to keep its weights)" if model.is_file() else
               "start a new --out")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or not {"step", "model", "optimizer", "torch_rng"} <= state.keys():
                raise ValueError("not the dict stma train saves")
        except Exception as exc:  # torch.load raises RuntimeError, UnpicklingError, EOFError, KeyError, ...
            why = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:160]
            raise StmaInputError(f"{path}: not a readable training state ({why}); it is damaged or not a `stma "
                                 f"train` state.pt; {fix}") from None
        try:
            check_state_fits(self.network, state["model"], path)
        except StmaInputError:
            raise StmaInputError(f"{path}: its model does not fit the run's config (another run's state.pt?); "
                                 f"{fix}") from None
        self.network.load_state_dict(state["model"])
        return state

    def resume(self) -> bool:
        if not self.state_path.exists():
            return False
        state = self._read_state()
        self._match_cache_trunk(self.state_path)
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.step = self.saved_step = int(state["step"])
        if "recommended_inference" in state:  # runs saved before it was kept recommend the default
            self.recommended = _inference_fields(json.loads(state["recommended_inference"]))
        rank_rngs = state.get("rank_py_rngs") or [state["py_rng"]]
        if len(rank_rngs) == self.dist.world_size:
            py_state = json.loads(rank_rngs[self.dist.rank])
            self.rng.setstate((py_state[0], tuple(py_state[1]), py_state[2]))
        else:  # another world size: each rank still gets its own, reproducible stream
            warnings.warn(f"resuming a {len(rank_rngs)}-process run with {self.dist.world_size} processes: "
                          "clips will differ from an uninterrupted run")
            self.rng = random.Random(f"{self.cfg.seed}-{self.dist.rank}-{self.step}")
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        if self.dist.is_main:
            self.truncate_log()
        return True

    def truncate_log(self) -> None:
        """Drops log lines written after the checkpoint, so a resumed log reads like an uninterrupted one (a new
        run, at step 0, drops the lines of an attempt stopped before its first checkpoint)."""
        path = self.run_dir / "log.jsonl"
        if not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= self.step:
                    kept.append(line + "\n")
            except (json.JSONDecodeError, AttributeError):
                continue
        atomic_write_text(path, "".join(kept))

    def load_initial_weights(self, path: Path) -> None:
        """Starts from a saved model (e.g. the static stage's) with the same ModelConfig, and recommends
        its inference settings."""
        from safetensors.torch import load_file

        path = resolve_checkpoint(path)  # a run folder means its model.safetensors, as everywhere else
        metadata = check_init_checkpoint(path, self.cfg.model)
        self.network.load_state_dict(load_file(str(path), device=str(self.device)))
        self._match_cache_trunk(path)
        self.recommended = _inference_fields(recommended_inference(metadata)) or self.recommended

    def _match_cache_trunk(self, source: Path) -> None:
        """Cached maps come from the ImageNet trunk. Where the loaded weights' top stages differ (a model
        whose top stages were trained), the stride-16 maps are recomputed from the cached stride-8 ones by
        the network's own top stages, as inference computes them."""
        if self.cfg.stage != "main" or self.cfg.model.backbone != "lite":
            return
        top, below = trunk_changes(self.network.trunk.state_dict(), self._cache_trunk, self.network.trunk.top_start)
        if below:
            raise StmaInputError(cache_trunk_error(source))
        if top:
            self._loss.recompute_top = True

    # ---- steps -----------------------------------------------------------------------------
    def _video_batch(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        cfg = self.cfg
        n_obj = 2 if self.rng.random() < cfg.multi_object_prob else 1
        max_gap = curriculum_max_gap(self.step, cfg.steps, cfg.max_gap_low, cfg.max_gap_high)
        clips = [sample_clip(self.data, cfg.clip_length, cfg.crop, max_gap, n_obj, self.rng)
                 for _ in range(cfg.batch_size)]
        return collate(clips)

    def _static_batch(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Synthesized clips -> frozen trunk maps (image mode), shaped like the cached path's."""
        cfg = self.cfg
        multi = self.rng.random() < cfg.multi_object_prob
        n_obj = self.rng.randint(2, cfg.static_max_objects) if multi else 1
        seeds = [self.rng.getrandbits(64) for _ in range(cfg.batch_size)]  # drawn in order: same clips threaded

        def synth(seed: int):
            return synth_clip(self.stills, cfg.clip_length, cfg.crop, n_obj, cfg.frame_size,
                              np.random.default_rng(seed), cfg.static_distractor_prob, cfg.static_region_prob)

        if cfg.data_threads > 0:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(cfg.data_threads, thread_name_prefix="stma-synth")
            clips = list(self._pool.map(synth, seeds))
        else:
            clips = [synth(seed) for seed in seeds]
        frames, masks = collate_static(clips)
        b, t = frames.shape[:2]
        with torch.no_grad(), self._autocast():
            maps = self.network.encode_trunk(frames.to(self.device).flatten(0, 1))
        return {k: maps[k].float().unflatten(0, (b, t)) for k in STRIDES}, masks

    def _autocast(self):
        return torch.autocast("cuda", dtype=self.amp_dtype) if self.use_amp else nullcontext()

    def train_step(self) -> float:
        cfg = self.cfg
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = learning_rate(cfg, self.step, base)
        static = cfg.stage == "static" or (self.stills and self.rng.random() < cfg.static_mix_prob)
        maps, masks = self._static_batch() if static else self._video_batch()
        maps = {k: v.to(self.device, non_blocking=True) for k, v in maps.items()}
        masks = masks.to(self.device, non_blocking=True)
        top = bootstrap_fraction(self.step, cfg.bootstrap_warmup, cfg.bootstrap_ramp)
        with self._autocast():
            loss = self.clip_loss(maps, masks, top, self.rng)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]], cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step += 1
        return float(distributed.mean_across_ranks(loss.detach()))

    def run(self, until: int | None = None, on_step: Callable[[int, dict], None] | None = None,
            deadline: float | None = None) -> bool:
        """Trains to `until` (default cfg.steps); logs every log_every steps, checkpoints every checkpoint_every.

        deadline: a `time.monotonic()` value in seconds; once it has passed at the end of a step, the
        run logs that step, saves state and model (as at `until`) and stops, so `--resume` continues
        exactly. At least one step is taken. Returns True when `until` was reached, False when the
        deadline stopped the run first. Under torchrun rank 0's clock decides for every rank.
        """
        cfg = self.cfg
        until = cfg.steps if until is None else min(until, cfg.steps)
        log = (self.run_dir / "log.jsonl").open("a") if self.dist.is_main else None
        t0, last_step = time.time(), self.step
        window: list[float] = []
        try:
            while self.step < until:
                loss = self.train_step()
                window.append(loss)
                out_of_time = deadline is not None and self._past(deadline)
                last = self.step == until or out_of_time
                record = {"step": self.step, "loss": round(loss, 5), "lr": learning_rate(cfg, self.step - 1)}
                if self.step % cfg.log_every == 0 or last:
                    elapsed = time.time() - t0
                    record["it_per_s"] = round((self.step - last_step) / max(elapsed, 1e-9), 4)
                    record["loss_mean"] = round(sum(window) / len(window), 5)
                    t0, last_step, window = time.time(), self.step, []
                    if log:
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                if on_step and self.dist.is_main:
                    on_step(self.step, record)
                if self.step % cfg.checkpoint_every == 0 or last:
                    self.save_state()
                if out_of_time:
                    return self.step >= until
            return True
        finally:
            if log:
                log.close()

    def _past(self, deadline: float) -> bool:
        """Whether time.monotonic() has passed `deadline` (s); rank 0 decides so all ranks stop together."""
        past = time.monotonic() >= deadline
        return bool(distributed.all_gather(past)[0]) if self.dist.world_size > 1 else past

CachedFeatureTrainer = Trainer  # the name used before the static stage existed
