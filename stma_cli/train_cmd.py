"""`stma train`: the training recipe with checkpoints, exact resume, JSON-lines logs and loss curves.

Under torchrun (`torchrun --nproc_per_node N -m stma_cli.app train ...`) every process trains a
replica (DistributedDataParallel: nccl on GPUs, gloo on CPU); rank 0 alone prints and writes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from stma_cli._common import check_device, check_output_dir, fail, info, stderr_console
from stma_core.errors import StmaInputError

UNFINISHED = 3  # exit code of a run stopped by --max-minutes before its last step (state saved; --resume)


def _device(name: str) -> str:
    """The one device resolver (stma_core.device): auto, cpu, cuda, cuda:N, mps; under torchrun cuda:LOCAL_RANK."""
    from stma_core.device import resolve_device

    name = check_device(name)  # one line and exit 2 for unknown or absent devices
    try:
        return str(resolve_device(name))
    except ValueError as exc:
        fail(f"--device: {exc}")


def _interrupted_note(trainer, out: Path) -> str:
    """Where an interrupted run can go on from: the last state.pt it saved (every checkpoint_every steps)."""
    saved, every = trainer.saved_step, trainer.cfg.checkpoint_every
    if saved is None:
        return (f"note: interrupted at step {trainer.step}, before the first checkpoint (step {every}): nothing to "
                f"resume; run the same command again to start over in {out}")
    later = f"; steps {saved + 1}-{trainer.step} are trained again" if trainer.step > saved else ""
    return (f"note: interrupted at step {trainer.step}; {out} holds the training state of step {saved}: continue "
            f"with the same command and --resume{later}")


def train(
    config: Path = typer.Option(..., "--config", help="Training config YAML (see configs/)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset root in DAVIS layout (JPEGImages/, Annotations/, "
                                        "ImageSets/); needed except for a static stage on --static-images."),
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoints, log.jsonl, curves.png, train_config.json."),
    stage: Optional[str] = typer.Option(None, "--stage", help="Stage of a multi-stage recipe (its `stages:` "
                                        "section), or static|main to override the config's `stage`."),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="Start from this model.safetensors "
                                             "(e.g. the static stage's); overrides the config's init_from."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/state.pt exactly where it stopped, "
                                "with the run's config (only steps, log_every, checkpoint_every, threads, "
                                "data_threads may change) and data."),
    until: Optional[int] = typer.Option(None, "--until", help="Stop after this step (resume later with --resume)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Wall-time budget in minutes for the "
                                                "steps (data loading not counted): stop at the end of the step "
                                                "that passes it, saving state and model like --until; "
                                                "--resume continues exactly. A run stopped by the budget before "
                                                "its last step exits with code 3 and says so on stderr (also "
                                                "with --quiet)."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Where cached trunk features go (default OUT/cache)."),
    static_images: Optional[Path] = typer.Option(None, "--static-images", help="Static stage: a folder of still "
                                                 "images (e.g. DUTS-TR-Image) instead of DAVIS frames."),
    static_masks: Optional[Path] = typer.Option(None, "--static-masks", help="Static stage: their masks, same file "
                                                "names as .png, each the size of its image (palette/id, soft grey "
                                                "cut at 128, or colours read as segment reads them)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (torchrun: cuda:LOCAL_RANK)."),
    quiet: bool = typer.Option(False, "--quiet", "-q",
                               help="No progress bar or notes (an unfinished run's line stays)."),
) -> None:
    """Train STMA: stage static (synthetic clips from stills) or main (video clips), in DAVIS layout."""
    from stma_core.training import distributed
    from stma_core.training.run import prepare_trainer

    if max_minutes is not None and not max_minutes > 0:
        fail(f"--max-minutes {max_minutes}: the time budget must be a positive number of minutes; pass e.g. "
             "--max-minutes 4")
    if until is not None and until < 1:  # a fresh run trained nothing, yet printed the path of a model never written
        fail(f"--until {until}: the step to stop after must be at least 1; pass e.g. --until 100 (or leave it out "
             "to train all the config's steps)")
    device = _device(device)
    new_run = not (out / "state.pt").exists()
    if not resume or new_run:
        check_output_dir(out)
    if cache_dir is not None:  # a file there was a NotADirectoryError traceback once the data was checked
        check_output_dir(cache_dir, "--cache-dir")
    if distributed.launched_by_torchrun():
        rank, torch_device = distributed.init_from_env(device)
    else:
        rank, torch_device = distributed.current(), device
    err = stderr_console()
    quiet = quiet or not rank.is_main
    trainer = None
    try:
        try:
            trainer = prepare_trainer(config, data, out, resume=resume, cache_dir=cache_dir,
                                      log=None if quiet else (lambda m: info(err, m)), stage=stage,
                                      init_from=init_from, device=torch_device,
                                      static_images=static_images, static_masks=static_masks)
        except StmaInputError as exc:
            if rank.is_main:  # every rank sees the same bad input; one line is enough
                fail(exc)
            raise typer.Exit(2)
        if resume and new_run and not quiet:  # e.g. a mistyped --out: say so rather than silently start over
            info(err, f"note: --resume: no run found in {out} (no state.pt), so a new run starts there")
        total = trainer.cfg.steps if until is None else min(until, trainer.cfg.steps)
        if trainer.step >= total and not quiet:
            limit = f"its final step ({total})" if total == trainer.cfg.steps else f"--until {until}"
            where = f"at {limit}" if trainer.step == total else f"at step {trainer.step}, past {limit}"
            info(err, f"note: the run in {out} is already {where}; nothing was trained")
        deadline = None if max_minutes is None else time.monotonic() + 60.0 * max_minutes
        if quiet:
            finished = trainer.run(until=total, deadline=deadline)
        elif not err.is_terminal:  # logs and pipes: a plain line per log record instead of a live bar
            def log_line(step: int, record: dict) -> None:
                if "it_per_s" in record:
                    info(err, f"step {step}/{total} loss {record['loss_mean']:.4f} lr {record['lr']:.3g} "
                              f"{record['it_per_s']:.3f} it/s")

            finished = trainer.run(until=total, on_step=log_line, deadline=deadline)
        else:
            columns = [TextColumn(f"train {trainer.cfg.stage}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[rate]} it/s"), TextColumn("loss {task.fields[loss]}"),
                       TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
            with Progress(*columns, console=err) as progress:
                task = progress.add_task("train", total=total, completed=trainer.step, rate="-", loss="-")

                def on_step(step: int, record: dict) -> None:
                    fields = {"loss": f"{record.get('loss_mean', record['loss']):.4f}"}
                    if "it_per_s" in record:
                        fields["rate"] = f"{record['it_per_s']:.3f}"
                    progress.update(task, completed=step, **fields)

                finished = trainer.run(until=total, on_step=on_step, deadline=deadline)
    except StmaInputError as exc:  # found while training (static stills read as they are drawn): one line
        if rank.is_main:
            fail(exc)
        raise typer.Exit(2)
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM: say what the run folder holds (also with --quiet)
        if trainer is not None and rank.is_main:
            info(err, _interrupted_note(trainer, out))
        raise
    finally:
        distributed.shutdown()
    if rank.is_main and not finished:  # also with --quiet: the run is unfinished (and exit code 3 says so)
        info(err, f"note: unfinished: time budget of {max_minutes:g} min used up at step {trainer.step}/{total}; "
                  "state and model saved, continue with --resume")
    if rank.is_main:
        typer.echo(str(out / "model.safetensors"))
    if not finished:
        raise typer.Exit(UNFINISHED)
