"""Stage 1 ("static") clips synthesized from still image + mask pairs (paper section 3.4).

A clip deforms one still (its object is object 1, the rest is background) with a fresh random
affine + perspective warp per frame, pastes objects cut from other stills on top (each with its own
warps, so they move and occlude each other), and jitters colours per frame. The stills are the
frames of the DAVIS train split with their masks, so no extra data set is needed. As these frames
are new every step, the frozen trunk runs on them in the trainer (no feature cache).

All randomness comes from one numpy Generator per clip, seeded from the trainer's Python RNG, so a
resumed run synthesizes exactly the clips an uninterrupted one would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from stma_core.training.feature_cache import frame_paths


@dataclass(frozen=True)
class StillPair:
    image: Path
    mask: Path  # palette PNG: 0 background, k object k, 255 void


@dataclass
class StaticClip:
    frames: torch.Tensor  # (T, 3, H, W) float32 in [0, 1]
    masks: torch.Tensor  # (T, n, H, W) float32 in {0, 1}


def list_still_pairs(root: Path, names: list[str], every: int = 1) -> list[StillPair]:
    """Every `every`-th annotated frame of each sequence, as a still pair."""
    pairs = []
    for name in names:
        images, masks = frame_paths(root, name)
        pairs += [StillPair(i, m) for i, m in list(zip(images, masks))[::every] if m.is_file()]
    return pairs


Layer = tuple[np.ndarray, np.ndarray]  # RGB uint8 image, object mask (bool or uint8) of the same size


def _load_object(pair: StillPair, size: tuple[int, int], gen: np.random.Generator) -> Layer | None:
    """-> (RGB uint8 image at `size` (H, W), bool mask of one of its objects) or None if it has none."""
    h, w = size
    ids = np.array(Image.open(pair.mask).resize((w, h), Image.NEAREST))
    present = [i for i in np.unique(ids) if 0 < i < 255]
    if not present:
        return None
    mask = ids == present[int(gen.integers(len(present)))]
    image = np.asarray(Image.open(pair.image).convert("RGB").resize((w, h), Image.BILINEAR))
    return image, mask


def _pick(pairs: list[StillPair], size: tuple[int, int], gen: np.random.Generator) -> Layer:
    for _ in range(20):
        loaded = _load_object(pairs[int(gen.integers(len(pairs)))], size, gen)
        if loaded is not None:
            return loaded
    raise ValueError("no still with an object found in 20 draws; the split's masks look empty")


def random_warp(h: int, w: int, gen: np.random.Generator) -> np.ndarray:
    """3x3 homography: rotation, scale, shear and shift about the centre, then a perspective jitter."""
    affine = np.eye(3)
    affine[:2] = cv2.getRotationMatrix2D((w / 2, h / 2), gen.uniform(-20, 20), gen.uniform(0.9, 1.1))
    shear = math.tan(math.radians(gen.uniform(-10, 10)))
    shear_m = np.array([[1, shear, -shear * h / 2], [0, 1, 0], [0, 0, 1]])
    shift = np.array([[1, 0, gen.uniform(-0.1, 0.1) * w], [0, 1, gen.uniform(-0.1, 0.1) * h], [0, 0, 1]])
    corners = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    jitter = (gen.uniform(-0.06, 0.06, (4, 2)) * [w, h]).astype(np.float32)
    perspective = cv2.getPerspectiveTransform(corners, corners + jitter)
    return perspective @ shift @ shear_m @ affine


def colour_jitter(image: np.ndarray, gen: np.random.Generator) -> np.ndarray:
    """uint8 RGB -> float32 RGB in [0, 1] with random brightness, contrast, saturation and hue."""
    x = image.astype(np.float32) / 255 * gen.uniform(0.85, 1.15)
    x = (x - x.mean()) * gen.uniform(0.85, 1.15) + x.mean()
    gray = x.mean(-1, keepdims=True)
    x = np.clip((x - gray) * gen.uniform(0.8, 1.2) + gray, 0, 1)
    hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0] + gen.uniform(-10, 10)) % 360
    return np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB), 0, 1)


def _background(image: np.ndarray, mask: np.ndarray, crop: tuple[int, int], gen: np.random.Generator) -> Layer:
    """Rescales the still to cover `crop` and cuts a window around its object."""
    ch, cw = crop
    h, w = mask.shape
    scale = max(ch / h, cw / w) * gen.uniform(1.0, 1.5)
    nh, nw = max(ch, round(h * scale)), max(cw, round(w * scale))
    image = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    mask = cv2.resize(mask.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST)
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    y0 = int(np.clip(cy - ch / 2 + gen.uniform(-ch / 4, ch / 4), 0, nh - ch))
    x0 = int(np.clip(cx - cw / 2 + gen.uniform(-cw / 4, cw / 4), 0, nw - cw))
    return image[y0:y0 + ch, x0:x0 + cw], mask[y0:y0 + ch, x0:x0 + cw]


def _paste_layer(image: np.ndarray, mask: np.ndarray, crop: tuple[int, int], gen: np.random.Generator) -> Layer:
    """Cuts the object's box, scales it to 25-60% of the crop's short side, places it on a blank canvas."""
    ch, cw = crop
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    patch, patch_mask = image[y0:y1, x0:x1], mask[y0:y1, x0:x1].astype(np.uint8)
    scale = gen.uniform(0.25, 0.6) * min(ch, cw) / max(y1 - y0, x1 - x0)
    ph, pw = max(1, min(ch, round((y1 - y0) * scale))), max(1, min(cw, round((x1 - x0) * scale)))
    patch = cv2.resize(patch, (pw, ph), interpolation=cv2.INTER_LINEAR)
    patch_mask = cv2.resize(patch_mask, (pw, ph), interpolation=cv2.INTER_NEAREST)
    top = int(gen.integers(0, ch - ph + 1))
    left = int(gen.integers(0, cw - pw + 1))
    layer = np.zeros((ch, cw, 3), np.uint8)
    layer_mask = np.zeros((ch, cw), np.uint8)
    layer[top:top + ph, left:left + pw] = patch
    layer_mask[top:top + ph, left:left + pw] = patch_mask
    return layer, layer_mask


def _render(layers: list[Layer], length: int, crop: tuple[int, int],
            gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Warps every layer per frame; later layers occlude earlier ones. -> frames (T,H,W,3), masks (T,n,H,W)."""
    ch, cw = crop
    frames, masks = [], []
    for _ in range(length):
        frame = None
        objects: list[np.ndarray] = []
        for k, (image, mask) in enumerate(layers):
            warp = random_warp(ch, cw, gen)
            border = cv2.BORDER_REFLECT if k == 0 else cv2.BORDER_CONSTANT
            warped = cv2.warpPerspective(image, warp, (cw, ch), flags=cv2.INTER_LINEAR, borderMode=border)
            warped_mask = cv2.warpPerspective(mask, warp, (cw, ch), flags=cv2.INTER_NEAREST,
                                              borderMode=cv2.BORDER_CONSTANT) > 0
            if k == 0:
                frame = warped
            else:
                frame[warped_mask] = warped[warped_mask]
                for previous in objects:
                    previous &= ~warped_mask
            objects.append(warped_mask)
        frames.append(colour_jitter(frame, gen))
        masks.append(np.stack(objects))
    return np.stack(frames), np.stack(masks)


def synth_clip(pairs: list[StillPair], length: int, crop: tuple[int, int], num_objects: int,
               frame_size: tuple[int, int], gen: np.random.Generator) -> StaticClip:
    """A `length`-frame clip of `num_objects` objects at `crop` (H, W); each object is visible in frame 0."""
    min_pixels = 0.002 * crop[0] * crop[1]
    for _attempt in range(10):
        layers = [_background(*_pick(pairs, frame_size, gen), crop, gen)]
        layers += [_paste_layer(*_pick(pairs, frame_size, gen), crop, gen) for _ in range(num_objects - 1)]
        frames, masks = _render(layers, length, crop, gen)
        if all(m.sum() >= min_pixels for m in masks[0]):
            break
    if gen.random() < 0.5:
        frames, masks = frames[:, :, ::-1], masks[..., ::-1]
    return StaticClip(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous(),
                      torch.from_numpy(np.ascontiguousarray(masks)).float())


def collate_static(clips: list[StaticClip]) -> tuple[torch.Tensor, torch.Tensor]:
    """-> frames (B, T, 3, H, W), masks (B, T, n, H, W)."""
    return torch.stack([c.frames for c in clips]), torch.stack([c.masks for c in clips])
