"""manifest.json of an export folder: what each graph file takes and returns, and how it was made.

The host code that drives the graphs (VideoSession with ExportedEngine) needs the shapes, the model and inference
configs and the memory sizes, and nothing else; so does anyone porting the graphs to another runtime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stma_core.config import InferenceConfig, ModelConfig, from_dict, to_dict
from stma_core.errors import StmaInputError

MANIFEST = "manifest.json"
FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
VERSION = 2  # 2: memory_valid is per object (1, n, T); top_k is in inference (kernel_sigma: absent = 0)


@dataclass
class TensorSpec:
    name: str
    shape: list[int]
    dtype: str = "float32"


@dataclass
class GraphSpec:
    file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]


@dataclass
class Manifest:
    format: str  # onnx | torchscript
    model: ModelConfig
    inference: InferenceConfig  # memory policy the sizes below were chosen for (size = short side)
    frame_size: tuple[int, int]  # (H, W) the network processes; graphs see it padded to multiples of 16
    padded_size: tuple[int, int]
    grid: tuple[int, int]  # stride-16 token grid (h, w)
    objects: int  # step_<n> / value_<n> graphs exist for n = 1..objects
    memory_frames: int  # T: temporal-memory frames the step graph holds
    references: int  # M: spatial-memory frames the step graph holds
    graphs: dict[str, GraphSpec] = field(default_factory=dict)
    checkpoint: str = ""
    version: int = VERSION

    @property
    def tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def to_json(self) -> dict[str, Any]:
        data = to_dict(self)
        data["graph_inputs_note"] = ("reference_valid (1, M) / memory_valid (1, n, T): 1 = a real frame (of that object's group), 0 = padding; "
                                     "probabilities: background first, then objects in memory order")
        return data

    def save(self, folder: Path) -> None:
        (folder / MANIFEST).write_text(json.dumps(self.to_json(), indent=2) + "\n")


def load_manifest(folder: str | Path) -> Manifest:
    """Reads FOLDER/manifest.json; errors name the folder and say how to make a valid one."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise StmaInputError(f"{folder}: no {MANIFEST}; pass a folder written by `stma export`")
    try:
        data = json.loads(path.read_text())
        if data.get("version") != VERSION:
            raise ValueError(f"manifest version {data.get('version')!r}, expected {VERSION}")
        graphs = {
            name: GraphSpec(g["file"], [TensorSpec(**t) for t in g["inputs"]], [TensorSpec(**t) for t in g["outputs"]])
            for name, g in data["graphs"].items()
        }
        manifest = Manifest(
            format=data["format"], model=from_dict(ModelConfig, data["model"]),
            inference=from_dict(InferenceConfig, data["inference"]), frame_size=tuple(data["frame_size"]),
            padded_size=tuple(data["padded_size"]), grid=tuple(data["grid"]), objects=int(data["objects"]),
            memory_frames=int(data["memory_frames"]), references=int(data["references"]), graphs=graphs,
            checkpoint=data.get("checkpoint", ""), version=data["version"])
    except (ValueError, KeyError, TypeError) as exc:
        raise StmaInputError(f"{path}: invalid export manifest ({exc}); re-run `stma export`") from exc
    if manifest.format not in FORMATS:
        raise StmaInputError(f"{path}: unknown format {manifest.format!r}; re-run `stma export`")
    for spec in graphs.values():
        if not (folder / spec.file).is_file():
            raise StmaInputError(f"{folder / spec.file}: graph file missing; re-run `stma export`")
    return manifest
