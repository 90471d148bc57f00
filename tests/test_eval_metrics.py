"""Agreement of stma_core.eval with a plain transcription of the official DAVIS semi-supervised evaluation.

`Reference*` below follows davis2017-evaluation (metrics.py db_eval_iou / f_measure / _seg2bmap,
utils.py db_statistics, evaluation.py _evaluate_semisupervised) step by step, with full-frame arrays and
per-frame loops, and without any of the fast implementation's cropping or histogram tricks.
"""

from __future__ import annotations

import math
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from stma_core.eval.datasets import resolve_split
from stma_core.eval.metrics import (bound_radius, boundary_f, boundary_map, decay_bins, disk, frame_scores,
                                    jaccard, object_scores, statistics)
from stma_core.eval.run_dataset import segment_davis
from stma_core.eval.scoring import score_predictions
from stma_core.inference.factory import make_propagator_factory

TOL = 1e-6


# ----------------------------------------------------------------------------------------------------
# Reference transcription of the official algorithm (slow, full frame, one frame at a time)
# ----------------------------------------------------------------------------------------------------

def ref_disk(radius: float) -> np.ndarray:
    """skimage.morphology.disk: the offsets (x, y) with x*x + y*y <= r*r."""
    r = int(radius)
    out = np.zeros((2 * r + 1, 2 * r + 1), dtype=np.uint8)
    for y in range(-r, r + 1):
        for x in range(-r, r + 1):
            if x * x + y * y <= radius * radius:
                out[y + r, x + r] = 1
    return out


def ref_seg2bmap(seg: np.ndarray) -> np.ndarray:
    seg = seg.astype(bool)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    b[-1, :] = seg[-1, :] ^ east[-1, :]
    b[:, -1] = seg[:, -1] ^ south[:, -1]
    b[-1, -1] = False
    return b


def ref_iou(gt: np.ndarray, pred: np.ndarray) -> float:
    gt = gt.astype(bool)
    pred = pred.astype(bool)
    inters = np.sum(gt & pred)
    union = np.sum(gt | pred)
    return 1.0 if np.isclose(union, 0) else inters / union


def ref_f_measure(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(pred.shape))
    fg_boundary = ref_seg2bmap(pred)
    gt_boundary = ref_seg2bmap(gt)
    kernel = ref_disk(bound_pix)
    fg_dil = cv2.dilate(fg_boundary.astype(np.uint8), kernel)
    gt_dil = cv2.dilate(gt_boundary.astype(np.uint8), kernel)
    gt_match = gt_boundary * fg_dil
    fg_match = fg_boundary * gt_dil
    n_fg = np.sum(fg_boundary)
    n_gt = np.sum(gt_boundary)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision = np.sum(fg_match) / float(n_fg)
        recall = np.sum(gt_match) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def ref_db_statistics(values: np.ndarray, edge_dtype: type = np.uint8) -> tuple[float, float, float]:
    """Official db_statistics; edge_dtype=np.uint8 is what the official code does."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = np.nanmean(values)
        recall = np.nanmean(values > 0.5)
        ids = np.round(np.linspace(1, len(values), 5) + 1e-10) - 1
        ids = ids.astype(edge_dtype)
        bins = [values[ids[i]:ids[i + 1] + 1] for i in range(4)]
        decay = np.nanmean(bins[0]) - np.nanmean(bins[3])
    return float(mean), float(recall), float(decay)


def ref_evaluate_sequence(gt_folder: Path, pred_folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-object per-frame J and F over frames 1..-2, objects 1..max id of the first GT frame."""
    names = sorted(p.stem for p in gt_folder.glob("*.png"))
    first = np.array(Image.open(gt_folder / f"{names[0]}.png")).astype(np.float64)
    first[first == 255] = 0
    n_objects = int(np.max(first))
    scored = names[1:-1]
    j = np.zeros((n_objects, len(scored)))
    f = np.zeros((n_objects, len(scored)))
    for t, name in enumerate(scored):
        gt = np.array(Image.open(gt_folder / f"{name}.png")).astype(np.float64)
        gt[gt == 255] = 0
        pred = np.array(Image.open(pred_folder / f"{name}.png")).astype(np.float64)
        for ii in range(n_objects):
            gt_obj = gt == ii + 1
            pred_obj = pred == ii + 1
            j[ii, t] = ref_iou(gt_obj, pred_obj)
            f[ii, t] = ref_f_measure(pred_obj, gt_obj)
    return j, f


# ----------------------------------------------------------------------------------------------------
# Small hand-checked cases
# ----------------------------------------------------------------------------------------------------

def _square(shape: tuple[int, int], top: int, left: int, size: int) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top:top + size, left:left + size] = True
    return mask


def test_disk_and_radius_match_the_official_definition() -> None:
    for r in (1, 2, 3, 8, 13):
        assert np.array_equal(disk(r), ref_disk(r))
    assert disk(1).sum() == 5  # a plus sign: x² + y² <= 1
    assert bound_radius(480, 854) == 8  # ceil(0.008 * 979.6)
    assert bound_radius(50, 50) == 1  # ceil(0.008 * 70.7)
    assert bound_radius(1080, 1920) == 18


def test_boundary_map_matches_seg2bmap_on_random_masks_touching_the_edges() -> None:
    rng = np.random.default_rng(0)
    for shape in ((1, 1), (1, 7), (6, 1), (9, 13), (40, 31)):
        for _ in range(5):
            seg = rng.random(shape) > 0.5
            assert np.array_equal(boundary_map(seg), ref_seg2bmap(seg)), shape
    stack = rng.random((4, 12, 10)) > 0.6
    assert np.array_equal(boundary_map(stack), np.stack([ref_seg2bmap(s) for s in stack]))


def test_identical_masks_score_one() -> None:
    gt = _square((50, 50), 10, 10, 10)
    assert object_scores(gt, gt.copy(), 1) == (1.0, 1.0)
    assert ref_iou(gt, gt) == 1.0 and ref_f_measure(gt, gt) == 1.0


def test_both_empty_score_one() -> None:
    empty = np.zeros((50, 50), dtype=bool)
    assert object_scores(empty, empty, 1) == (1.0, 1.0)
    assert ref_iou(empty, empty) == 1.0 and ref_f_measure(empty, empty) == 1.0


def test_one_empty_scores_zero() -> None:
    square = _square((50, 50), 10, 10, 10)
    empty = np.zeros_like(square)
    # Prediction empty: precision 1 (nothing wrong predicted), recall 0 -> F = 0; and the reverse.
    assert object_scores(square, empty, 1) == (0.0, 0.0)
    assert object_scores(empty, square, 1) == (0.0, 0.0)
    assert ref_f_measure(empty, square) == 0.0 and ref_f_measure(square, empty) == 0.0


def test_shifted_square_boundary_f_counted_by_hand() -> None:
    """GT: 10x10 square at rows/cols 10..19 of a 50x50 image; prediction: the same square 3 px right.

    Radius: ceil(0.008 * hypot(50, 50)) = ceil(0.566) = 1, so the disk is the centre plus its 4 neighbours.
    _seg2bmap of a square covering rows r0..r1, cols c0..c1 is the 1-px outline of rows r0-1..r1, cols
    c0-1..c1 (outside pixels left/above it see the square to their right/below; inside pixels on the last
    row/column see the outside): 4*11 - 4 = 40 pixels.
      GT outline:   rows 9 and 19 for cols 9..19, cols 9 and 19 for rows 9..19.
      Pred outline: rows 9 and 19 for cols 12..22, cols 12 and 22 for rows 9..19.
    Precision (pred outline pixels within distance 1 of the GT outline):
      row 9: cols 12..19 lie on GT, col 20 touches (9,19)            -> 9
      row 19: same                                                   -> 9
      col 12, rows 10..18: only (10,12) and (18,12) touch rows 9/19  -> 2
      col 22, rows 10..18: GT col 19 is 3 away                      -> 0
      20 / 40 = 0.5
    Recall (GT outline pixels within distance 1 of the pred outline), by symmetry of the same count:
      rows 9 and 19: cols 11..19 -> 9 + 9; col 19: (10,19), (18,19) -> 2; col 9: 0      -> 20 / 40 = 0.5
    F = 2 * 0.5 * 0.5 / (0.5 + 0.5) = 0.5.
    J: overlap cols 13..19 x 10 rows = 70, union 100 + 100 - 70 = 130 -> 7/13.
    """
    gt = _square((50, 50), 10, 10, 10)
    pred = _square((50, 50), 10, 13, 10)
    assert boundary_map(gt).sum() == 40
    j, f = object_scores(gt, pred, bound_radius(50, 50))
    assert abs(f - 0.5) < TOL
    assert abs(j - 7 / 13) < TOL
    assert abs(ref_f_measure(pred, gt) - 0.5) < TOL
    assert abs(ref_iou(gt, pred) - 7 / 13) < TOL


def test_one_pixel_shift_is_inside_the_tolerance() -> None:
    """Shifted by 1 px every outline pixel has a partner at distance 1: F = 1 while J = 90/110."""
    gt = _square((50, 50), 10, 10, 10)
    pred = _square((50, 50), 10, 11, 10)
    j, f = object_scores(gt, pred, 1)
    assert abs(f - 1.0) < TOL and abs(j - 90 / 110) < TOL
    assert abs(ref_f_measure(pred, gt) - 1.0) < TOL


def test_random_blobs_at_image_borders_agree_with_reference() -> None:
    """Cropping must not change anything, also when objects touch the last row/column."""
    rng = np.random.default_rng(1)
    for trial in range(30):
        h, w = rng.integers(20, 90, size=2)
        gt = np.zeros((h, w), np.uint8)
        pred = np.zeros((h, w), np.uint8)
        for mask in (gt, pred):
            for _ in range(rng.integers(0, 4)):
                y, x = rng.integers(0, h), rng.integers(0, w)
                cv2.circle(mask, (int(x), int(y)), int(rng.integers(1, 25)), 1, -1)
            mask[rng.random((h, w)) > 0.97] ^= 1
        if trial % 3 == 0:
            gt[-3:, :] = 1
            pred[:, -2:] = 1
        j, f = object_scores(gt.astype(bool), pred.astype(bool), bound_radius(int(h), int(w)))
        assert abs(j - ref_iou(gt, pred)) < TOL
        assert abs(f - ref_f_measure(pred, gt)) < TOL


def test_stacked_helpers_and_frame_scores_agree_with_reference() -> None:
    rng = np.random.default_rng(2)
    gt_ids = rng.integers(0, 4, size=(3, 30, 40)).astype(np.uint8)
    pred_ids = np.where(rng.random((3, 30, 40)) > 0.3, gt_ids, 0).astype(np.uint8)
    for k in (1, 2, 3):
        jj = jaccard(gt_ids == k, pred_ids == k)
        ff = boundary_f(gt_ids == k, pred_ids == k)
        for t in range(3):
            assert abs(jj[t] - ref_iou(gt_ids[t] == k, pred_ids[t] == k)) < TOL
            assert abs(ff[t] - ref_f_measure(pred_ids[t] == k, gt_ids[t] == k)) < TOL
    j, f = frame_scores(gt_ids[0], pred_ids[0], 5)  # objects 4 and 5 absent from both: 1 and 1
    assert j.shape == (5,) and j[3] == j[4] == f[3] == f[4] == 1.0
    assert abs(j[0] - ref_iou(gt_ids[0] == 1, pred_ids[0] == 1)) < TOL


# ----------------------------------------------------------------------------------------------------
# Statistics and the official uint8 Decay overflow
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 38, 50, 98, 254, 255])
def test_statistics_equal_official_up_to_255_frames(n: int) -> None:
    values = np.random.default_rng(n).random(n)
    ours = statistics(values)
    ref = ref_db_statistics(values)
    for a, b in zip(ours, ref):
        assert abs(a - b) < TOL


@pytest.mark.parametrize("n", [256, 300])
def test_decay_does_not_inherit_the_uint8_overflow(n: int) -> None:
    """From 256 scored frames the official uint8 bin edges wrap (255 + 1 -> 0, 299 -> 43): its last bin
    is empty and Decay is NaN. Ours uses int64 edges."""
    values = np.linspace(1.0, 0.0, n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        official = ref_db_statistics(values, np.uint8)
    assert math.isnan(official[2])
    ours = statistics(values)
    correct = ref_db_statistics(values, np.int64)
    assert abs(ours[2] - correct[2]) < TOL
    assert decay_bins(n)[3][1] == n
    # Linear decline from 1 to 0: first bin averages about 0.875, last about 0.125.
    assert 0.74 < ours[2] < 0.76


def test_recall_counts_frames_strictly_above_half() -> None:
    assert statistics(np.array([0.5, 0.51, 0.9, 0.2]))[1] == 0.5


# ----------------------------------------------------------------------------------------------------
# Real DAVIS 2016 val: copy baseline on all 10 sequences, flow baseline on 2 short ones
# ----------------------------------------------------------------------------------------------------

def _assert_agrees(davis16: Path, pred_dir: Path, sequences: list[str]) -> None:
    result = score_predictions(pred_dir, davis16, sequences, "val")
    by_seq = {o.sequence: o for o in result.objects}
    assert len(result.objects) == len(sequences)  # DAVIS 2016: one object per sequence
    for seq in sequences:
        ref_j, ref_f = ref_evaluate_sequence(davis16 / "Annotations" / "480p" / seq, pred_dir / seq)
        obj = by_seq[seq]
        assert np.max(np.abs(obj.j - ref_j[0])) < TOL, seq
        assert np.max(np.abs(obj.f - ref_f[0])) < TOL, seq
        for ours, ref in ((obj.j_stats, ref_db_statistics(ref_j[0])), (obj.f_stats, ref_db_statistics(ref_f[0]))):
            assert np.allclose(ours, ref, atol=TOL, rtol=0), seq


@pytest.fixture(scope="module")
def copy_predictions(davis16: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    _, sequences = resolve_split(davis16, str(davis16 / "ImageSets" / "2016" / "val.txt"))
    out = tmp_path_factory.mktemp("copy")
    segment_davis(davis16, sequences, make_propagator_factory("copy"), out)
    return out, sequences


def test_copy_baseline_on_davis16_val_agrees_with_reference(davis16: Path, copy_predictions) -> None:
    pred_dir, sequences = copy_predictions
    _assert_agrees(davis16, pred_dir, sequences)
    # Imperfect predictions: the agreement is not the trivial all-ones case.
    result = score_predictions(pred_dir, davis16, sequences, "val")
    assert 0.1 < result.global_scores()["J&F-Mean"] < 0.5


def test_flow_baseline_on_two_short_sequences_agrees_with_reference(davis16: Path, tmp_path: Path) -> None:
    sequences = ["car-shadow", "motocross-jump"]  # 40 frames each
    segment_davis(davis16, sequences, make_propagator_factory("flow"), tmp_path)
    _assert_agrees(davis16, tmp_path, sequences)


def _tennis_root(tennis: Path, davis16: Path, root: Path, frames: int = 4) -> Path:
    """A DAVIS root with `tennis` (2 objects + void, its 2 real frames repeated to `frames`) and `dog` (1 object)."""
    src = sorted((tennis / "Annotations" / "480p" / "tennis").glob("*.png"))
    dst = root / "Annotations" / "480p" / "tennis"
    dst.mkdir(parents=True)
    for i in range(frames):
        shutil.copy(src[i % len(src)], dst / f"{i:05d}.png")
    shutil.copytree(davis16 / "Annotations" / "480p" / "dog", root / "Annotations" / "480p" / "dog")
    return root


def test_void_is_background_and_global_scores_average_objects(tennis: Path, davis16: Path, tmp_path: Path) -> None:
    root = _tennis_root(tennis, davis16, tmp_path / "gt")
    pred = tmp_path / "pred"
    # tennis: perfect object 1, object 2 missing entirely (-> empty masks, J = F = 0); dog: perfect.
    for seq in ("tennis", "dog"):
        (pred / seq).mkdir(parents=True)
        for png in sorted((root / "Annotations" / "480p" / seq).glob("*.png")):
            gt = np.array(Image.open(png))
            assert seq == "dog" or (gt == 255).any()  # the fixture really has void pixels
            out = np.where(gt == 1, 1, 0).astype(np.uint8)
            Image.fromarray(out).save(pred / seq / png.name)
    result = score_predictions(pred, root, ["tennis", "dog"], "val")
    scores = {o.name: (o.j_stats[0], o.f_stats[0]) for o in result.objects}
    assert scores["tennis_1"] == (1.0, 1.0)  # void pixels are background in GT, so this is exact
    assert scores["tennis_2"] == (0.0, 0.0)
    assert scores["dog_1"] == (1.0, 1.0)
    g = result.global_scores()
    assert abs(g["J-Mean"] - 2 / 3) < TOL  # over 3 objects (a mean over sequences would give 0.75)
    assert abs(g["J&F-Mean"] - 2 / 3) < TOL
    ref_j, ref_f = ref_evaluate_sequence(root / "Annotations" / "480p" / "tennis", pred / "tennis")
    by_name = {o.name: o for o in result.objects}
    assert np.allclose(by_name["tennis_2"].j, ref_j[1]) and np.allclose(by_name["tennis_1"].f, ref_f[0])


def test_threads_change_nothing(davis16: Path, copy_predictions) -> None:
    pred_dir, sequences = copy_predictions
    threaded = score_predictions(pred_dir, davis16, sequences[:4], "val", workers=2)
    single = score_predictions(pred_dir, davis16, sequences[:4], "val", workers=1)
    assert threaded.global_scores() == single.global_scores()
    assert [o.name for o in threaded.objects] == [f"{s}_1" for s in sequences[:4]]
