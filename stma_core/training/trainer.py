"""Training loop: clips -> unrolled sequence loss -> AdamW, with exact resume and JSON-lines logs."""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from stma_core.checkpoint import save_model
from stma_core.model.network import STMANetwork
from stma_core.training.cached_data import collate, curriculum_max_gap, sample_clip
from stma_core.training.config import TrainConfig
from stma_core.training.feature_cache import CachedSequence
from stma_core.training.losses import bootstrap_fraction
from stma_core.training.unroll import unroll_sequence


def learning_rate(cfg: TrainConfig, step: int) -> float:
    return cfg.lr * cfg.lr_decay_factor ** sum(step >= s for s in cfg.lr_decay_steps)


class CachedFeatureTrainer:
    """Trains everything after the frozen trunk on cached trunk maps."""

    def __init__(self, cfg: TrainConfig, sequences: list[CachedSequence], run_dir: Path,
                 network: STMANetwork | None = None) -> None:
        self.cfg = cfg
        self.sequences = sequences
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.network = network or STMANetwork(cfg.model, pretrained_trunk=True)
        self.network.train()
        self.network.trunk.eval()
        params = [p for n, p in self.network.named_parameters() if not n.startswith("trunk.")]
        for name, p in self.network.named_parameters():
            p.requires_grad_(not name.startswith("trunk."))
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.rng = random.Random(cfg.seed)
        self.step = 0
        (self.run_dir / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")

    # ---- checkpoints -----------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.run_dir / "state.pt"

    def save_state(self) -> None:
        state = {
            "step": self.step,
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "py_rng": json.dumps(self.rng.getstate()),
        }
        tmp = self.state_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.state_path)
        save_model(self.network, self.cfg.model, self.run_dir / "model.safetensors",
                   {"train_step": str(self.step)})

    def resume(self) -> bool:
        if not self.state_path.exists():
            return False
        state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        self.network.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        py_state = json.loads(state["py_rng"])
        self.rng.setstate((py_state[0], tuple(py_state[1]), py_state[2]))
        self.step = int(state["step"])
        return True

    # ---- steps -----------------------------------------------------------------------------
    def train_step(self) -> float:
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, self.step)
        n_obj = 2 if self.rng.random() < cfg.multi_object_prob else 1
        max_gap = curriculum_max_gap(self.step, cfg.steps, cfg.max_gap_low, cfg.max_gap_high)
        clips = [sample_clip(self.sequences, cfg.clip_length, cfg.crop, max_gap, n_obj, self.rng)
                 for _ in range(cfg.batch_size)]
        maps, masks = collate(clips)
        frames = [self.network.embed({k: v[:, t] for k, v in maps.items()}) for t in range(cfg.clip_length)]
        top = bootstrap_fraction(self.step, cfg.bootstrap_warmup, cfg.bootstrap_ramp)
        loss, _ = unroll_sequence(self.network, frames, masks, top, self.rng, cfg.num_refs)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.optimizer.param_groups[0]["params"], cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        return float(loss.detach())

    def run(self, until: int | None = None, on_step: Callable[[int, dict], None] | None = None) -> None:
        cfg = self.cfg
        until = cfg.steps if until is None else min(until, cfg.steps)
        log = (self.run_dir / "log.jsonl").open("a")
        t0, last_step = time.time(), self.step
        while self.step < until:
            loss = self.train_step()
            record = {"step": self.step, "loss": round(loss, 5), "lr": learning_rate(cfg, self.step - 1)}
            if self.step % cfg.log_every == 0 or self.step == until:
                elapsed = time.time() - t0
                record["it_per_s"] = round((self.step - last_step) / max(elapsed, 1e-9), 4)
                t0, last_step = time.time(), self.step
                log.write(json.dumps(record) + "\n")
                log.flush()
            if on_step:
                on_step(self.step, record)
            if self.step % cfg.checkpoint_every == 0 or self.step == until:
                self.save_state()
        log.close()
