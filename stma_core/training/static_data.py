"""Stage 1 ("static") clips synthesized from still image + mask pairs (paper section 3.4).

A clip deforms one still (its object is object 1, the rest is background) with a fresh random
affine + perspective warp per frame, pastes objects cut from other stills on top (each with its own
warps, so they move and occlude each other), and jitters colours per frame. With some probability a
second, unannotated copy of an annotated object is pasted too (a distractor that looks exactly like
the target), so the model learns to follow the annotated region rather than the most salient one.

The stills are either a still-image data set in the generic layout (an image folder and a mask
folder with matching file stems, e.g. DUTS-TR: `list_still_folder`) or the frames of the DAVIS
train split with their masks (`list_still_pairs`). As the clips are new every step, the frozen
trunk runs on them in the trainer (no feature cache).

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

from stma_core.eval.run_dataset import check_annotation_size
from stma_core.training.feature_cache import frame_paths, read_upright_rgb


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


@dataclass(frozen=True)
class StillPair:
    image: Path
    mask: Path  # palette PNG (0 background, k object k, 255 void), id grey PNG, or soft/binary grey mask


def read_still_mask(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """A still's mask as uint8 ids (0 background, 1.. objects, 255 void), optionally resized (H, W) nearest.

    Palette PNGs keep their indices. Grey masks whose values are all small (<= 10) are id masks;
    other grey masks (salient-object sets such as DUTS ship soft 0..255 edges) are thresholded at 128
    into one object. RGB(A) masks whose pixels are all opaque grey are read as grey; colour ones (DAVIS
    colours, flat colours, a cut-out on transparency) as `stma segment` reads them (io.masks.load_mask):
    converted to grey, DAVIS red (128, 0, 0) came out 38 and fell below the cut, so every object was lost.
    """
    try:
        image = Image.open(path)
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:  # UnidentifiedImageError is an OSError
        from stma_core.errors import StmaInputError

        raise StmaInputError(f"{path}: not a readable mask PNG, or truncated ({' '.join(str(exc).split())}); "
                             "replace it, or remove it (with its image)") from None
    if image.mode in ("RGB", "RGBA") and not _opaque_grey(np.asarray(image.convert("RGBA"))):
        from stma_core.io.masks import load_mask

        ids = load_mask(path, require_object=False).ids
        return ids if size is None else cv2.resize(ids, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    if image.mode != "P":
        image = image.convert("L")
    ids = np.array(image)
    if image.mode != "P" and ids.max() > 10:
        ids = (ids >= 128).astype(np.uint8)
    if size is not None:
        ids = cv2.resize(ids, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return ids


def _opaque_grey(rgba: np.ndarray) -> bool:
    return bool((rgba[..., 3] == 255).all() and (rgba[..., 0] == rgba[..., 1]).all()
                and (rgba[..., 1] == rgba[..., 2]).all())


def list_still_folder(images: Path, masks: Path, holdout: int = 0) -> tuple[list[StillPair], list[StillPair]]:
    """Pairs image files of `images` with the mask of the same stem in `masks` (sorted by stem).

    Returns (training pairs, the last `holdout` pairs kept apart for validation).
    Raises StmaInputError naming the folder when either is missing or no stem matches.
    """
    from stma_core.errors import StmaInputError

    for folder, what in ((images, "image"), (masks, "mask")):
        if not folder.is_dir():
            raise StmaInputError(f"{folder}: {what} folder of the static stage not found; pass --static-images/"
                                 "--static-masks (or static_images/static_masks in the config) with existing folders")
    mask_by_stem = {p.stem: p for p in masks.iterdir() if p.suffix.lower() == ".png"}
    pairs = [StillPair(p, mask_by_stem[p.stem]) for p in sorted(images.iterdir(), key=lambda p: p.stem)
             if p.suffix.lower() in IMAGE_SUFFIXES and p.stem in mask_by_stem]
    if not pairs:
        raise StmaInputError(f"{images}: no image has a .png mask of the same name in {masks}; the static stage "
                             "pairs IMAGES/<name>.jpg with MASKS/<name>.png")
    if holdout >= len(pairs):
        raise StmaInputError(f"{images}: static_holdout {holdout} leaves no training stills of {len(pairs)}; "
                             "lower static_holdout")
    for pair in pairs:  # headers only (DUTS-TR's 10k pairs: about 2 s): both are resized to frame_size
        check_annotation_size(pair.image, pair.mask)  # on their own, so another size went unnoticed
    cut = len(pairs) - holdout
    return pairs[:cut], pairs[cut:]


def stills_without_mask(images: Path, masks: Path) -> list[Path]:
    """The image files of `images` that list_still_folder leaves out for want of a `masks`/<stem>.png."""
    stems = {p.stem for p in masks.iterdir() if p.suffix.lower() == ".png"}
    return [p for p in sorted(images.iterdir(), key=lambda p: p.stem)
            if p.suffix.lower() in IMAGE_SUFFIXES and p.stem not in stems]


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
    ids = read_still_mask(pair.mask, size)
    present = [i for i in np.unique(ids) if 0 < i < 255]
    if not present:
        return None
    mask = ids == present[int(gen.integers(len(present)))]
    image = np.asarray(read_upright_rgb(pair.image).resize((w, h), Image.BILINEAR))  # EXIF-turned, as shown
    return image, mask


def _pick(pairs: list[StillPair], size: tuple[int, int], gen: np.random.Generator) -> Layer:
    for _ in range(20):
        loaded = _load_object(pairs[int(gen.integers(len(pairs)))], size, gen)
        if loaded is not None:
            return loaded
    from stma_core.errors import StmaInputError

    raise StmaInputError(f"{pairs[0].mask.parent}: no mask with an object in 20 draws from {len(pairs)} stills (every "
                         "pixel background or void); masks are id or grey PNGs with the object non-zero: check how "
                         "they were exported")


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


def _render(layers: list[Layer], length: int, crop: tuple[int, int], gen: np.random.Generator,
            annotated: list[bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Warps every layer per frame; later layers occlude earlier ones. -> frames (T,H,W,3), masks (T,n,H,W).

    `annotated[k]` False makes layer k a distractor: drawn and occluding, but not one of the n masks.
    """
    ch, cw = crop
    annotated = annotated or [True] * len(layers)
    frames, masks = [], []
    for _ in range(length):
        frame = None
        objects: list[np.ndarray] = []
        for k, (image, mask) in enumerate(layers):
            warp = random_warp(ch, cw, gen)
            border = cv2.BORDER_REFLECT if k == 0 else cv2.BORDER_CONSTANT
            warped = cv2.warpPerspective(image, warp, (cw, ch), flags=cv2.INTER_LINEAR, borderMode=border)
            # the background's border is reflected, so is its mask: a mirrored part of the object is labelled
            warped_mask = cv2.warpPerspective(mask, warp, (cw, ch), flags=cv2.INTER_NEAREST, borderMode=border) > 0
            if k == 0:
                frame = warped
            else:
                frame[warped_mask] = warped[warped_mask]
                for previous in objects:
                    previous &= ~warped_mask
            if annotated[k]:
                objects.append(warped_mask)
        frames.append(colour_jitter(frame, gen))
        masks.append(np.stack(objects))
    return np.stack(frames), np.stack(masks)


def _region_target(layer: Layer, crop: tuple[int, int], gen: np.random.Generator) -> Layer:
    """The background still with a random polygon region as its object instead of the salient one.

    Teaches that the annotation, not saliency, defines the target (a patch of background or part of
    a scene is tracked as faithfully as a salient object)."""
    image, _ = layer
    ch, cw = crop
    radius = gen.uniform(0.12, 0.3) * min(ch, cw)
    cy, cx = gen.uniform(radius, ch - radius), gen.uniform(radius, cw - radius)
    angles = np.sort(gen.uniform(0, 2 * np.pi, int(gen.integers(5, 10))))
    radii = radius * gen.uniform(0.5, 1.0, len(angles))
    points = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1).astype(np.int32)
    mask = np.zeros((ch, cw), np.uint8)
    cv2.fillPoly(mask, [points], 1)
    return image, mask


def synth_clip(pairs: list[StillPair], length: int, crop: tuple[int, int], num_objects: int,
               frame_size: tuple[int, int], gen: np.random.Generator, distractor_prob: float = 0.0,
               region_prob: float = 0.0) -> StaticClip:
    """A `length`-frame clip of `num_objects` objects at `crop` (H, W); each object is visible in frame 0.

    With probability `distractor_prob` an unannotated copy of one annotated object is pasted too;
    with probability `region_prob` object 1 is a random region of the background still instead of
    its salient object. frames (T, 3, H, W) float32 in [0, 1], masks (T, num_objects, H, W) {0, 1}.
    """
    min_pixels = 0.002 * crop[0] * crop[1]
    for _attempt in range(10):
        background = _background(*_pick(pairs, frame_size, gen), crop, gen)
        if gen.random() < region_prob:
            background = _region_target(background, crop, gen)
        layers = [background]
        layers += [_paste_layer(*_pick(pairs, frame_size, gen), crop, gen) for _ in range(num_objects - 1)]
        annotated = [True] * len(layers)
        if gen.random() < distractor_prob:
            source = layers[int(gen.integers(len(layers)))]
            if source[1].any():
                layers.append(_paste_layer(*source, crop, gen))
                annotated.append(False)
        frames, masks = _render(layers, length, crop, gen, annotated)
        if all(m.sum() >= min_pixels for m in masks[0]):
            break
    if gen.random() < 0.5:
        frames, masks = frames[:, :, ::-1], masks[..., ::-1]
    return StaticClip(torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous(),
                      torch.from_numpy(np.ascontiguousarray(masks)).float())


def collate_static(clips: list[StaticClip]) -> tuple[torch.Tensor, torch.Tensor]:
    """-> frames (B, T, 3, H, W), masks (B, T, n, H, W)."""
    return torch.stack([c.frames for c in clips]), torch.stack([c.masks for c in clips])
