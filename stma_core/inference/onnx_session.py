"""Runs an `stma export` folder (ONNX through onnxruntime, or TorchScript) as an engine of a VideoSession;
on the command line: `stma segment --engine onnx|torchscript --export-dir DIR`.

    factory = make_onnx_propagator_factory("export/")      # loads the graphs once
    session = factory()                                     # a VideoSession(ExportedEngine), one per video
    ids = session.step(frame, first_mask)                   # HxW uint8, the user's ids

The memory policy (what is memorized when, pinning, LFU eviction, object groups) is VideoSession's
own; ExportedEngine only runs the graphs. The step graph (STMANetwork.predict, traced) has fixed
memory sizes; the engine pads memories to them with entries the graph masks out.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch

from stma_core.config import InferenceConfig, resolve_inference_config
from stma_core.errors import StmaInputError
from stma_core.export.manifest import Manifest, load_manifest
from stma_core.inference.engine import MemoryState
from stma_core.inference.session import VideoSession
from stma_core.model.network import FrameFeatures, Prediction


class GraphRunner(Protocol):
    def run(self, name: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Runs graph `name` of the manifest on CPU float tensors (in manifest input order)."""
        ...


def _damaged_graph(path: Path, kind: str, exc: Exception) -> str:
    """A graph file of an export folder that does not load (cut off by a copy or a full disk, replaced): it
    was 'segmentation failed (...); rerun, or report a bug', exit 1, on the first frame that needed it."""
    why = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:200]
    return (f"{path}: not a readable {kind} graph ({why}); the export folder is damaged: re-run `stma export` "
            "(or copy the folder again)")


class OrtRunner:
    """onnxruntime sessions, created on first use (a 1-object video never loads step_3) and shared by videos."""

    def __init__(self, folder: Path, manifest: Manifest, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise StmaInputError("onnxruntime is not installed; pip install 'stma[onnx]' to use --engine onnx") from exc
        self._ort = ort
        self.folder, self.manifest = folder, manifest
        self.options = ort.SessionOptions()
        # Idle worker threads sleep instead of spinning: on a CPU shared with other work, spinning
        # threads steal the cores the busy ones need (measured 2x slower on a loaded 2-core machine).
        self.options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            self.options.intra_op_num_threads = threads
            self.options.inter_op_num_threads = 1
        self._sessions: dict[str, object] = {}

    def run(self, name: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        spec = self.manifest.graphs[name]
        if name not in self._sessions:
            path = self.folder / spec.file
            try:
                self._sessions[name] = self._ort.InferenceSession(str(path), self.options,
                                                                  providers=["CPUExecutionProvider"])
            except Exception as exc:  # onnxruntime's InvalidProtobuf, Fail, NoSuchFile: a damaged export
                raise StmaInputError(_damaged_graph(path, "ONNX", exc)) from None
        feeds = {n: np.ascontiguousarray(t.numpy(), np.float32) for n, t in zip(spec.input_names(), inputs)}
        return [torch.from_numpy(o) for o in self._sessions[name].run(None, feeds)]


class TorchScriptRunner:
    """torch.jit modules of a `--format torchscript` export, loaded on first use."""

    def __init__(self, folder: Path, manifest: Manifest) -> None:
        self.folder, self.manifest = folder, manifest
        self._modules: dict[str, torch.jit.ScriptModule] = {}

    def run(self, name: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        if name not in self._modules:
            with warnings.catch_warnings():  # torch.jit is deprecated in favour of torch.export, still works
                warnings.simplefilter("ignore", FutureWarning)
                path = self.folder / self.manifest.graphs[name].file
                try:
                    self._modules[name] = torch.jit.load(str(path), map_location="cpu")
                except Exception as exc:  # RuntimeError from the zip reader, ValueError: a damaged export
                    raise StmaInputError(_damaged_graph(path, "TorchScript", exc)) from None
        out = self._modules[name](*inputs)
        return list(out) if isinstance(out, (tuple, list)) else [out]


class ExportedEngine:
    """Engine over the graphs of an export folder; pads memories to the step graph's fixed sizes.

    Runs on CPU. Limits of the export (objects, memory frames, references, frame size, top_k) raise
    StmaInputError naming the `stma export` option that lifts them.
    """

    def __init__(self, runner: GraphRunner, manifest: Manifest) -> None:
        self.runner, self.manifest = runner, manifest

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def frame_size(self) -> tuple[int, int] | None:
        return tuple(self.manifest.frame_size)

    @property
    def object_limit(self) -> int:
        """Most objects a video may have (the step and value graphs written); VideoSession checks annotations
        against it before any frame."""
        return self.manifest.objects

    @property
    def memory_limits(self) -> tuple[int, int]:
        """(reference frames, temporal-memory frames) the step graph holds; VideoSession checks
        annotations against them before running out of room mid-video."""
        return self.manifest.references, self.manifest.memory_frames

    def check_config(self, config: InferenceConfig) -> None:
        """Raises StmaInputError when `config` needs more than the export holds."""
        m = self.manifest
        if config.temporal_capacity + 1 > m.memory_frames or config.spatial_capacity + 1 > m.references:
            raise StmaInputError(
                f"memory capacities {config.temporal_capacity}/{config.spatial_capacity} (+1 pinned frame) exceed "
                f"the export's {m.memory_frames} memory frames / {m.references} references; "
                "re-export with larger --memory-frames / --refs")
        _check_readout(config.top_k, config.kernel_sigma, m.inference)

    def encode_frame(self, image: torch.Tensor) -> FrameFeatures:
        if tuple(image.shape[-2:]) != tuple(self.manifest.padded_size):
            h, w = image.shape[-2:]
            eh, ew = self.manifest.frame_size
            raise StmaInputError(f"frames are processed at {w}x{h} (padded to multiples of 16) but this export is "
                                 f"for {ew}x{eh}; re-export with --size for this video's processing size")
        tokens, f16, f8, f4 = self.runner.run("frame", [image])
        return FrameFeatures(tokens, f16, f8, f4)

    def encode_value(self, frame: FrameFeatures, masks: torch.Tensor) -> torch.Tensor:
        return self.runner.run(f"value_{self._objects(masks.shape[1])}", [frame.f8, frame.f16, masks])[0]

    def predict(self, frame: FrameFeatures, memory: MemoryState, top_k: int, kernel_sigma: int = 0) -> Prediction:
        """Pads references to M and memory to T frames; each object's validity row marks its group's frames."""
        limits = self.manifest
        _check_readout(top_k, kernel_sigma, limits.inference)
        references = memory.references
        m, n_tok = references.shape[1], references.shape[2]
        if m > limits.references:
            raise StmaInputError(f"the spatial memory needs {m} reference frames but this export holds "
                                 f"{limits.references} (frames giving new objects and the latest correction keep "
                                 f"one each beside the recent frames); re-export with --refs {m}")
        keys = memory.keys
        if keys is None:  # nothing to read yet (a first key): the read is computed and ignored
            keys = frame.tokens.new_zeros(1, max(g.length for g in memory.groups), limits.model.key_dim)
        length = keys.shape[1]
        frames = length // n_tok
        if frames > limits.memory_frames:
            raise StmaInputError(f"the temporal memory needs {frames} frames but this export holds "
                                 f"{limits.memory_frames} (frames giving new objects and the latest correction keep "
                                 f"one each beside the recent frames); re-export with --memory-frames {frames}")
        n = self._objects(sum(g.objects for g in memory.groups))
        values, valid = [], []
        for group in memory.groups:
            own = group.length // n_tok
            v = group.values
            values.append(torch.cat([v.new_zeros(*v.shape[:3], length - group.length), v], 3))
            row = torch.cat([torch.zeros(frames - own), torch.ones(own), torch.zeros(limits.memory_frames - frames)])
            valid.append(row[None, None].expand(1, group.objects, -1))
        ref_pad = limits.references - m
        mem_pad = (limits.memory_frames - frames) * n_tok
        refs = torch.cat([references, references[:, -1:].expand(1, ref_pad, *references.shape[2:])], 1)
        ref_valid = torch.cat([torch.ones(1, m), torch.zeros(1, ref_pad)], 1)
        keys = torch.cat([keys, keys.new_zeros(1, mem_pad, keys.shape[2])], 1)
        values_t = torch.cat(values, 1)
        values_t = torch.cat([values_t, values_t.new_zeros(*values_t.shape[:3], mem_pad)], 3)
        prob, key, usage = self.runner.run(f"step_{n}", [frame.tokens, frame.f8, frame.f4, refs, ref_valid, keys,
                                                         values_t, torch.cat(valid, 1)])
        return Prediction(None, key, usage[:, :length], probs=prob[None])

    def _objects(self, n: int) -> int:
        if n > self.manifest.objects:
            raise StmaInputError(f"the video has {n} objects but this export handles at most "
                                 f"{self.manifest.objects}; re-export with --objects {n}")
        return n


def exported_session_factory(export_dir: str | Path, threads: int | None = None,
                             config: InferenceConfig | None = None, size: int | None = None,
                             **settings: int | None) -> Callable[[], VideoSession]:
    """Loads an export folder of either format once; each call returns a fresh VideoSession on it.

    Settings: resolve_inference_config(the export's, config, size=size, **settings), checked against
    what the export holds (StmaInputError names the `stma export` option to change).
    """
    folder = Path(export_dir)
    manifest = load_manifest(folder)
    if manifest.format == "onnx":
        runner: GraphRunner = OrtRunner(folder, manifest, threads)
    else:
        if threads:
            torch.set_num_threads(threads)
        runner = TorchScriptRunner(folder, manifest)
    engine = ExportedEngine(runner, manifest)
    resolved = resolve_inference_config(manifest.inference, config, size=size, **settings)
    engine.check_config(resolved)
    return lambda: VideoSession(engine, InferenceConfig(**resolved.__dict__))


def make_onnx_propagator_factory(export_dir: str | Path, threads: int | None = None,
                                 config: InferenceConfig | None = None, size: int | None = None,
                                 **settings: int | None) -> Callable[[], VideoSession]:
    """For `stma segment --engine onnx --export-dir DIR`: an ONNX export run by onnxruntime on CPU."""
    return make_export_propagator_factory(export_dir, "onnx", threads, config, size, **settings)


def make_export_propagator_factory(export_dir: str | Path, engine: str, threads: int | None = None,
                                   config: InferenceConfig | None = None, size: int | None = None,
                                   **settings: int | None) -> Callable[[], VideoSession]:
    """For `stma segment --engine onnx|torchscript --export-dir DIR`: the export must be of that format
    (the engine the user named is the one that runs, so a mix-up is an error naming the right one)."""
    manifest = load_manifest(export_dir)
    if manifest.format != engine:
        raise StmaInputError(f"{export_dir}: this export is {manifest.format}, not {engine}; run it with "
                             f"--engine {manifest.format} (or re-export with `stma export --format {engine}`)")
    return exported_session_factory(export_dir, threads, config, size, **settings)


def _check_readout(top_k: int, kernel_sigma: int, made_with: InferenceConfig) -> None:
    """The readout settings are fixed in the step graphs: asking for others is an error naming the fix."""
    for name, flag, value in (("top_k", "--top-k", top_k), ("kernel_sigma", "--kernel-sigma", kernel_sigma)):
        baked = getattr(made_with, name)
        if value != baked:
            raise StmaInputError(f"{flag} {value} differs from the {baked} this export was made with; use {flag} "
                                 f"{baked} ({name}={baked} in Python) or re-export with {flag} {value}")
