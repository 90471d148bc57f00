"""Every command through its bad inputs: one `error:` line on stderr, the right exit code, no traceback,
nothing written. Plus the command line itself: help text, --version, --json, signals and pipes.

Runs on the bundled example clip and inputs generated here; no dataset needed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner, Result

from conftest import EXAMPLES, encode_mp4, example_frames
from stma_cli.app import app
from stma_core.io.writers import save_palette_png

EXAMPLE_VIDEO = EXAMPLES / "car-shadow.mp4"
EXAMPLE_MASK = EXAMPLES / "car-shadow_mask.png"
SMALL = (214, 120)
CLI = [sys.executable, "-m", "stma_cli.app"]


def run(*args: object) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def davis16_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DAVIS 2016 root as originally released: JPEG frames and 0/255 grayscale annotations."""
    root = tmp_path_factory.mktemp("davis16")
    frames = root / "JPEGImages" / "480p" / "car-shadow"
    annotations = root / "Annotations" / "480p" / "car-shadow"
    frames.mkdir(parents=True)
    annotations.mkdir(parents=True)
    truth = cv2.resize(np.array(Image.open(EXAMPLE_MASK)), SMALL, interpolation=cv2.INTER_NEAREST)
    for i, frame in enumerate(example_frames(5)):
        Image.fromarray(cv2.resize(frame, SMALL, interpolation=cv2.INTER_AREA)).save(frames / f"{i:05d}.jpg")
        Image.fromarray((truth * 255).astype(np.uint8), "L").save(annotations / f"{i:05d}.png")
    (root / "ImageSets" / "2016").mkdir(parents=True)
    (root / "ImageSets" / "2016" / "val.txt").write_text("car-shadow\n")
    return root


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of three tiny real videos (no masks)."""
    root = tmp_path_factory.mktemp("clips")
    frames = [cv2.resize(f, SMALL, interpolation=cv2.INTER_AREA) for f in example_frames(4)]
    for name in ("a", "b", "c"):
        encode_mp4(frames, root / f"{name}.mp4")
    return root


def _clip_masks(folder: Path) -> Path:
    """The first-frame masks a.png, b.png, c.png of the `clips` videos (the example's car at SMALL) in `folder`."""
    folder.mkdir(exist_ok=True)
    truth = cv2.resize(np.array(Image.open(EXAMPLE_MASK)), SMALL, interpolation=cv2.INTER_NEAREST)
    for name in ("a", "b", "c"):
        save_palette_png(truth, folder / f"{name}.png")
    return folder


def _terminate_once(args: list[str], ready, settle: float = 0.0) -> subprocess.CompletedProcess:
    """Starts the CLI with `args`, waits (up to 120 s) until `ready()` is true, `settle` seconds more, then sends
    SIGTERM and returns what it printed. Fails if the run ended before it could be interrupted."""
    proc = subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not ready() and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(settle)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def _bad_cases(tmp: Path, davis16_root: Path) -> list[tuple[list[object], int, str]]:
    blocker = tmp / "results.txt"
    blocker.write_text("a file\n")
    corrupt = tmp / "holiday.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20)
    video = [EXAMPLE_VIDEO, "--mask", EXAMPLE_MASK, "--method", "copy"]
    cases: list[tuple[list[object], int, str]] = [
        (["segment", tmp / "nope.mp4", "--mask", EXAMPLE_MASK, "--out", tmp / "o"], 2, "nope.mp4: no such file"),
        (["segment", *video, "--device", "gpu", "--out", tmp / "o"], 2, "unknown device 'gpu'"),
        (["segment", *video, "--out", blocker], 2, "--out is a file"),
        (["segment", *video, "--out", blocker / "run"], 2, "not writable"),
        (["segment", corrupt, "--mask", EXAMPLE_MASK, "--method", "copy", "--out", tmp / "o"], 2,
         "holiday.mp4: ffmpeg cannot decode"),
        (["segment", *video, "--format", "gif", "--out", tmp / "o"], 2, "unknown format 'gif'"),
        (["segment", EXAMPLE_VIDEO, "--mask", tmp / "none.png", "--out", tmp / "o"], 2, "none.png: mask file not found"),
        (["eval"], 2, "give --pred"),
        (["eval", "--dataset", "davis16-val", "--root", tmp / "nowhere"], 2, "davis16-val"),
        (["eval", "--dataset", "davis16-val", "--root", davis16_root, "--device", "gpu"], 2, "unknown device"),
        (["eval", "--dataset", "davis16-val", "--root", davis16_root, "--method", "copy", "--pred-out",
          blocker / "pred"], 2, "not writable"),
        (["eval", "--dataset", "davis16-val", "--root", davis16_root, "--method", "copy", "--pred-out",
          tmp / "pred", "--out", blocker], 2, "--out is a file"),
        (["train", "--config", tmp / "none.yaml", "--data", davis16_root, "--out", blocker], 2, "--out is a file"),
        (["train", "--config", tmp / "none.yaml", "--data", davis16_root, "--out", tmp / "run", "--device", "gpu"], 2,
         "unknown device"),
        (["export", "--out", blocker], 2, "--out is a file"),
        (["export", "--out", tmp / "exp", "--format", "gif"], 2, "unknown format 'gif'"),
    ]
    if not torch.cuda.is_available():
        cases.append((["segment", *video, "--device", "cuda:1", "--out", tmp / "o"], 2, "CUDA is not available"))
        cases.append((["eval", "--dataset", "davis16-val", "--root", davis16_root, "--device", "cuda"], 2,
                      "CUDA is not available"))
    elif torch.cuda.device_count() < 2:
        cases.append((["segment", *video, "--device", "cuda:1", "--out", tmp / "o"], 2, "cuda:0..cuda:0"))
    if not (torch.backends.mps.is_available()):
        cases.append((["segment", *video, "--device", "mps", "--out", tmp / "o"], 2, "MPS (Apple GPU) is not available"))
        cases.append((["train", "--config", tmp / "none.yaml", "--data", davis16_root, "--out", tmp / "run",
                       "--device", "mps"], 2, "MPS"))
    return cases


def test_every_command_through_its_bad_inputs(tmp_path: Path, davis16_root: Path) -> None:
    cases = _bad_cases(tmp_path, davis16_root)
    before = listing(tmp_path)
    for args, code, fragment in cases:
        result = run(*args)
        lines = result.stderr.splitlines()
        where = f"{[str(a) for a in args]}: {result.stderr!r}"
        assert result.exit_code == code, where
        assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], where
        assert "Traceback" not in result.output and result.stdout == "", where
        assert listing(tmp_path) == before, where  # nothing written, not even an empty folder


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes to read-only folders")
def test_read_only_output_folders_are_refused_before_work(tmp_path: Path, davis16_root: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for args in (["segment", EXAMPLE_VIDEO, "--mask", EXAMPLE_MASK, "--method", "copy", "--out", locked / "o"],
                     ["eval", "--dataset", "davis16-val", "--root", davis16_root, "--method", "copy",
                      "--pred-out", locked / "p"],
                     ["train", "--config", tmp_path / "none.yaml", "--data", davis16_root, "--out", locked / "run"]):
            result = run(*args)
            lines = result.stderr.splitlines()
            assert result.exit_code == 2 and len(lines) == 1 and "not writable" in lines[0], result.stderr
            assert "Traceback" not in result.output and list(locked.iterdir()) == []
    finally:
        locked.chmod(0o755)


def test_unwritable_eval_out_is_found_before_scoring(tmp_path: Path, davis16_root: Path) -> None:
    pred = tmp_path / "pred"
    shutil.copytree(davis16_root / "Annotations" / "480p", pred)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    start = time.perf_counter()
    result = run("eval", "--pred", pred, "--gt", davis16_root, "--split", "val", "--out", blocker / "csv")
    assert result.exit_code == 2 and "not writable" in result.stderr and len(result.stderr.splitlines()) == 1
    assert time.perf_counter() - start < 10


def test_export_without_onnx_names_the_extra(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['onnx'] = None; sys.modules['onnxruntime'] = None; "
            "from stma_cli.app import main; sys.argv = ['stma', 'export', '--out', sys.argv[1]]; main()")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "exp")], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and 'pip install "stma[onnx]"' in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "exp").exists()


def test_batch_where_every_video_fails_for_the_same_mistake_exits_2(tmp_path: Path, clips: Path) -> None:
    masks = tmp_path / "masks"
    masks.mkdir()
    result = run("segment", clips, "--mask", masks, "--method", "copy", "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3 and all("mask file not found" in e for e in errors)
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


# ---- the DAVIS 2016 release as it is: 0/255 grayscale ground truth ---------------------------------------
def test_davis16_binary_ground_truth_is_object_1(tmp_path: Path, davis16_root: Path) -> None:
    pred = tmp_path / "pred"
    result = run("eval", "--dataset", "davis16-val", "--root", davis16_root, "--method", "copy",
                 "--pred-out", pred, "--json", "-q")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert scores["global"]["J-Mean"] == pytest.approx(1.0) and scores["global"]["F-Mean"] == pytest.approx(1.0)
    first = np.array(Image.open(pred / "car-shadow" / "00002.png"))
    assert set(np.unique(first).tolist()) == {0, 1}
    # 0/255 predictions, as DAVIS 2016 tools write them, score the same under a DAVIS 2016 split
    binary = tmp_path / "binary"
    shutil.copytree(davis16_root / "Annotations" / "480p", binary)
    again = run("eval", "--pred", binary, "--gt", davis16_root, "--split", "val", "--json", "-q")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["global"]["J-Mean"] == pytest.approx(1.0)


def test_davis16_split_takes_0_255_and_bool_predictions_over_palette_ground_truth(tmp_path: Path,
                                                                                 davis16_root: Path) -> None:
    """README: under a DAVIS 2016 split, 255 in a 0/255 prediction is object 1. It only held when the ground
    truth itself was 0/255; over palette 0/1 ground truth (this project's copy of DAVIS 2016) the same
    predictions were refused as void. 1-bit PNGs (numpy bool saved with PIL) were 0/255 too: now 0/1."""
    root = tmp_path / "davis16_palette"
    shutil.copytree(davis16_root, root)
    for png in (root / "Annotations" / "480p" / "car-shadow").iterdir():
        save_palette_png((np.array(Image.open(png)) == 255).astype(np.uint8), png)
    gray255, bilevel = tmp_path / "gray255", tmp_path / "bool"
    shutil.copytree(davis16_root / "Annotations" / "480p", gray255)  # 0/255 grayscale
    (bilevel / "car-shadow").mkdir(parents=True)
    for png in (gray255 / "car-shadow").iterdir():
        Image.fromarray(np.array(Image.open(png)) == 255).save(bilevel / "car-shadow" / png.name)
    assert Image.open(bilevel / "car-shadow" / "00002.png").mode == "1"
    for pred in (gray255, bilevel):
        result = run("eval", "--pred", pred, "--gt", root, "--split", "val", "--json", "-q")
        assert result.exit_code == 0, result.output
        scores = json.loads(result.stdout)["global"]
        assert scores["J-Mean"] == pytest.approx(1.0) and scores["F-Mean"] == pytest.approx(1.0)


def test_hints_for_255_are_correct(tmp_path: Path, davis16_root: Path) -> None:
    root = tmp_path / "davis17"
    shutil.copytree(davis16_root, root)
    (root / "ImageSets" / "2017").mkdir()
    (root / "ImageSets" / "2017" / "val.txt").write_text("car-shadow\n")
    pred = tmp_path / "pred"
    shutil.copytree(root / "Annotations" / "480p", pred)
    # a DAVIS 2017 split over 0/255 ground truth: say how to read it as DAVIS 2016
    result = run("eval", "--pred", pred, "--gt", root, "--split", "val")
    assert result.exit_code == 2 and "score it as DAVIS 2016" in result.stderr
    # palette ground truth with a 0/255 prediction: write the object's id, not "write 0 for background"
    for png in (root / "Annotations" / "480p" / "car-shadow").iterdir():
        save_palette_png((np.array(Image.open(png)) == 255).astype(np.uint8), png)
    result = run("eval", "--pred", pred, "--gt", root, "--split", "val")
    line = result.stderr.strip()
    assert result.exit_code == 2 and "\n" not in line
    assert "write its id instead (1 for a single object)" in line and "write 0 for background" not in line


# ---- the command line itself -----------------------------------------------------------------------------
@pytest.mark.parametrize("command", [[], ["segment"], ["eval"], ["train"], ["export"]])
def test_help_renders_flags_as_flags(command: list[str]) -> None:
    result = run(*command, "--help")
    assert result.exit_code == 0
    text = result.stdout
    assert "<bool>" not in text and "BOOLEAN" not in text and "--quiet true" not in text
    flags = re.findall(r"(--quiet|--overwrite|--json|--resume|--version)\s+(?:-\w\s+)?(\S+)", text)
    assert flags or command in (["train"],) or command == []
    for flag, following in flags:  # right after a flag comes its help text, never a value type
        assert not following.startswith("<") and not following.isupper(), (flag, following)


@pytest.mark.parametrize("args, line", [
    (["export", "--size", 288, 512, 7], "--out: this option is required; see stma export --help"),
    (["export", "--size", 288, 512, 7, "--out", "o"], "stma export: got unexpected extra argument(s) (7); see stma "
                                                      "export --help"),
    (["segment", EXAMPLE_VIDEO, "--out", "o", "--size", "abc"], "--size: 'abc' is not a valid int; see stma segment "
                                                                 "--help"),
    (["segment", EXAMPLE_VIDEO, "--out", "o", "--size", "480.5"], "--size: '480.5' is not a valid int; see stma "
                                                                   "segment --help"),
    (["segment", "--bogus"], "--bogus: no such option (did you mean --out?); see stma segment --help"),
    (["segment", EXAMPLE_VIDEO, "--quiet=yes", "--out", "o"], "--quiet: does not take a value; see stma segment --help"),
    (["segment", "--out", "o"], "INPUT: this argument is required; see stma segment --help"),
    (["eval", "--sizee", 288], "--sizee: no such option (did you mean --size?); see stma eval --help"),
    (["train", "--until"], "--until: requires an argument; see stma train --help"),
    (["sgment"], "stma: no such command 'sgment' (did you mean 'segment'?); see stma --help"),
    # `stma segment videos/*.mp4`: a shell glob is several INPUTs; the line says how to run several videos
    (["segment", EXAMPLE_VIDEO, EXAMPLE_MASK, "--out", "o"],
     f"stma segment: got unexpected extra argument(s) ({EXAMPLE_MASK}): INPUT is one video, frame folder or folder "
     "of videos; pass the folder holding the videos (a batch, masks beside them), or run stma segment once per video"),
])
def test_usage_errors_are_one_line_for_every_command(tmp_path: Path, args: list[object], line: str) -> None:
    """click's usage errors (wrong value type, unknown option, missing or extra argument) were a multi-line box
    of usage text; they are the README's one `error:` line and exit 2, in every command, nothing written."""
    result = run(*[tmp_path / "o" if a == "o" else a for a in args])
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: {line}\n" and result.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_help_of_segment_and_eval_agree_and_say_what_end_does(tmp_path: Path) -> None:
    """eval --help lacked segment's exit-code line and said cuda:1 where segment says cuda:N; segment's --end
    help read as if the last frame were left out by default. --end is an exclusive index: --end 3 is frames 0-2."""
    from stma_cli._common import DEVICES

    helps = {c: " ".join(run(c, "--help").stdout.replace("│", " ").split()) for c in ("segment", "eval")}
    for text in helps.values():
        assert f"--device <str> {DEVICES}. [default: auto]" in text and "cuda:1" not in text
        assert re.search(r"Exit codes: 0 success, 1 [^.]+, 2 bad input", text), text
    assert "itself not segmented (--end 10: frames up to 9); default: through the last frame" in helps["segment"]
    # a script reading --help learns every case of exit 1, as the README lists them (it said only batch failures)
    assert "1 some videos of a batch failed, interrupted or stdout closed, 2 bad input" in helps["segment"]
    out = tmp_path / "out"
    for end in ("3", None):
        result = run("segment", EXAMPLE_VIDEO, "--mask", EXAMPLE_MASK, "--method", "copy", "--out", out, "-q",
                      "--overwrite", *(["--end", end] if end else []))
        assert result.exit_code == 0, result.output
        assert len(list((out / "car-shadow").glob("*.png"))) == (3 if end else 40)


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0 and result.stdout.startswith("stma ") and result.stdout.strip().split()[1][0].isdigit()


def test_segment_json_summary(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run("segment", EXAMPLE_VIDEO, "--mask", EXAMPLE_MASK, "--method", "copy", "--out", out, "--json",
                 "-f", "png", "-f", "rle")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["frames"] == 40 and summary["done"] == 1 and summary["failed"] == 0
    video = summary["videos"][0]
    assert (video["name"], video["status"], video["frames"], video["objects"]) == ("car-shadow", "done", 40, 1)
    assert video["input"] == str(EXAMPLE_VIDEO)
    assert video["outputs"] == [str(out / "car-shadow"), str(out / "car-shadow.rle.json")]
    assert video["seconds"] > 0 and summary["seconds"] >= video["seconds"]


def test_segment_json_reports_a_failed_video_too(tmp_path: Path) -> None:
    """--json on one video that cannot be segmented: exit 2, the one-line error on stderr, and the same
    JSON summary on stdout with the video failed (it used to print nothing, so `| jq` saw no input)."""
    empty = tmp_path / "empty.png"
    Image.fromarray(np.zeros((480, 854), np.uint8)).save(empty)
    result = run("segment", EXAMPLE_VIDEO, "--mask", empty, "--method", "copy", "--out", tmp_path / "out", "--json")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "mask has no object" in lines[0]
    summary = json.loads(result.stdout)
    assert (summary["done"], summary["failed"], summary["frames"]) == (0, 1, 0)
    video = summary["videos"][0]
    assert video["name"] == "car-shadow" and video["status"] == "failed" and "mask has no object" in video["error"]
    assert video["input"] == str(EXAMPLE_VIDEO)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("args, expected", [
    (["segment", EXAMPLE_VIDEO, "--json", "--size", "abc"], "--size: 'abc' is not a valid int"),
    (["segment", EXAMPLE_VIDEO, "--json", "--method", "bogus"], "--method: unknown method 'bogus'"),
    (["segment", EXAMPLE_VIDEO, "--json", "--size", 32], "--size: 32 is too small"),
    (["segment", "missing.mp4", "--json"], "missing.mp4: no such file or folder"),
    (["eval", "--json", "--dataset", "nope"], "unknown dataset 'nope'"),
    (["eval", "--json", "--bogus"], "--bogus: no such option"),
])
def test_json_runs_refused_for_their_options_still_print_json(tmp_path: Path, args: list[object],
                                                               expected: str) -> None:
    """With --json, a run refused for a bad option or a usage error (before any input was read) printed nothing
    on stdout, so `| jq` saw no input: stdout now gets one JSON object whose `error` is the stderr line
    (segment's is its usual summary with no videos); exit 2, nothing written, one line on stderr as before."""
    result = run(*args, "--out", tmp_path / "o") if args[0] == "segment" else run(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr
    payload = json.loads(result.stdout)
    assert payload["error"] == lines[0].removeprefix("error: ")
    if args[0] == "segment":
        assert (payload["videos"], payload["done"], payload["failed"], payload["frames"]) == ([], 0, 0, 0)
    assert list(tmp_path.iterdir()) == []


def test_segment_json_reports_a_batch_refused_up_front(tmp_path: Path) -> None:
    """--json on a batch refused before any work (camel.mp4 and camel.mov: outputs would collide): exit 2, the
    one-line error on stderr, and the JSON summary on stdout with every video failed as not run and the reason
    in `error` (it used to print nothing). Without --json stdout stays empty, as before."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("camel.mp4", "camel.mov", "car-shadow.mp4"):
        shutil.copy(EXAMPLE_VIDEO, videos / name)
    for name in ("camel.png", "car-shadow.png"):
        shutil.copy(EXAMPLE_MASK, videos / name)
    out = tmp_path / "out"
    result = run("segment", videos, "--method", "copy", "--out", out, "--json")
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "is also named 'camel'" in lines[0], result.stderr
    summary = json.loads(result.stdout)
    assert summary["error"] == lines[0].removeprefix("error: ")
    assert (summary["done"], summary["skipped"], summary["failed"], summary["frames"]) == (0, 0, 3, 0)
    assert sorted(v["name"] for v in summary["videos"]) == ["camel", "camel", "car-shadow"]
    # the two rows named camel are told apart by their input (before, nothing in the rows did)
    assert sorted(v["input"] for v in summary["videos"]) == [str(videos / n) for n in ("camel.mov", "camel.mp4",
                                                                                      "car-shadow.mp4")]
    for video in summary["videos"]:
        assert video["status"] == "failed" and video["error"] == f"not run: {summary['error']}"
        assert (video["frames"], video["objects"], video["outputs"]) == (0, 0, [])
    assert "Traceback" not in result.output and not out.exists()
    plain = run("segment", videos, "--method", "copy", "--out", out)
    assert plain.exit_code == 2 and plain.stdout == "" and plain.stderr == result.stderr
    # the same for an --out refused after the inputs were read
    blocker = tmp_path / "results.txt"
    blocker.write_text("a file\n")
    result = run("segment", EXAMPLE_VIDEO, "--mask", EXAMPLE_MASK, "--method", "copy", "--out", blocker, "--json")
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1 and "--out is a file" in result.stderr
    summary = json.loads(result.stdout)
    assert "--out is a file" in summary["error"] and summary["failed"] == 1
    assert summary["videos"][0]["name"] == "car-shadow" and summary["videos"][0]["error"].startswith("not run: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.txt", "videos"]


def test_quiet_hides_progress_not_warnings(tmp_path: Path) -> None:
    truth = np.array(Image.open(EXAMPLE_MASK))
    smooth = cv2.resize((truth[..., None] * np.array([255, 60, 0])).astype(np.uint8), (427, 240),
                        interpolation=cv2.INTER_AREA)  # anti-aliased, and another size: two warnings
    mask = tmp_path / "drawn.png"
    Image.fromarray(smooth).save(mask)
    result = run("segment", EXAMPLE_VIDEO, "--mask", mask, "--method", "copy", "--out", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and all(line.startswith("warning: ") for line in lines), result.stderr
    assert result.stdout == f"{tmp_path / 'out' / 'car-shadow'}\n"


def test_sigterm_stops_like_ctrl_c_and_leaves_no_partial(tmp_path: Path) -> None:
    long = tmp_path / "long.mp4"
    encode_mp4((f for _ in range(4) for f in example_frames(40)), long)  # 160 frames, segmented by flow
    out = tmp_path / "out"
    proc = _terminate_once(["segment", str(long), "--mask", str(EXAMPLE_MASK), "--method", "flow", "--out", str(out),
                            "-f", "png", "-f", "overlay"], lambda: list(out.glob("*.partial")), settle=0.5)
    stderr = proc.stderr
    assert proc.returncode == 1 and "Traceback" not in stderr  # README: an interrupted run exits with 1
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "interrupted" in lines[0], stderr
    assert not list(out.glob("*.partial")) and not (out / "long").exists() and not (out / "long.overlay.mp4").exists()


def test_a_signal_after_the_command_ended_keeps_its_exit_code(tmp_path: Path) -> None:
    """Ctrl-C/SIGTERM in the second after a run printed its results (interpreter shutdown) killed the
    process by the signal (exit -2/-15, nothing said) instead of keeping its exit code. Here the signal is
    sent by an atexit hook, that is during shutdown, after `stma --version` ended."""
    code = ("import atexit, os, signal, sys; from stma_cli.app import main; "
            "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), os.kill(os.getpid(), signal.SIGTERM))); "
            "sys.argv = ['stma', '--version']; main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert proc.stdout.startswith("stma") and "Traceback" not in proc.stderr


def test_piping_a_batch_into_head_stops_with_a_message(tmp_path: Path, clips: Path) -> None:
    masks = _clip_masks(tmp_path / "masks")
    out = tmp_path / "out"
    proc = subprocess.Popen([*CLI, "segment", str(clips), "--mask", str(masks), "--method", "copy", "--out", str(out),
                             "-q"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()  # what `head -1` does: read one line, then close the pipe
    proc.stdout.close()
    stderr = proc.stderr.read()
    proc.wait(timeout=60)
    assert first == f"{out / 'a'}\n"
    assert proc.returncode == 1 and "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and "stdout was closed" in lines[0], stderr
    assert not list(out.glob("*.partial")) and (out / "a").is_dir()


@pytest.fixture(scope="module")
def train_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out as `stma train --out RUN` leaves it: model.safetensors (here the shipped model's
    weights) beside state.pt, the training state."""
    from stma_core.checkpoint import DEFAULT_CHECKPOINT

    run_dir = tmp_path_factory.mktemp("run1")
    shutil.copy(DEFAULT_CHECKPOINT, run_dir / "model.safetensors")
    shutil.copy(DEFAULT_CHECKPOINT.with_suffix(".json"), run_dir / "model.json")  # save_model writes it beside
    torch.save({"step": 3, "model": {}}, run_dir / "state.pt")
    return run_dir


def test_checkpoint_state_pt_names_the_model_beside_it(tmp_path: Path, train_run: Path, davis16_root: Path) -> None:
    """`--checkpoint RUN/state.pt` said 'not a safetensors checkpoint ... pass a file saved by stma train',
    although stma train saved it: every command (and the API) now names RUN/model.safetensors."""
    from stma_core.checkpoint import read_config
    from stma_core.errors import StmaInputError

    state, model = train_run / "state.pt", train_run / "model.safetensors"
    for args in (["segment", EXAMPLE_VIDEO, "--mask", EXAMPLE_MASK, "--end", "2", "--out", tmp_path / "o"],
                 ["eval", "--dataset", "davis16-val", "--root", davis16_root, "--pred-out", tmp_path / "p"],
                 ["export", "--out", tmp_path / "exp"]):
        result = run(*args, "--checkpoint", state)
        lines = result.stderr.splitlines()
        assert result.exit_code == 2 and len(lines) == 1, (args, result.stderr)
        assert f"{state}: not a safetensors model checkpoint (a .pt file is PyTorch" in lines[0] and f"pass {model}" in lines[0] and "--resume" in lines[0]
    with pytest.raises(StmaInputError, match="pass .*model.safetensors, the model"):
        read_config(state)
    # the model.json beside it (save_model's copy of the config) was 'not a safetensors checkpoint (Error while
    # deserializing header: header too large)'; it now names the checkpoint beside it
    result = run("segment", EXAMPLE_VIDEO, "--mask", EXAMPLE_MASK, "--end", "2", "--out", tmp_path / "o",
                 "--checkpoint", train_run / "model.json")
    assert result.exit_code == 2 and result.stderr == (
        f"error: {train_run / 'model.json'}: the model config written beside a checkpoint, not the checkpoint; "
        f"pass {model}\n"), result.stderr
    empty = tmp_path / "run-empty"
    empty.mkdir()
    (empty / "state.pt").write_bytes(b"x")
    result = run("segment", EXAMPLE_VIDEO, "--mask", EXAMPLE_MASK, "--end", "2", "--out", tmp_path / "o",
                 "--checkpoint", empty)
    assert result.exit_code == 2 and "holds no model.safetensors" in result.stderr, result.stderr


def test_checkpoint_of_another_config_or_broken_metadata_is_one_line(tmp_path: Path, davis16_root: Path) -> None:
    """A checkpoint whose tensors are another model's than its model_config (Lite0 weights saved with the
    shipped Lite2 config) printed load_state_dict's page of 115 size mismatches (segment: exit 1, 'report a
    bug'; eval and export: a traceback); unparseable model_config metadata gave a bare JSON error or a
    traceback without the file's name, and an unknown lite_variant the backbone's ValueError. Each is now one
    line naming the file, exit 2, for every command and the API."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from stma_core import VideoSession
    from stma_core.checkpoint import DEFAULT_CHECKPOINT, PREVIOUS_CHECKPOINT
    from stma_core.errors import StmaInputError

    with safe_open(str(DEFAULT_CHECKPOINT), "pt") as f:
        metadata = f.metadata()
    lite0, lite2 = load_file(str(PREVIOUS_CHECKPOINT)), load_file(str(DEFAULT_CHECKPOINT))
    # the recommended settings too: unparseable inference_config metadata was a JSONDecodeError (a bare line in
    # segment, a traceback in export), a JSON list a TypeError 'segmentation failed ... report a bug', and a
    # size under the minimum 'InferenceConfig.size is 10', a value the user never typed
    cases = {"mixed.safetensors": (lite0, metadata, "checkpoint does not match its model config"),
             "json.safetensors": (lite0, {"model_config": "{not json"}, "unreadable model_config metadata"),
             "variant.safetensors": (lite0, {"model_config": '{"backbone": "lite", "lite_variant": "lite9"}'},
                                     "lite_variant 'lite9' is not one of"),
             "settings.safetensors": (lite2, {**metadata, "inference_config": "{bad"},
                                      "unusable inference_config metadata (Expecting property name"),
             "settings_list.safetensors": (lite2, {**metadata, "inference_config": "[1, 2]"},
                                           "unusable inference_config metadata"),
             "settings_size.safetensors": (lite2, {**metadata, "inference_config": '{"size": 10}'},
                                           "unusable inference_config metadata (InferenceConfig.size is 10")}
    for name, (tensors, meta, fragment) in cases.items():
        path = tmp_path / name
        save_file(tensors, str(path), metadata=meta)
        for args in (["segment", EXAMPLE_VIDEO, "--mask", EXAMPLE_MASK, "--end", "2", "--out", tmp_path / "o"],
                     ["eval", "--dataset", "davis16-val", "--root", davis16_root, "--pred-out", tmp_path / "p"],
                     ["export", "--out", tmp_path / "exp"]):
            result = run(*args, "--checkpoint", path)
            lines = result.stderr.splitlines()
            assert result.exit_code == 2 and len(lines) == 1, (name, args[0], result.exit_code, result.stderr[-600:])
            assert lines[0].startswith(f"error: {path}: ") and fragment in lines[0], lines[0]
            assert "pass a model.safetensors saved by `stma train`" in lines[0], lines[0]
        with pytest.raises(StmaInputError, match=re.escape(fragment)):
            VideoSession.from_pretrained(path, device="cpu")
    assert not any((tmp_path / d).exists() for d in ("o", "p", "exp"))
    # ship, which the message points to, mends the recommended settings
    from stma_core.training.ship import ship
    from stma_core.config import InferenceConfig

    ship(tmp_path / "settings.safetensors", tmp_path / "mended.safetensors", InferenceConfig(size=480))
    result = run("segment", EXAMPLE_VIDEO, "--mask", EXAMPLE_MASK, "--end", "2", "--out", tmp_path / "o", "-q",
                 "--checkpoint", tmp_path / "mended.safetensors")
    assert result.exit_code == 0, result.output


def test_model_flags_with_a_baseline_method_are_refused(tmp_path: Path, davis16_root: Path) -> None:
    """`--method copy|flow` with --checkpoint (even a missing file) or --size/--top-k/... ran the baseline, exit 0,
    the flags dropped without a word: a user comparing their checkpoint got the baseline's masks and scores
    under its name. segment and eval --dataset now refuse them in one line (as eval --pred does), nothing
    written; --device stays accepted (checked, unused), as before."""
    for method in ("copy", "flow"):
        for flags, named in ((["--checkpoint", tmp_path / "mine.safetensors"], "--checkpoint"),
                             (["--size", "240", "--top-k", "5"], "--size, --top-k")):
            for args, out in ((["segment", EXAMPLE_VIDEO, "--mask", EXAMPLE_MASK, "--end", "2", "--out", tmp_path / "o"],
                               tmp_path / "o"),
                              (["eval", "--dataset", "davis16-val", "--root", davis16_root, "--pred-out", tmp_path / "p"],
                               tmp_path / "p")):
                result = run(*args, "--method", method, *flags)
                lines = result.stderr.splitlines()
                assert result.exit_code == 2 and len(lines) == 1, (args[0], method, result.stderr)
                assert lines[0] == (f"error: {named}: not used by --method {method} (a baseline, no model); drop "
                                    f"{'it' if ',' not in named else 'them'}, or use --method stma to run the model")
                assert not out.exists()
    result = run("segment", EXAMPLE_VIDEO, "--mask", EXAMPLE_MASK, "--end", "2", "--out", tmp_path / "o", "--method",
                 "copy", "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output


def test_checkpoint_run_folder_is_its_model(tmp_path: Path, train_run: Path) -> None:
    """`--checkpoint RUN` (the folder stma train wrote) said 'checkpoint not found'; it now means
    RUN/model.safetensors, with a note, and gives the same masks as the file itself."""
    from stma_core import VideoSession
    from stma_core.checkpoint import load_model, resolve_checkpoint

    common = [EXAMPLE_VIDEO, "--mask", EXAMPLE_MASK, "--end", "2", "--size", "128", "--device", "cpu",
              "--format", "png"]
    by_folder = run("segment", *common, "--checkpoint", train_run, "--out", tmp_path / "a")
    by_file = run("segment", *common, "--checkpoint", train_run / "model.safetensors", "--out", tmp_path / "b", "-q")
    assert by_folder.exit_code == 0 and by_file.exit_code == 0, (by_folder.stderr, by_file.stderr)
    assert f"note: --checkpoint {train_run} is a run folder: using {train_run / 'model.safetensors'}" in by_folder.stderr
    a, b = sorted((tmp_path / "a").rglob("*.png")), sorted((tmp_path / "b").rglob("*.png"))
    assert len(a) == 2 and [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert resolve_checkpoint(train_run) == train_run / "model.safetensors"
    assert load_model(train_run)[1] == load_model(train_run / "model.safetensors")[1]
    assert VideoSession.from_pretrained(train_run, device="cpu") is not None


def test_two_runs_of_one_video_into_one_out_never_mix_their_outputs(tmp_path: Path) -> None:
    """Two `stma segment` of the same video into the same --out at once shared one `name.partial` per
    output: the later start deleted the earlier's partial files, and the run that 'won' (exit 0) renamed a
    truncated rle.json and a PNG folder missing frames. Now each run writes its own partials, and the
    one that finishes second refuses to replace the first's outputs (exit 2): one complete result."""
    video = tmp_path / "clip.mp4"
    encode_mp4([cv2.resize(f, SMALL, interpolation=cv2.INTER_AREA) for f in example_frames(40)], video)
    mask = tmp_path / "clip.png"
    save_palette_png(cv2.resize(np.array(Image.open(EXAMPLE_MASK)), SMALL, interpolation=cv2.INTER_NEAREST), mask)
    out = tmp_path / "out"
    command = [*CLI, "segment", str(video), "--mask", str(mask), "--method", "flow", "--out", str(out),
               "-f", "png", "-f", "rle", "-q"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(*p.communicate(timeout=120)[::-1], p.returncode)[::-1] for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    loser = next(stderr for code, _, stderr in results if code == 2)
    assert "Traceback" not in loser and len(loser.splitlines()) == 1 and "already exists" in loser, loser
    frames = json.loads((out / "clip.rle.json").read_text())["frames"]
    assert [f["frame"] for f in frames] == [f"{i:05d}" for i in range(40)]
    assert sorted(p.name for p in (out / "clip").iterdir()) == [f"{i:05d}.png" for i in range(40)]
    assert sorted(p.name for p in out.iterdir()) == ["clip", "clip.rle.json"]  # no partial left behind


def test_interrupted_json_batch_still_prints_its_summary(tmp_path: Path) -> None:
    """`stma segment DIR --json` stopped by SIGTERM printed nothing on stdout, so a script parsing it got no
    document although videos had finished (their outputs kept). Now the summary comes out: finished videos
    done, the one running and those not started failed, and the reason in the top-level `error`."""
    videos = tmp_path / "videos"
    videos.mkdir()
    small = [cv2.resize(f, SMALL, interpolation=cv2.INTER_AREA) for f in example_frames(40)]
    encode_mp4(small[:4], videos / "a.mp4")
    encode_mp4(small * 6, videos / "b_long.mp4")  # 240 frames, segmented by flow
    encode_mp4(small[:4], videos / "c.mp4")
    truth = cv2.resize(np.array(Image.open(EXAMPLE_MASK)), SMALL, interpolation=cv2.INTER_NEAREST)
    for name in ("a", "b_long", "c"):
        save_palette_png(truth, videos / f"{name}.png")
    out = tmp_path / "out"
    proc = _terminate_once(["segment", str(videos), "--method", "flow", "--out", str(out), "--json"],
                           lambda: list(out.glob("b_long*.partial")), settle=0.3)
    stdout, stderr = proc.stdout, proc.stderr
    assert proc.returncode == 1 and "Traceback" not in stderr and "interrupted" in stderr.splitlines()[-1]
    summary = json.loads(stdout)
    assert [(v["name"], v["status"]) for v in summary["videos"]] == [("a", "done"), ("b_long", "failed"),
                                                                      ("c", "failed")]
    assert summary["videos"][1]["error"] == "interrupted" and summary["videos"][2]["error"] == "not run: interrupted"
    assert summary["done"] == 1 and summary["failed"] == 2 and "interrupted" in summary["error"]
    assert sorted(p.name for p in out.iterdir()) == ["a"]


def test_decoded_frames_of_a_killed_backward_run_are_removed_by_the_next_run(tmp_path: Path) -> None:
    """A backward run keeps the video's decoded frames in a hidden `.stma-frames-*` folder in --out. A run
    killed outright (SIGKILL, out of memory) left it there for good, as large as the decoded video; the next
    run now removes it (and the dead run's partial outputs), never the folder of a run still going on."""
    video = tmp_path / "clip.mp4"
    encode_mp4([cv2.resize(f, SMALL, interpolation=cv2.INTER_AREA) for f in example_frames(40)], video)
    annotations = tmp_path / "ann"
    annotations.mkdir()
    save_palette_png(cv2.resize(np.array(Image.open(EXAMPLE_MASK)), SMALL, interpolation=cv2.INTER_NEAREST),
                     annotations / "00030.png")  # a later frame: the frames before it run backward
    out = tmp_path / "out"
    command = [*CLI, "segment", str(video), "--mask-dir", str(annotations), "--size", "64", "--out", str(out), "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob(".stma-frames-*")) and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.kill()
    proc.wait(timeout=60)
    left = sorted(p.name for p in out.iterdir())
    assert any(name.startswith(".stma-frames-") for name in left), left
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        in_use = out / f".stma-frames-{live.pid}-abc"  # as another run that is still going on names its own
        in_use.mkdir()
        again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert again.returncode == 0, again.stderr
        assert sorted(p.name for p in out.iterdir()) == [in_use.name, "clip"]
    finally:
        live.kill()
        live.wait()
    assert len(list((out / "clip").glob("*.png"))) == 40


def test_an_output_name_too_long_for_the_file_system_is_refused_before_any_frame(tmp_path: Path) -> None:
    """A video named close to the file system's 255-byte limit: its `.overlay.mp4` partial could not be
    created, and ffmpeg's own error lines reached the terminal before a 'segmentation failed ... report a
    bug' line (exit 1). Now one line names the output and says to rename the input; exit 2, nothing written."""
    name = "x" * 240
    video = tmp_path / f"{name}.mp4"
    encode_mp4([cv2.resize(f, SMALL, interpolation=cv2.INTER_AREA) for f in example_frames(3)], video)
    save_palette_png(cv2.resize(np.array(Image.open(EXAMPLE_MASK)), SMALL, interpolation=cv2.INTER_NEAREST),
                     tmp_path / f"{name}.png")
    out = tmp_path / "out"
    proc = subprocess.run([*CLI, "segment", str(video), "--method", "copy", "--out", str(out), "-f", "png",
                           "-f", "overlay"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {name}: output name '{name}.overlay.mp4' is too long")
    assert "rename the input to a shorter name" in lines[0]
    assert not out.exists()


def test_two_batches_over_one_folder_share_the_work_without_failing(tmp_path: Path, clips: Path) -> None:
    """Two `stma segment DIR` over the same folder and --out at once (two terminals, `xargs -P`): a video
    the other run finished first failed with 'already exists' and made its batch exit 1, although every
    output was complete. It is now skipped, as a video finished before the run started is: both exit 0,
    each video done by exactly one run, complete."""
    videos = tmp_path / "videos"
    shutil.copytree(clips, videos)
    _clip_masks(videos)
    out = tmp_path / "out"
    command = [*CLI, "segment", str(videos), "--method", "copy", "--out", str(out), "-f", "png", "-f", "rle", "--json"]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.communicate(timeout=120), p.returncode) for p in procs]
    assert [code for _, code in results] == [0, 0], results
    statuses: dict[str, list[str]] = {}
    for (stdout, stderr), _ in results:
        assert "Traceback" not in stderr and "error:" not in stderr, stderr
        for video in json.loads(stdout)["videos"]:
            statuses.setdefault(video["name"], []).append(video["status"])
    assert {name: sorted(s) for name, s in statuses.items()} == {n: ["done", "skipped"] for n in ("a", "b", "c")}
    for name in ("a", "b", "c"):
        assert len(json.loads((out / f"{name}.rle.json").read_text())["frames"]) == 4
        assert len(list((out / name).glob("*.png"))) == 4
    assert sorted(p.name for p in out.iterdir()) == ["a", "a.rle.json", "b", "b.rle.json", "c", "c.rle.json"]


@pytest.mark.parametrize("args, line", [
    (["segment", EXAMPLE_VIDEO, "--mask", EXAMPLE_MASK, "--method", "copy", "--out", "-"],
     "--out -: --out is a folder that files are written into, not stdout"),
    (["eval", "--pred", "p", "--gt", "g", "--out", "-"], "--out -: --out is a folder that files are written into"),
    # `stma export --out -` exported every graph into a folder named `-` and exited 0
    (["export", "--format", "torchscript", "--out", "-"], "--out -: --out is a folder that files are written into"),
    (["segment", "-", "--mask", EXAMPLE_MASK, "--method", "copy", "--out", "o"],
     "-: INPUT is read from a file, not stdin"),
])
def test_a_dash_for_stdin_or_stdout_is_refused_not_taken_as_a_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    args: list[object], line: str) -> None:
    """`--out -` (stdout, to users of other tools) made a folder named `-` in the current directory and exited 0;
    INPUT `-` (stdin) said 'no such file'. Both are now one line saying what stma reads and writes, exit 2."""
    monkeypatch.chdir(tmp_path)
    result = run(*[tmp_path / "o" if a == "o" else a for a in args])
    assert result.exit_code == 2 and result.stdout == "", result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {line}"), result.stderr
    assert list(tmp_path.iterdir()) == []


def test_interrupted_eval_json_prints_a_document(tmp_path: Path) -> None:
    """`stma eval --json` stopped by Ctrl-C/SIGTERM printed nothing on stdout, so `stma eval --json | jq` read
    no document; now it prints `{"error": "interrupted (Ctrl-C or SIGTERM)"}` (exit 1, as before)."""
    root = tmp_path / "davis"
    truth = cv2.resize(np.array(Image.open(EXAMPLE_MASK)), SMALL, interpolation=cv2.INTER_NEAREST)
    frames = [cv2.resize(f, SMALL, interpolation=cv2.INTER_AREA) for f in example_frames(40)]
    sequences = ("s1", "s2", "s3", "s4")
    for seq in sequences:
        (root / "JPEGImages" / "480p" / seq).mkdir(parents=True)
        (root / "Annotations" / "480p" / seq).mkdir(parents=True)
        for i, frame in enumerate(frames * 2):
            Image.fromarray(frame).save(root / "JPEGImages" / "480p" / seq / f"{i:05d}.jpg")
            save_palette_png(truth, root / "Annotations" / "480p" / seq / f"{i:05d}.png")
    (root / "ImageSets" / "2016").mkdir(parents=True)
    (root / "ImageSets" / "2016" / "val.txt").write_text("\n".join(sequences) + "\n")
    pred = tmp_path / "pred"
    proc = _terminate_once(["eval", "--dataset", "davis16-val", "--root", str(root), "--method", "flow",
                            "--pred-out", str(pred), "--json"], lambda: list(pred.glob("*")))
    stdout, stderr = proc.stdout, proc.stderr
    assert proc.returncode == 1 and "Traceback" not in stderr and "interrupted" in stderr.splitlines()[-1], stderr
    assert json.loads(stdout) == {"error": "interrupted (Ctrl-C or SIGTERM)"}


def test_a_file_where_an_output_folder_goes_is_not_a_finished_video(tmp_path: Path, clips: Path) -> None:
    """A batch took any existing path for a finished output: with a file `out/a` (or a folder `out/b.rle.json`)
    video a was 'skipped', its path printed as a result and the run exited 0, with no mask of it anywhere.
    Now that video fails with one line naming the path (the others run; exit 1) and nothing is replaced."""
    masks = _clip_masks(tmp_path / "masks")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("notes\n")
    (out / "b.rle.json").mkdir()
    result = run("segment", clips, "--mask", masks, "--method", "copy", "--out", out, "-f", "png", "-f", "rle", "-q")
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == [str(out / "c"), str(out / "c.rle.json")]
    errors = result.stderr.splitlines()
    assert errors == [f"error: {out / 'a'}: is a file, not this video's png output (a folder); move it away or "
                      "choose another --out",
                      f"error: {out / 'b.rle.json'}: is a folder, not this video's rle output (a file); move it away "
                      "or choose another --out"], result.stderr
    assert (out / "a").read_text() == "notes\n" and not (out / "a.rle.json").exists() and not (out / "b").exists()
    only_png = run("segment", clips, "--mask", masks, "--method", "copy", "--out", out, "-f", "png", "-q")
    assert only_png.exit_code == 1 and only_png.stdout.splitlines() == [str(out / "b"), str(out / "c")]
    assert only_png.stderr.splitlines() == errors[:1] and (out / "a").read_text() == "notes\n"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (a stdout whose disk is full)")
@pytest.mark.parametrize("command", ["segment", "segment --json", "eval", "eval --json"])
def test_a_stdout_that_cannot_be_written_is_one_error_line(tmp_path: Path, davis16_root: Path, command: str) -> None:
    """`stma ... > results.txt` on a full disk (here /dev/full) ended in a Python traceback; it is now one line
    saying stdout cannot be written, exit 1, as when stdout's reader closes it."""
    name, *flags = command.split()
    if name == "segment":
        args = ["segment", str(EXAMPLE_VIDEO), "--mask", str(EXAMPLE_MASK), "--method", "copy", "--end", "3",
                "--out", str(tmp_path / "out"), "-q"]
    else:
        pred = tmp_path / "pred"
        shutil.copytree(davis16_root / "Annotations" / "480p", pred)
        args = ["eval", "--pred", str(pred), "--gt", str(davis16_root), "--out", str(tmp_path / "csv"), "-q"]
    with open("/dev/full", "w") as full:
        proc = subprocess.run([*CLI, *args, *flags], stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == ["error: cannot write to stdout (No space left on device); stopped early, "
                                        "finished results are complete and unfinished ones were not written; free "
                                        "space where stdout goes, or redirect it"], proc.stderr


def test_a_batch_stopped_by_its_model_lists_every_video_in_json(tmp_path: Path, clips: Path) -> None:
    """A checkpoint that cannot load stops the whole batch (every video would fail). Its --json listed only
    the first video, so a script looking up the others found no row for them; they are now `"failed"` with
    `"not run: …"`, and the reason is the top-level `"error"`, as for any run refused for all its videos."""
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    masks = _clip_masks(tmp_path / "masks")
    result = run("segment", clips, "--mask", masks, "--checkpoint", bad, "--out", tmp_path / "out", "--json")
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1, result.output
    summary = json.loads(result.stdout)
    assert [(v["name"], v["status"]) for v in summary["videos"]] == [("a", "failed"), ("b", "failed"), ("c", "failed")]
    line = summary["videos"][0]["error"]
    assert "not a safetensors checkpoint" in line and summary["error"] == line
    assert [v["error"] for v in summary["videos"][1:]] == [f"not run: {line}"] * 2
    assert summary["failed"] == 3 and not (tmp_path / "out").exists()


def test_a_long_video_in_a_log_gets_progress_lines(tmp_path: Path) -> None:
    """With stderr not a terminal (a log, a pipe) there is no live bar, and a long video printed nothing
    until it ended. Now a line comes every PLAIN_PROGRESS_SECONDS with frames done, frames/s and time left."""
    from stma_cli._common import PLAIN_PROGRESS_SECONDS

    video = tmp_path / "long.mp4"
    subprocess.run([imageio_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x90:rate=25",
                    "-frames:v", "800", "-pix_fmt", "yuv420p", str(video)], check=True, timeout=120)
    mask = np.zeros((90, 160), np.uint8)
    mask[20:60, 40:100] = 1
    save_palette_png(mask, tmp_path / "long.png")
    start = time.monotonic()
    proc = subprocess.run([*CLI, "segment", str(video), "--size", "64", "--out", str(tmp_path / "out"), "-f", "rle"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[-1].startswith("long: 800 frames in ")
    running = [line for line in lines if re.fullmatch(r"long: \d+/800 frames, [\d.]+ frames/s, \d+:\d\d:\d\d left",
                                                        line)]
    assert len(running) >= 1 or took < PLAIN_PROGRESS_SECONDS + 3, (took, proc.stderr)
    assert len(running) <= took / PLAIN_PROGRESS_SECONDS + 1, proc.stderr
    quiet = subprocess.run([*CLI, "segment", str(video), "--method", "copy", "--out", str(tmp_path / "q"), "-q"],
                           capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and quiet.stderr == ""


def imageio_ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@pytest.mark.parametrize("command", ["segment", "eval"])
def test_an_out_below_a_file_names_the_file(tmp_path: Path, davis16_root: Path, command: str) -> None:
    """`--out notes.txt/run1` said 'output folder is not writable (Not a directory)', without saying which
    path is not a directory; the line now names the file in the way."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file\n")
    out = blocker / "run1"
    if command == "segment":
        result = run("segment", EXAMPLE_VIDEO, "--mask", EXAMPLE_MASK, "--method", "copy", "--out", out)
    else:
        result = run("eval", "--pred", davis16_root / "Annotations" / "480p", "--gt", davis16_root, "--out", out)
    assert result.exit_code == 2 and result.stdout == "", result.output
    assert result.stderr == (f"error: {out}: output folder is not writable ({blocker} is a file, not a folder); "
                             "pass --out with a writable folder\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
