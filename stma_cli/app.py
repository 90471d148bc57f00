"""The `stma` command: one Typer app; each command lives in its own module."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import warnings
from typing import Any, Iterator

# Idle OpenMP workers sleep instead of spinning: on a busy 2-core machine spinning made inference
# 4-6x slower (docs/BENCHMARKS.md). Must be set before torch is imported; a user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import click  # noqa: E402
import typer  # noqa: E402
from typer.core import TyperGroup  # noqa: E402

from stma_cli import eval_cmd, export_cmd, segment_cmd, train_cmd  # noqa: E402
from stma_cli._common import (Refusal, click_errors, command_starts, fail, json_was_printed,  # noqa: E402
                              stderr_console, usage_error_line, warn)

# Commands with --json: what each prints on stdout when it is refused before writing its own summary
# (a bad option, a usage error), so a script parsing stdout never gets nothing.
JSON_REFUSALS = {"segment": segment_cmd.refused_json, "eval": eval_cmd.refused_json}


@contextlib.contextmanager
def _one_line_usage_errors(ctx: click.Context | None = None) -> Iterator[None]:
    """Turns click's usage errors into the one-line error (ctx: the group's, naming the command being parsed)."""
    try:
        yield
    except click_errors.NoArgsIsHelpError:  # a bare `stma`: click shows the help
        raise
    except click_errors.UsageError as exc:
        command = getattr(ctx, "invoked_subcommand", None)
        fail(usage_error_line(exc, f"stma {command}" if command else "stma"))


class StmaGroup(TyperGroup):
    """The `stma` group: click's usage errors, in any command's arguments, are one `error:` line and exit 2
    (README), not click's multi-line usage box; errors in the group's own arguments and in a command's alike."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        with _one_line_usage_errors():
            return super().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        args = [*getattr(ctx, "_protected_args", ()), *ctx.args]  # the group's invoke consumes them
        command_starts()
        try:
            with _one_line_usage_errors(ctx):
                return super().invoke(ctx)
        except Refusal as refusal:
            given = args[:args.index("--")] if "--" in args else args
            refused_json = JSON_REFUSALS.get(given[0] if given else "")
            if refused_json is not None and "--json" in given and not json_was_printed():
                refused_json(refusal.line)
            raise


app = typer.Typer(
    name="stma",
    cls=StmaGroup,
    help="Semi-supervised video object segmentation with STMA.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"stma {version('stma')}")
        except PackageNotFoundError:
            typer.echo("stma (not installed)")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Semi-supervised video object segmentation with STMA."""
    if not getattr(warnings.showwarning, "stma_hook", False):
        warnings.showwarning = _user_warnings_as_lines(warnings.showwarning)


def _user_warnings_as_lines(previous: Any) -> Any:
    """A library's UserWarning (the session's: an object smaller than a network cell, ...) is one
    `warning:` line on stderr like the CLI's own, not Python's two lines with a source file and line;
    other warnings go where they went before (Python's default, or a test runner's record)."""
    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: Any = None, line: str | None = None) -> None:
        if issubclass(category, UserWarning):
            warn(stderr_console(), str(message))
        else:
            previous(message, category, filename, lineno, file, line)

    show.stma_hook = True  # type: ignore[attr-defined]
    return show


app.command("segment")(segment_cmd.segment)
app.command("eval")(eval_cmd.evaluate)
app.command("train")(train_cmd.train)
app.command("export", cls=export_cmd.ExportCommand)(export_cmd.export)


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM (kill, a job scheduler) stops like Ctrl-C: partial outputs are removed on the way out."""
    raise KeyboardInterrupt


def _finishing() -> None:
    """The command has ended (its outputs are complete or cleaned up, its exit code decided): Ctrl-C or
    SIGTERM from now on, during interpreter shutdown (thread joins, library teardown, about a second),
    must not turn that code into death by signal (-2/-15) with nothing said."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        app()
    except SystemExit as exc:
        _finishing()
        if exc.code != 130:  # typer's exit for a KeyboardInterrupt (Ctrl-C, or SIGTERM through _terminate)
            raise
        from stma_cli._common import EXIT_SOME_FAILED, json_was_printed, print_error

        print_error("interrupted (Ctrl-C or SIGTERM); unfinished outputs were removed, finished ones are kept")
        args = sys.argv[1:]
        given = args[:args.index("--")] if "--" in args else args
        command = next((a for a in given if not a.startswith("-")), "")
        if "--json" in given and command in JSON_REFUSALS and not json_was_printed():
            try:  # a script parsing stdout gets a document saying so, not nothing
                JSON_REFUSALS[command]("interrupted (Ctrl-C or SIGTERM)")
            except BrokenPipeError:
                pass
        sys.exit(EXIT_SOME_FAILED)  # README: an interrupted run exits with 1
    except BrokenPipeError:
        from stma_cli._common import stdout_closed

        try:
            stdout_closed()
        except typer.Exit as exc:
            sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
