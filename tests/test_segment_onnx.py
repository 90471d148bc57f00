"""`stma segment --engine onnx` runs an `stma export` folder and gives the PyTorch engine's masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from stma_cli.app import app
from stma_core.checkpoint import DEFAULT_CHECKPOINT

pytest.importorskip("onnxruntime", reason="onnxruntime is an optional extra: pip install 'stma[onnx]'")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(), reason="the shipped model is not in stma_core/weights")
def test_segment_with_onnx_engine_matches_torch(tmp_path: Path) -> None:
    runner = CliRunner()
    clip, mask = EXAMPLES / "car-shadow.mp4", EXAMPLES / "car-shadow_mask.png"
    exported = runner.invoke(app, ["export", "--format", "onnx", "--out", str(tmp_path / "onnx"),
                                   "--size", "288", "512", "--objects", "1", "--quiet"])
    assert exported.exit_code == 0, exported.output
    outs = {}
    for engine in ("torch", "onnx"):
        args = ["segment", str(clip), "--mask", str(mask), "--out", str(tmp_path / engine), "--quiet",
                "--engine", engine]
        if engine == "onnx":
            args += ["--onnx-dir", str(tmp_path / "onnx")]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        outs[engine] = tmp_path / engine / "car-shadow"
    frames = sorted(p.name for p in outs["torch"].glob("*.png"))
    assert len(frames) == 40
    for name in frames:
        a = np.asarray(Image.open(outs["torch"] / name)) == 1
        b = np.asarray(Image.open(outs["onnx"] / name)) == 1
        assert (a & b).sum() / max((a | b).sum(), 1) >= 0.99, name


def test_onnx_engine_needs_an_export_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["segment", str(EXAMPLES / "car-shadow.mp4"), "--mask",
                                      str(EXAMPLES / "car-shadow_mask.png"), "--engine", "onnx",
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--onnx-dir" in result.output
