"""The `stma` command: one Typer app; each command lives in its own module."""

from __future__ import annotations

import os

# Idle OpenMP workers sleep instead of spinning: on a busy 2-core machine spinning made inference
# 4-6x slower (docs/BENCHMARKS.md). Must be set before torch is imported; a user's value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer  # noqa: E402

from stma_cli import eval_cmd, export_cmd, segment_cmd, train_cmd  # noqa: E402

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
