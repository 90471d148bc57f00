"""`stma export`: the model as stateless ONNX or TorchScript graphs plus manifest.json.

    stma export --format onnx --out export/ [--checkpoint FILE] [--size 480 854] [--objects 5]
    stma segment --engine onnx --export-dir export/ ...     (--engine torchscript for --format torchscript)

Graphs: frame (image -> tokens, f16, f8, f4), value_<n> (features + n masks -> ID values) and
step_<n> (STML + memory readout + decoder at fixed memory sizes -> probabilities, key, usage) for
n = 1..--objects. Memory management stays in host code (VideoSession with ExportedEngine, stma_core.inference.onnx_session).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Optional

import click
import typer
from typer.core import TyperCommand

from stma_cli import _settings
from stma_cli._common import check_output_dir, fail, info, note_run_folder, stderr_console
from stma_core.errors import StmaInputError, StmaOutputError


def default_export_size(checkpoint: Optional[Path]) -> tuple[int, int]:
    """(H, W) that `stma segment` (default --size) processes a 16:9 video at with this checkpoint, so the
    default ONNX run matches the default PyTorch run."""
    from stma_core.checkpoint import DEFAULT_CHECKPOINT, read_config, recommended_inference
    from stma_core.config import resolve_inference_config
    from stma_core.inference.session import processing_size

    try:
        _, metadata = read_config(checkpoint or DEFAULT_CHECKPOINT)
    except StmaInputError as exc:
        fail(exc)
    short = resolve_inference_config(recommended_inference(metadata)).size  # the one settings resolver
    return processing_size(short, round(short * 16 / 9), short)


def _check_size_args(args: list[str]) -> None:
    """--size takes two numbers H W: click would read `--size 288 --out x` as H=288, W='--out' and report
    "'--out' is not a valid int" (or that --size needs 2 arguments); say what --size wants instead."""
    for i, arg in enumerate(args):
        if arg == "--":
            return
        if arg != "--size" and not arg.startswith("--size="):
            continue
        attached = arg.split("=", 1)[1:]  # --size=288 512 is click's spelling of --size 288 512
        values = (attached + args[i + 1:i + 3])[:2]
        if len(values) == 2 and all(v.isdigit() for v in values):
            continue
        if len(values) == 2 and values[1].startswith("-"):
            values = values[:1]  # the next option, taken as the width
        if not values or values[0].startswith("--"):
            problem = "no numbers given"
        elif len(values) == 1 and values[0].isdigit():
            problem = f"one number given ({values[0]})"
        else:
            problem = f"{' '.join(values)!r} is not two numbers"
        fail(f"--size: {problem}; --size takes two numbers H W, e.g. --size 288 512")


class ExportCommand(TyperCommand):
    """`stma export` with a one-line error for a --size that is not two numbers (see _check_size_args)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        _check_size_args(args)
        return super().parse_args(ctx, args)


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def export(
    out: Path = typer.Option(..., "--out", help="Folder to create with the graphs and manifest.json."),
    fmt: str = typer.Option("onnx", "--format", help="onnx (run with onnxruntime) or torchscript."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Model file; default: the shipped model."),
    size: Optional[tuple[int, int]] = typer.Option(None, "--size", metavar="H W", show_default=False,
                                                   help="Frame size the model processes (videos must scale to it: "
                                                        "`--size 480 854` fits 16:9 videos of 480p and larger). "
                                                        "Default: the size `stma segment` processes 16:9 videos at "
                                                        "with this checkpoint (480 853 for the shipped model)."),
    objects: int = typer.Option(5, "--objects", help="Most objects per video (graphs for 1..N are written)."),
    memory_frames: Optional[int] = typer.Option(None, "--memory-frames", metavar="T",
                                                help="Temporal-memory frames the step graph holds "
                                                     "(default: capacity 8 + the pinned first frame)."),
    refs: Optional[int] = typer.Option(None, "--refs", metavar="M",
                                       help="Spatial-memory reference frames the step graph holds "
                                            "(default: capacity 2 + the pinned first frame)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", show_default="the checkpoint's",
                                        help="Memory readout keeps the k best matches per position (0 = all); "
                                             "fixed in the step graphs."),
    kernel_sigma: Optional[int] = typer.Option(None, "--kernel-sigma", show_default="the checkpoint's",
                                               help="Memory readout kernel sigma in 16-pixel cells (0 = off); "
                                                    "fixed in the step graphs."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the output path."),
) -> None:
    """Export the model as stateless graphs for onnxruntime or TorchScript (memory handled by the host)."""
    from stma_core.export.exporter import ExportVerificationError, export_model

    console = stderr_console()
    _settings.settings_from_flags(top_k=top_k, kernel_sigma=kernel_sigma)  # exits 2 naming a bad flag
    fmt = fmt.lower()
    if fmt not in ("onnx", "torchscript"):
        fail(f"--format: unknown format {fmt!r}; use onnx or torchscript")
    if fmt == "onnx":
        missing = [m for m in ("onnx", "onnxruntime") if not _importable(m)]
        if missing:
            fail(f"--format onnx: {' and '.join(missing)} not installed; install the onnx extra: "
                 "pip install \"stma[onnx]\" (or use --format torchscript)")
    check_output_dir(out)
    if overwrite:  # --overwrite replaces the whole folder: never the model being exported, nor the current folder
        from stma_core.checkpoint import DEFAULT_CHECKPOINT
        from stma_core.io.atomic import check_not_replacing

        try:
            check_not_replacing(out, [("--checkpoint", checkpoint if checkpoint is not None else DEFAULT_CHECKPOINT)],
                                "the export", "pass --out with a folder of its own, e.g. export/")
        except StmaOutputError as exc:
            fail(exc)
    note_run_folder(checkpoint, quiet, console)
    if size is None:
        size = default_export_size(checkpoint)
    try:
        manifest = export_model(checkpoint, out, fmt, size=size, objects=objects, memory_frames=memory_frames,
                                refs=refs, overwrite=overwrite, top_k=top_k, kernel_sigma=kernel_sigma)
    except (StmaInputError, StmaOutputError) as exc:
        fail(exc)
    except ExportVerificationError as exc:
        fail(exc, code=1)
    if not quiet:
        h, w = manifest.frame_size
        info(console, f"exported {len(manifest.graphs)} {fmt} graphs for {w}x{h} frames, up to {manifest.objects} "
                      f"objects, {manifest.memory_frames} memory frames, {manifest.references} references")
    typer.echo(str(out))
