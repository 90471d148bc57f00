"""Evaluation outputs: the official CSV pair, a rich terminal table and a JSON object for pipes.

CSV names, columns and number format ("%.3f", fractions not percentages) follow the official
davis2017-evaluation script, so existing tooling that reads its files reads ours.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from stma_core.errors import StmaOutputError
from stma_core.io.atomic import atomic_write
from stma_core.eval.scoring import GLOBAL_COLUMNS, EvalResult

PER_SEQUENCE_COLUMNS = ("Sequence", "J-Mean", "F-Mean")


def _fmt(value: float) -> str:
    """As pandas' to_csv(float_format='%.3f'): NaN becomes an empty field."""
    return "" if math.isnan(value) else f"{value:.3f}"


def csv_paths(out_dir: Path, split: str) -> tuple[Path, Path]:
    return out_dir / f"global_results-{split}.csv", out_dir / f"per-sequence_results-{split}.csv"


def _csv(rows: Any) -> str:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    return text.getvalue()


def _write(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, newline=""))  # the rows end in \n as written


def write_csvs(result: EvalResult, out_dir: str | Path) -> tuple[Path, Path]:
    """Writes global_results-<split>.csv and per-sequence_results-<split>.csv (replacing old ones)."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        global_path, per_seq_path = csv_paths(out_dir, result.split)
        scores = result.global_scores()
        # each file replaces the old one in one rename: a reader (or a run stopped halfway) never sees half a CSV
        _write(global_path, _csv([GLOBAL_COLUMNS, [_fmt(scores[c]) for c in GLOBAL_COLUMNS]]))
        _write(per_seq_path, _csv([PER_SEQUENCE_COLUMNS, *([obj.name, _fmt(obj.j_stats[0]), _fmt(obj.f_stats[0])]
                                                            for obj in result.objects)]))
    except OSError as exc:
        raise StmaOutputError(f"cannot write results CSVs to {out_dir} ({exc.strerror}); pass --out DIR") from None
    return global_path, per_seq_path


def _num(value: float) -> float | None:
    """JSON has no NaN: an undefined statistic is null."""
    return None if math.isnan(value) else float(value)


def result_json(result: EvalResult, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """One JSON-ready object: global row, per-object statistics, and where the numbers came from."""
    objects = []
    for obj in result.objects:
        (jm, jr, jd), (fm, fr, fd) = obj.j_stats, obj.f_stats
        objects.append({"sequence": obj.sequence, "object": obj.object_id, "frames": len(obj.frames),
                        "J-Mean": _num(jm), "J-Recall": _num(jr), "J-Decay": _num(jd),
                        "F-Mean": _num(fm), "F-Recall": _num(fr), "F-Decay": _num(fd)})
    out: dict[str, Any] = {
        "split": result.split,
        "gt_root": str(result.gt_root),
        "pred_dir": str(result.pred_dir),
        "sequences": len(result.sequences),
        "objects": len(result.objects),
        "global": {k: _num(v) for k, v in result.global_scores().items()},
        "per_object": objects,
        "seconds": round(result.seconds, 3),
    }
    if extra:
        out.update(extra)
    return out


def _pct(value: float) -> str:
    return "—" if math.isnan(value) else f"{100 * value:.1f}"


def render_table(result: EvalResult, console: Console, title: str | None = None) -> None:
    """Per-object J/F/J&F and the global row, in percent (the unit papers report)."""
    table = Table(title=title or f"DAVIS {result.split}: {len(result.objects)} objects, "
                                 f"{len(result.sequences)} sequences (%)")
    longest = max((len(o.name) for o in result.objects), default=6)
    # Numbers never shrink or wrap; on a narrow terminal the object names fold instead.
    table.add_column("Object", overflow="fold", min_width=6)
    for name in ("J&F\nMean", "J\nMean", "F\nMean", "J\nRecall", "F\nRecall", "J\nDecay", "F\nDecay"):
        table.add_column(name, justify="right", no_wrap=True, min_width=5)
    for obj in result.objects:
        (jm, jr, jd), (fm, fr, fd) = obj.j_stats, obj.f_stats
        table.add_row(obj.name, _pct((jm + fm) / 2), _pct(jm), _pct(fm), _pct(jr), _pct(fr), _pct(jd), _pct(fd))
    g = result.global_scores()
    table.add_section()
    table.add_row("[bold]Global[/bold]", f"[bold]{_pct(g['J&F-Mean'])}[/bold]", _pct(g["J-Mean"]),
                  _pct(g["F-Mean"]), _pct(g["J-Recall"]), _pct(g["F-Recall"]), _pct(g["J-Decay"]),
                  _pct(g["F-Decay"]))
    console.print(table)
