"""Writes an export folder: graph files (ONNX or TorchScript) plus manifest.json, all or nothing.

The folder is built in a temporary sibling and renamed into place only once every graph has been
written and checked against PyTorch, so a crash never leaves something that looks like an export.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from stma_core.checkpoint import DEFAULT_CHECKPOINT, load_model, recommended_inference, resolve_checkpoint
from stma_core.config import MIN_SIZE, SIZE_TOO_SMALL, InferenceConfig, resolve_inference_config
from stma_core.errors import StmaInputError, StmaOutputError
from stma_core.export.graphs import FrameGraph, StepGraph, ValueGraph
from stma_core.export.manifest import FORMATS, GraphSpec, Manifest, TensorSpec
from stma_core.ids import MAX_OBJECTS
from stma_core.io.atomic import commit, remove_path
from stma_core.model.network import STMANetwork

OPSET = 17
VERIFY_TOLERANCE = 1e-3  # max |difference| of any verified output (probabilities, keys, features)


class ExportVerificationError(RuntimeError):
    """An exported graph does not reproduce PyTorch: a converter problem, not the user's input."""


def export_model(checkpoint: str | Path | None, out_dir: str | Path, fmt: str = "onnx",
                 size: tuple[int, int] = (480, 854), objects: int = 5, memory_frames: int | None = None,
                 refs: int | None = None, overwrite: bool = False, verify: bool = True,
                 config: InferenceConfig | None = None, top_k: int | None = None,
                 kernel_sigma: int | None = None) -> Manifest:
    """Exports the frame, value and step graphs of a checkpoint (None = the shipped default) to out_dir.

    size: (H, W) frames are processed at (graphs use it padded to multiples of 16); a video is accepted
    when its frames scale to that size, as `stma segment --size min(H, W)` would scale them.
    objects: value_<n> and step_<n> graphs are written for n = 1..objects (no wasted work per object).
    memory_frames / refs: frames the temporal / spatial memory may hold. Default: capacity + 1 pinned
    first frame; a smaller number shrinks the capacity, a larger one leaves room for objects first
    annotated on later frames (each pins a frame).
    config: inference settings (top_k and memory policy) replacing the checkpoint's recommended ones;
    top_k: the readout's k baked into the step graphs (None = config's, else the checkpoint's).
    kernel_sigma: the readout kernel's sigma baked into the step graphs (None = config's, else the
    checkpoint's; 0 = none).
    """
    if fmt not in FORMATS:
        raise StmaInputError(f"--format: unknown format {fmt!r}; use {' or '.join(FORMATS)}")
    height, width = (int(v) for v in size)
    if min(height, width) < MIN_SIZE:
        raise StmaInputError(f"--size: {height} {width} is {SIZE_TOO_SMALL}; use at least {MIN_SIZE} for each, "
                             f"e.g. --size 480 854")
    if not 1 <= objects <= MAX_OBJECTS:
        raise StmaInputError(f"--objects: {objects} is out of range; use 1..{MAX_OBJECTS}")
    network, model_config, metadata = load_model(checkpoint, "cpu")
    try:  # InferenceConfig checks every setting against SETTING_MINIMUMS
        base = resolve_inference_config(recommended_inference(metadata), config, size=min(height, width),
                                        top_k=top_k, kernel_sigma=kernel_sigma)
    except ValueError as exc:
        raise StmaInputError(str(exc)) from exc
    memory_frames = base.temporal_capacity + 1 if memory_frames is None else memory_frames
    refs = base.spatial_capacity + 1 if refs is None else refs
    if memory_frames < 1 or refs < 1:
        raise StmaInputError("--memory-frames and --refs must be at least 1 (the first annotated frame is pinned)")
    out = Path(out_dir)
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise StmaOutputError(f"{out}: already exists; pass --overwrite to replace it or choose another --out")
    inference = resolve_inference_config(base, spatial_capacity=min(base.spatial_capacity, refs - 1),
                                         temporal_capacity=min(base.temporal_capacity, memory_frames - 1))
    padded = (-(-height // 16) * 16, -(-width // 16) * 16)
    manifest = Manifest(fmt, model_config, inference, (height, width), padded, (padded[0] // 16, padded[1] // 16),
                        objects, memory_frames, refs,
                        checkpoint=str(resolve_checkpoint(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the export is an ordinary folder
    except OSError as exc:
        raise StmaOutputError(f"{out.parent}: cannot create the export folder ({exc.strerror or exc}); "
                              "pass --out in a writable folder") from exc
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and exporter chatter about constant shapes
            for name, graph, inputs in _graphs(network, manifest):
                manifest.graphs[name] = _write(graph, inputs, tmp / f"{name}{FORMATS[fmt]}", fmt, verify)
        manifest.save(tmp)
        commit(tmp, out, overwrite)
    except OSError as exc:
        raise StmaOutputError(f"{out}: cannot write the export ({exc.strerror or exc}); "
                              "pass --out in a writable folder with free space") from exc
    finally:
        remove_path(tmp)
    return manifest


def _graphs(network: STMANetwork, m: Manifest):
    """Yields (name, module, example inputs) for every graph, with inputs of the exported shapes."""
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, *m.padded_size, generator=gen)
    frame = FrameGraph(network).eval()
    yield "frame", frame, (image,)
    tokens, f16, f8, f4 = frame(image)
    n_tok = m.tokens
    mc = m.model
    for n in range(1, m.objects + 1):
        masks = torch.rand(1, n, *m.padded_size, generator=gen)
        masks = masks / masks.sum(1, keepdim=True).clamp(min=1)
        yield f"value_{n}", ValueGraph(network).eval(), (f8, f16, masks)
        valid_m = torch.ones(1, m.references)
        valid_m[0, m.references // 2 + 1:] = 0  # exercise the padding path
        valid_t = torch.ones(1, n, m.memory_frames)
        valid_t[0, :, m.memory_frames // 2 + 1:] = 0
        valid_t[0, 1:, 0] = 0  # later objects' groups start later
        inputs = (tokens, f8, f4, tokens[:, None].expand(1, m.references, n_tok, mc.embed_dim).contiguous(), valid_m,
                  torch.randn(1, m.memory_frames * n_tok, mc.key_dim, generator=gen),
                  torch.randn(1, n, mc.value_dim, m.memory_frames * n_tok, generator=gen), valid_t)
        yield f"step_{n}", StepGraph(network, m.grid, m.inference.top_k, m.inference.kernel_sigma).eval(), inputs


def _write(graph: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, fmt: str, verify: bool) -> GraphSpec:
    expected = graph(*inputs)
    expected = expected if isinstance(expected, tuple) else (expected,)
    if fmt == "onnx":
        torch.onnx.export(graph, inputs, str(path), input_names=list(graph.input_names),
                          output_names=list(graph.output_names), opset_version=OPSET, dynamo=False,
                          do_constant_folding=True)
        if verify:
            import onnx
            import onnxruntime as ort

            onnx.checker.check_model(str(path))
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = session.run(None, {k: v.numpy() for k, v in zip(graph.input_names, inputs)})
            _compare(path, expected, [torch.from_numpy(g) for g in got])
    else:
        traced = torch.jit.trace(graph, inputs, check_trace=False)
        traced.save(str(path))
        if verify:
            got = torch.jit.load(str(path))(*inputs)
            _compare(path, expected, list(got) if isinstance(got, tuple) else [got])
    return GraphSpec(path.name,
                     [TensorSpec(n, list(t.shape)) for n, t in zip(graph.input_names, inputs)],
                     [TensorSpec(n, list(t.shape)) for n, t in zip(graph.output_names, expected)])


def _compare(path: Path, expected: tuple[torch.Tensor, ...], got: list[torch.Tensor]) -> None:
    """Refuses an export whose graph does not reproduce PyTorch (a converter bug, not user error)."""
    for want, have in zip(expected, got):
        diff = (want - have).abs().max().item() if want.numel() else 0.0
        if want.shape != have.shape or not diff <= VERIFY_TOLERANCE * max(1.0, want.abs().max().item()):
            raise ExportVerificationError(f"{path.name}: exported graph differs from PyTorch (max |diff| {diff:.3g}); "
                               "please report this with your torch and onnx versions")
