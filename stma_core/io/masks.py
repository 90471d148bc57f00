"""Reads user masks (palette, binary/grayscale or RGB-coloured PNGs) into uint8 id masks.

Users draw masks with whatever tool they have, so every common PNG flavour is accepted, but an id is
never invented: anti-aliased edge colours and JPEG-like noise are reported and folded into the
nearest real colour, and any id mapping we had to choose is returned so the CLI can print it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from stma_core.errors import StmaInputError
from stma_core.ids import MAX_OBJECTS, VOID_ID
from stma_core.io.frames import natural_key
from stma_core.io.palette import davis_id_of

ASPECT_TOLERANCE = 0.01
"""Masks whose aspect ratio is within 1% of the video's are resized (nearest); others are rejected."""
SMALL_FRACTION = 0.001
"""A colour under 0.1% of the pixels that is a near-shade of a bigger colour is noise, not an object."""
NEAR_SHADE = 48
"""Largest per-channel difference (8-bit units) at which two colours count as shades of each other."""


@dataclass
class LoadedMask:
    """An id mask read from `path`, with how its pixels became ids."""

    path: Path
    ids: np.ndarray
    """HxW uint8: 0 background, 1..254 objects."""
    kind: str
    """'palette', 'binary', 'gray' or 'rgb'."""
    mapping: dict[int, str] = field(default_factory=dict)
    """id -> the source colour/gray level, when ids were assigned rather than read (empty for palette PNGs)."""
    warnings: list[str] = field(default_factory=list)

    @property
    def object_ids(self) -> list[int]:
        return [int(i) for i in np.unique(self.ids) if i != 0]


class ColorIds:
    """Colour -> id assignments shared by all masks of one video, so a colour keeps its id across files."""

    def __init__(self) -> None:
        self.ids: dict[object, int] = {}

    def assign(self, key: object, preferred: int | None = None) -> int:
        if key in self.ids:
            return self.ids[key]
        used = set(self.ids.values())
        if preferred is not None and 1 <= preferred <= MAX_OBJECTS and preferred not in used:
            new = preferred
        else:
            new = next((i for i in range(1, MAX_OBJECTS + 1) if i not in used), MAX_OBJECTS + 1)
        self.ids[key] = new
        return new


def _read_image(path: Path) -> Image.Image:
    if not path.exists():
        raise StmaInputError(f"{path}: mask file not found; check the --mask path")
    if path.is_dir():
        raise StmaInputError(f"{path}: is a folder, not a mask PNG; pass the PNG file (or use --mask-dir)")
    try:
        image = Image.open(path)
        image.load()
    except (OSError, UnidentifiedImageError) as exc:
        raise StmaInputError(f"{path}: not a readable image ({exc}); pass a PNG mask") from exc
    return image


def _interior(codes: np.ndarray) -> np.ndarray:
    """True where all 8 neighbours share the pixel's code: pixels inside a region, not on an edge."""
    padded = np.pad(codes, 1, mode="edge")
    h, w = codes.shape
    inside = np.ones((h, w), bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy != 1 or dx != 1:
                inside &= padded[dy:dy + h, dx:dx + w] == codes
    return inside


def _fold_stray(path: Path, codes: np.ndarray, values: np.ndarray, near: float
                ) -> tuple[np.ndarray, list[int], int]:
    """Finds the real colours among `values` (codes index them) and maps stray ones to the nearest real.

    Real = has at least one interior pixel and is not a rare near-shade of a bigger real colour.
    Returns (codes with strays replaced, indices of real values, number of stray colours).
    """
    counts = np.bincount(codes.ravel(), minlength=len(values))
    has_inside = np.zeros(len(values), bool)
    has_inside[np.unique(codes[_interior(codes)])] = True
    candidates = sorted(np.flatnonzero(has_inside & (counts > 0)), key=lambda i: -counts[i])
    vals = values.reshape(len(values), -1).astype(np.float64)
    real: list[int] = []
    for i in candidates:
        rare = counts[i] < SMALL_FRACTION * codes.size
        if rare and real and np.abs(vals[real] - vals[i]).max(1).min() <= near:
            continue
        real.append(int(i))
    if not real:  # e.g. a 1-px-wide drawing: nothing has an interior; keep the colours as they are
        real = [int(i) for i in np.flatnonzero(counts)]
    if len(real) > MAX_OBJECTS + 1:  # + background
        raise StmaInputError(
            f"{path}: {len(real) - 1} distinct colours look like objects (at most {MAX_OBJECTS} are supported); "
            "draw fewer objects, one flat colour each (a photo or JPEG is not a mask)")
    real_set = set(real)
    stray = np.asarray([i for i in np.flatnonzero(counts) if i not in real_set], np.int64)
    if len(stray):
        lut = np.arange(len(values))
        real_arr = np.asarray(real)
        for start in range(0, len(stray), 4096):  # chunks keep the distance matrix small
            chunk = stray[start:start + 4096]
            dist = np.abs(vals[chunk][:, None, :] - vals[real_arr][None, :, :]).max(2)
            lut[chunk] = real_arr[dist.argmin(1)]
        codes = lut[codes]
    return codes, real, len(stray)


def _values_to_ids(path: Path, pixels: np.ndarray, kind: str, color_ids: ColorIds,
                   near: float) -> LoadedMask:
    """Shared path of RGB and grayscale masks: fold strays, pick background, assign ids."""
    h, w = pixels.shape[:2]
    if kind == "rgb":
        flat = (pixels[..., 0].astype(np.int64) << 16) | (pixels[..., 1].astype(np.int64) << 8) | pixels[..., 2]
    else:
        flat = pixels.astype(np.int64)
    values, first_index, codes = np.unique(flat.ravel(), return_index=True, return_inverse=True)
    codes = codes.reshape(h, w)
    if kind == "rgb":
        values_nd = np.stack([(values >> 16) & 255, (values >> 8) & 255, values & 255], 1)
    else:
        values_nd = values[:, None]
    warnings: list[str] = []
    codes, real, n_stray = _fold_stray(path, codes, values_nd, near)
    if n_stray:
        n_pixels = int((flat != values[codes]).sum())
        warnings.append(
            f"{path}: {n_stray} stray colour(s) on {n_pixels} pixel(s) (anti-aliased edges or compression noise) "
            "were given to the nearest real colour; save the mask without anti-aliasing to silence this")
    counts = np.bincount(codes.ravel(), minlength=len(values))
    zero = np.flatnonzero(values == 0)
    if len(zero) and counts[zero[0]] > 0:
        background = int(zero[0])
    else:
        background = int(np.argmax(counts))
        warnings.append(f"{path}: no black/0 pixel, so the most common colour {_describe(kind, values_nd[background])} "
                        "is taken as background; paint the background black to silence this")
    objects = [i for i in real if i != background]
    if len(objects) > MAX_OBJECTS:
        raise StmaInputError(
            f"{path}: {len(objects)} distinct colours look like objects (at most {MAX_OBJECTS} are supported); "
            "draw fewer objects, one flat colour each")

    lut = np.zeros(len(values), np.int64)
    mapping: dict[int, str] = {}
    if kind == "rgb":
        # DAVIS-palette colours keep their DAVIS ids; other colours get free ids in order of appearance.
        ordered = sorted(objects, key=lambda i: (davis_id_of(tuple(values_nd[i])) is None, first_index[i]))
        for i in ordered:
            color = tuple(int(v) for v in values_nd[i])
            lut[i] = color_ids.assign(("rgb", color), davis_id_of(color))
            mapping[int(lut[i])] = _describe(kind, values_nd[i])
    else:
        levels = sorted(int(values[i]) for i in objects)
        binary = len(levels) == 1 and levels[0] in (1, 255)
        identity = not binary and all(1 <= v <= MAX_OBJECTS for v in levels)
        for i in sorted(objects, key=lambda i: int(values[i])):
            level = int(values[i])
            if binary:
                lut[i] = color_ids.assign(("gray", "binary"), 1)
            elif identity:
                lut[i] = level
            else:
                lut[i] = color_ids.assign(("gray", level))
            if lut[i] != level:
                mapping[int(lut[i])] = _describe(kind, values_nd[i])
        kind = "binary" if binary else "gray"
    if lut.max(initial=0) > MAX_OBJECTS:
        raise StmaInputError(f"{path}: the masks of this video use more than {MAX_OBJECTS} colours in all; "
                             "use at most 254 objects")
    return LoadedMask(path, lut[codes].astype(np.uint8), kind, mapping, warnings)


def _describe(kind: str, value: np.ndarray) -> str:
    if kind == "rgb":
        return "rgb({}, {}, {})".format(*(int(v) for v in value))
    return f"gray {int(value[0])}"


def load_mask(path: str | Path, color_ids: ColorIds | None = None, require_object: bool = True) -> LoadedMask:
    """Reads one mask PNG into ids.

    Palette PNGs: pixel value = id, 255 (DAVIS void) becomes background with a warning.
    Grayscale: 0/255 or 0/1 -> id 1; values 1..254 are ids; other gray levels get ids in sorted order.
    RGB(A): black (or transparent) is background; DAVIS colours keep their ids; other colours get ids in
    order of first appearance. `color_ids` keeps those choices consistent over the masks of one video.
    """
    path = Path(path)
    image = _read_image(path)
    color_ids = color_ids if color_ids is not None else ColorIds()
    mode = image.mode
    if mode in ("P", "PA"):
        ids = np.array(image.getchannel(0) if mode == "PA" else image, dtype=np.uint8)
        mask = LoadedMask(path, ids, "palette")
        void = ids == VOID_ID
        if void.any():
            mask.ids = np.where(void, 0, ids).astype(np.uint8)
            mask.warnings.append(f"{path}: {int(void.sum())} void pixel(s) (value 255) treated as background")
    elif mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"):
        gray = np.array(image.convert("L") if mode in ("1", "LA", "F") else image)
        if mode == "LA":
            gray = np.where(np.array(image.getchannel("A")) == 0, 0, gray)
        near = NEAR_SHADE * (257 if gray.dtype != np.uint8 and gray.max(initial=0) > 255 else 1)
        mask = _values_to_ids(path, gray, "gray", color_ids, near)
    else:
        rgba = np.array(image.convert("RGBA"))
        rgb = np.where(rgba[..., 3:] == 0, 0, rgba[..., :3]).astype(np.uint8)
        mask = _values_to_ids(path, rgb, "rgb", color_ids, NEAR_SHADE)
    if require_object and not mask.object_ids:
        raise StmaInputError(f"{path}: mask has no object (every pixel is background); "
                             "draw each object with a nonzero id or colour")
    return mask


def fit_mask(mask: LoadedMask, size: tuple[int, int], video: str) -> LoadedMask:
    """Brings a mask to the video's (width, height): nearest resize if only the scale differs, else an error."""
    width, height = size
    mh, mw = mask.ids.shape
    if (mw, mh) == (width, height):
        return mask
    aspect, mask_aspect = width / height, mw / mh
    if abs(mask_aspect - aspect) / aspect > ASPECT_TOLERANCE:
        raise StmaInputError(
            f"{mask.path}: mask is {mw}x{mh} but {video} is {width}x{height} (another aspect ratio); "
            "draw the mask on a frame of this video")
    resized = cv2.resize(mask.ids, (width, height), interpolation=cv2.INTER_NEAREST)
    warnings = [*mask.warnings, f"{mask.path}: mask is {mw}x{mh}, resized (nearest) to the video's {width}x{height}"]
    return LoadedMask(mask.path, resized, mask.kind, mask.mapping, warnings)


def load_mask_folder(folder: str | Path) -> dict[str, LoadedMask]:
    """Reads an annotation folder (DAVIS / YouTube-VOS style: `<frame name>.png`) -> frame name -> mask.

    Frames whose PNG has no object are kept (DAVIS ships such frames); the folder as a whole must
    hold at least one object.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise StmaInputError(f"{folder}: annotation folder not found; pass --mask-dir with a folder of <frame>.png masks")
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")),
                   key=lambda p: natural_key(p.name))
    if not files:
        raise StmaInputError(f"{folder}: no .png masks in the annotation folder; add <frame name>.png files")
    color_ids = ColorIds()
    masks = {p.stem: load_mask(p, color_ids, require_object=False) for p in files}
    if not any(m.object_ids for m in masks.values()):
        raise StmaInputError(f"{folder}: no mask in the folder has an object; "
                             "draw each object with a nonzero id or colour")
    return masks


def keep_new_objects(masks: dict[str, np.ndarray], frame_order: list[str]) -> dict[str, np.ndarray]:
    """The semi-supervised protocol: each object is given once, on the first annotated frame it appears in.

    Later annotations of an already given object are dropped (so a complete ground-truth folder is used
    exactly as a benchmark would use it); frames left without a new object are dropped.
    """
    seen: set[int] = set()
    out: dict[str, np.ndarray] = {}
    for name in frame_order:
        if name not in masks:
            continue
        ids = masks[name]
        new = [int(i) for i in np.unique(ids) if i != 0 and int(i) not in seen]
        if not new:
            continue
        seen.update(new)
        out[name] = np.where(np.isin(ids, new), ids, 0).astype(np.uint8)
    return out
