"""DAVIS region (J) and boundary (F) measures, numerically identical to the official semi-supervised tool.

The official davis2017-evaluation code loops over full frames and dilates two full-size boundary maps per
object per frame. Here every object is cropped to the bounding box of its prediction/ground-truth union
(plus one pixel) first: boundary pixels only ever lie inside that box, so the counts, and hence the
scores, are exactly the same while the work scales with the object instead of the frame.

Deliberate difference: `statistics` computes the Decay bin edges with 64-bit integers. The official
`db_statistics` (davis2017/utils.py) does `ids = ids.astype(np.uint8)` on the rounded linspace edges and
then slices `values[ids[i]:ids[i + 1] + 1]`; from 256 scored frames on (258 annotated frames) the last
edge or the `+ 1` wraps around (255 + 1 -> 0, 299 -> 43), the last bin comes out empty and Decay becomes
NaN (longer sequences can also get wrong bins). Up to 255 scored frames (all of DAVIS) the results are
identical.
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np

BOUND_TH = 0.008
"""Official boundary tolerance: a fraction of the image diagonal (>= 1 means pixels)."""


@lru_cache(maxsize=32)
def disk(radius: int) -> np.ndarray:
    """Structuring element with skimage.morphology.disk semantics: offsets with x² + y² <= r²."""
    offsets = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(offsets, offsets)
    kernel = (x * x + y * y <= radius * radius).astype(np.uint8)
    kernel.setflags(write=False)
    return kernel


def bound_radius(height: int, width: int, bound_th: float = BOUND_TH) -> int:
    """Tolerance radius in pixels: ceil(bound_th x diagonal) as in the official f_measure (8 at 854x480)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(height, width)))


def boundary_map(seg: np.ndarray) -> np.ndarray:
    """Boundary pixels of a binary mask (last two axes), as the official `_seg2bmap`.

    A pixel is on the boundary when it differs from its right, lower or lower-right neighbour; on the
    last row/column only the neighbours that exist are compared, and the bottom-right pixel is never a
    boundary. Replicating the last row and column reproduces exactly that rule. Leading axes are frames.
    """
    seg = seg.astype(bool, copy=False)
    pad = [(0, 0)] * (seg.ndim - 2) + [(0, 1), (0, 1)]
    padded = np.pad(seg, pad, mode="edge")
    right = padded[..., :-1, 1:]
    down = padded[..., 1:, :-1]
    down_right = padded[..., 1:, 1:]
    return (seg != right) | (seg != down) | (seg != down_right)


def _object_window(gt: np.ndarray, pred: np.ndarray) -> tuple[slice, slice] | None:
    """Bounding box of gt | pred grown by one pixel (boundary pixels sit up to one pixel above/left)."""
    union = (gt | pred).view(np.uint8)
    x, y, w, h = cv2.boundingRect(union)
    if w == 0 or h == 0:
        return None
    height, width = gt.shape
    return slice(max(y - 1, 0), min(y + h + 1, height)), slice(max(x - 1, 0), min(x + w + 1, width))


def _f_from_boundaries(fg_b: np.ndarray, gt_b: np.ndarray, radius: int) -> float:
    """Official precision/recall/F from two boundary maps of the same (cropped) window."""
    n_fg = int(np.count_nonzero(fg_b))
    n_gt = int(np.count_nonzero(gt_b))
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        kernel = disk(radius)
        fg_dil = cv2.dilate(fg_b.view(np.uint8), kernel).view(bool)
        gt_dil = cv2.dilate(gt_b.view(np.uint8), kernel).view(bool)
        precision = np.count_nonzero(fg_b & gt_dil) / float(n_fg)
        recall = np.count_nonzero(gt_b & fg_dil) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def object_scores(gt: np.ndarray, pred: np.ndarray, radius: int) -> tuple[float, float]:
    """(J, F) of one object on one frame from two HxW boolean masks."""
    window = _object_window(gt, pred)
    if window is None:  # both empty: IoU is 1 by definition and both boundaries are empty (F = 1)
        return 1.0, 1.0
    g = np.ascontiguousarray(gt[window])
    p = np.ascontiguousarray(pred[window])
    inter = np.count_nonzero(g & p)
    union = np.count_nonzero(g | p)
    j = inter / union
    f = _f_from_boundaries(boundary_map(p), boundary_map(g), radius)
    return float(j), float(f)


def frame_scores(gt_ids: np.ndarray, pred_ids: np.ndarray, n_objects: int,
                 bound_th: float = BOUND_TH) -> tuple[np.ndarray, np.ndarray]:
    """J and F of objects 1..n_objects on one frame of id masks (GT void must already be 0).

    Returns two float64 arrays of length n_objects. An object absent from both masks scores 1 and 1.
    """
    radius = bound_radius(*gt_ids.shape[:2], bound_th=bound_th)
    j = np.empty(n_objects)
    f = np.empty(n_objects)
    for k in range(1, n_objects + 1):
        j[k - 1], f[k - 1] = object_scores(gt_ids == k, pred_ids == k, radius)
    return j, f


def jaccard(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU over the last two axes of boolean masks (any leading frame axes); 1 where the union is empty."""
    inter = np.count_nonzero(gt & pred, axis=(-2, -1))
    union = np.count_nonzero(gt | pred, axis=(-2, -1))
    out = np.ones(np.shape(union), dtype=np.float64)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def boundary_f(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH) -> np.ndarray:
    """Boundary F over the last two axes of boolean masks (any leading frame axes)."""
    gt = np.asarray(gt, dtype=bool)
    pred = np.asarray(pred, dtype=bool)
    radius = bound_radius(*gt.shape[-2:], bound_th=bound_th)
    flat_gt = gt.reshape(-1, *gt.shape[-2:])
    flat_pred = pred.reshape(-1, *pred.shape[-2:])
    out = np.array([object_scores(g, p, radius)[1] for g, p in zip(flat_gt, flat_pred)], dtype=np.float64)
    return out.reshape(gt.shape[:-2])


def decay_bins(n: int) -> list[tuple[int, int]]:
    """The official 4 overlapping Decay bins [start, stop) over n scored frames, with int64 edges."""
    edges = (np.round(np.linspace(1, n, 5) + 1e-10) - 1).astype(np.int64)
    return [(int(edges[i]), int(edges[i + 1]) + 1) for i in range(4)]


def statistics(values: np.ndarray) -> tuple[float, float, float]:
    """(Mean, Recall, Decay) of per-frame scores as the official db_statistics, minus its uint8 overflow.

    Mean is the nanmean, Recall the fraction of frames scoring > 0.5 and Decay the mean of the first of
    4 overlapping bins minus the mean of the last. See the module docstring for the overflow.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(np.nanmean(values)) if not np.all(np.isnan(values)) else math.nan
    recall = float(np.mean(values > 0.5))
    bins = [values[a:b] for a, b in decay_bins(values.size)]

    def _nanmean(x: np.ndarray) -> float:
        return float(np.nanmean(x)) if x.size and not np.all(np.isnan(x)) else math.nan

    return mean, recall, _nanmean(bins[0]) - _nanmean(bins[3])
