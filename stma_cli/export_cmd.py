"""`stma export`: the model as stateless ONNX or TorchScript graphs plus manifest.json.

    stma export --format onnx --out export/ [--checkpoint FILE] [--size 480 854] [--objects 5]
    stma segment --engine onnx --onnx-dir export/ ...

Graphs: frame (image -> tokens, f16, f8, f4), value_<n> (features + n masks -> ID values) and
step_<n> (STML + memory readout + decoder at fixed memory sizes -> probabilities, key, usage) for
n = 1..--objects. Memory management stays in host code (VideoSession with ExportedEngine, stma_core.inference.onnx_session).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from stma_cli._common import fail, info, stderr_console
from stma_core.errors import StmaInputError, StmaOutputError


def export(
    out: Path = typer.Option(..., "--out", help="Folder to create with the graphs and manifest.json."),
    fmt: str = typer.Option("onnx", "--format", help="onnx (run with onnxruntime) or torchscript."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Model file; default: the shipped model."),
    size: tuple[int, int] = typer.Option((480, 854), "--size", metavar="H W",
                                         help="Frame size the model processes (videos must scale to it: "
                                              "`--size 480 854` fits 16:9 videos of 480p and larger)."),
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
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the output path."),
) -> None:
    """Export the model as stateless graphs for onnxruntime or TorchScript (memory handled by the host)."""
    from stma_core.export.exporter import ExportVerificationError, export_model

    console = stderr_console()
    fmt = fmt.lower()
    try:
        manifest = export_model(checkpoint, out, fmt, size=size, objects=objects, memory_frames=memory_frames,
                                refs=refs, overwrite=overwrite, top_k=top_k)
    except (StmaInputError, StmaOutputError) as exc:
        fail(exc)
    except ExportVerificationError as exc:
        fail(exc, code=1)
    if not quiet:
        h, w = manifest.frame_size
        info(console, f"exported {len(manifest.graphs)} {fmt} graphs for {w}x{h} frames, up to {manifest.objects} "
                      f"objects, {manifest.memory_frames} memory frames, {manifest.references} references")
    typer.echo(str(out))
