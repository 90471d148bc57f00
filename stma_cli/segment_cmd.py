"""`stma segment`: propagate first-frame masks through a video, a frame folder or a folder of videos.

Bad input stops a single video with exit code 2 and one `error:` line before any compute is spent;
in a batch a failing video is reported and the others still run (exit code 1 at the end). Results are
written atomically, so finished videos can be skipped when a batch is rerun.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from stma_cli._common import (EXIT_BAD_INPUT, EXIT_SOME_FAILED, check_device, fail, frame_progress,
                              info, one_line, print_error, stderr_console, stdout_closed, warn)
from stma_core.errors import StmaInputError, StmaOutputError
from stma_core.inference.factory import METHODS, make_propagator_factory
from stma_core.inference.propagator import Propagator
from stma_core.io.atomic import ensure_writable_dir
from stma_core.io.frames import FrameFolderSource, FrameSource, open_frames, scan_folder
from stma_core.io.masks import LoadedMask, fit_mask, keep_new_objects, load_mask, load_mask_folder
from stma_core.io.writers import FORMATS, VideoWriter, output_paths

DEVICES = ("auto", "cpu", "cuda", "mps")


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
    objects: int = 0
    bad_input: bool = False


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
    return check_device(device)


def _rank_device(device: str) -> str:
    """Under torchrun each process uses its own GPU (cuda:LOCAL_RANK)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or device not in ("cuda", "auto"):
        return device
    import torch

    if not torch.cuda.is_available():
        return device
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


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
        name = input_path.name if input_path.is_dir() else input_path.stem
        job = Job(input_path, name)
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
    paths = [p for p in contents.inputs
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
        if mask is None and mask_dir is None:
            beside = contents.masks.get(name)
            if beside is None:
                fail(f"--mask: no mask given and {path} has no {name}.png beside it; pass --mask FOLDER holding "
                     "<video>.png, or --mask-dir with <video>/ annotation folders")
            jobs.append(Job(path, name, mask_file=beside))
            continue
        jobs.append(Job(path, name, mask_file=mask / f"{name}.png" if mask is not None else None,
                        mask_dir=mask_dir / name if mask_dir is not None else None))
    return jobs, True


def _mask_beside(input_path: Path) -> Path:
    """`clip.png` or `clip_mask.png` beside `clip.mp4` (or beside a frame folder `clip/`) when no mask is given."""
    stem = input_path.name if input_path.is_dir() else input_path.stem
    for candidate in (input_path.with_name(f"{stem}.png"), input_path.with_name(f"{stem}_mask.png")):
        if candidate.is_file() and candidate != input_path:
            return candidate
    fail(f"--mask: no mask given and no {stem}.png beside {input_path}; pass --mask FIRST_FRAME.png "
         "or --mask-dir ANNOTATION_FOLDER")


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
    """-> (frame name -> id mask, each object given once), and the loaded masks for reporting."""
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
        beyond = [name for name in order if int(name) >= max(source.frame_count, getattr(source, "packets", 0))]
        if beyond:
            raise StmaInputError(f"{loaded[beyond[0]].path}: annotates frame {beyond[0]} but {source.path} has "
                                 f"{source.frame_count} frames; remove masks past the last frame")
    given = keep_new_objects({name: m.ids for name, m in loaded.items()}, order)
    return given, list(loaded.values())


def _report_masks(console: Console, masks: list[LoadedMask], quiet: bool) -> None:
    """Warnings always reach stderr (one line each); the id mapping is a note that --quiet hides."""
    for mask in masks:
        for message in mask.warnings:
            warn(console, message)
        if mask.mapping and not quiet:
            pairs = ", ".join(f"{source} -> {object_id}" for object_id, source in sorted(mask.mapping.items()))
            info(console, f"{mask.path}: {mask.kind} mask, object ids: {pairs}")


# ---- one video -------------------------------------------------------------------------------------
def _segment_video(source: FrameSource, masks: dict[str, np.ndarray], propagator: Propagator,
                   writer: VideoWriter, progress: Progress) -> int:
    """Runs the propagator over every frame in order; returns the number of frames.

    A failed video's bar is removed, so the error line is all that is left of it.
    """
    task = progress.add_task(escape(source.name), total=source.frame_count)
    count = 0
    unused = set(masks)
    try:
        for name, frame in source:
            unused.discard(name)
            result = propagator.step(frame, masks.get(name))
            if result.shape != frame.shape[:2]:
                raise RuntimeError(f"propagator returned a {result.shape} mask for a {frame.shape[:2]} frame")
            writer.write(name, frame, np.array(result, dtype=np.uint8))  # a copy: the writer thread owns it
            count += 1
            progress.update(task, advance=1, total=max(count, source.frame_count))
        if count == 0:
            raise StmaInputError(f"{source.path}: no frame could be decoded; re-encode the video")
        if unused:  # a mask for a frame the video does not have would silently drop its objects
            first = min(unused, key=lambda n: (len(n), n))
            raise StmaInputError(f"{source.path}: a mask annotates frame {first} but the video has {count} frames "
                                 "(0-based names); remove masks past the last frame")
    except BaseException:
        progress.remove_task(task)
        raise
    progress.update(task, total=count, completed=count)
    return count


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
                                                 "later frames; each object is taken from its first annotated "
                                                 "frame). For a folder of videos: a folder of <video>/ folders."),
    out: Path = typer.Option(Path("stma_out"), "--out", "-o", help="Output folder."),
    formats: list[str] = typer.Option(["png"], "--format", "-f",
                                      help="png (DAVIS palette PNGs in OUT/<video>/), rle (OUT/<video>.rle.json) or "
                                           "overlay (OUT/<video>.overlay.mp4); repeat for several."),
    method: str = typer.Option("stma", "--method", help="stma (the model), copy or flow (baselines)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", show_default=False,
                                              help="Model checkpoint (.safetensors); default: the shipped model."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    size: Optional[int] = typer.Option(None, "--size", show_default=False,
                                       help="Short side the model works at; default: what the checkpoint recommends "
                                            "(outputs always keep the input size)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or notes: stdout gets only result paths; warnings and errors stay on stderr."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs (a batch skips finished videos otherwise)."),
    engine: str = typer.Option("torch", "--engine", help="torch (PyTorch) or onnx (onnxruntime, needs --onnx-dir)."),
    onnx_dir: Optional[Path] = typer.Option(None, "--onnx-dir", show_default=False,
                                            help="Folder written by `stma export --format onnx` (with --engine onnx)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON summary on stdout (videos, frames, objects, "
                                                       "seconds, outputs) instead of result paths."),
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
    device = _rank_device(_check_device(device))
    if size is not None and size < 16:
        fail(f"--size: {size} is too small; use a short side of at least 16 (or leave it out)")
    jobs, batch = _find_jobs(input_path, mask, mask_dir, out)
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world > 1:
        jobs = jobs[rank::world]
    created_out = not out.exists()
    if out.exists() and not out.is_dir():
        fail(f"{out}: --out is a file, not a folder; pass --out with a folder path")
    try:
        ensure_writable_dir(out)
    except StmaOutputError as exc:
        fail(exc)
    try:
        _run_jobs(jobs, batch, fmt_list, out, overwrite, quiet, method, checkpoint, device, size,
                  onnx_dir if engine == "onnx" else None, as_json)
    finally:
        if created_out and out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # a run that wrote nothing leaves nothing behind


def _run_jobs(jobs: list[Job], batch: bool, fmt_list: list[str], out: Path, overwrite: bool, quiet: bool,
              method: str, checkpoint: Path | None, device: str, size: int | None,
              onnx_dir: Path | None = None, as_json: bool = False) -> None:
    """Runs every job in order, printing result paths as they finish and the batch summary at the end."""
    console = stderr_console()
    factory: list[Callable[[], Propagator]] = []

    def propagator() -> Propagator:
        if not factory:  # the model loads once, and only if a video needs it
            try:
                if onnx_dir is not None:
                    from stma_core.inference.onnx_session import make_onnx_propagator_factory

                    factory.append(make_onnx_propagator_factory(onnx_dir))
                else:
                    factory.append(make_propagator_factory(method, str(checkpoint) if checkpoint else None,
                                                           device, size))
            except (StmaInputError, ValueError, OSError) as exc:
                raise _Stop(exc, EXIT_BAD_INPUT) from exc
        return factory[0]()

    outcomes: list[Outcome] = []
    seen: set[str] = set()
    start = time.perf_counter()
    try:
        with frame_progress(console, disable=quiet) as progress:
            for job in jobs:
                outcome = _run_job(job, batch, seen, fmt_list, out, overwrite, propagator, progress, console, quiet)
                outcomes.append(outcome)
                if not as_json:
                    for path in outcome.paths:
                        try:
                            typer.echo(str(path))
                        except BrokenPipeError:
                            stdout_closed()
    except _Stop as stop:
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


def _print_json(outcomes: list[Outcome], seconds: float) -> None:
    import json

    payload = {
        "videos": [{"name": o.name, "status": o.status, "frames": o.frames, "objects": o.objects,
                    "seconds": round(o.seconds, 3), "outputs": [str(p) for p in o.paths],
                    **({"error": o.error} if o.error else {})} for o in outcomes],
        "frames": sum(o.frames for o in outcomes),
        "seconds": round(seconds, 3),
        "done": sum(o.status == "done" for o in outcomes),
        "skipped": sum(o.status == "skipped" for o in outcomes),
        "failed": sum(o.status == "failed" for o in outcomes),
    }
    try:
        typer.echo(json.dumps(payload))
    except BrokenPipeError:
        stdout_closed()


def _run_job(job: Job, batch: bool, seen: set[str], formats: list[str], out: Path, overwrite: bool,
             propagator: Callable[[], Propagator], progress: Progress, console: Console, quiet: bool) -> Outcome:
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
            frames = _segment_video(source, masks, prop, writer, progress)
        seconds = time.perf_counter() - start
        if progress.disable and not quiet:  # no live bar (not a terminal): one plain line per video
            info(console, f"{job.name}: {frames} frames in {seconds:.1f} s ({frames / seconds:.1f} frames/s)")
        objects = len({int(i) for m in masks.values() for i in np.unique(m) if i != 0})
        return Outcome(job.name, "done", frames, seconds, list(paths.values()), objects=objects)
    except _Stop:
        raise
    except (StmaInputError, StmaOutputError) as exc:
        if not batch:
            raise _Stop(exc, EXIT_BAD_INPUT) from exc
        print_error(exc)
        return Outcome(job.name, "failed", error=one_line(exc), bad_input=True)
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
