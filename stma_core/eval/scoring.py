"""Scores a folder of palette-PNG predictions against DAVIS ground truth, as the official tool does.

Protocol (davis2017-evaluation, semi-supervised): per object and frame J (IoU) and F (boundary F);
the first and last annotated frames are not scored; per object Mean/Recall/Decay (see metrics.py);
global numbers average over objects, not sequences. GT void (255) counts as background, objects missing
from a prediction count as empty masks.

Objects are the ids present in the sequence's GT (any frame). The official tool scores ids 1..max id of
the first frame; the two agree on DAVIS 2016/2017, whose ids are consecutive and all on the first frame.
Ours also scores an object that first appears later instead of dropping it (the official tool stops on
such a prediction; `late_object_warnings` says so per sequence), and does not invent objects
for absent ids (ids 3 and 7 are two objects, not seven): the official tool would score each absent id
as perfectly segmented (both masks empty), inflating the mean; `id_gap_warnings` says so per sequence.

Unlike the official tool, bad predictions stop with a one-line error instead of a traceback or a silent
wrong score: missing sequence folders or frames, ids absent from the GT, 255, or a size mismatch.
Sequences are scored in parallel threads (PNG decoding, numpy reductions and cv2 release the GIL).
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from stma_core.errors import StmaInputError
from stma_core.eval.datasets import annotation_files, check_davis_root, short_list
from stma_core.eval.metrics import BOUND_TH, bound_radius, object_scores, statistics
from stma_core.ids import VOID_ID

GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")


@dataclass
class ObjectResult:
    """Per-frame J and F of one object of one sequence, over the scored frames."""

    sequence: str
    object_id: int
    frames: list[str]
    j: np.ndarray
    f: np.ndarray
    appears_on: str | None = None
    """The GT frame the object first appears on, when that is not the sequence's first frame (else None)."""

    @property
    def name(self) -> str:
        """Row name of the official per-sequence CSV."""
        return f"{self.sequence}_{self.object_id}"

    @cached_property
    def j_stats(self) -> tuple[float, float, float]:
        return statistics(self.j)

    @cached_property
    def f_stats(self) -> tuple[float, float, float]:
        return statistics(self.f)


@dataclass
class EvalResult:
    """Everything one evaluation produced, in split order."""

    split: str
    gt_root: Path
    pred_dir: Path
    objects: list[ObjectResult]
    seconds: float = 0.0
    sequences: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """One line each: where these scores knowingly differ from the official tool's (see id_gap_warnings)."""

    def global_scores(self) -> dict[str, float]:
        """The official global row: means over objects; J&F = (J-Mean + F-Mean) / 2."""
        j = np.array([o.j_stats for o in self.objects], dtype=np.float64).reshape(-1, 3)
        f = np.array([o.f_stats for o in self.objects], dtype=np.float64).reshape(-1, 3)
        jm, jr, jd = (float(np.mean(j[:, i])) if len(j) else math.nan for i in range(3))
        fm, fr, fd = (float(np.mean(f[:, i])) if len(f) else math.nan for i in range(3))
        return dict(zip(GLOBAL_COLUMNS, ((jm + fm) / 2, jm, jr, jd, fm, fr, fd)))


def read_id_mask(path: Path, what: str, header_only: bool = False) -> np.ndarray | None:
    """HxW uint8 ids from a palette or grayscale PNG; anything else is a one-line input error.
    `header_only`: only check that the file is such a PNG (no pixels decoded; returns None), so a whole
    data set can be checked up front cheaply (stma train)."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L", "1"):
                raise StmaInputError(
                    f"{what} {path} is a {image.mode} image; save it as a palette (P) or grayscale (L) PNG "
                    "whose pixel values are object ids")
            if header_only:
                return None
            if image.mode == "1":  # a bilevel PNG (some DAVIS 2016 copies, numpy bool arrays saved by PIL)
                return np.asarray(image, dtype=np.uint8)  # on = object 1
            return np.asarray(image)
    except (UnidentifiedImageError, OSError) as exc:
        raise StmaInputError(f"{what} {path} cannot be read as a PNG ({exc}); rewrite it") from None


def gt_frames(annotations: Path, sequence: str) -> list[str]:
    """Annotated frame names of a sequence in natural order (2 before 10; the official tool's plain sort
    gives the same order on DAVIS's zero-padded names)."""
    return [p.stem for p in annotation_files(annotations / sequence)]


def check_scorable(annotations: Path, sequences: list[str]) -> dict[str, list[str]]:
    """Every sequence has at least 3 annotated frames (the first and last are not scored); checked by
    `stma eval --dataset` before anything is segmented, not after the whole split was.
    Returns {sequence: its GT frame names} (gt_frames)."""
    listed = {}
    for seq in sequences:
        frames = listed[seq] = gt_frames(annotations, seq)
        if len(frames) < 3:
            raise StmaInputError(f"GT sequence {annotations / seq} has {len(frames)} annotated frame(s); "
                                 "scoring needs at least 3 (the first and last are not scored)")
    return listed


def check_prediction_files(pred_dir: Path, annotations: Path, sequences: list[str]) -> None:
    """All sequence folders and scored frames must exist; one error lists everything that is missing."""
    if not pred_dir.is_dir():
        raise StmaInputError(f"prediction folder {pred_dir} does not exist; pass --pred with the folder "
                             "holding <sequence>/<frame>.png")
    problems: list[str] = []
    for seq, frames in check_scorable(annotations, sequences).items():
        folder = pred_dir / seq
        if not folder.is_dir():
            problems.append(f"{seq}/ (no folder)")
            continue
        present = {p.stem for p in folder.glob("*.png")}
        missing = [f for f in frames[1:-1] if f not in present]
        if missing:
            problems.append(f"{seq}/ ({len(missing)} frames: {short_list(missing, 3)})")
    if problems:
        near = ""
        if sequences and not any((pred_dir / seq).is_dir() for seq in sequences):
            # every sequence missing: predictions one level down (Annotations/, a split or run folder)?
            holder = next((c for c in sorted(pred_dir.iterdir()) if (c / sequences[0]).is_dir()), None)
            near = f" (did you mean --pred {holder}?)" if holder is not None else ""
        raise StmaInputError(f"predictions missing in {pred_dir}{near}: {short_list(problems, 6)}; "
                             "write PNGs <sequence>/<frame>.png for every annotated frame")


def score_sequence(annotations: Path, pred_dir: Path, sequence: str,
                   bound_th: float = BOUND_TH, davis2016: bool = False) -> list[ObjectResult]:
    """Per-object per-frame J/F of one sequence (frames read one at a time: memory stays small)."""
    frames = gt_frames(annotations, sequence)
    gts = []
    raw_gts = []
    counts = np.zeros(256, dtype=np.int64)
    appears_on: dict[int, str] = {}
    for name in frames:
        gt = read_id_mask(annotations / sequence / f"{name}.png", "GT mask")
        if davis2016:
            raw_gts.append(gt)
        hist = id_histogram(gt)
        if hist[VOID_ID]:
            gt = np.where(gt == VOID_ID, 0, gt)
        for k in np.flatnonzero((hist[1:VOID_ID] > 0) & (counts[1:VOID_ID] == 0)) + 1:
            appears_on[int(k)] = name
        counts += hist
        gts.append(gt)
    has_void = bool(counts[VOID_ID])
    gt_ids = np.flatnonzero(counts[1:VOID_ID]) + 1
    binary255 = davis2016 and gt_ids.size == 0 and has_void
    if binary255:  # original DAVIS 2016 ground truth: 0/255 grayscale, 255 = the object
        gts = [(gt_raw == VOID_ID).astype(np.uint8) for gt_raw in raw_gts]
        gt_ids = np.array([1])
    if gt_ids.size == 0:
        hint = ("its masks are 0/255 like the original DAVIS 2016 release: score it as DAVIS 2016 "
                "(--split with ImageSets/2016/<split>.txt, or --dataset davis16-val), or convert the masks to "
                "palette PNGs with ids 0/1" if has_void else "annotate at least one object")
        raise StmaInputError(f"GT sequence {annotations / sequence} has no object ids (255 is void); {hint}")
    ids = [int(k) for k in gt_ids]  # only ids that exist: an absent id is no object (see module doc)
    scored = frames[1:-1]
    radius = bound_radius(*gts[0].shape, bound_th=bound_th)
    j = np.empty((len(ids), len(scored)))
    f = np.empty((len(ids), len(scored)))
    for t, name in enumerate(scored):
        gt = gts[t + 1]
        path = pred_dir / sequence / f"{name}.png"
        pred = read_id_mask(path, "prediction")
        if davis2016 and gt_ids.tolist() == [1]:  # single-object DAVIS 2016: a 0/255 prediction, whatever the GT's
            pred = _binary255_prediction(pred)  # encoding (this project's copy has palette 0/1 ground truth)
        if pred.shape != gt.shape:
            raise StmaInputError(f"prediction {path} is {pred.shape[1]}x{pred.shape[0]} but its GT is "
                                 f"{gt.shape[1]}x{gt.shape[0]}; write predictions at the GT resolution")
        _check_ids(path, pred, gt_ids)
        for row, k in enumerate(ids):
            j[row, t], f[row, t] = object_scores(gt == k, pred == k, radius)
    late = {k: name for k, name in appears_on.items() if name != frames[0]}
    return [ObjectResult(sequence, k, scored, j[row], f[row], late.get(k)) for row, k in enumerate(ids)]


def id_gap_warnings(objects: list[ObjectResult]) -> list[str]:
    """One line per sequence whose GT ids are not 1..n: those results differ from the official tool's,
    which would add every absent id below the highest as a perfectly segmented object."""
    by_sequence: dict[str, list[int]] = {}
    for obj in objects:
        by_sequence.setdefault(obj.sequence, []).append(obj.object_id)
    lines = []
    for seq, ids in by_sequence.items():
        absent = sorted(set(range(1, max(ids) + 1)) - set(ids))
        if absent:
            lines.append(f"{seq}: GT object ids {ids} are not 1..{len(ids)}; scored only these {len(ids)} "
                         f"objects (the official DAVIS toolkit would also count absent id(s) "
                         f"{short_list([str(a) for a in absent], 6)} as perfectly segmented objects, "
                         "raising its mean)")
    return lines


def late_object_warnings(objects: list[ObjectResult]) -> list[str]:
    """One line per sequence whose GT has objects that first appear after the first frame: the official
    semi-supervised protocol gives and scores only the first frame's objects (its toolkit stops on a
    prediction holding another id), so such scores have no official counterpart."""
    by_sequence: dict[str, list[ObjectResult]] = {}
    for obj in objects:
        if obj.appears_on is not None:
            by_sequence.setdefault(obj.sequence, []).append(obj)
    return [f"{seq}: GT object(s) {short_list([f'{o.object_id} (from frame {o.appears_on})' for o in late], 6)} "
            "first appear after the first frame; scored here (`stma eval --dataset` gives each object on its first "
            "annotated frame), but the official DAVIS semi-supervised protocol gives and scores only the first "
            "frame's objects (its toolkit stops on predictions with these ids)"
            for seq, late in by_sequence.items()]


def id_histogram(mask: np.ndarray) -> np.ndarray:
    """Pixel count of each id 0..255 (cv2.calcHist: several times faster than np.unique/bincount)."""
    return cv2.calcHist([np.ascontiguousarray(mask)], [0], None, [256], [0, 256]).ravel().astype(np.int64)


def _binary255_prediction(pred: np.ndarray) -> np.ndarray:
    """A DAVIS 2016 prediction may be 0/255 like its ground truth: 255 is then object 1."""
    hist = id_histogram(pred)
    if hist[VOID_ID] and not hist[1:VOID_ID].any():
        return (pred == VOID_ID).astype(np.uint8)
    return pred


def _check_ids(path: Path, pred: np.ndarray, gt_ids: np.ndarray) -> None:
    counts = id_histogram(pred)
    present = np.flatnonzero(counts)
    if counts[VOID_ID]:
        others = [int(i) for i in present if 0 < i < VOID_ID]
        hint = ("if 255 marks an object (a 0/255 binary mask), write its id instead (1 for a single object)"
                if not others else "write each pixel's object id, and 0 for background")
        raise StmaInputError(f"prediction {path} contains {counts[VOID_ID]} pixels of id 255, which is void "
                             f"(a GT-only label), not an object; {hint}")
    unknown = [int(i) for i in present if i != 0 and i not in gt_ids]
    if unknown:
        raise StmaInputError(f"prediction {path} has object id(s) {unknown} that its GT sequence lacks "
                             f"(GT ids {[int(i) for i in gt_ids]}); use the first-frame ids")


def score_predictions(pred_dir: str | Path, gt_root: str | Path, sequences: list[str], split: str = "val",
                      workers: int | None = None,
                      on_sequence: Callable[[str], None] | None = None, davis2016: bool = False) -> EvalResult:
    """Scores PRED_DIR/<seq>/<frame>.png against GT_ROOT/Annotations/480p for the given sequences.

    workers: threads (default: one per CPU, at most one per sequence). on_sequence: called with each
    finished sequence name (for progress bars).
    """
    pred_dir, gt_root = Path(pred_dir), Path(gt_root)
    start = time.perf_counter()
    annotations = check_davis_root(gt_root)
    check_prediction_files(pred_dir, annotations, sequences)
    workers = max(1, min(workers or os.cpu_count() or 1, len(sequences)))

    def run(seq: str) -> list[ObjectResult]:
        result = score_sequence(annotations, pred_dir, seq, davis2016=davis2016)
        if on_sequence is not None:
            on_sequence(seq)
        return result

    if workers == 1:
        per_sequence = [run(s) for s in sequences]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            per_sequence = list(pool.map(run, sequences))
    objects = [o for seq_objects in per_sequence for o in seq_objects]
    return EvalResult(split=split, gt_root=gt_root, pred_dir=pred_dir, objects=objects,
                      seconds=time.perf_counter() - start, sequences=list(sequences),
                      warnings=id_gap_warnings(objects) + late_object_warnings(objects))

