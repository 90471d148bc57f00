"""Loss and learning-rate curves of a run (OUT/curves.png), redrawn from log.jsonl at each checkpoint.

Uses matplotlib's object API with the Agg canvas, so no pyplot global state or display is touched.
"""

from __future__ import annotations

import json
from pathlib import Path

from stma_core.io.atomic import atomic_write
from stma_core.io.plotting import glyph_warnings_ignored


def read_log(path: Path) -> list[dict]:
    """Training records of log.jsonl (lines with a loss) by step; a step logged twice (a run resumed
    before its log was truncated) keeps its last line; a torn last line is skipped."""
    records: dict[int, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "loss" in record and "step" in record:
                records[record["step"]] = record
    return [records[step] for step in sorted(records)]


def smooth(values: list[float], fraction: float = 0.05) -> list[float]:
    """Trailing mean over a window of `fraction` of the points (at least 1)."""
    window = max(1, int(len(values) * fraction))
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def write_curves(log_path: Path, png_path: Path) -> bool:
    """Writes the plot atomically; False when matplotlib is not installed or there is nothing to plot."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return False
    records = read_log(log_path)
    if not records:
        return False
    steps = [r["step"] for r in records]
    fig = Figure(figsize=(8, 5.5), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_lr = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax_loss.plot(steps, [r["loss"] for r in records], ".", ms=3, alpha=0.4, label="loss at the logged step")
    ax_loss.plot(steps, smooth([r.get("loss_mean", r["loss"]) for r in records]), "-", lw=1.5,
                 label="running mean")
    ax_loss.set_ylabel("loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(loc="upper right", fontsize=8)
    ax_lr.plot(steps, [r["lr"] for r in records], "-", color="tab:green")
    ax_lr.set_yscale("log")
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("step")
    ax_lr.grid(alpha=0.3)
    fig.suptitle(f"{log_path.parent.name}: step {steps[-1]}")
    with glyph_warnings_ignored():  # a run folder named in a script the font lacks
        fig.tight_layout()
        atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png"))
    return True
