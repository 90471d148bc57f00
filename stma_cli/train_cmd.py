"""`stma train`: the training recipe with checkpoints, exact resume and JSON-lines logs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from stma_core.errors import StmaInputError


def train(
    config: Path = typer.Option(..., "--config", help="Training config YAML (see configs/)."),
    data: Path = typer.Option(..., "--data", help="Dataset root in DAVIS layout (JPEGImages/, Annotations/, ImageSets/)."),
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoints, log.jsonl, train_config.json."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/state.pt exactly where it stopped."),
    until: Optional[int] = typer.Option(None, "--until", help="Stop after this step (resume later with --resume)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Where cached trunk features go (default OUT/cache)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Train STMA on video sequences in DAVIS layout."""
    from stma_core.training.run import prepare_trainer

    err = Console(stderr=True)
    try:
        trainer = prepare_trainer(config, data, out, resume=resume, cache_dir=cache_dir,
                                  log=None if quiet else err.print)
    except StmaInputError as exc:
        err.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(2)
    total = trainer.cfg.steps if until is None else min(until, trainer.cfg.steps)
    if quiet:
        trainer.run(until=total)
    else:
        columns = [TextColumn("train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]} it/s"),
                   TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn()]
        with Progress(*columns, console=err) as progress:
            task = progress.add_task("train", total=total, completed=trainer.step, rate="-", loss="-")

            def on_step(step: int, record: dict) -> None:
                fields = {"loss": f"{record['loss']:.4f}"}
                if "it_per_s" in record:
                    fields["rate"] = f"{record['it_per_s']:.3f}"
                progress.update(task, completed=step, **fields)

            trainer.run(until=total, on_step=on_step)
    typer.echo(str(out / "model.safetensors"))
