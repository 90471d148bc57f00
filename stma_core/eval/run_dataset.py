"""Segments every sequence of a benchmark with a propagator and writes palette-PNG predictions.

DAVIS (semi-supervised protocol): the first frame's GT is given; an object that first appears later is
given on its first annotated frame (only that object's pixels). Every frame gets a prediction so the
folder can be scored again later with `stma eval --pred`.

YouTube-VOS: objects and the frames to submit come from meta.json; each object's mask is given on its
first listed frame; only the frames listed in meta.json are written, as Annotations/<video>/<frame>.png,
plus a submission.zip the challenge server accepts. There is no public GT, so nothing is scored here.
"""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError

from stma_core.errors import StmaInputError, StmaOutputError
from stma_core.eval.datasets import (DAVIS_RESOLUTION, annotation_files, check_davis_root, frame_images,
                                     short_list)
from stma_core.eval.scoring import VOID_ID, read_id_mask
from stma_core.inference.propagator import Propagator
from stma_core.io.atomic import atomic_write, commit, partial_path, remove_path, remove_stale_partials
from stma_core.io.frames import IMAGE_NAMES, natural_key, read_image_frame, upright_size
from stma_core.io.masks import keep_new_objects
from stma_core.io.text import read_user_text
from stma_core.io.writers import save_palette_png


class FrameProgress(Protocol):
    """Receives progress: the total once, one call per segmented frame, one per finished video."""

    def begin(self, total_frames: int) -> None: ...

    def frame(self, sequence: str) -> None: ...

    def sequence_done(self, sequence: str, frames: int, seconds: float) -> None: ...


def write_mask(path: Path, mask: np.ndarray) -> None:
    """Palette PNG with the DAVIS colours, pixel value = object id (io's writer, as `stma segment` writes)."""
    try:
        save_palette_png(mask, path)
    except OSError as exc:
        raise StmaOutputError(f"cannot write {path} ({exc.strerror}); pass --pred-out with a writable folder") from None



def _run_video(frames: list[Path], given: dict[str, np.ndarray], make: Callable[[], Propagator],
               out_folder: Path, keep: set[str] | None, sequence: str, progress: FrameProgress | None) -> None:
    """Feeds one video to a fresh propagator; writes the outputs of the frames in `keep` (None: all).

    The sequence's folder is written as `<folder>.partial` and renamed when the video is complete (an
    earlier run's folder is replaced then), so a failure never leaves a sequence half written."""
    remove_stale_partials(out_folder)
    partial = partial_path(out_folder)
    partial.mkdir(parents=True)
    start = time.perf_counter()
    try:
        propagator = make()
        for path in frames:
            frame = read_image_frame(path, "re-extract the dataset")
            mask = given.get(path.stem)
            if mask is not None and mask.shape != frame.shape[:2]:
                raise _size_mismatch(path, mask.shape[::-1], frame.shape[1::-1])
            out = propagator.step(frame, mask)
            if keep is None or path.stem in keep:
                write_mask(partial / f"{path.stem}.png", out)
            if progress is not None:
                progress.frame(sequence)
        commit(partial, out_folder, overwrite=True)
    finally:
        remove_path(partial)
    if progress is not None:
        progress.sequence_done(sequence, len(frames), time.perf_counter() - start)


def _size_mismatch(frame: Path, mask_size: tuple[int, int], frame_size: tuple[int, int],
                   annotation: Path | None = None) -> StmaInputError:
    what = f"annotation {annotation}" if annotation is not None else "the annotation"
    return StmaInputError(f"{what} is {mask_size[0]}x{mask_size[1]} but its frame {frame} is "
                          f"{frame_size[0]}x{frame_size[1]}; the dataset is inconsistent (frames and annotations "
                          "of different resolutions?): use the annotations of the frames' release")


def check_annotation_size(frame: Path, annotation: Path) -> None:
    """Before anything is segmented: an annotation PNG has its frame's size (headers only, cheap), so a
    mismatch in a later video stops the run before earlier videos are written, not halfway."""
    frame_size = upright_size(frame)
    try:
        with Image.open(annotation) as image:
            mask_size = image.size
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return  # reported with its own message when it is read
    if frame_size is not None and mask_size != frame_size:
        raise _size_mismatch(frame, mask_size, frame_size, annotation)


def davis_given_masks(annotation_folder: Path, davis2016: bool = False) -> dict[str, np.ndarray]:
    """Masks to give a propagator: frame 0's objects, then each new object on its first annotated frame.

    davis2016: a sequence whose masks are all 0/255 (the original DAVIS 2016 release) has 255 = object 1.
    """
    pngs = annotation_files(annotation_folder)  # natural order, as frames are fed
    binary255 = davis2016 and bool(pngs) and all(
        set(np.unique(read_id_mask(png, "GT mask")).tolist()) <= {0, VOID_ID} for png in pngs[:1])

    def cleaned():  # void is background here; DAVIS 2016's 255 is object 1
        for png in pngs:
            mask = read_id_mask(png, "GT mask")
            if binary255 and not (mask[(mask != 0) & (mask != VOID_ID)]).any():
                mask = (mask == VOID_ID).astype(np.uint8)
            yield png.stem, np.where(mask == VOID_ID, 0, mask).astype(np.uint8)

    return keep_new_objects(cleaned())


def segment_davis(root: Path, sequences: Iterable[str], make: Callable[[], Propagator], out_dir: Path,
                  progress: FrameProgress | None = None, davis2016: bool = False) -> Path:
    """Writes OUT_DIR/<seq>/<frame>.png for every frame of every sequence; returns OUT_DIR."""
    annotations = check_davis_root(root)
    images = root / "JPEGImages" / DAVIS_RESOLUTION
    sequences = list(sequences)
    jobs = [(seq, frame_images(images / seq)) for seq in sequences]
    check_frames_present(images, annotations, jobs)
    if progress is not None:
        progress.begin(sum(len(f) for _, f in jobs))
    for seq, frames in jobs:
        given = davis_given_masks(annotations / seq, davis2016)
        if not given:
            hint = ("its masks are 0/255 like the original DAVIS 2016 release: use --dataset davis16-val/train, or "
                    "convert them to palette PNGs with ids 0/1" if not davis2016 else
                    "annotate the objects on their first frame (0 = background, 1.. = objects)")
            raise StmaInputError(f"GT folder {annotations / seq} has no annotated object to start from; {hint}")
        _run_video(frames, given, make, out_dir / seq, None, seq, progress)
    return out_dir


def check_frames_present(images: Path, annotations: Path, jobs: list[tuple[str, list[Path]]]) -> None:
    """Before anything is segmented: every sequence has frame images, every annotated frame its image, and
    the first annotation its frame's size (frames and annotations of different releases).

    Without this, a missing first frame meant segmenting without the first annotation (all predictions
    empty, a silent score of 0), and a missing later frame surfaced only after the whole dataset was
    segmented, as an error about missing predictions."""
    empty = [seq for seq, frames in jobs if not frames]
    if empty:
        raise StmaInputError(f"no frame images ({IMAGE_NAMES}) in {images} for {short_list(empty)}; the dataset "
                             f"needs JPEGImages/{DAVIS_RESOLUTION}/<sequence>/<frame>.jpg to be segmented")
    missing: list[Path] = []
    for seq, frames in jobs:
        have = {p.stem: p for p in frames}
        ext = frames[0].suffix
        pngs = annotation_files(annotations / seq)
        missing += [images / seq / f"{p.stem}{ext}" for p in pngs if p.stem not in have]
        if pngs and pngs[0].stem in have:
            check_annotation_size(have[pngs[0].stem], pngs[0])
    if missing:
        sequences = len({p.parent.name for p in missing})
        raise StmaInputError(f"frame image {missing[0]} is missing: {len(missing)} annotated frame(s) in "
                             f"{sequences} sequence(s) have no frame image in {images}; every "
                             f"Annotations/{DAVIS_RESOLUTION}/<sequence>/<frame>.png needs its "
                             f"JPEGImages/{DAVIS_RESOLUTION}/<sequence>/<frame> image: re-extract the dataset")


def ytvos_valid_dir(root: Path) -> Path:
    """The folder holding meta.json: ROOT/valid or ROOT itself."""
    for candidate in (root / "valid", root):
        if (candidate / "meta.json").is_file():
            return candidate
    raise StmaInputError(f"{root} is not a YouTube-VOS root: no valid/meta.json or meta.json; pass the folder "
                         "holding valid/ (JPEGImages, Annotations, meta.json)")


def ytvos_all_frames_dir(valid: Path) -> Path | None:
    """valid_all_frames/JPEGImages beside VALID (the denser frames segment_ytvos reads when present), or None."""
    folder = valid.parent / "valid_all_frames" / "JPEGImages"
    return folder if folder.is_dir() else None


def segment_ytvos(root: Path, make: Callable[[], Propagator], out_dir: Path,
                  progress: FrameProgress | None = None) -> Path:
    """Writes OUT_DIR/Annotations/<video>/<frame>.png for the frames meta.json lists, and OUT_DIR/submission.zip.

    Frames come from valid_all_frames/JPEGImages when that folder exists next to valid/ (denser input, same
    frames submitted), else from valid/JPEGImages.
    """
    valid = ytvos_valid_dir(root)
    videos = _read_ytvos_meta(valid / "meta.json")
    all_frames = ytvos_all_frames_dir(valid) or valid / "JPEGImages"
    jobs = []
    for video, objects in videos.items():
        keep = {f for frames in objects.values() for f in frames}
        source = all_frames / video if (all_frames / video).is_dir() else valid / "JPEGImages" / video
        if keep and not source.is_dir():
            raise StmaInputError(f"video {video} of {valid / 'meta.json'} has no frame folder {source}; "
                                 "re-extract the dataset (JPEGImages and meta.json of the same release)")
        frames = frame_images(source)
        absent = sorted(keep - {p.stem for p in frames}, key=natural_key)
        if absent:
            raise StmaInputError(f"{source} lacks frames listed in meta.json: {short_list(absent, 4)}; "
                                 "re-extract the dataset")
        first = natural_key(min(keep, key=natural_key)) if keep else None
        frames = [p for p in frames if first is not None and natural_key(p.stem) >= first]
        by_name = {p.stem: p for p in frames}  # checked before any video is segmented:
        for name in _ytvos_given_masks(valid / "Annotations" / video, objects):
            if name in by_name:
                check_annotation_size(by_name[name], valid / "Annotations" / video / f"{name}.png")
        jobs.append((video, frames, objects, keep))
    if progress is not None:
        progress.begin(sum(len(j[1]) for j in jobs))
    annotations_out = out_dir / "Annotations"
    for video, frames, objects, keep in jobs:
        given = _ytvos_given_masks(valid / "Annotations" / video, objects)
        _run_video(frames, given, make, annotations_out / video, keep, video, progress)
    _zip_annotations(annotations_out, [video for video, *_ in jobs], out_dir / "submission.zip")
    return annotations_out


def _read_ytvos_meta(path: Path) -> dict[str, dict[int, list[str]]]:
    """{video: {object id: its listed frames in order}} from a YouTube-VOS meta.json (objects listing no
    frame are left out); anything else than that layout is a one-line error."""
    text = read_user_text(path, "YouTube-VOS meta.json", "re-download it").lstrip("\ufeff")  # a BOM is no error
    try:
        videos = {str(video): {int(k): sorted(v["frames"], key=natural_key)
                               for k, v in info["objects"].items() if v.get("frames")}
                  for video, info in json.loads(text)["videos"].items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise StmaInputError(f"{path} is not a YouTube-VOS meta.json ({type(exc).__name__}: {exc}); expected "
                             '{"videos": {VIDEO: {"objects": {"1": {"frames": ["00000", ...]}}}}}; '
                             "re-download it") from None
    if not any(videos.values()):
        raise StmaInputError(f"{path} lists no video with an object to segment; re-download it")
    return videos


def _ytvos_given_masks(folder: Path, objects: dict[int, list[str]]) -> dict[str, np.ndarray]:
    """Each object's pixels on its first listed frame (other ids on that PNG are not given there).

    The annotation PNGs and meta.json must agree: an id on a PNG that meta.json does not list for the
    video, or a listed object without pixels on its first frame's PNG, would otherwise be an object that
    is silently never segmented (an empty mask in every submitted frame)."""
    by_frame: dict[str, list[int]] = {}
    for obj_id, frames in objects.items():
        by_frame.setdefault(frames[0], []).append(obj_id)
    listed = sorted(objects)
    for path in annotation_files(folder) if folder.is_dir() else []:
        if path.stem in by_frame:
            continue  # read below
        unlisted = sorted(set(np.unique(read_id_mask(path, "annotation")).tolist()) - {0, *listed})
        if unlisted:
            raise _unlisted_ids(path, unlisted, listed)
    given: dict[str, np.ndarray] = {}
    for frame, ids in by_frame.items():
        path = folder / f"{frame}.png"
        if not path.is_file():
            raise StmaInputError(f"annotation {path} (first frame of object(s) {sorted(ids)} in meta.json) "
                                 "is missing; re-extract the dataset")
        mask = read_id_mask(path, "annotation")
        present = set(np.unique(mask).tolist()) - {0}
        if present - set(listed):
            raise _unlisted_ids(path, sorted(present - set(listed)), listed)
        if set(ids) - present:
            raise StmaInputError(f"annotation {path} has no pixels of object(s) {sorted(set(ids) - present)}, "
                                 f"whose first frame it is in meta.json (ids on it: {sorted(present)}); "
                                 "meta.json and the annotations disagree: re-extract both from the same release")
        given[frame] = np.where(np.isin(mask, ids), mask, 0).astype(np.uint8)
    return given


def _unlisted_ids(path: Path, unlisted: list[int], listed: list[int]) -> StmaInputError:
    return StmaInputError(f"annotation {path} has object id(s) {unlisted} that meta.json does not list for video "
                          f"{path.parent.name} (it lists {listed}); meta.json and the annotations disagree: "
                          "re-extract both from the same release")


def _zip_annotations(annotations: Path, videos: list[str], zip_path: Path) -> None:
    """The server takes a zip whose top folder is Annotations/ (PNGs are stored, already compressed).

    Only this run's videos go in: other folders in ANNOTATIONS (an earlier run's on another meta.json with
    --overwrite, a `.partial` folder of a killed run) are no part of this submission. The zip is written
    beside its final name and renamed when complete."""
    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            for video in videos:
                for png in sorted((annotations / video).glob("*.png"), key=lambda p: natural_key(p.name)):
                    zf.write(png, png.relative_to(annotations.parent).as_posix())

    try:
        atomic_write(zip_path, write)
    except OSError as exc:
        raise StmaOutputError(f"cannot write {zip_path} ({exc.strerror or exc}); pass --pred-out with a writable "
                              "folder") from None
