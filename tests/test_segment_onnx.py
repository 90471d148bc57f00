"""`stma segment --engine onnx` runs an `stma export` folder and gives the PyTorch engine's masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import encode_mp4
from stma_cli.app import app
from stma_core.checkpoint import DEFAULT_CHECKPOINT

pytest.importorskip("onnxruntime", reason="onnxruntime is an optional extra: pip install 'stma[onnx]'")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(), reason="the shipped model is not in stma_core/weights")
def test_segment_with_onnx_engine_matches_torch(tmp_path: Path) -> None:
    runner = CliRunner()
    clip, mask = EXAMPLES / "car-shadow.mp4", EXAMPLES / "car-shadow_mask.png"
    # default export size = default processing size, so the default runs of both engines agree
    exported = runner.invoke(app, ["export", "--format", "onnx", "--out", str(tmp_path / "onnx"),
                                   "--objects", "1", "--quiet"])
    assert exported.exit_code == 0, exported.output
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert manifest["frame_size"] == [480, 853]  # 16:9 at 480; 854x480 pads to the same 480x864
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

    # a video that scales to another size than the export's: say so and how to re-export
    square = tmp_path / "square.mp4"
    frames = [np.asarray(Image.open(outs["torch"] / "00000.png").convert("RGB"))[:, :480]] * 3
    encode_mp4(frames, square)
    square_mask = tmp_path / "square.png"
    Image.fromarray(np.asarray(Image.open(mask))[:, :480]).save(square_mask)
    result = runner.invoke(app, ["segment", str(square), "--mask", str(square_mask), "--out", str(tmp_path / "sq"),
                                 "--engine", "onnx", "--onnx-dir", str(tmp_path / "onnx")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {square}: ")
    assert "this export is for 853x480" in lines[0] and "re-export with --size 480 480" in lines[0]


def test_onnx_engine_needs_an_export_folder(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["segment", str(EXAMPLES / "car-shadow.mp4"), "--mask",
                                      str(EXAMPLES / "car-shadow_mask.png"), "--engine", "onnx",
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--onnx-dir" in result.output
