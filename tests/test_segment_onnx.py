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
    assert result.exit_code == 2 and "pass --export-dir" in result.output


@pytest.fixture(scope="module")
def tiny_exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random model exported at 64x112 (car-shadow at --size 64): ONNX with the default memory
    sizes and with room for a correction, and TorchScript."""
    import torch

    from stma_core.checkpoint import save_model
    from stma_core.config import InferenceConfig, ModelConfig
    from stma_core.export import export_model
    from stma_core.model.network import STMANetwork

    tiny = ModelConfig(embed_dim=32, stml_depth=1, num_heads=2, key_dim=16, value_dim=32, decoder_dims=(16, 16, 8))
    root = tmp_path_factory.mktemp("tiny_exports")
    torch.manual_seed(0)
    checkpoint = root / "tiny.safetensors"
    save_model(STMANetwork(tiny, pretrained_trunk=False), tiny, checkpoint, inference=InferenceConfig(size=64, top_k=5))
    out = {"onnx": root / "onnx", "onnx_room": root / "onnx_room", "torchscript": root / "ts"}
    export_model(checkpoint, out["onnx"], "onnx", size=(64, 114), objects=1)
    export_model(checkpoint, out["onnx_room"], "onnx", size=(64, 114), objects=1, refs=4, memory_frames=10)
    export_model(checkpoint, out["torchscript"], "torchscript", size=(64, 114), objects=1)
    return out


def _corrected_masks(tmp_path: Path) -> Path:
    """car-shadow's first-frame mask, and a correction of object 1 on frame 5."""
    folder = tmp_path / "masks"
    folder.mkdir()
    mask = (np.asarray(Image.open(EXAMPLES / "car-shadow_mask.png").convert("L")) > 0).astype(np.uint8)
    Image.fromarray(mask).save(folder / "00000.png")
    Image.fromarray(np.roll(mask, 4, axis=1)).save(folder / "00005.png")
    return folder


def test_onnx_export_too_small_for_a_correction_is_refused_up_front(tmp_path: Path, tiny_exports) -> None:
    """A correction on frame 5 stopped an ONNX run after ~9 frames (exit 2) with a message blaming
    'objects first annotated on later frames'; the annotations are now counted before any frame, the
    line names corrections and the options to re-export with, and an export with that room runs."""
    masks = _corrected_masks(tmp_path)
    clip = EXAMPLES / "car-shadow.mp4"
    runner = CliRunner()
    result = runner.invoke(app, ["segment", str(clip), "--mask-dir", str(masks), "--engine", "onnx", "--export-dir",
                                 str(tiny_exports["onnx"]), "--end", "12", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {clip}: 2 annotated frame(s) (1 giving new objects, "
                                                   "1 correction(s))"), result.stderr
    assert "latest correction" in lines[0] and "this export holds 3" in lines[0]
    assert "re-export with `stma export --refs 4 --memory-frames 10`" in lines[0]
    assert not (tmp_path / "o").exists()  # refused before any frame was written
    result = runner.invoke(app, ["segment", str(clip), "--mask-dir", str(masks), "--engine", "onnx", "--onnx-dir",
                                 str(tiny_exports["onnx_room"]), "--end", "12", "--out", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "o" / "car-shadow").glob("*.png"))) == 12


def test_an_export_for_fewer_objects_is_refused_up_front(tmp_path: Path, tiny_exports) -> None:
    """Object 2 first given on frame 8 of a 1-object export: the run stopped at frame 8 (the Python API after
    yielding frames 0-7); the objects the masks give are now counted before any frame, like the memory room."""
    from stma_core.errors import StmaInputError
    from stma_core.inference.onnx_session import exported_session_factory

    folder = tmp_path / "masks"
    folder.mkdir()
    car = (np.asarray(Image.open(EXAMPLES / "car-shadow_mask.png").convert("L")) > 0).astype(np.uint8)
    box = np.zeros_like(car)
    box[20:120, 20:160] = 2
    Image.fromarray(car).save(folder / "00000.png")
    Image.fromarray(box).save(folder / "00008.png")
    clip = EXAMPLES / "car-shadow.mp4"
    result = CliRunner().invoke(app, ["segment", str(clip), "--mask-dir", str(folder), "--engine", "onnx",
                                      "--export-dir", str(tiny_exports["onnx_room"]), "--end", "12", "--out",
                                      str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"error: {clip}: 2 annotated frame(s) give 2 objects ([1, 2]) but this export handles "
                             "at most 1; re-export with `stma export --objects 2`\n")
    assert not (tmp_path / "o").exists()
    session = exported_session_factory(tiny_exports["onnx_room"], threads=1)()
    frames = [np.zeros((480, 854, 3), np.uint8)] * 9
    with pytest.raises(StmaInputError, match="give 2 objects"):
        next(session.propagate(frames, {0: car, 8: box}))
    assert session.frame_index == 0


def test_torchscript_export_runs_from_the_cli(tmp_path: Path, tiny_exports) -> None:
    """--engine torchscript runs a TorchScript export (it used to be refused as 'not onnx', with no CLI way
    to run it), with the masks of the same model's ONNX export; a mix-up names the right engine."""
    clip, mask = EXAMPLES / "car-shadow.mp4", EXAMPLES / "car-shadow_mask.png"
    runner = CliRunner()
    outs = {}
    for engine, folder in (("torchscript", tiny_exports["torchscript"]), ("onnx", tiny_exports["onnx"])):
        result = runner.invoke(app, ["segment", str(clip), "--mask", str(mask), "--engine", engine, "--export-dir",
                                     str(folder), "--end", "4", "--out", str(tmp_path / engine), "-q", "-f", "prob"])
        assert result.exit_code == 0, result.output
        outs[engine] = sorted((tmp_path / engine / "car-shadow.prob" / "1").glob("*.png"))
    assert len(outs["onnx"]) == 4 and len(outs["torchscript"]) == 4
    for a, b in zip(outs["torchscript"], outs["onnx"]):  # soft masks of a random model: not all 0 or 255
        x, y = np.asarray(Image.open(a), np.int16), np.asarray(Image.open(b), np.int16)
        assert np.abs(x - y).max() <= 2, a.name
    assert 0 < np.asarray(Image.open(outs["onnx"][-1])).mean() < 255
    wrong = runner.invoke(app, ["segment", str(clip), "--mask", str(mask), "--engine", "onnx", "--onnx-dir",
                                str(tiny_exports["torchscript"]), "--out", str(tmp_path / "w")])
    assert wrong.exit_code == 2 and "this export is torchscript, not onnx; run it with --engine torchscript" in \
        wrong.stderr, wrong.output
    ignored = runner.invoke(app, ["segment", str(clip), "--mask", str(mask), "--export-dir",
                                  str(tiny_exports["onnx"]), "--out", str(tmp_path / "w")])
    assert ignored.exit_code == 2 and "pass --engine onnx or --engine torchscript" in ignored.stderr, ignored.output


def test_a_damaged_graph_file_is_named(tmp_path: Path, tiny_exports) -> None:
    """An export folder whose graph file was cut off (a partial copy, a full disk) or replaced failed on the first
    frame that needed the graph with 'segmentation failed (InvalidProtobuf ...); rerun, or report a bug', exit 1.
    It now names the file and says to re-export, exit 2, nothing written."""
    import shutil

    clip, mask = EXAMPLES / "car-shadow.mp4", EXAMPLES / "car-shadow_mask.png"
    for engine, kind in (("onnx", "ONNX"), ("torchscript", "TorchScript")):
        folder = tmp_path / f"{engine}-copy"
        shutil.copytree(tiny_exports[engine], folder)
        step = folder / json.loads((folder / "manifest.json").read_text())["graphs"]["step_1"]["file"]
        step.write_bytes(step.read_bytes()[:1000])
        result = CliRunner().invoke(app, ["segment", str(clip), "--mask", str(mask), "--engine", engine,
                                          "--export-dir", str(folder), "--end", "3", "--out", str(tmp_path / "o"), "-q"])
        lines = result.stderr.splitlines()
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert f"{step}: not a readable {kind} graph (" in lines[0] and "re-run `stma export`" in lines[0], lines[0]
        assert not (tmp_path / "o").exists()


def test_an_export_folder_given_as_a_checkpoint_says_what_it_is(tmp_path: Path, tiny_exports) -> None:
    """--checkpoint EXPORT_DIR (segment, eval, export, train --init-from) said 'a folder, and it holds no
    model.safetensors; pass ... a stma train run folder', which does not tell what the folder is or how to run it."""
    folder = tiny_exports["torchscript"]
    result = CliRunner().invoke(app, ["segment", str(EXAMPLES / "car-shadow.mp4"), "--mask",
                                      str(EXAMPLES / "car-shadow_mask.png"), "--checkpoint", str(folder), "--end", "2",
                                      "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and result.stderr.splitlines() == [
        f"error: {folder}: a `stma export` folder (graphs and manifest.json), not a checkpoint; run it with `stma "
        "segment --engine onnx|torchscript --export-dir` (as it was exported), or pass the .safetensors checkpoint "
        "it was exported from"], result.output
    assert not (tmp_path / "o").exists()
