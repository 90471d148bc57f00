"""`stma eval --report DIR`: a self-contained HTML report of one evaluation, or of two side by side.

DIR holds index.html and assets/*.png (plots by matplotlib, thumbnails by Pillow); it opens from the
file system in any browser, with no server, no network and no script needed to read it:

- the global table (percent) of each run, beside reference baselines measured in docs/BASELINES.md;
- per-sequence J&F bars (one bar per run) and the per-sequence numbers (and their difference);
- for each sequence, per-frame J and F curves of every object (solid: first run, dashed: second);
- for each sequence, the worst frames of the first run (lowest mean (J+F)/2 over objects) as
  thumbnails: frame, ground truth, each run's prediction and its difference to the ground truth
  (red: object pixels missed, blue: background or another object's pixels claimed, gray: void).

The folder is written to DIR.partial and renamed when complete; an existing DIR is only replaced
when asked (`overwrite`).
"""

from __future__ import annotations

import datetime as _dt
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from stma_core.errors import StmaOutputError
from stma_core.eval.datasets import frame_image
from stma_core.eval.scoring import GLOBAL_COLUMNS, EvalResult, ObjectResult, read_id_mask
from stma_core.io.atomic import check_not_replacing, commit, partial_path, remove_path, remove_stale_partials
from stma_core.io.frames import natural_key, open_upright
from stma_core.io.palette import DAVIS_PALETTE
from stma_core.io.plotting import glyph_warnings_ignored
from stma_core.io.writers import overlay

WORST_FRAMES = 3
THUMB_WIDTH = 240
RUN_COLORS = ("#1f77b4", "#ff7f0e")

DAVIS16_VAL10 = ("drift-chicane", "motocross-jump", "parkour", "soapbox", "goat", "dog", "car-shadow", "camel",
                 "paragliding-launch", "car-roundabout")
REFERENCE_NOTE = ("measured with `stma eval` on the 10 DAVIS 2016 val sequences of ../shared/data "
                  "(docs/BASELINES.md); comparable only on that split")
REFERENCE_ROWS: tuple[tuple[str, tuple[float, ...]], ...] = (
    # name, GLOBAL_COLUMNS in percent: J&F-Mean, J-Mean, J-Recall, J-Decay, F-Mean, F-Recall, F-Decay
    ("first-frame copy", (25.5, 28.1, 18.2, 22.1, 22.9, 9.8, 18.7)),
    ("OpenCV DIS flow propagation", (45.4, 47.5, 52.6, 37.2, 43.4, 32.7, 34.7)),
    ("STMA lite0 (shipped model)", (76.2, 78.3, 90.4, 6.7, 74.2, 84.2, 3.8)),
)


@dataclass
class Run:
    """One scored prediction folder and the name the report shows for it."""

    label: str
    result: EvalResult


def _pct(value: float) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def _esc(text: object) -> str:
    return html.escape(str(text))


# ---- data helpers ----------------------------------------------------------------------------------
def sequence_scores(result: EvalResult) -> dict[str, float]:
    """Sequence -> J&F mean of its objects (fraction)."""
    out: dict[str, list[float]] = {}
    for obj in result.objects:
        out.setdefault(obj.sequence, []).append((obj.j_stats[0] + obj.f_stats[0]) / 2)
    return {seq: float(np.mean(v)) for seq, v in out.items()}


def worst_frames(objects: list[ObjectResult], count: int = WORST_FRAMES) -> list[tuple[str, float]]:
    """(frame, score) of the `count` frames with the lowest mean (J+F)/2 over the objects of a sequence,
    worst first. Picked frames are spread out (at least n / (2 * count) frames apart, n = scored frames),
    so one failure spanning many frames does not fill every slot with near-identical thumbnails."""
    per_frame: dict[str, list[float]] = {}
    for obj in objects:
        for name, j, f in zip(obj.frames, obj.j, obj.f):
            per_frame.setdefault(name, []).append((float(j) + float(f)) / 2)
    order = {name: i for i, name in enumerate(sorted(per_frame, key=natural_key))}
    gap = len(order) // (2 * count) if count else 0
    ranked = sorted(((float(np.mean(v)), name) for name, v in per_frame.items()), key=lambda t: (t[0], t[1]))
    picked: list[tuple[str, float]] = []
    for score, name in ranked:
        if len(picked) == count:
            break
        if all(abs(order[name] - order[other]) > gap for other, _ in picked):
            picked.append((name, score))
    return picked


def difference_image(frame: np.ndarray, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """HxWx3 uint8: darkened frame, object pixels right in green, missed in red, claimed wrongly in blue, void gray."""
    out = (frame.astype(np.float32) * 0.4).astype(np.uint8)
    void = gt == 255
    right = (gt == pred) & (gt != 0) & ~void
    missed = (gt != 0) & (gt != pred) & ~void
    claimed = (pred != 0) & (gt == 0)
    out[right] = (out[right] * 0.5 + np.array([0, 160, 0]) * 0.5).astype(np.uint8)
    out[missed] = (230, 30, 30)
    out[claimed] = (40, 90, 255)
    out[void] = (150, 150, 150)
    return out


def _thumb(image: np.ndarray, path: Path) -> None:
    height, width = image.shape[:2]
    small = Image.fromarray(image).resize((THUMB_WIDTH, max(1, round(height * THUMB_WIDTH / width))), Image.BILINEAR)
    small.save(path, optimize=True)


def _read_frame(gt_root: Path, sequence: str, name: str, shape: tuple[int, int]) -> np.ndarray:
    """The RGB frame for a thumbnail, or mid gray when the GT root has no JPEGImages for it."""
    path = frame_image(gt_root / "JPEGImages" / "480p" / sequence, name)
    if path is not None:
        rgb = np.asarray(open_upright(path).convert("RGB"))  # upright, as the run read it
        if rgb.shape[:2] == shape:
            return rgb
    return np.full((*shape, 3), 128, np.uint8)


# ---- plots -------------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _sequence_bars(runs: list[Run], sequences: list[str], path: Path) -> None:
    plt = _pyplot()
    height = max(2.5, 0.32 * len(sequences) * len(runs) + 1.2)
    fig, ax = plt.subplots(figsize=(8, height), dpi=100)
    bar = 0.8 / len(runs)
    ys = np.arange(len(sequences))
    for k, run in enumerate(runs):
        scores = sequence_scores(run.result)
        values = [100 * scores.get(s, math.nan) for s in sequences]
        bars = ax.barh(ys + (k - (len(runs) - 1) / 2) * bar, values, height=bar, color=RUN_COLORS[k], label=run.label)
        ax.bar_label(bars, fmt="%.1f", padding=2, fontsize=8)
    ax.set_yticks(ys, sequences)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("J&F mean (%)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    with glyph_warnings_ignored():
        fig.tight_layout()
        fig.savefig(path)
    plt.close(fig)


def _frame_curves(runs: list[Run], sequence: str, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 2.8), dpi=100, sharey=True)
    cmap = plt.get_cmap("tab10")
    for k, run in enumerate(runs):
        for obj in (o for o in run.result.objects if o.sequence == sequence):
            x = [int(f) if f.isdigit() else i for i, f in enumerate(obj.frames)]
            color = tuple(DAVIS_PALETTE[obj.object_id % 256] / 255) if obj.object_id < 8 else cmap(obj.object_id % 10)
            style = "-" if k == 0 else "--"
            label = f"object {obj.object_id}" + (f" ({run.label})" if len(runs) > 1 else "")
            axes[0].plot(x, 100 * obj.j, style, color=color, label=label, linewidth=1.4)
            axes[1].plot(x, 100 * obj.f, style, color=color, label=label, linewidth=1.4)
    for ax, title in zip(axes, ("J (region IoU, %)", "F (boundary F-measure, %)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("frame")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower left")
    with glyph_warnings_ignored():
        fig.tight_layout()
        fig.savefig(path)
    plt.close(fig)


# ---- HTML ----------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 12px}
h1{font-size:1.5em;margin-bottom:4px} h2{margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{margin:24px 0 6px} .meta{color:#666;font-size:.9em} .note{color:#666;font-size:.85em}
table{border-collapse:collapse;font-size:.9em;margin:8px 0} th,td{padding:4px 10px;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child{text-align:left} tr.run td{font-weight:600} tr.ref td{color:#666}
.up{color:#1a7f37} .down{color:#c62828} .swatch{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
.row{margin:4px 0 12px} .row b{display:block;font-size:.85em;margin-bottom:2px} .thumbs{display:flex;gap:6px}
figure{flex:1 1 0;min-width:0;max-width:240px;margin:0;text-align:center;font-size:.75em;color:#555}
figure img{display:block;width:100%;height:auto;border:1px solid #ccc}
nav a{margin-right:10px;font-size:.9em} img.plot{max-width:100%}
"""

_CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-loaded', ok + '/' + imgs.length);
});
</script>"""


def _global_table(runs: list[Run]) -> str:
    same_split = all(sorted(r.result.sequences) == sorted(DAVIS16_VAL10) for r in runs)
    head = "".join(f"<th>{_esc(c)}</th>" for c in ("run", *GLOBAL_COLUMNS, "objects"))
    rows = []
    for k, run in enumerate(runs):
        g = run.result.global_scores()
        cells = "".join(f"<td>{_pct(g[c])}</td>" for c in GLOBAL_COLUMNS)
        rows.append(f'<tr class="run"><td><span class="swatch" style="background:{RUN_COLORS[k]}"></span>'
                    f'{_esc(run.label)}</td>{cells}<td>{len(run.result.objects)}</td></tr>')
    if len(runs) == 2:
        a, b = (r.result.global_scores() for r in runs)
        cells = "".join(_delta_cell(b[c] - a[c], lower_is_better="Decay" in c) for c in GLOBAL_COLUMNS)
        rows.append(f"<tr><td>difference ({_esc(runs[1].label)} − {_esc(runs[0].label)})</td>{cells}<td></td></tr>")
    for name, values in REFERENCE_ROWS:
        cells = "".join(f"<td>{v:.1f}</td>" for v in values)
        rows.append(f'<tr class="ref"><td>reference: {_esc(name)}</td>{cells}<td>10</td></tr>')
    note = ("Reference rows were " + REFERENCE_NOTE + ("; this run is on that split." if same_split
                                                        else "; this run is on another split."))
    return (f'<table id="global"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            f'<p class="note">Percent. Decay: lower is better. {_esc(note)}</p>')


def _delta_cell(delta: float, lower_is_better: bool = False) -> str:
    if math.isnan(delta):
        return "<td>—</td>"
    better = delta < 0 if lower_is_better else delta > 0
    cls = "" if abs(delta) < 5e-4 else (' class="up"' if better else ' class="down"')
    return f"<td{cls}>{100 * delta:+.1f}</td>"


def _sequence_table(runs: list[Run], sequences: list[str]) -> str:
    scores = [sequence_scores(r.result) for r in runs]
    head = "<th>sequence</th>" + "".join(f"<th>{_esc(r.label)} J&amp;F</th>" for r in runs)
    head += "<th>difference</th>" if len(runs) == 2 else ""
    rows = []
    for seq in sequences:
        cells = "".join(f"<td>{_pct(s.get(seq, math.nan))}</td>" for s in scores)
        if len(runs) == 2:
            cells += _delta_cell(scores[1].get(seq, math.nan) - scores[0].get(seq, math.nan))
        rows.append(f'<tr><td><a href="#seq-{_esc(seq)}">{_esc(seq)}</a></td>{cells}</tr>')
    return f'<table id="sequences"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _worst_frames_html(runs: list[Run], sequence: str, assets: Path, annotations: Path) -> str:
    first = [o for o in runs[0].result.objects if o.sequence == sequence]
    rows = []
    for name, score in worst_frames(first):
        gt = read_id_mask(annotations / sequence / f"{name}.png", "GT mask")
        frame = _read_frame(runs[0].result.gt_root, sequence, name, gt.shape)
        figures = [("frame", frame), ("ground truth", overlay(frame, gt))]
        for k, run in enumerate(runs):
            pred = read_id_mask(run.result.pred_dir / sequence / f"{name}.png", "prediction")
            tag = f" ({run.label})" if len(runs) > 1 else ""
            figures.append((f"prediction{tag}", overlay(frame, pred)))
            figures.append((f"difference{tag}", difference_image(frame, gt, pred)))
        cells = []
        for i, (caption, image) in enumerate(figures):
            file = f"{sequence}_{name}_{i}.png"
            _thumb(image, assets / file)
            cells.append(f'<figure><img class="thumb" src="assets/{_esc(file)}" alt="{_esc(caption)}" '
                         f'width="{THUMB_WIDTH}"><figcaption>{_esc(caption)}</figcaption></figure>')
        others = ""
        if len(runs) == 2:
            second = [o for o in runs[1].result.objects if o.sequence == sequence]
            values = [(float(j) + float(f)) / 2 for o in second for fr, j, f in zip(o.frames, o.j, o.f) if fr == name]
            others = f", {_esc(runs[1].label)}: {100 * float(np.mean(values)):.1f}" if values else ""
        rows.append(f'<div class="row worst"><b>frame {_esc(name)} — (J+F)/2 {_esc(runs[0].label)}: '
                    f'{100 * score:.1f}{others}</b><div class="thumbs">{"".join(cells)}</div></div>')
    return "".join(rows)


def write_report(report_dir: str | Path, runs: list[Run], overwrite: bool = False, title: str | None = None) -> Path:
    """Writes the report of one or two runs (scored on the same split) to `report_dir`; returns index.html.

    Raises StmaOutputError if `report_dir` exists and not `overwrite`, or cannot be written.
    """
    if not 1 <= len(runs) <= 2:
        raise ValueError("a report shows one run or two runs side by side")
    final = Path(report_dir)
    check_report_dir(final, overwrite)
    remove_stale_partials(final)
    partial = partial_path(final)
    try:
        assets = partial / "assets"
        assets.mkdir(parents=True)
        _write_contents(partial, assets, runs, title)
        commit(partial, final, overwrite)
    except OSError as exc:
        remove_path(partial)
        raise StmaOutputError(f"{final}: cannot write the report ({exc.strerror or exc}); "
                              "pass --report with a writable folder") from exc
    except BaseException:
        remove_path(partial)
        raise
    return final / "index.html"


def check_report_dir(final: Path, overwrite: bool, keep: Sequence[tuple[str, Path | None]] = ()) -> None:
    """Fails early (before any scoring) when the report would overwrite something unasked.

    keep: (flag, path) of the run's other folders (--pred, --compare, --gt, --out, ...): a report folder that is
    one of them, or holds one, or the current folder, is refused even with --overwrite, which replaces the
    whole folder: `--report PRED --overwrite` replaced the predictions being scored with the report.
    """
    if (final.exists() or final.is_symlink()) and not overwrite:
        raise StmaOutputError(f"{final}: report folder already exists; pass --overwrite to replace it "
                              "or choose another --report folder")
    if final.exists() and not final.is_dir():
        raise StmaOutputError(f"{final}: is a file, not a folder; pass --report with a folder path")
    check_not_replacing(final, keep, "the report", "pass --report with a folder of its own, e.g. report/")


def _write_contents(folder: Path, assets: Path, runs: list[Run], title: str | None) -> None:
    first = runs[0].result
    sequences = list(first.sequences) or sorted({o.sequence for o in first.objects})
    annotations = first.gt_root / "Annotations" / "480p"
    _sequence_bars(runs, sequences, assets / "sequences.png")
    nav = " ".join(f'<a href="#seq-{_esc(s)}">{_esc(s)}</a>' for s in sequences)
    sections = []
    for seq in sequences:
        _frame_curves(runs, seq, assets / f"{seq}_curves.png")
        jf = " / ".join(f"{_esc(r.label)} {_pct(sequence_scores(r.result).get(seq, math.nan))}" for r in runs)
        sections.append(
            f'<section class="sequence" id="seq-{_esc(seq)}"><h3>{_esc(seq)} <span class="meta">J&amp;F {jf}</span></h3>'
            f'<img class="plot curves" src="assets/{_esc(seq)}_curves.png" alt="per-frame J and F of {_esc(seq)}">'
            f'<p class="note">Worst frames ({_esc(runs[0].label)}); difference: '
            '<span style="color:#1a7f37">■</span> right, <span style="color:#e61e1e">■</span> missed, '
            '<span style="color:#2860ff">■</span> claimed wrongly, <span style="color:#969696">■</span> void.</p>'
            f'{_worst_frames_html(runs, seq, assets, annotations)}</section>')
    runs_meta = "".join(f"<li><b>{_esc(r.label)}</b>: {_esc(r.result.pred_dir)} "
                        f"({len(r.result.objects)} objects, scored in {r.result.seconds:.1f} s)</li>" for r in runs)
    heading = title or ("stma eval: " + " vs ".join(r.label for r in runs))
    differs = ("" if not first.warnings else  # the GT's, so the same for every run
               '<p class="note"><b>Where these scores differ from the official toolkit\'s:</b></p><ul class="note">'
               + "".join(f"<li>{_esc(line)}</li>" for line in first.warnings) + "</ul>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(heading)}</title><style>{_CSS}</style>{_CHECK_SCRIPT}</head>
<body>
<h1>{_esc(heading)}</h1>
<p class="meta">DAVIS split <b>{_esc(first.split)}</b>: {len(sequences)} sequences, ground truth {_esc(first.gt_root)};
official semi-supervised protocol (first and last frames not scored). Written
{_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}.</p>
<ul class="meta">{runs_meta}</ul>
{differs}
<h2>Global results</h2>
{_global_table(runs)}
<h2>Per sequence</h2>
<img class="plot bars" src="assets/sequences.png" alt="per-sequence J&amp;F bars">
{_sequence_table(runs, sequences)}
<h2>Sequences</h2>
<nav>{nav}</nav>
{"".join(sections)}
</body></html>
"""
    (folder / "index.html").write_text(page, encoding="utf-8")
