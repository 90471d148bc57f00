"""Runs an `stma export` folder (ONNX through onnxruntime, or TorchScript) as a Propagator.

    factory = make_onnx_propagator_factory("export/")      # loads the graphs once
    propagator = factory()                                  # one per video
    ids = propagator.step(frame, first_mask)                # HxW uint8, the user's ids

OnnxPropagator is a VideoSession whose network calls run the exported graphs, so the memory policy
(what is memorized when, pinning, LFU eviction, objects added later) is VideoSession's own code. The
step graph has fixed memory sizes; memories are padded to them with entries the graph masks out.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
import torch

from stma_core.config import InferenceConfig
from stma_core.errors import StmaInputError
from stma_core.export.manifest import Manifest, load_manifest
from stma_core.inference.session import VideoSession
from stma_core.model.network import FrameFeatures


class GraphRunner(Protocol):
    def run(self, name: str, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Runs graph `name` of the manifest on CPU float tensors (in manifest input order)."""
        ...


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
            self._sessions[name] = self._ort.InferenceSession(str(self.folder / spec.file), self.options,
                                                              providers=["CPUExecutionProvider"])
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
                self._modules[name] = torch.jit.load(str(path), map_location="cpu")
        out = self._modules[name](*inputs)
        return list(out) if isinstance(out, (tuple, list)) else [out]


class ExportedNetwork:
    """The parts of STMANetwork that VideoSession calls directly, answered by the exported graphs."""

    def __init__(self, runner: GraphRunner, manifest: Manifest) -> None:
        self.runner, self.manifest = runner, manifest

    def parameters(self) -> Iterator[torch.Tensor]:  # VideoSession takes its device from here
        yield torch.empty(0)

    def eval(self) -> "ExportedNetwork":
        return self

    def encode_frame(self, image: torch.Tensor) -> FrameFeatures:
        tokens, f16, f8, f4 = self.runner.run("frame", [image])
        return FrameFeatures(tokens, f16, f8, f4)

    def encode_value(self, frame: FrameFeatures, masks: torch.Tensor) -> torch.Tensor:
        return self.runner.run(f"value_{self._objects(masks.shape[1])}", [frame.f8, frame.f16, masks])[0]

    def step(self, frame: FrameFeatures, references: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """references (1,m,N,C), keys (1,t*N,Ck), values (1,n,Cv,t*N) -> probabilities, key, usage (1,t*N)."""
        m, n_tok = references.shape[1], references.shape[2]
        frames = keys.shape[1] // n_tok
        limits = self.manifest
        if m > limits.references:
            raise StmaInputError(f"the spatial memory needs {m} frames but this export holds {limits.references} "
                                 f"(objects first annotated on later frames pin one each); re-export with --refs {m}")
        if frames > limits.memory_frames:
            raise StmaInputError(f"the temporal memory needs {frames} frames but this export holds "
                                 f"{limits.memory_frames} (objects first annotated on later frames pin one each); "
                                 f"re-export with --memory-frames {frames}")
        n = self._objects(values.shape[1])
        ref_pad = limits.references - m
        mem_pad = (limits.memory_frames - frames) * n_tok
        refs = torch.cat([references, references[:, -1:].expand(1, ref_pad, *references.shape[2:])], 1)
        ref_valid = torch.cat([torch.ones(1, m), torch.zeros(1, ref_pad)], 1)
        mem_valid = torch.cat([torch.ones(1, frames), torch.zeros(1, limits.memory_frames - frames)], 1)
        keys = torch.cat([keys, keys.new_zeros(1, mem_pad, keys.shape[2])], 1)
        values = torch.cat([values, values.new_zeros(*values.shape[:3], mem_pad)], 3)
        prob, key, usage = self.runner.run(f"step_{n}", [frame.tokens, frame.f8, frame.f4, refs, ref_valid, keys,
                                                         values, mem_valid])
        return prob, key, usage[:, : frames * n_tok]

    def _objects(self, n: int) -> int:
        if n > self.manifest.objects:
            raise StmaInputError(f"the video has {n} objects but this export handles at most "
                                 f"{self.manifest.objects}; re-export with --objects {n}")
        return n


class OnnxPropagator(VideoSession):
    """Propagator over exported graphs (ONNX or TorchScript) with VideoSession's memory policy."""

    def __init__(self, runner: GraphRunner, manifest: Manifest, config: InferenceConfig | None = None) -> None:
        config = config or dataclasses.replace(manifest.inference)
        if config.temporal_capacity + 1 > manifest.memory_frames or config.spatial_capacity + 1 > manifest.references:
            raise StmaInputError(
                f"memory capacities {config.temporal_capacity}/{config.spatial_capacity} (+1 pinned frame) exceed "
                f"the export's {manifest.memory_frames} memory frames / {manifest.references} references; "
                "re-export with larger --memory-frames / --refs")
        self.manifest = manifest
        super().__init__(ExportedNetwork(runner, manifest), config)  # type: ignore[arg-type]

    def _to_tensor(self, frame: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        image, size = super()._to_tensor(frame)
        if tuple(image.shape[-2:]) != tuple(self.manifest.padded_size):
            h, w = frame.shape[:2]
            eh, ew = self.manifest.frame_size
            raise StmaInputError(f"{w}x{h} frames are processed at {size[1]}x{size[0]} but this export is for "
                                 f"{ew}x{eh}; re-export with --size {size[0]} {size[1]}")
        return image, size

    def _predict(self, frame: FrameFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.temporal.keys_values(self.objects.count)
        prob, key, usage = self.network.step(frame, self.spatial.tokens(), keys, values)
        self.temporal.record_usage(usage)
        return prob, key

    def _first_key(self, frame: FrameFeatures, values: torch.Tensor) -> torch.Tensor:
        """Same as VideoSession: the frame as its own reference; the memory read is masked out entirely."""
        keys = frame.tokens.new_zeros(1, frame.tokens.shape[1], self.manifest.model.key_dim)
        return self.network.step(frame, frame.tokens[:, None], keys, values.flatten(3))[1]


def make_exported_propagator_factory(export_dir: str | Path, threads: int | None = None,
                                     config: InferenceConfig | None = None) -> Callable[[], OnnxPropagator]:
    """Loads an export folder of either format once; each call returns a fresh per-video propagator."""
    folder = Path(export_dir)
    manifest = load_manifest(folder)
    if manifest.format == "onnx":
        runner: GraphRunner = OrtRunner(folder, manifest, threads)
    else:
        if threads:
            torch.set_num_threads(threads)
        runner = TorchScriptRunner(folder, manifest)
    return lambda: OnnxPropagator(runner, manifest, config)


def make_onnx_propagator_factory(export_dir: str | Path, threads: int | None = None,
                                 config: InferenceConfig | None = None) -> Callable[[], OnnxPropagator]:
    """For `stma segment --engine onnx --onnx-dir DIR`: an ONNX export run by onnxruntime on CPU."""
    manifest = load_manifest(export_dir)
    if manifest.format != "onnx":
        raise StmaInputError(f"{export_dir}: this export is {manifest.format}, not onnx; "
                             "re-run `stma export --format onnx`")
    return make_exported_propagator_factory(export_dir, threads, config)
