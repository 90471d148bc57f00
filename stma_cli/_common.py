"""CLI plumbing shared by commands: one-line errors, warnings and a frames/s progress bar, all on stderr.

stdout is kept for results (paths), so commands can be used in pipes; everything for humans goes to
stderr. Bad input exits with code 2 and exactly one line: `error: <file>: <what is wrong>; <fix>`.
"""

from __future__ import annotations

import datetime
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TaskID, TextColumn,
                           TimeRemainingColumn)
from rich.text import Text

try:  # typer 0.28 parses with its own copy of click: its usage errors are that copy's classes
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - a typer that uses click itself
    from click import exceptions as click_errors  # type: ignore[no-redef]

EXIT_BAD_INPUT = 2
EXIT_SOME_FAILED = 1
DEVICES = "auto, cpu, cuda, cuda:N or mps"  # what --device takes (check_device), for help texts and errors alike


_json_printed = [False]


def echo_json(payload: object) -> None:
    """Prints a command's one --json document on stdout; the `stma` group prints one for a run refused before it,
    app.main for one interrupted before it."""
    import json

    _json_printed[0] = True  # before writing: a reader that went away must not get a second document
    echo(json.dumps(payload))


def json_was_printed() -> bool:
    """Whether the command being run printed its --json document (echo_json)."""
    return _json_printed[0]


def command_starts() -> None:
    """A command starts (the `stma` group calls this): no --json document of it was printed yet (tests run
    several commands in one process)."""
    _json_printed[0] = False


def one_line(message: object) -> str:
    """Collapses a message to one line (tool output such as ffmpeg's may span several)."""
    return " ".join(str(message).split())


def print_error(message: object) -> None:
    """Writes `error: <message>` as one plain line to stderr (plain: rich would wrap long paths)."""
    sys.stderr.write(f"error: {one_line(message)}\n")
    sys.stderr.flush()


class Refusal(typer.Exit):
    """What `fail` raises: the exit plus its one line, so the `stma` group can also put it in a --json run's
    stdout (a script reading stdout then never gets nothing), unless the command already printed its
    --json document with the error (json_was_printed)."""

    def __init__(self, line: str, code: int) -> None:
        super().__init__(code)
        self.line = line


def fail(message: object, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Prints the one-line error and exits (2 = bad input, the default).

    A caller that wrote its --json summary with this error first did so through echo_json (see Refusal)."""
    print_error(message)
    raise Refusal(one_line(message), code)


def usage_error_line(exc: click_errors.UsageError, command: str = "stma") -> str:
    """A click usage error (unknown option, a value of the wrong type, a missing or extra argument) as the one
    line `<option>: <problem>; see stma <command> --help`, instead of click's multi-line usage box.

    command: the command being parsed, for errors that carry no context (click's parser raises some so)."""
    names, ctx = [], exc.ctx
    while ctx is not None and ctx.parent is not None:  # the root's name is the program's (python -m ...)
        names.append(ctx.info_name)
        ctx = ctx.parent
    if exc.ctx is not None:
        command = " ".join(["stma", *reversed(names)])
    message = exc.format_message()
    if isinstance(exc, click_errors.NoSuchOption):
        name, message = exc.option_name, "no such option"
        if exc.possibilities:
            message += f" (did you mean {' or '.join(sorted(exc.possibilities))}?)"
    elif isinstance(exc, click_errors.BadParameter) and (exc.param_hint or exc.param) is not None:
        param = exc.param
        name = exc.param_hint if isinstance(exc.param_hint, str) else (
            param.opts[0] if param.param_type_name == "option" else param.human_readable_name)
        if isinstance(exc, click_errors.MissingParameter):
            message = f"this {exc.param_type or param.param_type_name} is required"
        elif exc.message:
            message = exc.message
    elif isinstance(exc, click_errors.BadOptionUsage):
        name = exc.option_name
        message = exc.message.replace(f"Option '{name}' ", "").replace(f"Option {name!r} ", "")
    else:
        name = command
    message = message.rstrip(".")
    if command == "stma segment" and isinstance(exc, click_errors.UsageError) and \
            message.lower().startswith("got unexpected extra argument"):  # `stma segment videos/*.mp4`
        return (f"{name}: {message[:1].lower()}{message[1:]}: INPUT is one video, frame folder or folder of videos; "
                "pass the folder holding the videos (a batch, masks beside them), or run stma segment once per video")
    if ". " in message:  # a suggestion after the problem: "No such command 'x'. Did you mean 'y'?"
        problem, hint = message.split(". ", 1)
        message = f"{problem} ({hint[:1].lower()}{hint[1:]})"
    return f"{name}: {message[:1].lower()}{message[1:]}; see {command} --help"


def check_device(device: str, option: str = "--device") -> str:
    """Validates a --device value against this machine before any work: one line and exit 2 if unusable.

    Accepts auto, cpu, cuda, cuda:N and mps; `gpu` and unknown names get the list of valid ones.
    """
    name = device.strip().lower()
    if name in ("auto", "cpu"):
        return name
    if name not in ("cuda", "mps") and not re.fullmatch(r"cuda:\d+", name):
        hint = " (for an NVIDIA GPU use cuda or cuda:N, on Apple silicon mps)" if name == "gpu" else ""
        fail(f"{option}: unknown device {device!r}{hint}; use {DEVICES}")
    import torch

    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            fail(f"{option} {device}: CUDA is not available on this machine (no NVIDIA GPU or a CPU-only torch); "
                 "use --device cpu or auto")
        count = torch.cuda.device_count()
        if ":" in name and int(name.split(":")[1]) >= count:
            fail(f"{option} {device}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1}); "
                 "pick one of them")
    elif not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        fail(f"{option} {device}: MPS (Apple GPU) is not available on this machine; use --device cpu or auto")
    return name


def refuse_stdout_dash(folder: Path, option: str = "--out") -> None:
    """`--out -` means stdout to users of other tools; stma writes files into a folder, so it is an error (a
    folder named `-` is given by its full path), not a folder silently made in the current directory."""
    if str(folder) == "-":
        fail(f"{option} -: {option} is a folder that files are written into, not stdout (stdout gets the result "
             "paths, or --json); pass a folder path (for a folder named '-', its full path)")


def check_output_dir(folder: Path, option: str = "--out") -> None:
    """An output folder must be creatable and writable before the work starts (a file there is an error)."""
    from stma_core.errors import StmaOutputError
    from stma_core.io.atomic import ensure_writable_dir

    refuse_stdout_dash(folder, option)
    if folder.exists() and not folder.is_dir():
        fail(f"{folder}: {option} is a file, not a folder; pass {option} with a folder path")
    existed = folder.exists()
    new = [f for f in (folder, *folder.parents) if not f.exists()]  # `--out X/csv` creates X too
    try:
        ensure_writable_dir(folder)
    except StmaOutputError as exc:
        fail(str(exc).replace("pass --out", f"pass {option}"))
    if not existed:
        for created in new:  # only proven creatable: nothing is left behind if the command fails later
            try:
                created.rmdir()
            except OSError:
                break


def stdout_closed(error: OSError | None = None) -> NoReturn:
    """stdout's reader went away (`stma ... | head -1`), or stdout cannot be written (`> file` on a full disk,
    an I/O error; `error`): say so on stderr and stop (exit 1)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's final flush must not fail again
    except (OSError, ValueError):
        pass
    if error is None or isinstance(error, BrokenPipeError):
        print_error("stdout was closed by the command reading it (e.g. head); stopped early, "
                    "finished results are complete and unfinished ones were not written")
    else:
        print_error(f"cannot write to stdout ({error.strerror or error}); stopped early, finished results are "
                    "complete and unfinished ones were not written; free space where stdout goes, or redirect it")
    raise typer.Exit(EXIT_SOME_FAILED)


def echo(text: str) -> None:
    """One line of results on stdout; a stdout that cannot take it stops the command (stdout_closed)."""
    try:
        typer.echo(text)
    except OSError as exc:
        stdout_closed(exc)


def stderr_console() -> Console:
    """Console for humans; it looks up sys.stderr at write time, so test runners capture it. No emoji codes:
    messages quote paths and commands verbatim (`-map 0:v:1` is not ✌)."""
    return Console(stderr=True, soft_wrap=True, emoji=False)


def warn(console: Console, message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {escape(one_line(message))}")


def info(console: Console, message: str) -> None:
    console.print(escape(one_line(message)))


class RateColumn(ProgressColumn):
    """Frames per second of the task (rich's own speed column is for bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- frames/s" if speed is None else f"{speed:.1f} frames/s", style="progress.data.speed")


PLAIN_PROGRESS_SECONDS = 5.0
"""Where no live bar can be drawn (stderr is a log or a pipe), a running item's progress line comes this often."""


class _FrameProgress(Progress):
    """rich's Progress; with `plain`, also a line on the console every PLAIN_PROGRESS_SECONDS per running
    task: `name: 1200/3000 frames, 87.4 frames/s, 0:00:20 left` (a long video in a log is not silent)."""

    def __init__(self, *columns: Any, plain: bool = False, **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs)
        self._plain, self._said = plain, {}

    def update(self, task_id: TaskID, **kwargs: Any) -> None:  # type: ignore[override]
        super().update(task_id, **kwargs)
        if not self._plain:
            return
        now = time.monotonic()
        if now - self._said.setdefault(task_id, now) < PLAIN_PROGRESS_SECONDS:
            return
        self._said[task_id] = now
        task = next((t for t in self.tasks if t.id == task_id), None)
        if task is None or task.finished:
            return
        speed = task.speed
        parts = [f"{int(task.completed)}/{int(task.total)} frames" if task.total else f"{int(task.completed)} frames"]
        if speed:
            parts.append(f"{speed:.1f} frames/s")
        if task.time_remaining is not None:
            parts.append(f"{datetime.timedelta(seconds=round(task.time_remaining))} left")
        self.console.print(f"{task.description}: {', '.join(parts)}")


def frame_progress(console: Console, disable: bool) -> Progress:
    """Live bar with frame counts, frames/s and time left on a terminal; `disable` for --quiet.

    Off when stderr is not a terminal (logs, pipes): a live display cannot redraw there, so a plain
    line comes every PLAIN_PROGRESS_SECONDS instead, and commands print a line per finished item
    (see `Progress.disable`).
    """
    return _FrameProgress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(), TimeRemainingColumn(),
        console=console, disable=disable or not console.is_terminal, plain=not disable and not console.is_terminal,
        redirect_stdout=sys.stdout.isatty(),  # results piped from stdout must not be diverted to stderr
    )


def note_run_folder(checkpoint: Path | None, quiet: bool, console: Console | None = None) -> None:
    """Says which file a `--checkpoint RUN` folder stands for (the loaders take RUN/model.safetensors)."""
    from stma_core.checkpoint import RUN_MODEL

    if checkpoint is not None and not quiet and checkpoint.is_dir() and (checkpoint / RUN_MODEL).is_file():
        info(console or stderr_console(), f"note: --checkpoint {checkpoint} is a run folder: using "
                                          f"{checkpoint / RUN_MODEL}")
