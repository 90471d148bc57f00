"""The `stma` command: one Typer app; each command lives in its own module."""

from __future__ import annotations

import typer

from stma_cli import eval_cmd, export_cmd, segment_cmd, train_cmd

app = typer.Typer(
    name="stma",
    help="Semi-supervised video object segmentation with STMA.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("segment")(segment_cmd.segment)
app.command("eval")(eval_cmd.evaluate)
app.command("train")(train_cmd.train)
app.command("export")(export_cmd.export)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
