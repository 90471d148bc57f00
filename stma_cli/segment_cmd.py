"""`stma segment`: propagate first-frame masks through a video, a frame folder or a folder of videos.

Bad input stops a single video with exit code 2 and one `error:` line before any compute is spent;
in a batch a failing video is reported and the others still run (exit code 1 at the end). Results are
written atomically, so finished videos can be skipped when a batch is rerun.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, NoReturn, Optional, Sequence

import cv2
import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, TaskID
from rich.table import Table

from stma_cli import _settings
from stma_cli._common import (DEVICES, EXIT_BAD_INPUT, EXIT_SOME_FAILED, check_device, fail, frame_progress,
                              echo, echo_json, info, note_run_folder, one_line, print_error, refuse_stdout_dash,
                              stderr_console, warn)
from stma_core.config import Direction
from stma_core.errors import StmaInputError, StmaOutputError
from stma_core.inference.factory import METHODS, make_propagator_factory
from stma_core.inference.propagator import Propagator
from stma_core.io.atomic import ensure_writable_dir, remove_stale_run_folders
from stma_core.io.frames import (FolderContents, FrameFolderSource, FrameSource, input_name, mask_beside,
                                 not_a_mask_note, open_frames, scan_folder)
from stma_core.io.masks import LoadedMask, fit_mask, load_mask, load_mask_folder
from stma_core.io.writers import OVERLAY_ALPHA, padded_size
from stma_core.io.outputs import (ALL_FORMATS, ALPHA_CODECS, OVERLAY_STYLES, VIDEO_FORMATS, OutputOptions, OutputWriter,
                                  all_output_paths)


class _Stop(Exception):
    """Ends the command with one error line, raised inside the progress display and reported after it closed.

    Used for a single video's failure and for a model that cannot be loaded (every video would fail).
    """

    def __init__(self, message: object, code: int, warnings: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.code = code
        self.warnings = list(warnings)  # the video's warnings before it failed, for its --json entry


@dataclass
class Job:
    """One input video and where its masks come from."""

    path: Path
    name: str
    mask_file: Path | None = None
    mask_dir: Path | None = None
    not_masks: list[Path] = field(default_factory=list)
    """Images named like the input that are not taken as its mask (`clip.jpg`), named when it has none."""
    contents: FolderContents | None = None
    """scan_folder of a frame folder given as INPUT, so opening it does not scan the folder again."""


@dataclass
class Extras:
    """Options of the formats beyond png/rle/overlay and of the frame range (issue 11)."""

    options: OutputOptions = field(default_factory=OutputOptions)
    start: int = 0
    end: int | None = None
    stride: int = 1
    fps: float | None = None
    size: int | None = None  # --size as given (None: the model's recommended size), for the no-upscale note


@dataclass
class Outcome:
    job: Job  # its input: two inputs may share a name (x.mp4 and x.mov), so the --json rows give the path too
    status: str  # 'done', 'skipped' or 'failed'
    frames: int = 0
    seconds: float = 0.0
    paths: list[Path] = field(default_factory=list)
    error: str = ""
    object_ids: tuple[int, ...] = ()
    """The ids the outputs use (PNG pixel values, RLE and matte keys), from the masks."""
    id_map: dict[str, int] = field(default_factory=dict)
    """Mask values that became other ids ("gray 1000" -> 2, "rgb(255, 0, 0)" -> 1): --json says which output
    id is which of the user's objects, also with --quiet (which hides the note that prints it)."""
    warnings: list[str] = field(default_factory=list)
    """The video's warning lines as stderr got them (without `warning: `), for --json."""
    bad_input: bool = False

    @property
    def objects(self) -> int:
        return len(self.object_ids)

    @property
    def name(self) -> str:
        return self.job.name


# ---- option checks --------------------------------------------------------------------------------
def _parse_formats(values: list[str]) -> list[str]:
    formats: list[str] = []
    for value in values:
        for item in (v.strip().lower() for v in value.split(",")):
            if item not in ALL_FORMATS:
                fail(f"--format: unknown format {item!r}; use {', '.join(ALL_FORMATS)} (repeat --format for several)")
            if item not in formats:
                formats.append(item)
    return formats


def _resolve_device(device: str) -> str:
    """The device the model runs on, for a --device value check_device accepted (stma_core.device picks
    it: auto -> cuda, mps or cpu; under torchrun, this rank's GPU)."""
    from stma_core.device import resolve_device

    try:
        return str(resolve_device(device))
    except ValueError as exc:
        fail(f"--device: {exc}")


def _check_extras(start: int, end: int | None, stride: int, fps: float | None, objects: str, overlay_alpha: float,
                  overlay_style: str, labels: bool, alpha_codec: str) -> Extras:
    if start < 0:
        fail(f"--start: {start} is negative; use a 0-based frame index")
    if end is not None and end <= start:
        fail(f"--end: {end} is not after --start {start}; use an end index greater than the start")
    if stride < 1:
        fail(f"--stride: {stride} is less than 1; use 1 (every frame) or more")
    if fps is not None and not 0 < fps <= 1000:
        fail(f"--fps: {fps} is not a frame rate; use a value in (0, 1000]")
    if objects not in ("each", "all"):
        fail(f"--objects: unknown value {objects!r}; use each or all")
    if not 0 <= overlay_alpha <= 1:
        fail(f"--overlay-alpha: {overlay_alpha} is outside 0..1; use e.g. 0.5")
    if overlay_style not in OVERLAY_STYLES:
        fail(f"--overlay-style: unknown style {overlay_style!r}; use {' or '.join(OVERLAY_STYLES)}")
    if alpha_codec not in ALPHA_CODECS:
        fail(f"--alpha-codec: unknown codec {alpha_codec!r}; use {' or '.join(ALPHA_CODECS)}")
    options = OutputOptions(objects=objects, overlay_alpha=overlay_alpha, overlay_style=overlay_style, labels=labels,
                            alpha_codec=alpha_codec)
    return Extras(options, start, end, stride, fps)


def _frame_range(source: FrameSource, extras: Extras) -> range | None:
    """Frame indices --start/--end/--stride select, or None for every frame."""
    if extras.start == 0 and extras.end is None and extras.stride == 1:
        return None
    if extras.start >= source.frame_count:
        raise StmaInputError(f"{source.path}: --start {extras.start} is past the last frame "
                             f"({source.frame_count} frames); pass a smaller --start")
    return range(extras.start, extras.end if extras.end is not None else 1 << 62, extras.stride)


def _frame_index(source: FrameSource, name: str) -> int:
    if isinstance(source, FrameFolderSource):
        return source.frame_names.index(name)
    return int(name)


# ---- inputs ----------------------------------------------------------------------------------------
def _find_jobs(input_path: Path, mask: Path | None, mask_dir: Path | None, out: Path) -> tuple[list[Job], bool]:
    """-> (jobs, batch). Masks: --mask FILE / --mask-dir DIR for one video; folders keyed by name for a batch.

    A folder's kind comes from its content: frames (images only), a batch (videos and/or frame folders;
    `clip.png` or `clip_mask.png` beside `clip.mp4` is that video's mask), or mixed (an error that says
    what was found). Without --mask/--mask-dir, a video's mask is the `<name>.png` / `<name>_mask.png`
    beside it.
    """
    if mask is not None and mask_dir is not None:
        fail("--mask/--mask-dir: both given; pass only one of them")
    if not input_path.exists():
        fail(f"{input_path}: no such file or folder; check the INPUT path")
    contents = scan_folder(input_path) if input_path.is_dir() else None
    if contents is not None and contents.kind == "mixed":
        fail(f"{input_path}: folder holds {contents.describe()}, so it is neither a frame folder nor a folder of "
             "videos; move the images out to segment the videos (or pass the video files one by one)")
    batch = contents is not None and contents.kind != "frames"
    if not batch:
        name = input_name(input_path)
        job = Job(input_path, name, contents=contents)
        if mask is not None:
            job.mask_file = mask / f"{name}.png" if mask.is_dir() else mask
        elif mask_dir is not None:
            job.mask_dir = mask_dir / name if (mask_dir / name).is_dir() else mask_dir
        else:
            job.mask_file = _mask_beside(input_path)
        return [job], False

    assert contents is not None
    out_resolved = out.resolve()
    if out_resolved == input_path.resolve():
        fail(f"{out}: output folder is the input folder (results would be read as videos next run); "
             "pass --out with another folder")
    # --out, and the --mask / --mask-dir folders (a masks/ folder of PNGs is a frame folder to the scan), inside
    # the input folder are not videos
    not_inputs = [out_resolved, *(m.resolve() for m in (mask, mask_dir) if m is not None and m.is_dir())]
    paths = [p for p in contents.inputs
             if not any(p.resolve() == n or n in p.resolve().parents for n in not_inputs)]
    if not paths:
        fail(f"{input_path}: folder holds no videos, frames or frame folders; "
             "pass a video, a folder of frames, or a folder of videos")
    if mask is not None and not mask.is_dir():
        fail(f"{mask}: is a file but INPUT is a folder of videos; pass --mask FOLDER holding <video>.png "
             "for each video (or --mask-dir with <video>/ annotation folders)")
    jobs = []
    for path in paths:
        name = input_name(path)
        if mask is None and mask_dir is None:
            # a video without its mask fails alone (error line and summary row), in _load_masks
            jobs.append(Job(path, name, mask_file=contents.masks.get(name), not_masks=contents.not_masks.get(name, [])))
            continue
        jobs.append(Job(path, name, mask_file=mask / f"{name}.png" if mask is not None else None,
                        mask_dir=mask_dir / name if mask_dir is not None else None))
    return jobs, True


def _mask_beside(input_path: Path) -> Path:
    """`clip.png` or `clip_mask.png` beside `clip.mp4` (or beside a frame folder `clip/`) when no mask is given:
    frames.mask_beside, the rule batches follow too."""
    found, others = mask_beside(input_path)
    if found is not None:
        return found
    stem = input_name(input_path)
    fail(f"--mask: no mask given and no {stem}.png or {stem}_mask.png beside {input_path}{not_a_mask_note(others)}; pass --mask "
         "FIRST_FRAME.png or --mask-dir ANNOTATION_FOLDER")


def _frame_key(source: FrameSource, mask_path: Path) -> str:
    """Frame name an annotation PNG belongs to (video frames accept any zero padding: 0.png = 00000)."""
    stem = mask_path.stem
    if isinstance(source, FrameFolderSource):
        if stem not in source.frame_names:
            raise StmaInputError(f"{mask_path}: no frame named {stem!r} in {source.path}; "
                                 "name each mask like the frame it annotates")
        return stem
    if not stem.isdigit():
        raise StmaInputError(f"{mask_path}: name is not a frame number; name masks of a video file "
                             "00000.png, 00001.png, ... (0-based frame index)")
    return source.frame_name(int(stem))


def _load_masks(job: Job, source: FrameSource, first: int = 0, selected: Callable[[str], bool] | None = None
                ) -> tuple[dict[str, np.ndarray], list[LoadedMask], list[str]]:
    """-> (frame name -> id mask), the loaded masks for reporting, and warnings about the annotations as a
    whole (objects annotated only on frames that are not processed), which belong to no single mask.

    Every annotation is used: new ids start objects, ids already given are corrections on that frame.
    first: index of the first processed frame (a --mask file annotates it); selected: whether a frame is
    processed (--start/--end/--stride), annotations of other frames are ignored.
    """
    if job.mask_file is None and job.mask_dir is None:  # a batch video with no <name>.png beside it
        raise StmaInputError(f"--mask: no mask given and {job.path} has no {job.name}.png or {job.name}_mask.png beside it"
                             f"{not_a_mask_note(job.not_masks)}; pass --mask FOLDER holding <video>.png, or "
                             "--mask-dir with <video>/ annotation folders")
    warnings: list[str] = []
    if job.mask_file is not None:
        loaded = {source.frame_name(first): load_mask(job.mask_file)}
    else:
        assert job.mask_dir is not None
        loaded = {}
        for m in load_mask_folder(job.mask_dir).values():
            key = _frame_key(source, m.path)
            if key in loaded:  # 3.png and 00003.png: one would silently replace the other
                raise StmaInputError(f"{job.mask_dir}: {loaded[key].path.name} and {m.path.name} both annotate frame "
                                     f"{key} of {source.path}; keep one of them")
            loaded[key] = m
        if selected is not None:
            skipped = {name: m for name, m in loaded.items() if not selected(name)}
            loaded = {name: m for name, m in loaded.items() if selected(name)}
            if not loaded:
                raise StmaInputError(f"{job.mask_dir}: no annotation on the frames chosen by --start/--end/--stride; "
                                     "choose a range that includes an annotated frame")
            kept_ids = {i for m in loaded.values() for i in m.object_ids}
            for name, m in skipped.items():
                lost = sorted(set(m.object_ids) - kept_ids)
                if lost:
                    warnings.append(f"{m.path}: object(s) {lost} are annotated only on frames that "
                                    "--start/--end/--stride skip, so they are not tracked; choose frames that "
                                    "include one of their annotations")
                    kept_ids.update(lost)  # named once, on the first skipped frame that has it
    video = str(source.path)
    loaded = {name: fit_mask(m, source.size, video, source.display_size, source.turned) for name, m in loaded.items()}
    if isinstance(source, FrameFolderSource):
        order = source.frame_names
    else:
        order = sorted(loaded, key=int)
        beyond = [name for name in order if int(name) >= max(source.frame_count, getattr(source, "packets", 0))]
        if beyond:
            raise StmaInputError(f"{loaded[beyond[0]].path}: annotates frame {beyond[0]} but {source.path} has "
                                 f"{source.frame_count} frames; remove masks past the last frame")
    given = {name: loaded[name].ids for name in order if name in loaded}
    return given, list(loaded.values()), warnings


def _report_masks(console: Console, masks: list[LoadedMask], quiet: bool, warnings: Sequence[str] = (),
                  say: Callable[[str], None] | None = None) -> None:
    """Warnings (each mask's, then `warnings` about the annotations as a whole) always reach stderr, one line
    each (through `say` when given); the id mapping is a note that --quiet hides."""
    say = say or (lambda message: warn(console, message))
    for mask in masks:
        for message in mask.warnings:
            say(message)
        if mask.mapping and not quiet:
            pairs = ", ".join(f"{source} -> {object_id}" for object_id, source in sorted(mask.mapping.items()))
            info(console, f"{mask.path}: {mask.kind} mask, object ids: {pairs}")
    for message in warnings:
        say(message)


# ---- one video -------------------------------------------------------------------------------------
def _segment_video(source: FrameSource, masks: dict[str, np.ndarray], propagator: Propagator,
                   writer: OutputWriter, progress: Progress, select: range | None = None, soft: bool = False,
                   direction: Direction = Direction.FORWARD, note: Callable[[str], None] | None = None) -> int:
    """Runs the propagator over every frame (only frame indices in `select` if given); returns the number
    of frames. Outputs are written in order. soft: also hands the writer the propagator's per-object
    probabilities (if it has them).

    Forward runs stream. Backward runs (--direction backward, or both when the first mask is after the
    first frame) keep the decoded frames in a temporary folder beside the outputs, so frames are read
    out of order without holding the video in memory. A failed video's bar is removed, so the error
    line is all that is left of it.
    """
    expected = source.frame_count if select is None else len(range(select.start, min(select.stop, source.frame_count),
                                                                    select.step))
    task = progress.add_task(escape(source.name), total=expected)
    soft_of = getattr(propagator, "object_probabilities", None) if soft else None
    frames = _SelectedFrames(source, select)
    try:
        start = select.start if select is not None else 0
        first = min((_frame_index(source, n) for n in masks), default=start)
        backward = direction is Direction.BACKWARD or (direction is Direction.BOTH and first > start)
        if backward and callable(getattr(propagator, "propagate", None)):  # the model; baselines run forward
            count = _segment_out_of_order(frames, masks, propagator, writer, progress, task, direction, soft_of)
        else:
            if backward and note is not None:
                named = f" ({source.frame_name(first)})" if isinstance(source, FrameFolderSource) else ""
                note(f"{source.path}: the first mask is on frame {first}{named}; this baseline runs forward only, so the "
                     f"frames before it stay empty (--method stma segments them with --direction both)")
            count = 0
            for name, frame in frames:
                result = propagator.step(frame, masks.get(name))
                _write(writer, name, frame, result, soft_of() if soft_of is not None else None)
                count += 1
                progress.update(task, advance=1, total=max(count, expected))
        if count == 0:
            raise StmaInputError(f"{source.path}: no frame could be decoded; re-encode the video")
        unused = set(masks) - frames.seen
        if unused and not frames.stopped_early:  # a mask for a frame the video lacks would silently drop objects
            first = min(unused, key=lambda n: (len(n), n))
            raise StmaInputError(f"{source.path}: a mask annotates frame {first} but the video has {count} frames "
                                 "(0-based names); remove masks past the last frame")
    except StmaInputError as exc:  # raised while running this video (e.g. by an export's limits): name it
        progress.remove_task(task)
        text = str(exc)
        raise (exc if text.startswith(str(source.path)) else StmaInputError(f"{source.path}: {text}")) from exc
    except BaseException:
        progress.remove_task(task)
        raise
    progress.update(task, total=count, completed=count)
    return count


class _SelectedFrames:
    """(name, frame) of the frames `select` chooses (all if None), decoding no further than --end; notes
    which frame names were decoded, and whether reading stopped at --end (later masks go unchecked)."""

    def __init__(self, source: FrameSource, select: range | None) -> None:
        self.source, self.select = source, select
        self.seen: set[str] = set()
        self.stopped_early = False

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for index, (name, frame) in enumerate(self.source):
            self.seen.add(name)
            if self.select is not None:
                if index >= self.select.stop:
                    self.stopped_early = True
                    return
                if index not in self.select:
                    continue
            yield name, frame


def _write(writer: OutputWriter, name: str, frame: np.ndarray, result: np.ndarray,
           soft: dict[int, np.ndarray] | None = None) -> None:
    if result.shape != frame.shape[:2]:
        raise RuntimeError(f"propagator returned a {result.shape} mask for a {frame.shape[:2]} frame")
    writer.write(name, frame, np.array(result, dtype=np.uint8), soft)  # a copy: the writer thread owns it


FRAMES_PREFIX = ".stma-frames-"
"""Temporary folder of decoded frames of a backward run, in --out: `.stma-frames-<pid>-<random>`."""


class _DiskFrames:
    """Frames saved as lossless PNGs in a folder, read back one at a time by index (a Sequence)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0

    def append(self, frame: np.ndarray) -> None:
        cv2.imwrite(str(self.folder / f"{self.count:07d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_PNG_COMPRESSION, 1])
        self.count += 1

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> np.ndarray:
        bgr = cv2.imread(str(self.folder / f"{index:07d}.png"), cv2.IMREAD_COLOR)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _segment_out_of_order(selected: _SelectedFrames, masks: dict[str, np.ndarray], session: Any,
                          writer: OutputWriter, progress: Progress, task: TaskID, direction: Direction,
                          soft_of: Callable[[], dict[int, np.ndarray]] | None) -> int:
    """Backward or both directions: results come out of order; each is kept PNG-compressed (small)
    until every frame before it is written. -> the number of frames."""
    # named after this process, so a later run can tell the folder of a killed run (gigabytes of decoded
    # frames, hidden) from one in use, and remove it (segment() does, at its start)
    with tempfile.TemporaryDirectory(prefix=f"{FRAMES_PREFIX}{os.getpid()}-", dir=writer.out_dir) as folder:
        frames, names = _DiskFrames(Path(folder)), []
        for name, frame in selected:
            frames.append(frame)
            names.append(name)
        given = {names.index(n): m for n, m in masks.items() if n in names}
        if not given:
            raise StmaInputError(f"{selected.source.path}: no mask matches a frame of this video; "
                                 "name masks like its frames")
        pending: dict[int, tuple[bytes, dict[int, bytes] | None]] = {}
        done = 0

        def encode(image: np.ndarray) -> bytes:
            return cv2.imencode(".png", np.ascontiguousarray(image, np.uint8))[1].tobytes()

        def decode(data: bytes) -> np.ndarray:
            return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)

        with warnings.catch_warnings():  # what direction both leaves out was said as the CLI's own line
            warnings.filterwarnings("ignore", message="direction both: ")
            for index, result in session.propagate(frames, given, direction):
                soft = {k: encode(v) for k, v in soft_of().items()} if soft_of is not None else None
                pending[index] = (encode(result), soft)
                progress.update(task, advance=1, total=len(frames))
                while done in pending:
                    mask, soft = pending.pop(done)
                    _write(writer, names[done], frames[done], decode(mask),
                           {k: decode(v) for k, v in soft.items()} if soft is not None else None)
                    done += 1
        return done


# ---- command ---------------------------------------------------------------------------------------
def segment(
    input_path: Path = typer.Argument(..., metavar="INPUT", show_default=False,
                                      help="Video file (anything ffmpeg decodes: mp4, mov, mkv, webm, m4v, ts, ...), folder of "
                                           "frames, or folder of videos (with <video>.png masks beside them)."),
    mask: Optional[Path] = typer.Option(None, "--mask", "-m", show_default=False,
                                        help="First-frame mask PNG (palette, binary/gray or RGB colours). "
                                             "For a folder of videos: a folder holding <video>.png."),
    mask_dir: Optional[Path] = typer.Option(None, "--mask-dir", show_default=False,
                                            help="Annotation folder of <frame>.png masks (objects may appear on "
                                                 "later frames; a mask of an object given before corrects it on "
                                                 "that frame). For a folder of videos: a folder of <video>/ folders."),
    out: Path = typer.Option(Path("stma_out"), "--out", "-o", help="Output folder."),
    formats: list[str] = typer.Option(["png"], "--format", "-f",
                                      help="png (DAVIS palette PNGs in OUT/<video>/), rle (OUT/<video>.rle.json), "
                                           "overlay (OUT/<video>.overlay.mp4), matte (white-on-black PNGs per object), "
                                           "matte-video (mp4), cutout (RGBA PNGs), cutout-video (webm/mov with "
                                           "alpha), prob (soft masks, PNG 0-255), prob-npz (npz per frame); "
                                           "repeat for several."),
    method: str = typer.Option("stma", "--method", help="stma (the model), copy or flow (baselines)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", show_default=False,
                                              help="Model checkpoint (.safetensors); default: the shipped model."),
    device: str = typer.Option("auto", "--device", help=f"{DEVICES}."),
    size: Optional[int] = _settings.SIZE,
    top_k: Optional[int] = _settings.TOP_K,
    kernel_sigma: Optional[int] = _settings.KERNEL_SIGMA,
    spatial_capacity: Optional[int] = _settings.SPATIAL_CAPACITY,
    spatial_every: Optional[int] = _settings.SPATIAL_EVERY,
    temporal_capacity: Optional[int] = _settings.TEMPORAL_CAPACITY,
    temporal_every: Optional[int] = _settings.TEMPORAL_EVERY,
    direction: str = typer.Option("both", "--direction",
                                  help="forward, backward or both: with both, frames before the first mask are "
                                       "segmented too, propagating backwards (baselines run forward only)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or notes: stdout gets only result paths; warnings and errors stay on stderr."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs (a batch skips finished videos otherwise)."),
    engine: str = typer.Option("torch", "--engine", help="torch (PyTorch), onnx (onnxruntime) or torchscript: the "
                                                          "last two run an `stma export` folder (--export-dir)."),
    export_dir: Optional[Path] = typer.Option(None, "--export-dir", "--onnx-dir", show_default=False,
                                            help="Folder written by `stma export` (with --engine onnx or torchscript, "
                                                 "as it was exported); --onnx-dir is the older name."),
    start: int = typer.Option(0, "--start", help="First frame to segment (0-based index; a --mask file annotates it)."),
    end: Optional[int] = typer.Option(None, "--end", show_default=False,
                                      help="Frame index to stop before, itself not segmented (--end 10: "
                                           "frames up to 9); default: through the last frame."),
    stride: int = typer.Option(1, "--stride", help="Segment every N-th frame from --start."),
    fps: Optional[float] = typer.Option(None, "--fps", show_default=False,
                                        help="Frame rate of video outputs (default: the input's, 24 for frame "
                                             "folders, divided by --stride)."),
    objects: str = typer.Option("each", "--objects",
                                help="matte/cutout: each (one per object id) or all (all objects in one)."),
    overlay_alpha: float = typer.Option(0.5, "--overlay-alpha", help="Overlay tint opacity, 0 to 1."),
    overlay_style: str = typer.Option("fill", "--overlay-style", help="Overlay: fill (tint + outline) or contour (outline only)."),
    labels: bool = typer.Option(False, "--labels", help="Overlay: write each object's id on it."),
    alpha_codec: str = typer.Option("vp9", "--alpha-codec",
                                    help="cutout-video: vp9 (.webm, browsers) or prores (.mov ProRes 4444, editors)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON summary on stdout (videos with their input "
                                                       "path, frames, objects and their output ids, seconds, "
                                                       "outputs) instead of result paths."),
) -> None:
    """Segment the objects of the first-frame mask in every frame of a video.

    Exit codes: 0 success, 1 some videos of a batch failed, interrupted or stdout closed, 2 bad input (nothing written).
    """
    _run_warnings.clear()
    fmt_list = _parse_formats(formats)
    if method not in METHODS:
        fail(f"--method: unknown method {method!r}; use {', '.join(METHODS)}")
    if engine not in ("torch", "onnx", "torchscript"):
        fail(f"--engine: unknown engine {engine!r}; use torch, onnx or torchscript")
    exported = engine != "torch"
    if exported and (export_dir is None or method != "stma"):
        fail(f"--engine {engine}: pass --export-dir with a `stma export --format {engine}` folder (and --method stma)")
    if not exported and export_dir is not None:  # it would be ignored: the PyTorch model would run instead
        fail(f"--export-dir {export_dir}: pass --engine onnx or --engine torchscript (as it was exported) to run it")
    if exported and checkpoint is not None:
        fail(f"--checkpoint: not used with --engine {engine} (the export folder holds its model); leave it out, "
             "or re-export with `stma export --checkpoint FILE`")
    if exported and device not in ("auto", "cpu"):
        fail(f"--device: --engine {engine} runs on CPU, not {device!r}; use --device cpu (or --engine torch)")
    settings = _settings.settings_from_flags(size, top_k, spatial_capacity, spatial_every, temporal_capacity,
                                             temporal_every, kernel_sigma)
    _settings.refuse_model_flags_for_baseline(method, checkpoint, settings)
    try:
        way = Direction(direction)
    except ValueError:
        fail(f"--direction: unknown direction {direction!r}; use forward, backward or both")
    if way is Direction.BACKWARD and method != "stma":
        fail(f"--direction backward: the {method} baseline runs forward only; use --method stma "
             "(or --direction forward)")
    if way is Direction.BACKWARD and mask_dir is None:  # --mask, or the mask beside the video: the first frame
        fail("--direction backward: a --mask annotates the first frame processed, and propagating backward from "
             "the last frame would leave every other frame empty; give later annotations with --mask-dir DIR "
             "(<frame>.png), or use --direction forward or both")
    device = check_device(device)  # a wrong --device is a mistake whatever the method
    if method == "stma" and engine == "torch":
        device = _resolve_device(device)
        note_run_folder(checkpoint, quiet)
    extras = dataclasses.replace(_check_extras(start, end, stride, fps, objects, overlay_alpha, overlay_style,
                                               labels, alpha_codec), size=size if method == "stma" else None)
    if fps is not None and not set(VIDEO_FORMATS) & set(fmt_list):
        _run_warning(f"--fps only sets the frame rate of {', '.join(VIDEO_FORMATS)} outputs; none is requested")
    options = extras.options  # style options of outputs not requested would be silently ignored
    per_object = ("matte", "matte-video", "cutout", "cutout-video")
    for flag, given, applies in (("--objects", options.objects != "each", per_object),
                                 ("--overlay-alpha", options.overlay_alpha != OVERLAY_ALPHA, ("overlay",)),
                                 ("--overlay-style", options.overlay_style != "fill", ("overlay",)),
                                 ("--labels", options.labels, ("overlay",)),
                                 ("--alpha-codec", options.alpha_codec != "vp9", ("cutout-video",))):
        if given and not set(applies) & set(fmt_list):
            _run_warning(f"{flag} only applies to {', '.join(applies)} outputs; none is requested (add -f {applies[0]})")
    if str(input_path) == "-":
        fail("-: INPUT is read from a file, not stdin (a video is read with seeking); save it to a file and pass its "
             "path (for a file named '-', its full path)")
    refuse_stdout_dash(out)
    jobs, batch = _find_jobs(input_path, mask, mask_dir, out)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1:
        jobs = jobs[rank::world]
    created_out = not out.exists()
    if out.exists() and not out.is_dir():
        _refuse(jobs, f"{out}: --out is a file, not a folder; pass --out with a folder path", as_json)
    try:
        ensure_writable_dir(out)
    except StmaOutputError as exc:
        _refuse(jobs, exc, as_json)
    remove_stale_run_folders(out, FRAMES_PREFIX)  # decoded frames a killed backward run left
    try:
        _run_jobs(jobs, batch, fmt_list, out, overwrite, quiet, method, checkpoint, device, settings,
                  export_dir if exported else None, extras=extras, as_json=as_json, direction=way,
                  export_engine=engine)
    finally:
        if created_out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a run that wrote nothing leaves nothing behind


def _run_jobs(jobs: list[Job], batch: bool, fmt_list: list[str], out: Path, overwrite: bool, quiet: bool,
              method: str, checkpoint: Path | None, device: str, settings: dict[str, int | None],
              export_dir: Path | None = None, extras: Extras | None = None, as_json: bool = False,
              direction: Direction = Direction.FORWARD, export_engine: str = "onnx") -> None:
    """Runs every job in order, printing result paths as they finish and the batch summary at the end."""
    console = stderr_console()
    first_of: dict[str, Path] = {}
    for job in jobs:  # outputs are named after the input: two inputs of one name would collide
        if job.name in first_of:
            _refuse(jobs, f"{job.path}: {first_of[job.name]} is also named {job.name!r}, and outputs are named after "
                    "their input; rename one of them", as_json)
        first_of[job.name] = job.path
    outputs = [all_output_paths(out, job.name, fmt_list) for job in jobs]  # each job's, handed to its run too
    owner: dict[Path, Path] = {}
    for job, paths in zip(jobs, outputs):  # a.cutout.mp4's png folder is a.mp4's cutout folder: one would overwrite
        for path in paths.values():
            if path in owner:
                _refuse(jobs, f"{job.path}: its output {path} is also an output of {owner[path]}; rename one of "
                        "them, or segment them into separate --out folders", as_json)
            owner[path] = job.path
    factory: list[Callable[[], Propagator]] = []

    def propagator() -> Propagator:
        if not factory:  # the model loads once, and only if a video needs it
            try:
                if export_dir is not None:
                    from stma_core.inference.onnx_session import make_export_propagator_factory

                    factory.append(make_export_propagator_factory(export_dir, export_engine, **settings))
                else:
                    factory.append(make_propagator_factory(method, str(checkpoint) if checkpoint else None,
                                                           device, settings=settings))
            except (StmaInputError, ValueError, OSError) as exc:
                raise _Stop(exc, EXIT_BAD_INPUT) from exc
        return factory[0]()

    outcomes: list[Outcome] = []
    start = time.perf_counter()
    current: Job | None = None
    try:
        with frame_progress(console, disable=quiet) as progress:
            for job, paths in zip(jobs, outputs):
                current = job
                outcome = _run_job(job, paths, batch, fmt_list, out, overwrite, propagator, progress, console, quiet,
                                   extras or Extras(), direction)
                outcomes.append(outcome)
                if not as_json:
                    for path in outcome.paths:
                        echo(str(path))
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (app.main says so on stderr and exits 1)
        if as_json:  # a script reading stdout still learns which videos finished
            finished = {id(o.job) for o in outcomes}
            outcomes += [Outcome(job, "failed", error="interrupted" if job is current else "not run: interrupted")
                         for job in jobs if id(job) not in finished]
            _print_json(outcomes, time.perf_counter() - start, error="interrupted (Ctrl-C or SIGTERM)")
        raise
    except _Stop as stop:
        if as_json and current is not None:  # a script reading stdout gets the failure too, not nothing
            line = one_line(stop.args[0])
            outcomes.append(Outcome(current, "failed", error=line, bad_input=stop.code == EXIT_BAD_INPUT,
                                    warnings=stop.warnings))
            # a batch stopped for all its videos (a model that cannot load) lists those it did not run, too
            rest = jobs[jobs.index(current) + 1:]
            outcomes += _not_run(rest, line)
            _print_json(outcomes, time.perf_counter() - start, error=line if rest else "")
        fail(stop.args[0], stop.code)
    if batch and not quiet:
        console.print(_summary(outcomes))
    if as_json:
        _print_json(outcomes, time.perf_counter() - start)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed and len(failed) == len(outcomes) and all(o.bad_input for o in failed):
        raise typer.Exit(EXIT_BAD_INPUT)  # nothing could run: the input itself is wrong, not some videos
    if failed:
        raise typer.Exit(EXIT_SOME_FAILED)


_run_warnings: list[str] = []
"""This run's warnings about its options as a whole (not one video's), for the --json summary's `warnings`."""


def _run_warning(message: str) -> None:
    """A warning about the run's options: stderr, also with --quiet (which hides notes only), and --json."""
    warn(stderr_console(), message)
    _run_warnings.append(one_line(message))


def _not_run(jobs: list[Job], line: str) -> list[Outcome]:
    """The --json outcomes of videos a refusal kept from running (bad input: the run, not the video, failed)."""
    return [Outcome(job, "failed", error=f"not run: {line}", bad_input=True) for job in jobs]


def _refuse(jobs: list[Job], message: object, as_json: bool) -> NoReturn:
    """Ends a run refused before any video started (exit 2): with --json, stdout still gets the summary, every
    video failed as not run and the reason in `error`, so a script reading it never gets nothing."""
    if as_json:
        line = one_line(message)
        _print_json(_not_run(jobs, line), 0.0, error=line)
    fail(message)


def refused_json(line: str) -> None:
    """The --json summary of a run refused before its inputs were listed (a bad option): no videos, `error`."""
    _print_json([], 0.0, error=line)


def _print_json(outcomes: list[Outcome], seconds: float, error: str = "") -> None:
    """The --json summary; `error`: why the whole run was refused (absent when videos ran or failed alone)."""
    payload = {
        "videos": [{"name": o.name, "input": str(o.job.path), "status": o.status, "frames": o.frames, "objects": o.objects,
                    "object_ids": list(o.object_ids), **({"id_map": o.id_map} if o.id_map else {}),
                    "seconds": round(o.seconds, 3), "outputs": [str(p) for p in o.paths],
                    **({"warnings": o.warnings} if o.warnings else {}),
                    **({"error": o.error} if o.error else {})} for o in outcomes],
        "frames": sum(o.frames for o in outcomes),
        "seconds": round(seconds, 3),
        "done": sum(o.status == "done" for o in outcomes),
        "skipped": sum(o.status == "skipped" for o in outcomes),
        "failed": sum(o.status == "failed" for o in outcomes),
        **({"warnings": list(_run_warnings)} if _run_warnings else {}),
        **({"error": error} if error else {}),
    }
    echo_json(payload)


FILE_FORMATS = ("rle", "overlay")
"""Outputs that are one file; every other format's output is a folder."""


def _right_kind(fmt: str, path: Path) -> bool:
    """Whether `path` exists as the kind of thing a `fmt` output is (a file, or a folder)."""
    return path.is_file() if fmt in FILE_FORMATS else path.is_dir()


def _run_job(job: Job, paths: dict[str, Path], batch: bool, formats: list[str], out: Path, overwrite: bool,
             propagator: Callable[[], Propagator], progress: Progress, console: Console, quiet: bool,
             extras: Extras | None = None, direction: Direction = Direction.FORWARD) -> Outcome:
    """One video: bad input ends the command (exit 2) for a single video, or is recorded in a batch.
    paths: its outputs (all_output_paths of `formats`)."""
    start = time.perf_counter()
    said: list[str] = []  # this video's warnings, also for its --json entry

    def warning(message: str) -> None:
        warn(console, message)
        said.append(one_line(message))

    try:
        extras = extras or Extras()
        if job.name in ("", ".", ".."):  # `..mp4`, or the root folder: the png output would be --out itself
            raise StmaInputError(f"{job.path}: its name {job.name!r} cannot name outputs (the png folder would be "
                                 "--out itself or its parent); rename it, or copy the frames into a named folder")
        present = {fmt: path for fmt, path in paths.items() if path.exists() or path.is_symlink()}
        for fmt, path in present.items():  # a file where a PNG folder goes is no finished output (nor the reverse)
            if not _right_kind(fmt, path):  # so a path left in `present` exists (a dangling link is refused)
                raise StmaOutputError(f"{path}: is a {'folder' if path.is_dir() else 'file'}, not this video's {fmt} "
                                      f"output (a {'file' if fmt in FILE_FORMATS else 'folder'}); move it away or "
                                      "choose another --out")
        # as given (a link to a mask elsewhere, kept in the output folder, goes with it) and with links followed
        protected = [(what, given, {Path(os.path.abspath(given)), given.resolve()}) for what, given in (
            ("input", job.path), ("mask", job.mask_file), ("--mask-dir", job.mask_dir),
            ("current folder", Path.cwd() if overwrite else None)) if given is not None]  # `cd out/clip; ... -o ..`
        for fmt, path in paths.items():  # `stma segment frames -o .`: the png folder IS the input (or its masks)
            finals = {Path(os.path.abspath(path)), path.resolve()}
            for what, given, spellings in protected:
                if any(spelled == final or final in spelled.parents for spelled in spellings for final in finals):
                    shown = "" if what == "current folder" else f" {given}"
                    raise StmaOutputError(f"{path}: the {fmt} output would replace the {what}{shown}; "
                                          "choose another --out")
        todo = [f for f in paths if overwrite or f not in present]
        if not todo and batch:
            return Outcome(job, "skipped", paths=list(paths.values()))
        if len(todo) < len(formats) and not batch:
            existing = next(p for f, p in paths.items() if f not in todo)
            raise StmaOutputError(f"{existing}: output already exists; "
                                  "pass --overwrite to replace it or choose another --out")
        if len(todo) < len(formats):  # a batch adds the missing formats only; say the others are an earlier run's
            kept = ", ".join(str(p) for f, p in paths.items() if f not in todo)
            warning(f"{job.path}: kept {kept} from an earlier run and wrote only {', '.join(todo)} now; the "
                    "earlier run's settings are not compared with this one's: pass --overwrite to redo all of "
                    "this video's outputs")
        source = open_frames(job.path, job.contents)
        select = _frame_range(source, extras)
        selected = None if select is None else lambda name: _frame_index(source, name) in select
        masks, loaded, warnings = _load_masks(job, source, select.start if select else 0, selected)
        _report_masks(console, loaded, quiet, warnings, say=warning)
        if source.other_videos and not quiet:
            info(console, f"{job.path}: holds {source.other_videos + 1} video streams; the first is read "
                          f"({source.size[0]}x{source.size[1]}); for another, extract it first "
                          "(ffmpeg -i IN -map 0:v:1 -c copy OUT.mkv)")
        if extras.size is not None and extras.size > min(source.size) and not quiet:
            info(console, f"{job.path}: --size {extras.size} is above the video's short side ({min(source.size)} "
                          f"pixels); frames are never upscaled, so it runs at {min(source.size)}")
        padded, even_size = padded_size(todo, source.size)
        if padded and not quiet:
            info(console, f"{job.path}: {' and '.join(padded)} {'are' if len(padded) > 1 else 'is'} "
                          f"{even_size[0]}x{even_size[1]}, not {source.size[0]}x{source.size[1]}: H.264 needs even "
                          "sizes, so the last column/row is repeated (the other outputs keep the input's size)")
        prop = propagator()
        check = getattr(prop, "check_annotations", None)  # an export's fixed memory: refuse before any frame
        if check is not None:
            try:
                check(list(masks.values()), direction)
            except StmaInputError as exc:
                raise StmaInputError(f"{job.path}: {exc}") from exc
        if direction is Direction.BOTH and masks and callable(getattr(prop, "propagate", None)):
            from stma_core.inference.session import late_object_gaps

            gaps = late_object_gaps({_frame_index(source, n): m for n, m in masks.items()}, source.frame_name)
            if gaps:  # the session's own warning (a Python warning) is silenced below: this is the CLI's line
                warning(f"{job.path}: {gaps}")
        soft = bool({"prob", "prob-npz"} & set(todo))
        object_ids = tuple(sorted({int(i) for m in masks.values() for i in np.unique(m) if i != 0}))
        options = dataclasses.replace(extras.options, object_ids=object_ids,  # also the Outcome's object count
                                      sar=source.sar, matrix=source.matrix)
        fps = extras.fps or source.fps / extras.stride
        with OutputWriter(out, job.name, todo, source.size, fps, options, overwrite=overwrite) as writer:
            frames = _segment_video(source, masks, prop, writer, progress, select, soft, direction,
                                    None if quiet else (lambda message: info(console, message)))
        seconds = time.perf_counter() - start
        if job.mask_dir is not None and 1 < len(masks) >= frames:
            # a DAVIS Annotations/<seq> folder holds the ground truth of every frame: each mask is a correction that
            # replaces the prediction, so the outputs are those masks (scored 100%), and nothing was segmented
            first_mask = min((m.path for m in loaded), key=lambda path: _frame_index(source, _frame_key(source, path)))
            warning(f"{job.mask_dir}: annotates every frame segmented ({len(masks)} of {frames}), and a mask of an "
                    "object already given replaces its prediction, so the outputs are these masks, not segmentation "
                    "(e.g. a DAVIS ground-truth folder); to segment, give only the masks of the frames where objects "
                    f"first appear (for this video alone: --mask {first_mask})")
        if progress.disable and not quiet:  # no live bar (not a terminal): one plain line per video
            info(console, f"{job.name}: {frames} frames in {seconds:.1f} s ({frames / seconds:.1f} frames/s)")
        id_map = {value: object_id for m in loaded for object_id, value in sorted(m.mapping.items())}
        return Outcome(job, "done", frames, seconds, list(paths.values()), object_ids=object_ids, id_map=id_map,
                       warnings=said)
    except _Stop:
        raise
    except (StmaInputError, StmaOutputError) as exc:
        if not batch:
            raise _Stop(exc, EXIT_BAD_INPUT, said) from exc
        if isinstance(exc, StmaOutputError) and not overwrite and all(_right_kind(f, p) for f, p in paths.items()):
            # another run (a second batch over the same folder) finished this video first: as if it had
            # been finished before this run started, it is skipped, with a note
            if not quiet:
                info(console, f"{job.path}: another run wrote its outputs meanwhile; kept them (skipped)")
            return Outcome(job, "skipped", paths=list(paths.values()), warnings=said)
        print_error(exc)
        return Outcome(job, "failed", error=one_line(exc), bad_input=True, warnings=said)
    except Exception as exc:  # noqa: BLE001 - a batch must go on with the other videos
        message = f"{job.path}: segmentation failed ({type(exc).__name__}: {exc}); rerun, or report a bug with this line"
        if not batch:
            raise _Stop(message, EXIT_SOME_FAILED, said) from exc
        print_error(message)
        return Outcome(job, "failed", error=one_line(message), warnings=said)


def _summary(outcomes: list[Outcome]) -> Table:
    table = Table(title="stma segment")
    for column in ("video", "status", "frames", "frames/s", "output / error"):
        table.add_column(column, overflow="fold")
    colors = {"done": "green", "skipped": "cyan", "failed": "red"}
    for o in outcomes:
        fps = f"{o.frames / o.seconds:.1f}" if o.status == "done" and o.seconds > 0 else ""
        detail = ", ".join(str(p) for p in o.paths) if o.status != "failed" else o.error
        table.add_row(escape(o.name), f"[{colors[o.status]}]{o.status}[/]", str(o.frames) if o.frames else "",
                      fps, escape(detail))
    done = sum(o.status == "done" for o in outcomes)
    skipped = sum(o.status == "skipped" for o in outcomes)
    failed = sum(o.status == "failed" for o in outcomes)
    table.caption = f"{done} done, {skipped} skipped, {failed} failed"
    return table
