"""Training clips sampled from cached trunk features (see feature_cache.py).

A clip is T frames of one sequence in time order (or reversed), with gaps up to the curriculum's
current maximum, a random crop aligned to stride 16, and a random horizontal flip. A clip follows ONE
object id present on its first frame (picked at random when there are several, as in DAVIS 2017 or
YouTube-VOS; other ids, and objects that appear later, are background; void was made background by
load_cache). Multi-object clips place two sequences side by side, one object each.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from stma_core.training.feature_cache import CachedSequence

STRIDES = {"f4": 4, "f8": 8, "f16": 16}


@dataclass
class Clip:
    maps: dict[str, torch.Tensor]  # key -> (T, C, h, w) float32
    masks: torch.Tensor  # (T, n, H, W) float32


def curriculum_max_gap(step: int, total: int, low: int = 3, high: int = 20) -> int:
    """Maximum frame gap: grows from `low` to `high` over the first half, shrinks back over the rest."""
    x = step / max(total, 1)
    frac = x * 2 if x < 0.5 else 2 - x * 2
    return max(1, round(low + (high - low) * max(0.0, min(1.0, frac))))


def _frame_ids(length: int, count: int, max_gap: int, rng: random.Random) -> list[int]:
    span = min(length - 1, max_gap * (count - 1))
    start = rng.randint(0, length - 1 - span)
    inner = sorted(rng.sample(range(start + 1, start + span + 1), count - 1)) if span >= count - 1 else []
    ids = [start] + inner
    while len(ids) < count:  # very short sequences
        ids.append(ids[-1])
    return ids


def _pick_object(first: torch.Tensor, rng: random.Random) -> int:
    """One object id of a clip's first frame (H, W) ids. With a single id present no random number is drawn,
    so single-object data (DAVIS 2016) gets exactly the clips it got before objects were told apart. No id at
    all (20 draws found none): -1, an empty target, never an object before it was given."""
    present = [i for i in torch.unique(first).tolist() if i != 0]
    if len(present) <= 1:
        return present[0] if present else -1
    return rng.choice(present)


def _crop_slice(seq: CachedSequence, ids: list[int], size: tuple[int, int], flip: bool, rng: random.Random,
                obj: int):
    """Crop (H, W) pixels around the first frame's object `obj`, aligned to 16; returns maps and its
    binary masks."""
    full_h, full_w = seq.masks.shape[-2:]
    crop_h, crop_w = size
    first = seq.masks[ids[0]] == obj
    ys, xs = torch.nonzero(first, as_tuple=True)
    if len(xs):
        cy, cx = int(ys.float().mean()), int(xs.float().mean())
    else:
        cy, cx = full_h // 2, full_w // 2
    y0 = min(max(cy - crop_h // 2 + rng.randint(-crop_h // 4, crop_h // 4), 0), full_h - crop_h) // 16 * 16
    x0 = min(max(cx - crop_w // 2 + rng.randint(-crop_w // 4, crop_w // 4), 0), full_w - crop_w) // 16 * 16
    idx = torch.tensor(ids)
    maps = {}
    for key, stride in STRIDES.items():
        m = getattr(seq, key)[idx][..., y0 // stride:(y0 + crop_h) // stride, x0 // stride:(x0 + crop_w) // stride]
        maps[key] = m.float()
    masks = (seq.masks[idx][:, y0:y0 + crop_h, x0:x0 + crop_w] == obj).float()
    if flip:
        maps = {k: v.flip(-1) for k, v in maps.items()}
        masks = masks.flip(-1)
    return maps, masks


def sample_clip(seqs: list[CachedSequence], length: int, size: tuple[int, int], max_gap: int,
                num_objects: int, rng: random.Random) -> Clip:
    """num_objects 1: one sequence cropped to `size`; 2: two sequences side by side, each half wide."""
    parts = []
    part_w = max(size[1] // num_objects, 160) // 16 * 16
    for _ in range(num_objects):
        for _attempt in range(20):
            seq = rng.choice(seqs)
            ids = _frame_ids(len(seq), length, max_gap, rng)
            if (seq.masks[ids[0]] > 0).any():
                break
        if rng.random() < 0.5:
            ids = ids[::-1]
            if not (seq.masks[ids[0]] > 0).any():
                ids = ids[::-1]
        flip = rng.random() < 0.5
        obj = _pick_object(seq.masks[ids[0]], rng)
        parts.append(_crop_slice(seq, ids, (size[0], part_w), flip, rng, obj))
    maps = {k: torch.cat([p[0][k] for p in parts], -1) for k in STRIDES}
    masks = torch.zeros(length, num_objects, size[0], part_w * num_objects)
    for i, (_, m) in enumerate(parts):
        masks[:, i, :, i * part_w:(i + 1) * part_w] = m
    return Clip(maps, masks)


def collate(clips: list[Clip]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """-> maps key -> (B, T, C, h, w), masks (B, T, n, H, W)."""
    maps = {k: torch.stack([c.maps[k] for c in clips]) for k in STRIDES}
    return maps, torch.stack([c.masks for c in clips])
