"""benchmarks/gpu_check.py: fails at once with one line without CUDA, and its checks run on a CPU (--smoke)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules["gpu_check"] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here: the script would run, not fail")
def test_without_cuda_it_fails_fast_with_one_line() -> None:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: CUDA is not available") and "--smoke" in lines[0]
    assert done.stdout == ""
    assert time.perf_counter() - start < 60


def test_cpu_without_smoke_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert load_script().main(["--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --device cpu is only for --smoke")


def test_smoke_runs_every_check_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "check.json"
    code = load_script().main(["--device", "cpu", "--smoke", "--out", str(out)])
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed
    assert code == 0, printed
    for name in ("autocast", "speed", "long_video", "compile", "train_amp", "onnx_cuda"):
        assert printed[name]["ok"], (name, printed[name])
    assert printed["autocast"]["iou_min"] >= 0.98
    assert printed["speed"]["3obj_fp32"]["fps"] > 0
    assert printed["long_video"]["frames"] == 40 and len(printed["long_video"]["memory_mib_by_frame"]) == 4
    assert printed["train_amp"]["losses"][-1] < printed["train_amp"]["losses"][0]
    assert printed["onnx_cuda"]["skipped"]


def test_iou_and_object_split() -> None:
    script = load_script()
    import numpy as np

    mask = np.zeros((10, 30), np.uint8)
    mask[2:8, 0:30] = 1
    three = script.split_objects(mask, 3)
    assert sorted(np.unique(three)) == [0, 1, 2, 3] and abs((three == 1).sum() - (three == 3).sum()) <= 6
    assert script.mean_iou(three, three) == 1.0
    shifted = np.roll(mask, 1, axis=0)
    assert script.mean_iou(mask, shifted) == pytest.approx(5 / 7)
