"""`stma eval`: score DAVIS predictions, or segment a named benchmark with a method and score it.

Two ways in:
  stma eval --pred PRED_DIR --gt DAVIS_ROOT [--split val|FILE]     score existing palette PNGs
  stma eval --dataset davis17-val [--root DIR] [--method stma|copy|flow]   segment, keep, then score
Results: a table (stdout), the official CSV pair (in --out, default the prediction folder), or with
--json a single JSON object on stdout. Everything for humans (progress, paths) goes to stderr.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from stma_cli import _settings
from stma_cli._common import (DEVICES, check_device, check_output_dir, echo, echo_json, fail, frame_progress, info,
                              refuse_stdout_dash, stderr_console, note_run_folder, stdout_closed, warn)
from stma_core.errors import StmaInputError, StmaOutputError
from stma_core.eval.datasets import (DATASETS, DAVIS_RESOLUTION, DatasetSpec, check_davis_root, get_dataset,
                                     is_davis2016_split, resolve_root, resolve_split, short_list, split_candidates)
from stma_core.eval.report import render_table, result_json, write_csvs
from stma_core.eval.run_dataset import segment_davis, segment_ytvos, ytvos_all_frames_dir, ytvos_valid_dir
from stma_core.eval.scoring import EvalResult, check_prediction_files, check_scorable, score_predictions
from stma_core.inference.factory import METHODS, make_propagator_factory
from stma_core.io.frames import input_name

YTVOS_SERVER = "the YouTube-VOS evaluation server (linked from https://youtube-vos.org/dataset/vos/)"


class _RichFrames:
    """Adapts a rich Progress to run_dataset's FrameProgress: one live bar on a terminal, else (logs,
    pipes) a plain line per finished video."""

    def __init__(self, progress: Any, label: str, console: Console, quiet: bool) -> None:
        self._progress = progress
        self._label = label
        self._task: Any = None
        self._lines = not quiet and progress.disable
        self._console = console

    def begin(self, total_frames: int) -> None:
        self._task = self._progress.add_task(escape(self._label), total=total_frames)

    def frame(self, sequence: str) -> None:
        self._progress.update(self._task, advance=1, description=escape(f"{self._label} {sequence}"))

    def sequence_done(self, sequence: str, frames: int, seconds: float) -> None:
        if self._lines:
            info(self._console, f"{self._label} {sequence}: {frames} frames, {frames / max(seconds, 1e-9):.1f} frames/s")


def _check_predictions_absent(folder: Path, overwrite: bool, sequences: list[str] | None = None) -> None:
    """Predictions of an earlier run are replaced only with --overwrite (nothing is overwritten unasked).
    sequences: the folders this run writes (None: any folder in `folder`).
    --overwrite replaces each sequence's folder whole: not one the shell is in (`cd PRED/bear; stma eval ...
    --pred-out .. --overwrite` replaced the current folder, then failed with 'output folder is not writable')."""
    if overwrite:
        cwd, root = Path.cwd().resolve(), folder.resolve()
        if root in cwd.parents and (sequences is None or cwd.relative_to(root).parts[0] in sequences):
            sequence = folder / cwd.relative_to(root).parts[0]
            fail(f"{sequence}: is or holds the current folder, which --overwrite would replace with this run's "
                 f"predictions; run stma from outside it (e.g. cd {folder}) or choose another --pred-out")
        return
    if not folder.is_dir():
        return
    existing = sorted(p.name for p in folder.iterdir() if p.is_dir() and (sequences is None or p.name in sequences))
    if existing:
        fail(f"{folder}: already holds predictions ({short_list(existing, 3)}); pass --overwrite to replace them "
             "or choose another --pred-out")


def _check_not_ground_truth(written: Path, annotations: Path, frames: tuple[Path, ...] = ()) -> None:
    """Predictions must not be written over the dataset's own annotations (--pred-out given as the DAVIS
    Annotations/480p folder or the YouTube-VOS valid/ folder): with --overwrite that replaced the ground
    truth with predictions, and a DAVIS run then scored itself against them (a silent perfect score).
    Nor over its frames (--pred-out JPEGImages/480p: "already holds predictions (bear)", and --overwrite
    replaced each sequence's JPEGs with prediction PNGs)."""
    target = written.resolve()
    for own, what in ((annotations, "annotations"), *((f, "frames") for f in frames)):
        if target == own.resolve() or own.resolve() in target.parents:
            raise StmaInputError(f"--pred-out would write predictions into {own}, the dataset's own {what}; "
                                 "choose a --pred-out outside it")


def _default_pred_out(dataset: str, method: str) -> Path:
    return Path("out") / "eval" / f"{dataset}-{method}"


def _make_factory(method: str, checkpoint: Optional[Path], device: str, settings: dict[str, Any]) -> Any:
    if method not in METHODS:
        raise StmaInputError(f"unknown --method {method!r}; choose one of {', '.join(METHODS)}")
    try:
        return make_propagator_factory(method, str(checkpoint) if checkpoint else None, device, settings=settings)
    except ImportError as exc:
        raise StmaInputError(f"--method {method} is not available in this installation ({exc}); "
                             "use --method copy or --method flow") from None
    except FileNotFoundError as exc:
        raise StmaInputError(f"checkpoint not found: {exc.filename or exc}; pass --checkpoint FILE") from None
    except ValueError as exc:  # the device resolver's one-line message
        raise StmaInputError(f"--device: {exc}") from None


def _segment(spec: DatasetSpec, root: Path, sequences: list[str] | None, method: str, checkpoint: Optional[Path],
             device: str, settings: dict[str, Any], pred_out: Path, quiet: bool, console: Console,
             davis2016: bool = False) -> Path:
    if method == "stma":
        note_run_folder(checkpoint, quiet, console)
    make = _make_factory(method, checkpoint, device, settings)
    with frame_progress(console, disable=quiet) as progress:
        sink = _RichFrames(progress, f"{spec.name}/{method}", console, quiet)
        if spec.family == "ytvos":
            return segment_ytvos(root, make, pred_out, sink)
        return segment_davis(root, sequences or [], make, pred_out, sink, davis2016=davis2016)


def _score(pred: Path, gt_root: Path, split: str, quiet: bool, console: Console,
           workers: Optional[int]) -> EvalResult:
    name, sequences = resolve_split(gt_root, split)
    # Missing files are reported before any progress bar is drawn, so the error stays the only line.
    check_prediction_files(pred, check_davis_root(gt_root), sequences)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("sequences"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, disable=quiet or not console.is_terminal, transient=True) as progress:
        task = progress.add_task(escape(f"scoring {pred}"), total=len(sequences))
        return score_predictions(pred, gt_root, sequences, name, workers=workers,
                                 on_sequence=lambda _seq: progress.update(task, advance=1),
                                 davis2016=is_davis2016_split(gt_root, split))


def evaluate(
    pred: Optional[Path] = typer.Option(None, "--pred", help="Folder of predictions: <sequence>/<frame>.png (palette ids)."),
    gt: Optional[Path] = typer.Option(None, "--gt", help="DAVIS root holding Annotations/480p and ImageSets/."),
    split: Optional[str] = typer.Option(None, "--split", help="Split name (val, train: ImageSets/2017 then 2016) or a file of sequence names. Default: val."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help=f"Segment and score a named benchmark: {', '.join(DATASETS)} (with --pred: score those "
                                                   "predictions against its ground truth, segmenting nothing)."),
    root: Optional[Path] = typer.Option(None, "--root", help="Dataset root for --dataset (else $STMA_DAVIS16_ROOT, $STMA_DAVIS17_ROOT or $STMA_YTVOS_ROOT)."),
    method: Optional[str] = typer.Option(None, "--method", help=f"Segmentation method for --dataset: {', '.join(METHODS)} (default stma)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="STMA checkpoint (default: the shipped weights)."),
    device: str = typer.Option("auto", "--device", help=f"{DEVICES}."),
    size: Optional[int] = _settings.SIZE,
    top_k: Optional[int] = _settings.TOP_K,
    kernel_sigma: Optional[int] = _settings.KERNEL_SIGMA,
    spatial_capacity: Optional[int] = _settings.SPATIAL_CAPACITY,
    spatial_every: Optional[int] = _settings.SPATIAL_EVERY,
    temporal_capacity: Optional[int] = _settings.TEMPORAL_CAPACITY,
    temporal_every: Optional[int] = _settings.TEMPORAL_EVERY,
    pred_out: Optional[Path] = typer.Option(None, "--pred-out", help="Where --dataset writes predictions (kept; default out/eval/<dataset>-<method>)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the CSVs (default: the prediction folder); existing CSVs are replaced."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout instead of the table."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or notes on stderr (warnings and errors stay)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Scoring threads (default: one per CPU)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write an HTML report folder (index.html + PNGs; opens without a server)."),
    compare: Optional[Path] = typer.Option(None, "--compare", help="Second prediction folder, scored on the same split and shown beside the first (table and --report)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --report folder and the "
                                   "predictions of an earlier run in --pred-out."),
) -> None:
    """Score predictions with the official DAVIS J/F protocol, or segment a benchmark and score it.

    Exit codes: 0 success, 1 interrupted (Ctrl-C or SIGTERM), 2 bad input (one error line).
    """
    console = stderr_console()
    settings = _settings.settings_from_flags(size, top_k, spatial_capacity, spatial_every, temporal_capacity,
                                             temporal_every, kernel_sigma)
    if pred is not None:  # scoring only: flags that would set up segmenting change nothing, so they are refused
        unused = [flag for flag, value in (("--method", method), ("--checkpoint", checkpoint), ("--pred-out", pred_out),
                                           ("--device", None if device == "auto" else device)) if value is not None]
        unused += [_settings.FLAGS[name] for name, value in settings.items() if value is not None]
        if unused:
            fail(f"{', '.join(unused)} set up segmenting, but --pred scores existing predictions (nothing is "
                 "segmented); drop them, or drop --pred to segment with --dataset")
    method = method or "stma"
    if pred is None:
        _settings.refuse_model_flags_for_baseline(method, checkpoint, settings)
    if dataset is not None and pred is None:
        device = check_device(device)
    if out is not None:
        check_output_dir(out)
    try:
        payload = _evaluate(pred, gt, split, dataset, root, method, checkpoint, device, settings, pred_out, out,
                            as_json, quiet, workers, console, report=report, compare=compare, overwrite=overwrite)
    except (StmaInputError, StmaOutputError) as exc:
        fail(exc)
    if as_json:
        echo_json(payload)


def refused_json(line: str) -> None:
    """What a refused --json run prints on stdout: one JSON object whose `error` is the one-line reason."""
    echo_json({"error": line})


def _evaluate(pred: Optional[Path], gt: Optional[Path], split: Optional[str], dataset: Optional[str],
              root: Optional[Path], method: str, checkpoint: Optional[Path], device: str, settings: dict[str, Any],
              pred_out: Optional[Path], out: Optional[Path], as_json: bool, quiet: bool,
              workers: Optional[int], console: Console, report: Optional[Path] = None,
              compare: Optional[Path] = None, overwrite: bool = False) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    _check_report_options(report, compare, dataset, overwrite,
                          keep=(("--pred", pred), ("--compare", compare), ("--gt", gt), ("--root", root),
                                ("--out", out), ("--pred-out", pred_out or (
                                    _default_pred_out(get_dataset(dataset).name, method)
                                    if dataset is not None and pred is None and report is not None else None)),
                                ("dataset root", _found_root(dataset, root, gt, report))))
    if dataset is None:
        if pred is None or gt is None:
            raise StmaInputError("give --pred PRED_DIR --gt DAVIS_ROOT to score predictions, or --dataset NAME "
                                 f"({', '.join(DATASETS)}) to segment and score")
        gt_root, split_arg = gt, split or "val"
        _check_report_spares_inputs(report, overwrite, gt_root, split_arg, pred, compare)
    else:
        spec = get_dataset(dataset)
        if split is not None:
            raise StmaInputError(f"--split does not apply with --dataset {spec.name} (it fixes the split); drop --split")
        if gt is not None and root is not None:
            raise StmaInputError("give the dataset folder once: --root DIR (or --gt DIR), not both")
        gt_root = resolve_root(spec, root if root is not None else gt)
        extra = {"dataset": spec.name}
        if spec.family == "ytvos":
            if pred is not None:
                raise StmaInputError(f"{spec.name} has no public ground truth, so --pred cannot be scored locally; "
                                     f"submit the zip to {YTVOS_SERVER}")
            if out is not None:  # it was ignored: no CSV is written where nothing is scored
                raise StmaInputError(f"--out is where score CSVs go, but {spec.name} is not scored locally (no public "
                                     "ground truth); drop --out (--pred-out sets where predictions and the zip go)")
            target = pred_out or _default_pred_out(spec.name, method)
            valid = ytvos_valid_dir(gt_root)
            _check_not_ground_truth(target / "Annotations", valid / "Annotations",
                                    tuple(f for f in (valid / "JPEGImages", ytvos_all_frames_dir(valid)) if f))
            check_output_dir(target, "--pred-out")
            _check_predictions_absent(target / "Annotations", overwrite)
            all_frames = ytvos_all_frames_dir(valid)
            frames_from = all_frames or valid / "JPEGImages"
            annotations = _segment(spec, gt_root, None, method, checkpoint, device, settings, target, quiet, console)
            zip_path = target / "submission.zip"
            if not quiet:  # which frames the model saw changes the results: said, not left to guess
                info(console, f"read frames from {frames_from}" + (
                    " (every frame; predictions written for the frames meta.json lists; move that folder away to "
                    "read only valid/JPEGImages)" if all_frames else
                    " (every 5th frame; a valid_all_frames/ folder beside valid/ would be read instead)"))
                info(console, f"wrote {annotations} and {zip_path}")
                info(console, f"{spec.name} cannot be scored locally (no public ground truth): "
                              f"submit {zip_path} to {YTVOS_SERVER}")
            if not as_json:
                echo(str(zip_path))
            return {"dataset": spec.name, "method": method, "predictions": str(annotations),
                    "submission": str(zip_path), "frames": str(frames_from), "scored": False}
        split_arg = str(gt_root / spec.marker)
        _check_report_spares_inputs(report, overwrite, gt_root, split_arg,
                                    pred if pred is not None else pred_out or _default_pred_out(spec.name, method),
                                    compare, "--pred" if pred is not None else "--pred-out")
        if pred is None:
            _, sequences = resolve_split(gt_root, split_arg)
            pred = pred_out or _default_pred_out(spec.name, method)
            annotations_root = check_davis_root(gt_root)
            _check_not_ground_truth(pred, annotations_root, (gt_root / "JPEGImages",))
            check_scorable(annotations_root, sequences)
            check_output_dir(pred, "--pred-out")
            _check_predictions_absent(pred, overwrite, sequences)
            _segment(spec, gt_root, sequences, method, checkpoint, device, settings, pred, quiet, console,
                     davis2016=spec.year == 2016)
            extra["method"] = method
            if not quiet:
                info(console, f"predictions kept in {pred} (rescore with: stma eval --pred {pred} --gt {gt_root} "
                              f"--split {split_arg})")
    if out is None and pred.is_dir():  # the CSVs go beside the predictions: writable before scoring starts
        check_output_dir(pred, "--out")
    result = _score(pred, gt_root, split_arg, quiet, console, workers)
    global_csv, per_seq_csv = write_csvs(result, out or pred)
    second = _score(compare, gt_root, split_arg, quiet, console, workers) if compare is not None else None
    for line in result.warnings:  # the GT's, so the same for --compare: said once; kept with --quiet
        warn(console, line)
    index = None
    if report is not None:
        from stma_core.eval.report_html import Run, write_report

        runs = [Run(extra.get("method") or input_name(pred), result)]  # `--pred .` is named after its folder
        if second is not None:
            name = input_name(compare)
            label = name if name != runs[0].label else f"{name} (compare)"
            runs.append(Run(label, second))
        index = write_report(report, runs, overwrite=overwrite)
    if as_json:
        if result.warnings:
            extra["warnings"] = list(result.warnings)
        extra["csv"] = {"global": str(global_csv), "per_sequence": str(per_seq_csv)}
        if second is not None:
            extra["compare"] = result_json(second)
        if index is not None:
            extra["report"] = str(index)
        return result_json(result, extra)
    try:
        render_table(result, Console(soft_wrap=True))
        if second is not None:
            render_table(second, Console(soft_wrap=True), title=f"--compare {compare}: {len(second.objects)} objects (%)")
    except OSError as exc:  # a closed pipe, a full disk
        stdout_closed(exc)
    if not quiet:
        info(console, f"scored {len(result.objects)} objects in {result.seconds:.1f}s; wrote {global_csv} and {per_seq_csv}")
        if index is not None:
            info(console, f"report: {index} (open it in a browser)")
    return {}


def _found_root(dataset: Optional[str], root: Optional[Path], gt: Optional[Path],
                report: Optional[Path]) -> Optional[Path]:
    """The --dataset root found without --root/--gt ($STMA_DAVIS16_ROOT, a conventional folder), for the --report
    check (None: given by a flag, which the check names, not needed, or not found: that error comes later)."""
    if dataset is None or report is None or root is not None or gt is not None:
        return None
    try:
        return resolve_root(get_dataset(dataset))
    except StmaInputError:
        return None


def _check_report_spares_inputs(report: Optional[Path], overwrite: bool, gt_root: Path, split_arg: str,
                                pred: Optional[Path], compare: Optional[Path], pred_flag: str = "--pred") -> None:
    """--report --overwrite replaces the report folder whole, after scoring: a folder that is or holds what the
    run reads is refused before anything is scored, also one inside a folder given (`--report
    ROOT/Annotations/480p` held every sequence's ground truth, `--report PRED/bear` the bear predictions), while a
    report beside them (`--report PRED/report`) is kept replaceable."""
    if report is None or not overwrite:
        return
    try:
        _, sequences = resolve_split(gt_root, split_arg)
    except StmaInputError:
        return  # scoring says what is wrong with the root or split
    from stma_core.io.atomic import check_not_replacing

    folders = ((pred_flag, pred), ("--compare", compare),
               ("ground truth", gt_root / "Annotations" / DAVIS_RESOLUTION),
               ("frames", gt_root / "JPEGImages" / DAVIS_RESOLUTION))
    keep = [(flag, folder / sequence) for sequence in sequences for flag, folder in folders if folder is not None]
    split_file = Path(split_arg).expanduser() if Path(split_arg).expanduser().is_file() else next(
        (p for p in split_candidates(gt_root, split_arg) if p.is_file()), None)
    keep.append(("split file", split_file))
    check_not_replacing(report, keep, "the report", "pass --report with a folder of its own, e.g. report/")


def _check_report_not_written_first(report: Path, keep: tuple[tuple[str, Optional[Path]], ...]) -> None:
    """`--out X --report X` (or --pred-out X, X new) scored, wrote the CSVs (predictions) into X, then failed with
    'X: report folder already exists; pass --overwrite', which --overwrite then refused: a report folder that is or
    holds a folder the run writes before the report is one error line before anything is segmented or scored."""
    spellings = {Path(os.path.abspath(report)), report.resolve()}
    for flag, path in keep:
        if flag not in ("--out", "--pred-out") or path is None:
            continue
        for written in {Path(os.path.abspath(path)), path.resolve()}:
            if any(written == folder or folder in written.parents for folder in spellings):
                raise StmaOutputError(f"{report}: is or holds {flag} {path}, which this run writes before the report; "
                                      "pass --report with a folder of its own, e.g. report/")


def _check_report_options(report: Optional[Path], compare: Optional[Path], dataset: Optional[str],
                          overwrite: bool, keep: tuple[tuple[str, Optional[Path]], ...] = ()) -> None:
    """Problems with --report/--compare are reported before any segmenting or scoring."""
    if dataset is not None and (report is not None or compare is not None):
        spec = get_dataset(dataset)
        if spec.family == "ytvos":
            raise StmaInputError(f"--report/--compare need local scores, but {spec.name} has no public ground truth; "
                                 f"drop them and submit to {YTVOS_SERVER}")
    if compare is not None and not compare.is_dir():
        raise StmaInputError(f"{compare}: --compare folder does not exist; pass a folder of <sequence>/<frame>.png "
                             "predictions")
    if report is not None:
        from stma_core.eval.report_html import check_report_dir

        refuse_stdout_dash(report, "--report")  # `--report -` made a folder named '-'
        _check_report_not_written_first(report, keep)
        check_report_dir(report, overwrite, keep)
        if not report.exists():  # creatable and writable, proven before scoring (a parent that is a file, /proc)
            check_output_dir(report, "--report")

