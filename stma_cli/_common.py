"""CLI plumbing shared by commands: one-line errors, warnings and a frames/s progress bar, all on stderr.

stdout is kept for results (paths), so commands can be used in pipes; everything for humans goes to
stderr. Bad input exits with code 2 and exactly one line: `error: <file>: <what is wrong>; <fix>`.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.text import Text

EXIT_BAD_INPUT = 2
EXIT_SOME_FAILED = 1


def one_line(message: object) -> str:
    """Collapses a message to one line (tool output such as ffmpeg's may span several)."""
    return " ".join(str(message).split())


def print_error(message: object) -> None:
    """Writes `error: <message>` as one plain line to stderr (plain: rich would wrap long paths)."""
    sys.stderr.write(f"error: {one_line(message)}\n")
    sys.stderr.flush()


def fail(message: object, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Prints the one-line error and exits (2 = bad input, the default)."""
    print_error(message)
    raise typer.Exit(code)


def stderr_console() -> Console:
    """Console for humans; it looks up sys.stderr at write time, so test runners capture it."""
    return Console(stderr=True, soft_wrap=True)


def warn(console: Console, message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {escape(one_line(message))}")


def info(console: Console, message: str) -> None:
    console.print(escape(one_line(message)))


class RateColumn(ProgressColumn):
    """Frames per second of the task (rich's own speed column is for bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- frames/s" if speed is None else f"{speed:.1f} frames/s", style="progress.data.speed")


def frame_progress(console: Console, disable: bool) -> Progress:
    """Live bar with frame counts, frames/s and time left on a terminal; `disable` for --quiet.

    Off when stderr is not a terminal (logs, pipes): a live display cannot redraw there, and
    commands print a plain line per finished item instead (see `Progress.disable`).
    """
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(), TimeRemainingColumn(),
        console=console, disable=disable or not console.is_terminal,
        redirect_stdout=sys.stdout.isatty(),  # results piped from stdout must not be diverted to stderr
    )
