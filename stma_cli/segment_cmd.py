"""`stma segment`: propagate first-frame masks through a video, a frame folder or a folder of videos.

Bad input stops a single video with exit code 2 and one `error:` line before any compute is spent;
in a batch a failing video is reported and the others still run (exit code 1 at the end). Results are
written atomically, so finished videos can be skipped when a batch is rerun.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import cv2
import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, TaskID
from rich.table import Table

from stma_cli import _settings
from stma_cli._common import (EXIT_BAD_INPUT, EXIT_SOME_FAILED, fail, frame_progress, info, one_line, print_error,
                              stderr_console, warn)
from stma_core.config import Direction
from stma_core.errors import StmaInputError, StmaOutputError
from stma_core.inference.factory import METHODS, make_propagator_factory
from stma_core.inference.propagator import Propagator
from stma_core.io.atomic import ensure_writable_dir
from stma_core.io.frames import FrameFolderSource, FrameSource, find_videos, is_frame_folder, open_frames
from stma_core.io.masks import LoadedMask, fit_mask, load_mask, load_mask_folder
from stma_core.io.writers import FORMATS, VideoWriter, output_paths


class _Stop(Exception):
    """Ends the command with one error line, raised inside the progress display and reported after it closed.

    Used for a single video's failure and for a model that cannot be loaded (every video would fail).
    """

    def __init__(self, message: object, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Job:
    """One input video and where its masks come from."""

    path: Path
    name: str
    mask_file: Path | None = None
    mask_dir: Path | None = None


@dataclass
class Outcome:
    name: str
    status: str  # 'done', 'skipped' or 'failed'
    frames: int = 0
    seconds: float = 0.0
    paths: list[Path] = field(default_factory=list)
    error: str = ""


# ---- option checks --------------------------------------------------------------------------------
def _parse_formats(values: list[str]) -> list[str]:
    formats: list[str] = []
    for value in values:
        for item in (v.strip().lower() for v in value.split(",")):
            if item not in FORMATS:
                fail(f"--format: unknown format {item!r}; use {', '.join(FORMATS)} (repeat --format for several)")
            if item not in formats:
                formats.append(item)
    return formats


def _check_device(device: str) -> str:
    """The device the model runs on (stma_core.device.resolve_device; under torchrun, this rank's GPU)."""
    from stma_core.device import resolve_device

    try:
        return str(resolve_device(device))
    except ValueError as exc:
        fail(f"--device: {exc}")


# ---- inputs ----------------------------------------------------------------------------------------
def _find_jobs(input_path: Path, mask: Path | None, mask_dir: Path | None, out: Path) -> tuple[list[Job], bool]:
    """-> (jobs, batch). Masks: --mask FILE / --mask-dir DIR for one video; folders keyed by name for a batch."""
    if mask is None and mask_dir is None:
        fail("--mask: no mask given; pass --mask FIRST_FRAME.png or --mask-dir ANNOTATION_FOLDER")
    if mask is not None and mask_dir is not None:
        fail("--mask/--mask-dir: both given; pass only one of them")
    if not input_path.exists():
        fail(f"{input_path}: no such file or folder; check the INPUT path")
    batch = input_path.is_dir() and not is_frame_folder(input_path)
    if not batch:
        name = input_path.name if input_path.is_dir() else input_path.stem
        job = Job(input_path, name)
        if mask is not None:
            job.mask_file = mask / f"{name}.png" if mask.is_dir() else mask
        else:
            assert mask_dir is not None
            job.mask_dir = mask_dir / name if (mask_dir / name).is_dir() else mask_dir
        return [job], False

    out_resolved = out.resolve()
    if out_resolved == input_path.resolve():
        fail(f"{out}: output folder is the input folder (results would be read as videos next run); "
             "pass --out with another folder")
    paths = [p for p in find_videos(input_path)
             if p.resolve() != out_resolved and out_resolved not in p.resolve().parents]
    if not paths:
        fail(f"{input_path}: folder holds no videos, frames or frame folders; "
             "pass a video, a folder of frames, or a folder of videos")
    if mask is not None and not mask.is_dir():
        fail(f"{mask}: is a file but INPUT is a folder of videos; pass --mask FOLDER holding <video>.png "
             "for each video (or --mask-dir with <video>/ annotation folders)")
    jobs = []
    for path in paths:
        name = path.name if path.is_dir() else path.stem
        jobs.append(Job(path, name, mask_file=mask / f"{name}.png" if mask is not None else None,
                        mask_dir=mask_dir / name if mask_dir is not None else None))
    return jobs, True


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


def _load_masks(job: Job, source: FrameSource) -> tuple[dict[str, np.ndarray], list[LoadedMask]]:
    """-> (frame name -> id mask), and the loaded masks for reporting.

    Every annotation is used: new ids start objects, ids already given are corrections on that frame.
    """
    if job.mask_file is not None:
        loaded = {source.frame_name(0): load_mask(job.mask_file)}
    else:
        assert job.mask_dir is not None
        loaded = {_frame_key(source, m.path): m for m in load_mask_folder(job.mask_dir).values()}
    video = str(source.path)
    loaded = {name: fit_mask(m, source.size, video) for name, m in loaded.items()}
    if isinstance(source, FrameFolderSource):
        order = source.frame_names
    else:
        order = sorted(loaded, key=int)
        beyond = [name for name in order if int(name) >= source.frame_count]
        if beyond:
            raise StmaInputError(f"{loaded[beyond[0]].path}: annotates frame {beyond[0]} but {source.path} has "
                                 f"{source.frame_count} frames; remove masks past the last frame")
    given = {name: loaded[name].ids for name in order if name in loaded}
    return given, list(loaded.values())


def _report_masks(console: Console, masks: list[LoadedMask], quiet: bool) -> None:
    if quiet:
        return
    for mask in masks:
        for message in mask.warnings:
            warn(console, message)
        if mask.mapping:
            pairs = ", ".join(f"{source} -> {object_id}" for object_id, source in sorted(mask.mapping.items()))
            info(console, f"{mask.path}: {mask.kind} mask, object ids: {pairs}")


# ---- one video -------------------------------------------------------------------------------------
def _segment_video(source: FrameSource, masks: dict[str, np.ndarray], propagator: Propagator,
                   writer: VideoWriter, progress: Progress, direction: Direction = Direction.FORWARD) -> int:
    """Runs the propagator over every frame; returns the number of frames. Outputs are written in order.

    Forward runs stream. Backward runs (--direction backward, or both when the first mask is after the
    first frame) keep the decoded frames in a temporary folder beside the outputs, so frames are read
    out of order without holding the video in memory. A failed video's bar is removed, so the error
    line is all that is left of it.
    """
    task = progress.add_task(escape(source.name), total=source.frame_count)
    try:
        names = _frame_names(source, masks)
        first = min((names.index(n) for n in masks if n in names), default=0)
        backward = direction is Direction.BACKWARD or (direction is Direction.BOTH and first > 0)
        if backward and callable(getattr(propagator, "propagate", None)):  # the model; baselines run forward
            count = _segment_out_of_order(source, masks, propagator, writer, progress, task, direction)
        else:
            count = 0
            for name, frame in source:
                result = propagator.step(frame, masks.get(name))
                _write(writer, name, frame, result)
                count += 1
                progress.update(task, advance=1, total=max(count, source.frame_count))
        if count == 0:
            raise StmaInputError(f"{source.path}: no frame could be decoded; re-encode the video")
    except BaseException:
        progress.remove_task(task)
        raise
    progress.update(task, total=count, completed=count)
    return count


def _frame_names(source: FrameSource, masks: dict[str, np.ndarray]) -> list[str]:
    if isinstance(source, FrameFolderSource):
        return source.frame_names
    last = max((int(n) for n in masks), default=0)
    return [source.frame_name(i) for i in range(max(source.frame_count, last + 1))]


def _write(writer: VideoWriter, name: str, frame: np.ndarray, result: np.ndarray) -> None:
    if result.shape != frame.shape[:2]:
        raise RuntimeError(f"propagator returned a {result.shape} mask for a {frame.shape[:2]} frame")
    writer.write(name, frame, np.array(result, dtype=np.uint8))  # a copy: the writer thread owns it


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


def _segment_out_of_order(source: FrameSource, masks: dict[str, np.ndarray], session: Any,
                          writer: VideoWriter, progress: Progress, task: TaskID, direction: Direction) -> int:
    """Backward or both directions: results come out of order; each is kept PNG-compressed (small)
    until every frame before it is written."""
    with tempfile.TemporaryDirectory(prefix=".stma-frames-", dir=writer.out_dir) as folder:
        frames, names = _DiskFrames(Path(folder)), []
        for name, frame in source:
            frames.append(frame)
            names.append(name)
        given = {names.index(n): m for n, m in masks.items() if n in names}
        if not given:
            raise StmaInputError(f"{source.path}: no mask matches a frame of this video; name masks like its frames")
        pending: dict[int, bytes] = {}
        done = 0
        for index, result in session.propagate(frames, given, direction):
            pending[index] = cv2.imencode(".png", np.ascontiguousarray(result, np.uint8))[1].tobytes()
            progress.update(task, advance=1, total=len(frames))
            while done in pending:
                mask = cv2.imdecode(np.frombuffer(pending.pop(done), np.uint8), cv2.IMREAD_UNCHANGED)
                _write(writer, names[done], frames[done], mask)
                done += 1
        return done


# ---- command ---------------------------------------------------------------------------------------
def segment(
    input_path: Path = typer.Argument(..., metavar="INPUT", show_default=False,
                                      help="Video file (mp4/mov/avi/mkv/webm), folder of frames, or folder of videos."),
    mask: Optional[Path] = typer.Option(None, "--mask", "-m", show_default=False,
                                        help="First-frame mask PNG (palette, binary/gray or RGB colours). "
                                             "For a folder of videos: a folder holding <video>.png."),
    mask_dir: Optional[Path] = typer.Option(None, "--mask-dir", show_default=False,
                                            help="Annotation folder of <frame>.png masks (objects may appear on "
                                                 "later frames; a mask of an object given before corrects it on "
                                                 "that frame). For a folder of videos: a folder of <video>/ folders."),
    out: Path = typer.Option(Path("stma_out"), "--out", "-o", help="Output folder."),
    formats: list[str] = typer.Option(["png"], "--format", "-f",
                                      help="png (DAVIS palette PNGs in OUT/<video>/), rle (OUT/<video>.rle.json) or "
                                           "overlay (OUT/<video>.overlay.mp4); repeat for several."),
    method: str = typer.Option("stma", "--method", help="stma (the model), copy or flow (baselines)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", show_default=False,
                                              help="Model checkpoint (.safetensors); default: the shipped model."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    size: Optional[int] = _settings.SIZE,
    top_k: Optional[int] = _settings.TOP_K,
    spatial_capacity: Optional[int] = _settings.SPATIAL_CAPACITY,
    spatial_every: Optional[int] = _settings.SPATIAL_EVERY,
    temporal_capacity: Optional[int] = _settings.TEMPORAL_CAPACITY,
    temporal_every: Optional[int] = _settings.TEMPORAL_EVERY,
    direction: str = typer.Option("both", "--direction",
                                  help="forward, backward or both: with both, frames before the first mask are "
                                       "segmented too, propagating backwards (baselines run forward only)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only result paths (stdout), and errors."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs (a batch skips finished videos otherwise)."),
    engine: str = typer.Option("torch", "--engine", help="torch (PyTorch) or onnx (onnxruntime, needs --onnx-dir)."),
    onnx_dir: Optional[Path] = typer.Option(None, "--onnx-dir", show_default=False,
                                            help="Folder written by `stma export --format onnx` (with --engine onnx)."),
) -> None:
    """Segment the objects of the first-frame mask in every frame of a video.

    Exit codes: 0 success, 1 some videos of a batch failed, 2 bad input (nothing written).
    """
    fmt_list = _parse_formats(formats)
    if method not in METHODS:
        fail(f"--method: unknown method {method!r}; use {', '.join(METHODS)}")
    if engine not in ("torch", "onnx"):
        fail(f"--engine: unknown engine {engine!r}; use torch or onnx")
    if engine == "onnx" and (onnx_dir is None or method != "stma"):
        fail("--engine onnx: pass --onnx-dir with a `stma export --format onnx` folder (and --method stma)")
    if engine == "onnx" and checkpoint is not None:
        fail("--checkpoint: not used with --engine onnx (the export folder holds its model); leave it out, "
             "or re-export with `stma export --checkpoint FILE`")
    if engine == "onnx" and device not in ("auto", "cpu"):
        fail(f"--device: --engine onnx runs on CPU, not {device!r}; use --device cpu (or --engine torch)")
    settings = _settings.settings_from_flags(size, top_k, spatial_capacity, spatial_every, temporal_capacity,
                                             temporal_every)
    try:
        way = Direction(direction)
    except ValueError:
        fail(f"--direction: unknown direction {direction!r}; use forward, backward or both")
    if method == "stma" and engine == "torch":
        device = _check_device(device)
    jobs, batch = _find_jobs(input_path, mask, mask_dir, out)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1:
        jobs = jobs[rank::world]
    created_out = not out.exists()
    try:
        ensure_writable_dir(out)
    except StmaOutputError as exc:
        fail(exc)
    try:
        _run_jobs(jobs, batch, fmt_list, out, overwrite, quiet, method, checkpoint, device, settings,
                  onnx_dir if engine == "onnx" else None, way)
    finally:
        if created_out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a run that wrote nothing leaves nothing behind


def _run_jobs(jobs: list[Job], batch: bool, fmt_list: list[str], out: Path, overwrite: bool, quiet: bool,
              method: str, checkpoint: Path | None, device: str, settings: dict[str, int | None],
              onnx_dir: Path | None = None, direction: Direction = Direction.FORWARD) -> None:
    """Runs every job in order, printing result paths as they finish and the batch summary at the end."""
    console = stderr_console()
    factory: list[Callable[[], Propagator]] = []

    def propagator() -> Propagator:
        if not factory:  # the model loads once, and only if a video needs it
            try:
                if onnx_dir is not None:
                    from stma_core.inference.onnx_session import make_onnx_propagator_factory

                    factory.append(make_onnx_propagator_factory(onnx_dir, **settings))
                else:
                    factory.append(make_propagator_factory(method, str(checkpoint) if checkpoint else None,
                                                           device, settings=settings))
            except (StmaInputError, ValueError, OSError) as exc:
                raise _Stop(exc, EXIT_BAD_INPUT) from exc
        return factory[0]()

    outcomes: list[Outcome] = []
    seen: set[str] = set()
    try:
        with frame_progress(console, disable=quiet) as progress:
            for job in jobs:
                outcome = _run_job(job, batch, seen, fmt_list, out, overwrite, propagator, progress, console, quiet,
                                   direction)
                outcomes.append(outcome)
                for path in outcome.paths:
                    typer.echo(str(path))
    except _Stop as stop:
        fail(stop.args[0], stop.code)
    if batch and not quiet:
        console.print(_summary(outcomes))
    if any(o.status == "failed" for o in outcomes):
        raise typer.Exit(EXIT_SOME_FAILED)


def _run_job(job: Job, batch: bool, seen: set[str], formats: list[str], out: Path, overwrite: bool,
             propagator: Callable[[], Propagator], progress: Progress, console: Console, quiet: bool,
             direction: Direction = Direction.FORWARD) -> Outcome:
    """One video: bad input ends the command (exit 2) for a single video, or is recorded in a batch."""
    start = time.perf_counter()
    try:
        if job.name in seen:
            raise StmaInputError(f"{job.path}: another input is also named {job.name!r}; rename one of them")
        seen.add(job.name)
        paths = output_paths(out, job.name, formats)
        todo = [f for f, p in paths.items() if overwrite or not p.exists()]
        if not todo and batch:
            return Outcome(job.name, "skipped", paths=list(paths.values()))
        if len(todo) < len(formats) and not batch:
            existing = next(p for f, p in paths.items() if f not in todo)
            raise StmaOutputError(f"{existing}: output already exists; "
                                  "pass --overwrite to replace it or choose another --out")
        source = open_frames(job.path)
        masks, loaded = _load_masks(job, source)
        _report_masks(console, loaded, quiet)
        prop = propagator()
        with VideoWriter(out, job.name, todo, source.size, source.fps, overwrite=overwrite) as writer:
            frames = _segment_video(source, masks, prop, writer, progress, direction)
        seconds = time.perf_counter() - start
        if progress.disable and not quiet:  # no live bar (not a terminal): one plain line per video
            info(console, f"{job.name}: {frames} frames in {seconds:.1f} s ({frames / seconds:.1f} frames/s)")
        return Outcome(job.name, "done", frames, seconds, list(paths.values()))
    except _Stop:
        raise
    except (StmaInputError, StmaOutputError) as exc:
        if not batch:
            raise _Stop(exc, EXIT_BAD_INPUT) from exc
        print_error(exc)
        return Outcome(job.name, "failed", error=one_line(exc))
    except Exception as exc:  # noqa: BLE001 - a batch must go on with the other videos
        message = f"{job.path}: segmentation failed ({type(exc).__name__}: {exc}); rerun, or report a bug with this line"
        if not batch:
            raise _Stop(message, EXIT_SOME_FAILED) from exc
        print_error(message)
        return Outcome(job.name, "failed", error=one_line(exc))


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
