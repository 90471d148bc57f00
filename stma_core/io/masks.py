"""Reads user masks (palette, binary/grayscale or RGB-coloured PNGs) into uint8 id masks.

Users draw masks with whatever tool they have, so every common PNG flavour is accepted, but an id is
never invented: anti-aliased edge colours and JPEG-like noise are reported and folded into the
nearest real colour, and any id mapping we had to choose is returned so the CLI can print it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from stma_core.errors import StmaInputError
from stma_core.ids import MAX_OBJECTS, VOID_ID
from stma_core.io.frames import natural_key, open_upright
from stma_core.io.palette import DAVIS_PALETTE, davis_id_of

ASPECT_TOLERANCE = 0.01
"""Masks whose aspect ratio is within 1% of the video's are resized (nearest); others are rejected."""
NEAR_SHADE = 48
"""Largest per-channel difference (8-bit units) at which two colours count as shades of each other."""
GRAY_ID_MAX = 64
"""A grayscale mask whose levels are all <= this is an id map (0/1, 0/1/2, ...): read verbatim, never folded."""
VOID_RGB = np.array([224, 224, 192])
"""The DAVIS void colour (palette index 255): void in RGB masks too, as in palette masks."""
ALPHA_COLOURS = 16
"""An RGBA mask whose opaque pixels have more distinct colours than this (or are all black) is a cut-out:
alpha marks the object."""


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
        image = open_upright(path)  # as frames are read: a mask saved with its photo's EXIF orientation is drawn upright
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


STEADY_RADIUS, STEADY_NOISE = 2, 8
"""In a lossy mask, a pixel whose (2 * STEADY_RADIUS + 1)^2 neighbourhood stays within STEADY_NOISE (8-bit
units, per channel) of it lies inside an area of one colour, changed only by compression noise."""


def _steady(pixels: np.ndarray) -> np.ndarray:
    """HxW: True where every pixel within STEADY_RADIUS is within STEADY_NOISE of the pixel (HxWxC values)."""
    pixels = pixels.astype(np.int16).reshape(pixels.shape[0], pixels.shape[1], -1)
    r = STEADY_RADIUS
    padded = np.pad(pixels, ((r, r), (r, r), (0, 0)), mode="edge")
    h, w = pixels.shape[:2]
    inside = np.ones((h, w), bool)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            if dy != r or dx != r:
                inside &= (np.abs(padded[dy:dy + h, dx:dx + w] - pixels) <= STEADY_NOISE).all(2)
    return inside


def _is_blend(vals: np.ndarray, real: np.ndarray, tol: float) -> np.ndarray:
    """For each colour in `vals` (N, C): True if it is a mix of two or three real colours (an edge or
    junction blend, as anti-aliasing and area resizing make), within `tol`."""
    out = np.zeros(len(vals), bool)
    n = len(real)
    for a in range(n):
        for b in range(a + 1, n):
            seg = real[b] - real[a]
            denom = float((seg * seg).sum())
            if denom == 0:
                continue
            t = ((vals - real[a]) @ seg) / denom
            closest = real[a] + np.clip(t, 0, 1)[:, None] * seg
            out |= (t > 0) & (t < 1) & (np.abs(vals - closest).max(1) <= tol)
    if vals.shape[1] < 3 or n < 3 or n > 24:
        return out
    for a in range(n):
        for b in range(a + 1, n):
            for d in range(b + 1, n):
                basis = np.stack([real[b] - real[a], real[d] - real[a]], 1)  # C x 2
                coef, *_ = np.linalg.lstsq(basis, (vals - real[a]).T, rcond=None)
                u, v = coef
                residual = np.abs(vals - (real[a] + (basis @ coef).T)).max(1)
                out |= (u >= -0.05) & (v >= -0.05) & (u + v <= 1.05) & (residual <= tol)
    return out


def _group_colours(path: Path, codes: np.ndarray, values: np.ndarray, kind: str
                   ) -> tuple[np.ndarray, list[int], list[str]]:
    """Finds the real colours among `values` (codes index them) and gives every other colour to one of them.

    No pixel-count threshold decides anything. Flat colours (with at least one pixel whose 8 neighbours
    share it) are real, except that in a noisy mask (as many colours without a flat pixel as with one:
    JPEG, anti-aliasing) a flat colour within NEAR_SHADE of a more common flat colour is the same colour
    changed by compression noise and is merged into it (reported). Colours without a flat
    pixel are edge blends or noise when they lie near a real colour or between two real ones, and are
    folded (reported); otherwise they are a tiny object of their own, unless the mask is noisy: there every
    colour without a flat pixel is noise and goes to the nearest real colour (a lossy mask invents nothing),
    except a steady colour (_steady: an area within noise of it, which a small object keeps where noise leaves
    it no flat pixel) that is no blend of two other real colours: it is real. Exact DAVIS palette colours are
    never merged with each other. Returns (codes, indices of real values, warnings).
    """
    counts = np.bincount(codes.ravel(), minlength=len(values))
    present = counts > 0
    flat = np.zeros(len(values), bool)
    flat[np.unique(codes[_interior(codes)])] = True
    flat &= present
    vals = values.reshape(len(values), -1).astype(np.float64)
    davis = np.array([kind == "rgb" and davis_id_of(tuple(int(x) for x in v)) is not None for v in values], bool)
    lut = np.arange(len(values))
    warnings: list[str] = []
    real: list[int] = []
    merged: list[tuple[int, int]] = []
    # Compression leaves many colours without a flat pixel; a mask without them has no noise to merge.
    noisy = int((present & ~flat).sum()) >= int(flat.sum())
    steady = np.zeros(len(values), bool)
    if noisy:  # noise leaves a small object no exactly flat pixel: an area of steady colour marks it instead
        steady[np.unique(codes[_steady(values[codes])])] = True
        steady &= present & ~flat
    for i in sorted(np.flatnonzero(flat | steady), key=lambda i: -counts[i]):
        if real and noisy:
            dist = np.abs(vals[real] - vals[i]).max(1)
            j = int(np.argmin(dist))
            if dist[j] <= NEAR_SHADE and not (davis[i] and davis[real[j]]):
                lut[i] = real[j]
                merged.append((int(i), real[j]))
                continue
        real.append(int(i))
    for i in sorted((i for i in real if steady[i]), key=lambda i: counts[i]):
        rest = [k for k in real if k != i]
        if _is_blend(vals[[i]], vals[rest], NEAR_SHADE / 2)[0]:
            real.remove(i)  # the steady middle of a soft edge between two colours: folded below
            steady[i] = False
    others = np.flatnonzero(present & ~flat & ~steady)
    if not real:  # e.g. a 1-px-wide drawing: nothing is flat; keep the colours as they are
        real = [int(i) for i in others]
        others = np.zeros(0, np.int64)
    n_folded, folded_pixels = 0, 0
    if len(others):
        real_arr = np.asarray(real)
        is_blend = _is_blend(vals[others], vals[real_arr], NEAR_SHADE / 2)
        for start in range(0, len(others), 4096):  # chunks keep the distance matrix small
            chunk = others[start:start + 4096]
            dist = np.abs(vals[chunk][:, None, :] - vals[real_arr][None, :, :]).max(2)
            near = (dist.min(1) <= NEAR_SHADE) | is_blend[start:start + 4096] | noisy
            lut[chunk[near]] = real_arr[dist[near].argmin(1)]
            n_folded += int(near.sum())
            folded_pixels += int(counts[chunk[near]].sum())
            real.extend(int(i) for i in chunk[~near])
    if len(real) > MAX_OBJECTS + 1:  # + background
        raise StmaInputError(
            f"{path}: {len(real) - 1} distinct colours look like objects (at most {MAX_OBJECTS} are supported); "
            "draw fewer objects, one flat colour each (a photo or JPEG is not a mask)")
    if n_folded:
        warnings.append(
            f"{path}: {n_folded} stray colour(s) on {folded_pixels} pixel(s) (anti-aliased edges or compression "
            "noise) were given to the nearest real colour; save the mask without anti-aliasing to silence this")
    if merged:
        pairs = ", ".join(f"{_describe(kind, values[a])} into {_describe(kind, values[b])}" for a, b in merged[:4])
        more = f" (+{len(merged) - 4} more)" if len(merged) > 4 else ""
        warnings.append(f"{path}: colours that differ only by compression noise were merged: {pairs}{more}; "
                        "save the mask as a lossless PNG with one flat colour per object to silence this")
    return lut[codes], real, warnings


def _fold_noisy_ids(path: Path, codes: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, list[int], list[str]]:
    """A small-id map (0/1/2...) saved as JPEG: the levels with a flat pixel are its ids; each other level is
    compression noise on an edge and goes to the nearest of them. Always warns: JPEG moves the edges of
    such a mask (ids one gray level apart) by several pixels at usual qualities, which no reader can undo.
    -> (codes, indices of real values, warnings)."""
    flat = np.zeros(len(values), bool)
    flat[np.unique(codes[_interior(codes)])] = True
    real = [int(i) for i in np.flatnonzero(flat)] or list(range(len(values)))
    lut = np.arange(len(values))
    noise = [i for i in range(len(values)) if i not in real]
    for i in noise:
        lut[i] = real[int(np.argmin(np.abs(values[real] - values[i])))]
    folded = ""
    if noise:
        levels = ", ".join(str(int(values[i])) for i in noise[:6]) + (", ..." if len(noise) > 6 else "")
        folded = (f"; level(s) {levels} on {int(np.isin(codes, noise).sum())} edge pixel(s) were compression "
                  "noise, given to the nearest id")
    return lut[codes], real, [
        f"{path}: an id mask (gray levels 0..{int(values[real].max())}) saved as JPEG, whose compression moves "
        f"the edges of such masks{folded}; save id masks as PNG"]


def _values_to_ids(path: Path, pixels: np.ndarray, kind: str, color_ids: ColorIds, exact: bool = False,
                   lossy: bool = False) -> LoadedMask:
    """Shared path of RGB and grayscale masks: group colours, pick background and void, assign ids.

    exact: the levels are ids (wide integer masks, see _gray_levels): every level is its own object.
    lossy: the file is a JPEG, whose noise turns ids into their neighbours (1 into 2 or 3 on an edge), so
    an id map's levels without a flat pixel are folded into the nearest level that has one (_fold_noisy_ids)."""
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
    lossless_ids = exact or (kind == "gray" and int(values.max()) <= GRAY_ID_MAX) or \
        (kind == "rgb" and all(davis_id_of(tuple(int(x) for x in v)) is not None for v in values_nd))
    if lossless_ids and lossy and kind == "gray" and not exact:
        codes, real, warnings = _fold_noisy_ids(path, codes, values)
    elif lossless_ids:  # an id map (gray 0/1/2..., or DAVIS colours): read verbatim, whatever an object's size
        real = list(range(len(values)))
    else:
        codes, real, warnings = _group_colours(path, codes, values_nd, kind)
    counts = np.bincount(codes.ravel(), minlength=len(values))
    void = [i for i in real if kind == "rgb" and np.abs(values_nd[i] - VOID_RGB).max() <= (0 if lossless_ids else 12)]
    if void:
        n_void = int(sum(counts[i] for i in void))
        warnings.append(f"{path}: {n_void} void pixel(s) (DAVIS void colour rgb(224, 224, 192)) treated as "
                        "background, as in palette masks")
    near_black = [i for i in real if i not in void and np.abs(values_nd[i]).max() <= (0 if lossless_ids else NEAR_SHADE)]
    if near_black:
        background = min(near_black, key=lambda i: np.abs(values_nd[i]).max())
    else:
        background = int(max((i for i in real if i not in void), key=lambda i: counts[i], default=real[0]))
        warnings.append(f"{path}: no black/0 pixel, so the most common colour {_describe(kind, values_nd[background])} "
                        "is taken as background; paint the background black to silence this")
    objects = [i for i in real if i != background and i not in void]
    if len(objects) > MAX_OBJECTS:
        raise StmaInputError(
            f"{path}: {len(objects)} distinct colours look like objects (at most {MAX_OBJECTS} are supported); "
            "draw fewer objects, one flat colour each")

    lut = np.zeros(len(values), np.int64)
    mapping: dict[int, str] = {}
    if kind == "rgb":
        # DAVIS-palette colours keep their DAVIS ids; other colours get free ids in order of appearance.
        # In a lossy mask a DAVIS colour comes back a few units off: it keeps its DAVIS id all the same.
        def davis_id(i: int) -> int | None:
            return davis_id_of(tuple(values_nd[i])) if lossless_ids or not warnings else _near_davis_id(values_nd[i])

        ordered = sorted(objects, key=lambda i: (davis_id(i) is None, first_index[i]))
        for i in ordered:
            color = tuple(int(v) for v in values_nd[i])
            lut[i] = color_ids.assign(("rgb", color), davis_id(i))
            mapping[int(lut[i])] = _describe(kind, values_nd[i])
    else:
        levels = sorted(int(values[i]) for i in objects)
        # exact (wide) ids are never the binary shorthand nor kept verbatim: each level gets its id through
        # color_ids, so a series of masks maps one level to one id in every file (300 -> 1, then 1 -> 2)
        binary = not exact and len(levels) == 1 and levels[0] in (1, 255)
        identity = not exact and bool(levels) and not binary and all(1 <= v <= MAX_OBJECTS for v in levels) and (
            lossless_ids or levels[-1] <= GRAY_ID_MAX)  # no levels: a flat mask, all background
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


def _gray_levels(path: Path, image: Image.Image) -> tuple[np.ndarray, bool]:
    """A one-channel mask's levels -> (HxW array, exact).

    exact: the levels are integer instance ids wider than 8 bits (16/32-bit or float PNG/TIFF from a
    labelling or panoptic tool: 1, 2, 300 or 1000, 1001, ...), to be read verbatim, never scaled or
    folded as shades. A 16-bit image whose levels are all multiples of 257 is an 8-bit mask stored in 16
    bits (0/65535, 0/257/514): scaled down. Fractional levels are a soft (probability) mask: refused, as
    the Python API refuses them, rather than cut at an arbitrary level.
    """
    if image.mode == "1":
        return np.array(image, dtype=np.uint8), False  # bool pixels: 0/1
    values = np.array(image.getchannel(0) if image.mode == "LA" else image)
    if values.dtype == np.uint8:
        return values, False
    if values.dtype.kind == "f":
        if not np.isfinite(values).all() or (values != np.round(values)).any():
            low, high = float(np.nanmin(values)), float(np.nanmax(values))
            raise StmaInputError(
                f"{path}: a soft (probability) mask: float levels from {low:g} to {high:g}, not integer ids; "
                "threshold it first (e.g. save (prob > 0.5) as a 0/1 PNG)")
    values = values.astype(np.int64)
    if values.min(initial=0) < 0:
        raise StmaInputError(f"{path}: negative levels ({int(values.min())}) in the mask; ids are 0 (background) "
                             "and positive integers")
    top = int(values.max(initial=0))
    if top <= 255:
        return values.astype(np.uint8), False
    if top <= 65535 and not (values % 257).any():
        return (values // 257).astype(np.uint8), False
    return values, True


def _is_void_label_map(gray: np.ndarray) -> bool:
    """Small ids (<= GRAY_ID_MAX) plus 255: the DAVIS/VOC label map whose 255 is 'ignore', not an object.
    (0/255 alone is a binary mask; 0/128/255 are shades of a drawn mask.)"""
    levels = np.unique(gray)
    return len(levels) >= 3 and levels[-1] == VOID_ID and levels[-2] <= GRAY_ID_MAX


def _gray_void(path: Path, gray: np.ndarray, series_void: bool = False) -> str | None:
    """The warning when gray 255 is void in this mask (then it is background): the mask is a void label
    map itself, or belongs to a series (an annotation folder) in which one is."""
    is_map = VOID_ID in gray and _is_void_label_map(gray)
    if not (VOID_ID in gray and (series_void or is_map)):
        return None
    count = int((gray == VOID_ID).sum())
    why = "as DAVIS and VOC label maps mean it" if is_map else \
        "as in the other masks of this folder, where 255 marks void beside small ids"
    return (f"{path}: {count} pixel(s) of gray 255 treated as void (background), {why}; "
            "give that object another id if it is one")


DECODED_BUDGET = 64 * 2**20
"""Bytes of grayscale mask pixels SeriesRules.of keeps decoded for load_mask (the rest are decoded again)."""
_BYTES_PER_PIXEL = {"L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "LA": 2, "I": 4, "F": 4}


@dataclass
class SeriesRules:
    """How the grayscale masks of one annotation folder are read, decided for the folder as a whole, so a
    level means the same thing in every file: `exact` when any holds ids above 255 (every level an id,
    mapped through the folder's ColorIds), `void255` when any is a small-id map with 255 as void."""

    exact: bool = False
    void255: bool = False

    @classmethod
    def of(cls, files: Iterable[Path], decoded: dict[Path, Image.Image] | None = None,
           budget: int = DECODED_BUDGET) -> "SeriesRules":
        """decoded: gets the grayscale images read here, by path, for load_mask(image=), so they are decoded once,
        up to `budget` bytes of pixels in all; the rest are read again by load_mask. (All of them were held until
        every mask was loaded: a folder of 400 16-bit 854x480 masks took 400 MB instead of 235 MB, and a folder
        annotating every frame of a long 1080p video gigabytes more.)"""
        rules = cls()
        held = 0
        for path in files:
            try:
                with Image.open(path) as probe:  # the header only: palette and colour masks are not decoded twice
                    gray_file = probe.mode in GRAY_MODES and probe.mode != "1"
            except (OSError, UnidentifiedImageError):
                continue  # load_mask reports it
            if not gray_file:
                continue
            image = _read_image(path)
            size = image.width * image.height * _BYTES_PER_PIXEL.get(image.mode, 4)
            if decoded is not None and held + size <= budget:
                decoded[path] = image
                held += size
            gray, exact = _gray_levels(path, image)
            rules.exact |= exact
            rules.void255 |= not exact and _is_void_label_map(gray)
        return rules


def _describe(kind: str, value: np.ndarray) -> str:
    if kind == "rgb":
        return "rgb({}, {}, {})".format(*(int(v) for v in value))
    return f"gray {int(value[0])}"


def _near_davis_id(color: np.ndarray, tol: int = 12, ids: int = 20) -> int | None:
    """Id of the DAVIS palette colour among the first `ids` (those annotations use) within `tol` of `color`."""
    dist = np.abs(DAVIS_PALETTE[1:ids + 1].astype(np.int64) - np.asarray(color, np.int64)).max(1)
    near = np.flatnonzero(dist <= tol)
    return int(near[0]) + 1 if len(near) == 1 else None


def _is_cutout(alpha: np.ndarray, colour: np.ndarray) -> bool:
    """An image whose transparency marks the object (a photo editor's cut-out), rather than a colour mask
    on a transparent background: some pixels transparent, some opaque, and the opaque ones are a picture
    (more than ALPHA_COLOURS colours) or all black."""
    opaque = alpha >= 128
    if opaque.all() or not opaque.any():
        return False
    pixels = colour[opaque].reshape(-1, colour.shape[-1])
    if not pixels.any():
        return True
    sample = pixels[:: max(1, len(pixels) // 200_000)]
    return len(np.unique(sample, axis=0)) > ALPHA_COLOURS


def _alpha_mask(path: Path, alpha: np.ndarray) -> LoadedMask:
    ids = (alpha >= 128).astype(np.uint8)
    return LoadedMask(path, ids, "alpha", {1: "opaque pixels (alpha >= 128)"})


def _page_count(path: Path) -> int:
    """Pictures in an image file: more than one for a TIFF stack (ImageJ, Fiji), an animated GIF/PNG/WebP."""
    try:
        with Image.open(path) as image:
            return int(getattr(image, "n_frames", 1) or 1)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return 1


def _is_jpeg(path: Path) -> bool:
    try:
        with open(path, "rb") as file:
            return file.read(2) == b"\xff\xd8"
    except OSError:
        return False


GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def _black_index(image: Image.Image, indices: np.ndarray) -> int | None:
    """The palette index of black when a palette PNG is a colour picture rather than an id map: black, the
    background of every id-map convention (DAVIS, VOC, YouTube-VOS: index 0 is black), sits at another index
    in use, and the indices in use have distinct colours. Optimisers and quantisers (pngquant, PIL's
    quantize, 'save as indexed') store a colour mask so, in any order: its indices are not ids. None for id maps."""
    palette = np.array(image.getpalette() or [], np.int64)
    palette = palette[:len(palette) // 3 * 3].reshape(-1, 3)
    used = np.flatnonzero(np.bincount(indices.ravel(), minlength=256))
    if not len(used) or used[-1] >= len(palette):
        return None
    colours = palette[used]
    if len(np.unique(colours, axis=0)) < len(used):
        return None  # colours do not tell the indices apart: they are ids
    black = [int(i) for i, colour in zip(used, colours) if i != 0 and not colour.any()]
    return black[0] if black else None


def load_mask(path: str | Path, color_ids: ColorIds | None = None, require_object: bool = True,
              series: SeriesRules | None = None, image: Image.Image | None = None) -> LoadedMask:
    """Reads one mask PNG into ids.

    Palette PNGs: pixel value = id, 255 (DAVIS void) becomes background with a warning.
    A palette PNG whose black (background) is another index than 0 is a colour mask stored with a palette
    (_black_index): read by its colours, as RGB masks are.
    Grayscale: 0/255 or 0/1 -> id 1; values 1..254 are ids; other gray levels get ids in sorted order;
    255 beside small ids (<= GRAY_ID_MAX) is void. 16/32-bit and float masks with levels above 255 are
    instance ids read exactly (renumbered in sorted order, the mapping returned); an 8-bit mask stored in
    16 bits (levels multiples of 257) is scaled down; a soft float mask is a StmaInputError.
    RGB(A): black (or transparent) is background; DAVIS colours keep their ids; other colours get ids in
    order of first appearance; the DAVIS void colour (224, 224, 192) is void (background), as in palette
    masks. An RGBA cut-out (a picture on transparency) is one object: its opaque pixels. `color_ids` keeps those choices consistent over the masks of one video.
    `image`: the file as already read upright (SeriesRules.of's `decoded`), so it is not decoded again.
    """
    path = Path(path)
    image = _read_image(path) if image is None else image
    pages = _page_count(path)
    color_ids = color_ids if color_ids is not None else ColorIds()
    mode = image.mode
    indices = np.array(image.getchannel(0) if mode == "PA" else image, dtype=np.uint8) if mode in ("P", "PA") else None
    black = _black_index(image, indices) if indices is not None else None
    if indices is not None and black is None:
        mask = LoadedMask(path, indices, "palette")
        void = indices == VOID_ID
        if void.any():
            mask.ids = np.where(void, 0, indices).astype(np.uint8)
            mask.warnings.append(f"{path}: {int(void.sum())} void pixel(s) (value 255) treated as background")
    elif mode in GRAY_MODES:
        gray, exact = _gray_levels(path, image)
        exact = exact or (series is not None and series.exact and mode != "1")
        alpha = np.array(image.getchannel("A")) if mode == "LA" else None
        if alpha is not None and _is_cutout(alpha, gray[..., None]):
            mask = _alpha_mask(path, alpha)
        else:
            if alpha is not None:
                gray = np.where(alpha < 128, 0, gray).astype(gray.dtype)
            void_warning = None if exact else _gray_void(path, gray, series is not None and series.void255)
            if void_warning is not None:
                gray = np.where(gray == VOID_ID, 0, gray).astype(gray.dtype)
            mask = _values_to_ids(path, gray, "gray", color_ids, exact, lossy=_is_jpeg(path))
            if void_warning is not None:
                mask.warnings.insert(0, void_warning)
    else:
        rgba = np.array(image.convert("RGBA"))
        alpha = rgba[..., 3]
        if _is_cutout(alpha, rgba[..., :3]):
            mask = _alpha_mask(path, alpha)
        else:
            rgb = np.where(alpha[..., None] < 128, 0, rgba[..., :3]).astype(np.uint8)
            mask = _values_to_ids(path, rgb, "rgb", color_ids)
        if black is not None:
            mask.warnings.insert(0, (
                f"{path}: palette image whose black is index {black}, not 0 (a colour mask stored with a palette by "
                "an optimiser or quantiser): read by its colours, black as background; save it with the "
                "background as index 0 to silence this"))
    if pages > 1:
        mask.warnings.insert(0, f"{path}: holds {pages} pictures (a stack or animation); only the first is read, "
                                "as one frame's mask; for masks of several frames pass --mask-dir with one PNG a frame")
    if require_object and not mask.object_ids:
        raise StmaInputError(f"{path}: mask has no object (every pixel is background, void or one flat "
                             "colour); draw each object with a nonzero id or colour on a black background")
    return mask


def fit_mask(mask: LoadedMask, size: tuple[int, int], video: str, display_size: tuple[int, int] | None = None,
             turned: bool = False) -> LoadedMask:
    """Brings a mask to the video's (width, height): nearest resize if only the scale differs, else an error.

    display_size: the size a player shows a video with non-square pixels at (FrameSource.display_size);
    a mask drawn on that picture (a screenshot) is resized to the stored frames with a warning. turned:
    the frames are read turned by rotation metadata, so a mask of the stored sideways shape is explained.
    """
    width, height = size
    mh, mw = mask.ids.shape
    if (mw, mh) == (width, height):
        return mask

    def fits(w: float, h: float) -> bool:
        return abs(mw / mh - w / h) / (w / h) <= ASPECT_TOLERANCE

    resized = cv2.resize(mask.ids, (width, height), interpolation=cv2.INTER_NEAREST)
    if fits(width, height):
        warning = f"{mask.path}: mask is {mw}x{mh}, resized (nearest) to the video's {width}x{height}"
    elif display_size is not None and fits(*display_size):
        warning = (f"{mask.path}: mask is {mw}x{mh}, drawn on {video} as shown ({display_size[0]}x{display_size[1]}, "
                   f"non-square pixels); resized (nearest) to its stored {width}x{height} frames, the outputs' size")
    elif turned and fits(height, width):
        raise StmaInputError(
            f"{mask.path}: mask is {mw}x{mh} but {video} is read upright, {width}x{height} (turned by its rotation "
            "metadata, as players show it); draw the mask on the upright frame (or turn the mask a quarter)")
    elif display_size is not None:
        raise StmaInputError(
            f"{mask.path}: mask is {mw}x{mh} but {video} has non-square pixels: stored {width}x{height}, shown "
            f"{display_size[0]}x{display_size[1]}; draw the mask at either size")
    else:
        raise StmaInputError(
            f"{mask.path}: mask is {mw}x{mh} but {video} is {width}x{height} (another aspect ratio); "
            "draw the mask on a frame of this video")
    return LoadedMask(mask.path, resized, mask.kind, mask.mapping, [*mask.warnings, warning])


def load_mask_folder(folder: str | Path) -> dict[str, LoadedMask]:
    """Reads an annotation folder (DAVIS / YouTube-VOS style: `<frame name>.png`) -> frame name -> mask.

    Frames whose PNG has no object are kept (DAVIS ships such frames); the folder as a whole must
    hold at least one object. Colours and gray levels mean the same id in every file (SeriesRules).
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():  # a mask file, or stma's own RLE JSON
        raise StmaInputError(f"{folder}: is a file, not an annotation folder; pass --mask-dir with a folder of "
                             "<frame>.png masks (one first-frame mask goes to --mask)")
    if not folder.is_dir():
        raise StmaInputError(f"{folder}: annotation folder not found; pass --mask-dir with a folder of <frame>.png masks")
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith(".")),
                   key=lambda p: natural_key(p.name))
    if not files:
        raise StmaInputError(f"{folder}: no .png masks in the annotation folder; add <frame name>.png files")
    color_ids = ColorIds()
    decoded: dict[Path, Image.Image] = {}  # the grayscale masks, read once for the rules and for their ids
    series = SeriesRules.of(files, decoded)
    masks = {p.stem: load_mask(p, color_ids, require_object=False, series=series, image=decoded.pop(p, None))
             for p in files}
    if not any(m.object_ids for m in masks.values()):
        raise StmaInputError(f"{folder}: no mask in the folder has an object; "
                             "draw each object with a nonzero id or colour")
    return masks


def keep_new_objects(masks: Iterable[tuple[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The semi-supervised protocol: each object is given once, on the first annotated frame it appears in.

    masks: (frame name, HxW uint8 id mask) in frame order; read one at a time, so a generator keeps
    only the masks that are given in memory. Later annotations of an already given object are dropped
    (so a complete ground-truth folder is used exactly as a benchmark would use it); frames left
    without a new object are dropped.
    """
    seen: set[int] = set()
    out: dict[str, np.ndarray] = {}
    for name, ids in masks:
        new = [int(i) for i in np.unique(ids) if i != 0 and int(i) not in seen]
        if not new:
            continue
        seen.update(new)
        out[name] = np.where(np.isin(ids, new), ids, 0).astype(np.uint8)
    return out
