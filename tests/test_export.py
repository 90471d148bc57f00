"""`stma export` and the exported-graph propagator: same masks as PyTorch, exact memory padding, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner, Result

from conftest import read_davis_frames, read_davis_mask
from stma_cli.app import app
from stma_core.checkpoint import DEFAULT_CHECKPOINT, load_model, save_model
from stma_core.config import InferenceConfig, ModelConfig
from stma_core.errors import StmaInputError
from stma_core.export import export_model, load_manifest
from stma_core.inference.onnx_session import exported_session_factory, make_onnx_propagator_factory
from stma_core.inference.session import session_factory
from stma_core.model.network import MemoryGroup, STMANetwork

TINY = ModelConfig(embed_dim=32, stml_depth=2, num_heads=2, key_dim=16, value_dim=32, decoder_dims=(16, 16, 8))
TINY_INFERENCE = InferenceConfig(top_k=5)  # what the tiny checkpoint recommends: fewer than the tokens of a frame
CLIP_SIZE = (240, 427)  # car-shadow (854x480) processed at short side 240


def export_cli(*args: object) -> Result:
    return CliRunner().invoke(app, ["export", *(str(a) for a in args)])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    save_model(STMANetwork(TINY, pretrained_trunk=False), TINY, path, inference=TINY_INFERENCE)
    return path


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default architecture, randomly initialised (pretrained EfficientNet trunk)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("random") / "m.safetensors"
    save_model(STMANetwork(ModelConfig()), ModelConfig(), path)
    return path


def test_cli_writes_graphs_and_manifest_atomically_and_refuses_to_overwrite(tiny_checkpoint: Path, tmp_path: Path):
    out = tmp_path / "export"
    result = export_cli("--format", "onnx", "--checkpoint", tiny_checkpoint, "--out", out, "--size", 64, 90,
                        "--objects", 2, "--memory-frames", 4, "--refs", 2)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    data = json.loads((out / "manifest.json").read_text())
    assert data["format"] == "onnx" and data["model"]["embed_dim"] == 32
    assert data["frame_size"] == [64, 90] and data["padded_size"] == [64, 96] and data["grid"] == [4, 6]
    assert sorted(data["graphs"]) == ["frame", "step_1", "step_2", "value_1", "value_2"]
    assert data["inference"]["temporal_capacity"] == 3 and data["inference"]["spatial_capacity"] == 1
    step = data["graphs"]["step_2"]
    assert [t["name"] for t in step["inputs"]] == ["tokens", "f8", "f4", "references", "reference_valid",
                                                  "memory_keys", "memory_values", "memory_valid"]
    assert {t["name"]: t["shape"] for t in step["outputs"]} == {
        "probabilities": [3, 64, 96], "key": [1, 24, 16], "usage": [1, 4 * 24]}
    for name, spec in data["graphs"].items():
        session = ort.InferenceSession(str(out / spec["file"]), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == [t["name"] for t in spec["inputs"]], name
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temporary folder left behind

    again = export_cli("--checkpoint", tiny_checkpoint, "--out", out, "--size", 64, 90, "--objects", 1)
    assert_bad_input(again, str(out), "--overwrite")
    replaced = export_cli("--checkpoint", tiny_checkpoint, "--out", out, "--size", 64, 90, "--objects", 1,
                          "--overwrite", "--quiet")
    assert replaced.exit_code == 0, replaced.output
    assert sorted(json.loads((out / "manifest.json").read_text())["graphs"]) == ["frame", "step_1", "value_1"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def assert_bad_input(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_cli_bad_input_is_one_line(tiny_checkpoint: Path, tmp_path: Path):
    assert_bad_input(export_cli("--checkpoint", tmp_path / "nope.safetensors", "--out", tmp_path / "a"),
                     "nope.safetensors", "not found")
    assert_bad_input(export_cli("--format", "tflite", "--checkpoint", tiny_checkpoint, "--out", tmp_path / "b"),
                     "tflite")
    assert_bad_input(export_cli("--checkpoint", tiny_checkpoint, "--out", tmp_path / "c", "--size", 8, 64), "--size")
    assert_bad_input(export_cli("--checkpoint", tiny_checkpoint, "--out", tmp_path / "d", "--objects", 0), "--objects")
    assert_bad_input(export_cli("--checkpoint", tiny_checkpoint, "--out", tmp_path / "e", "--kernel-sigma", -1),
                     "--kernel-sigma")
    assert not any(tmp_path.iterdir())


def test_size_that_is_not_two_numbers_is_one_clear_line(tiny_checkpoint: Path, tmp_path: Path):
    """`--size 288` (one number, as `stma segment --size` takes) used to give click's "'--out' is not a valid
    int" or "requires 2 arguments" in a box; now one line says --size takes H W, wherever --size stands."""
    out = tmp_path / "export"
    wanted = "--size takes two numbers H W, e.g. --size 288 512"
    for args, problem in ((["--size", 288, "--out", out], "one number given (288)"),
                          (["--out", out, "--size", 288], "one number given (288)"),
                          (["--size", 288, "-q", "--out", out], "one number given (288)"),
                          (["--size=288", "--out", out], "one number given (288)"),
                          (["--out", out, "--size", "288,512"], "'288,512' is not two numbers"),
                          (["--out", out, "--size"], "no numbers given")):
        result = export_cli("--checkpoint", tiny_checkpoint, *args)
        assert_bad_input(result, f"error: --size: {problem}; {wanted}")
        assert "Traceback" not in result.output and result.stdout == ""
    # two numbers under the minimum: the size check names it
    assert_bad_input(export_cli("--checkpoint", tiny_checkpoint, "--out", out, "--size", 48, 90),
                     "--size: 48 90 is too small", "use at least 64")
    assert not any(tmp_path.iterdir())


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_step_graph_removes_memory_padding_exactly(tiny_checkpoint: Path, tmp_path: Path):
    """ONNX and TorchScript step graphs with 2 of 3 references and 2 of 4 memory frames real == PyTorch unpadded,
    with the second object in a group of its own that arrived on the second memory frame."""
    net, _, _ = load_model(tiny_checkpoint)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        frame = net.encode_frame(torch.rand(1, 3, 64, 96, generator=gen))
        n_tok = frame.tokens.shape[1]
        refs = torch.randn(1, 2, n_tok, 32, generator=gen)
        keys = torch.randn(1, 2 * n_tok, 16, generator=gen)
        values = torch.randn(1, 2, 32, 2 * n_tok, generator=gen)
        groups = [MemoryGroup(values[:, :1]), MemoryGroup(values[:, 1:, :, n_tok:])]
        want = net.predict(frame, keys, groups, TINY_INFERENCE.top_k, references=refs, kernel_sigma=2)
        prob, key, usage = want.probabilities[0], want.key, want.usage
    padded = [frame.tokens, frame.f8, frame.f4,
              torch.cat([refs, torch.randn(1, 1, n_tok, 32, generator=gen)], 1), torch.tensor([[1.0, 1, 0]]),
              torch.cat([keys, torch.randn(1, 2 * n_tok, 16, generator=gen)], 1),
              torch.cat([values, torch.randn(1, 2, 32, 2 * n_tok, generator=gen)], 3),
              torch.tensor([[[1.0, 1, 0, 0], [0, 1, 0, 0]]])]
    for fmt in ("onnx", "torchscript"):
        manifest = export_model(tiny_checkpoint, tmp_path / fmt, fmt, size=(64, 96), objects=2, memory_frames=4, refs=3,
                                kernel_sigma=2)  # the readout kernel is baked into the step graphs
        spec = manifest.graphs["step_2"]
        assert manifest.inference.kernel_sigma == 2
        if fmt == "onnx":
            session = ort.InferenceSession(str(tmp_path / fmt / spec.file), providers=["CPUExecutionProvider"])
            got = [torch.from_numpy(o) for o in session.run(None, {n: t.numpy() for n, t in zip(spec.input_names(),
                                                                                                padded)})]
        else:
            got = list(torch.jit.load(str(tmp_path / fmt / spec.file))(*padded))
        torch.testing.assert_close(got[0], prob, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got[1], key, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got[2][:, : 2 * n_tok], usage, atol=1e-5, rtol=1e-4)
        assert got[2][:, 2 * n_tok:].abs().max() == 0  # padding is never read


def _split_in_two(mask: np.ndarray) -> np.ndarray:
    """The clip's object as ids 1 (left half of its pixels) and 2 (right half)."""
    ys, xs = np.nonzero(mask)
    out = np.zeros_like(mask)
    out[ys, xs] = np.where(xs > np.median(xs), 2, 1)
    return out


def _compare_on_clip(davis16: Path, checkpoint: Path | None, export_dir: Path, fmt: str, objects: int,
                     frames: int = 8) -> tuple[list[list[float]], float]:
    """Runs PyTorch (session_factory) and the export on the clip; -> per-frame IoUs per object, max |prob diff|."""
    clip = read_davis_frames(davis16, "car-shadow", frames)
    mask = read_davis_mask(davis16, "car-shadow", 0)
    mask = _split_in_two(mask) if objects == 2 else mask
    reference = session_factory(str(checkpoint) if checkpoint else None, device="cpu", size=min(CLIP_SIZE))()
    exported = exported_session_factory(export_dir, threads=1)()
    ious, diffs = [], []
    for i, frame in enumerate(clip):
        want, got = reference.step(frame, mask if i == 0 else None), exported.step(frame, mask if i == 0 else None)
        ious.append([iou(want == o, got == o) for o in range(1, objects + 1)])
        diffs.append((reference.probabilities - exported.probabilities).abs().max().item())
    assert len(exported.temporal) == len(reference.temporal) and len(exported.spatial) == len(reference.spatial)
    return ious, max(diffs)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_propagator_matches_pytorch_on_davis_clip(davis16: Path, random_checkpoint: Path, tmp_path: Path,
                                                            fmt: str):
    export_dir = tmp_path / fmt
    export_model(random_checkpoint, export_dir, fmt, size=CLIP_SIZE, objects=2)
    ious, diff = _compare_on_clip(davis16, random_checkpoint, export_dir, fmt, objects=1)
    assert min(min(f) for f in ious) >= 0.99, ious
    assert diff < 1e-3
    # Two objects: a random network gives both nearly equal scores on many pixels (ties within 1e-6),
    # so its argmax is not a meaningful comparison; the probabilities themselves must agree.
    _, diff = _compare_on_clip(davis16, random_checkpoint, export_dir, fmt, objects=2)
    assert diff < 1e-3


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(), reason=f"shipped model {DEFAULT_CHECKPOINT.name} not built yet")
def test_onnx_propagator_matches_pytorch_with_the_shipped_model(davis16: Path, tmp_path: Path):
    export_dir = tmp_path / "onnx"
    export_model(None, export_dir, "onnx", size=CLIP_SIZE, objects=2)
    for objects in (1, 2):
        ious, diff = _compare_on_clip(davis16, None, export_dir, "onnx", objects)
        assert min(min(f) for f in ious) >= 0.99, ious
        assert diff < 1e-3


def test_propagator_reports_what_to_re_export(tiny_checkpoint: Path, tmp_path: Path):
    export_model(tiny_checkpoint, tmp_path / "e", "onnx", size=(64, 96), objects=2, memory_frames=3, refs=1)
    manifest = load_manifest(tmp_path / "e")
    assert manifest.inference.spatial_capacity == 0 and manifest.inference.temporal_capacity == 2
    assert manifest.inference.kernel_sigma == 0
    data = json.loads((tmp_path / "e" / "manifest.json").read_text())
    del data["inference"]["kernel_sigma"]  # exports made before the readout kernel existed had none
    (tmp_path / "e" / "manifest.json").write_text(json.dumps(data))
    assert load_manifest(tmp_path / "e").inference.kernel_sigma == 0
    factory = make_onnx_propagator_factory(tmp_path / "e", threads=1)
    frame = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    first = np.zeros((64, 96), np.uint8)
    first[10:30, 10:40] = 1
    with pytest.raises(StmaInputError, match="processed at 72x48 but this export is for 96x64; re-export with --size 48 72"):
        factory().step(frame[:48, :72], first[:48, :72])
    three = first.copy()
    three[40:50, 10:20], three[40:50, 30:40] = 2, 3
    propagator = factory()
    with pytest.raises(StmaInputError, match="--objects 3"):
        propagator.step(frame, three)
    assert propagator.objects.user_ids == [] and propagator.frame_index == 0  # the refused objects are not kept
    propagator = factory()
    propagator.step(frame, first)
    second = first.copy()
    second[40:60, 50:90] = 2  # first given on frame 1: pins a second reference frame
    with pytest.raises(StmaInputError, match="frame 1: objects first given.*re-export with `stma export --refs 2 "
                                             "--memory-frames 4`"):
        propagator.step(frame, second)  # refused on the frame that needs the room, before any state changes
    assert propagator.objects.user_ids == [1]
    propagator.add_mask(1, second)  # the same through add_mask: the refusal keeps the mask (it was dropped, so a
    with pytest.raises(StmaInputError, match="frame 1: objects first given"):  # retry ran without object 2)
        propagator.step(frame)
    assert propagator.objects.user_ids == [1] and propagator.frame_index == 1 and 1 in propagator.pending_masks
    with pytest.raises(StmaInputError, match=r"2 annotated frame\(s\) \(2 giving new objects, 0 correction"):
        factory().check_annotations([first, second])
    propagator = factory()  # the engine's own check, should the session's ever miss a case
    propagator.step(frame, first)
    propagator.objects.add([2], 1)
    propagator.spatial.add(propagator.spatial.pinned[0], pin=True)
    with pytest.raises(StmaInputError, match="needs 2 reference frames .*latest correction.*--refs 2"):
        propagator.step(frame)
    with pytest.raises(StmaInputError, match="capacities"):
        exported_session_factory(tmp_path / "e", config=InferenceConfig(size=64, temporal_capacity=8))
    with pytest.raises(StmaInputError, match=r"--kernel-sigma 3 differs from the 0 .*\(kernel_sigma=0 in Python\) or re-export with --kernel-sigma 3"):
        exported_session_factory(tmp_path / "e", size=64, kernel_sigma=3)
    export_model(tiny_checkpoint, tmp_path / "ts", "torchscript", size=(64, 96), objects=1)
    with pytest.raises(StmaInputError, match="not onnx"):
        make_onnx_propagator_factory(tmp_path / "ts")


def test_speedups_keep_outputs():
    """The sparse top-k readout and the BatchNorm-folded trunk give PyTorch's original numbers (float noise)."""
    from stma_core.model.lite_backbone import LiteTrunk, fuse_for_inference

    gen = torch.Generator().manual_seed(0)
    query, keys = torch.randn(2, 50, 16, generator=gen), torch.randn(2, 120, 16, generator=gen)
    values = torch.randn(2, 3, 8, 120, generator=gen)
    net = STMANetwork(TINY, pretrained_trunk=False)
    sim = (2 * query @ keys.transpose(1, 2) - keys.pow(2).sum(-1)[:, None, :]) * 16**-0.5  # the original form
    top, idx = sim.topk(5, dim=-1)
    weights = torch.zeros_like(sim).scatter_(-1, idx, top.softmax(-1))
    want = (values.reshape(2, 24, 120) @ weights.transpose(1, 2)).reshape(2, 3, 8, 50), weights.sum(1) * 3
    with torch.no_grad():
        sparse = net.read_memory(query, keys, [MemoryGroup(values)], 5)
    dense = net.read_memory(query.requires_grad_(), keys, [MemoryGroup(values)], 5)  # training keeps the dense form
    for got in (sparse, dense):
        torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)
    # with the readout kernel: the bias is added to the kept matches only, in both forms
    from stma_core.model.network import ReadoutKernel
    kernel = ReadoutKernel.from_affinity(sim, (5, 10), 3)
    top = top + kernel.bias(idx)
    weights = torch.zeros_like(sim).scatter_(-1, idx, top.softmax(-1))
    want = (values.reshape(2, 24, 120) @ weights.transpose(1, 2)).reshape(2, 3, 8, 50), weights.sum(1) * 3
    with torch.no_grad():
        sparse = net.read_memory(query, keys, [MemoryGroup(values)], 5, kernel_sigma=3, grid=(5, 10))
    dense = net.read_memory(query, keys, [MemoryGroup(values)], 5, kernel_sigma=3, grid=(5, 10))
    for got in (sparse, dense):
        torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)
    trunk = LiteTrunk(pretrained=False)
    for m in trunk.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
    trunk.eval()
    image = torch.rand(1, 3, 64, 96, generator=gen)
    with torch.no_grad():
        want_maps, got_maps = trunk(image), fuse_for_inference(trunk)(image)
    for name in want_maps:
        torch.testing.assert_close(got_maps[name], want_maps[name], atol=1e-4, rtol=1e-4)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in trunk.modules())  # the original is untouched


def test_overwrite_never_replaces_the_folder_of_the_checkpoint(tiny_checkpoint: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch):
    """`stma export --checkpoint RUN --out RUN --overwrite` (a `stma train` run folder, exported in place) replaced
    the run folder, its model.safetensors and training state included, with the graphs. An --out that is or
    holds the checkpoint, or is the current folder, is now refused before anything is exported."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(tiny_checkpoint.read_bytes())
    (run / "state.pt").write_text("training state")
    for checkpoint, out in ((run, run), (run / "model.safetensors", run), (run / "model.safetensors", tmp_path)):
        result = export_cli("--format", "torchscript", "--checkpoint", checkpoint, "--out", out, "--size", 64, 90,
                            "--overwrite")
        assert_bad_input(result, f"{out}: is or holds --checkpoint {checkpoint}, which --overwrite would replace "
                                 "with the export; pass --out with a folder of its own, e.g. export/")
    monkeypatch.chdir(run)
    result = export_cli("--format", "torchscript", "--checkpoint", tiny_checkpoint, "--out", ".", "--size", 64, 90,
                        "--overwrite")
    assert_bad_input(result, ".: is or holds the current folder")
    assert sorted(p.name for p in run.iterdir()) == ["model.safetensors", "state.pt"]
    assert (run / "model.safetensors").read_bytes() == tiny_checkpoint.read_bytes()


def test_overwrite_never_replaces_the_folder_holding_a_linked_checkpoint(tiny_checkpoint: Path, tmp_path: Path):
    """`--checkpoint models/m.safetensors --out models --overwrite`, with m.safetensors a symlink to the real file
    elsewhere, replaced the folder the checkpoint was given in (the link and everything beside it) with the graphs:
    only the link's target was compared with --out. The checkpoint as given is now protected too."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "m.safetensors").symlink_to(tiny_checkpoint)
    (models / "notes.txt").write_text("mine")
    for out in (models, tmp_path / "models" / ".." / "models"):
        result = export_cli("--format", "torchscript", "--checkpoint", models / "m.safetensors", "--out", out,
                            "--size", 64, 90, "--overwrite")
        assert_bad_input(result, f"{out}: is or holds --checkpoint {models / 'm.safetensors'}, which --overwrite")
    assert sorted(p.name for p in models.iterdir()) == ["m.safetensors", "notes.txt"]
