"""`stma export` (being written; see the issue tracker)."""

import typer


def export() -> None:
    """Not available yet."""
    typer.echo("stma export is not available in this build", err=True)
    raise typer.Exit(2)
