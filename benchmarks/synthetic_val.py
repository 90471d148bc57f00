"""Checkpoint selection without the val sequences: J on fixed synthetic clips from held-out stills.

The static stage holds out the last `static_holdout` stills of its folder (by name). This script
builds a fixed, seeded set of clips from exactly those stills (1-3 objects, half of the clips with
an unannotated look-alike distractor), runs each checkpoint through the inference session, and
prints JSON: mean J (IoU) over every object of every frame after the first, per checkpoint, and for
each checkpoint after the first its difference to the first with the paired standard error over clips.
Choosing checkpoints and settings on this, never on DAVIS val, keeps val numbers honest.

    python benchmarks/synthetic_val.py --images DUTS/DUTS-TR-Image --masks DUTS/DUTS-TR-Mask \
        --holdout 300 --checkpoint runs/a/model.safetensors --checkpoint runs/b/model.safetensors
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from stma_core.inference.session import session_factory
from stma_core.training.static_data import list_still_folder, synth_clip


def make_clips(images: Path, masks: Path, holdout: int, count: int, length: int, size: int, seed: int = 0):
    """-> list of (frames T x HxWx3 uint8, id masks T x HxW uint8), from the held-out stills only."""
    _, held_out = list_still_folder(images, masks, holdout)
    gen = np.random.default_rng(seed)
    clips = []
    for i in range(count):
        n_obj = 1 + i % 3
        clip = synth_clip(held_out, length, (size, size), n_obj, (288, 512), gen, distractor_prob=0.5,
                          region_prob=0.1)
        frames = (clip.frames.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        ids = (clip.masks.numpy() * np.arange(1, n_obj + 1)[None, :, None, None]).max(1).astype(np.uint8)
        clips.append((frames, ids))
    return clips


def clip_scores(checkpoint: str | None, clips, size: int, kernel_sigma: int | None = None) -> list[list[float]]:
    """J (IoU) of every object of every frame after the first, grouped per clip."""
    make = session_factory(checkpoint=checkpoint, device="cpu", size=size, kernel_sigma=kernel_sigma)
    per_clip = []
    for frames, ids in clips:
        session = make()
        scores = []
        for t, frame in enumerate(frames):
            pred = session.step(frame, ids[0] if t == 0 else None)
            if t == 0:
                continue
            for obj in range(1, int(ids[0].max()) + 1):
                gt, pr = ids[t] == obj, pred == obj
                union = (gt | pr).sum()
                scores.append(1.0 if union == 0 else (gt & pr).sum() / union)
        per_clip.append(scores)
    return per_clip


def paired_difference(scores: list[list[float]], baseline: list[list[float]]) -> dict[str, float]:
    """Mean J minus the baseline's on the same clips, and the standard error of that difference
    from the per-clip differences (clips are the independent units)."""
    diffs = np.array([np.mean(a) - np.mean(b) for a, b in zip(scores, baseline)])
    delta = float(np.mean(np.concatenate(scores)) - np.mean(np.concatenate(baseline)))
    return {"delta_J": round(delta, 4), "paired_se": round(float(diffs.std(ddof=1) / np.sqrt(len(diffs))), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--masks", type=Path, required=True)
    parser.add_argument("--holdout", type=int, default=300)
    parser.add_argument("--checkpoint", action="append", default=None,
                        help="a model.safetensors (repeatable); 'default' = the shipped model")
    parser.add_argument("--clips", type=int, default=36)
    parser.add_argument("--length", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--kernel-sigma", type=int, default=None, help="readout kernel (default: the checkpoint's)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clips = make_clips(args.images, args.masks, args.holdout, args.clips, args.length, args.size)
    results, first = {}, None
    for checkpoint in args.checkpoint or ["default"]:
        t0 = time.time()
        scores = clip_scores(None if checkpoint == "default" else checkpoint, clips, args.size, args.kernel_sigma)
        results[checkpoint] = {"mean_J": round(float(np.mean(np.concatenate(scores))), 4),
                               "seconds": round(time.time() - t0, 1)}
        if first is None:
            first = scores
        else:  # against the first checkpoint, on the same clips
            results[checkpoint]["vs_first"] = paired_difference(scores, first)
    print(json.dumps({"clips": args.clips, "length": args.length, "size": args.size, "holdout": args.holdout,
                      "kernel_sigma": args.kernel_sigma, "results": results}, indent=2))


if __name__ == "__main__":
    main()
