"""Model checkpoints as safetensors with the ModelConfig inside (and beside, as JSON).

Nothing is unpickled: safetensors holds tensors only, the config is plain JSON metadata. A checkpoint
also carries the InferenceConfig it recommends (`inference_config`; older ones only `inference_size`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from stma_core.config import InferenceConfig, ModelConfig, from_dict, model_config_problems, to_dict
from stma_core.errors import StmaInputError
from stma_core.io.atomic import atomic_write, atomic_write_text

WEIGHTS = Path(__file__).resolve().parent / "weights"
DEFAULT_CHECKPOINT = WEIGHTS / "stma_lite2_duts_davis16.safetensors"  # the shipped model (docs/MODEL.md)
# the first shipped model (DAVIS only), kept for comparison and the regression fixtures; the default
# before the current one is stma_lite0_duts_davis16.safetensors in the same folder (docs/MODEL.md)
PREVIOUS_CHECKPOINT = WEIGHTS / "stma_lite0_davis16.safetensors"
RUN_MODEL = "model.safetensors"  # what `stma train` saves in its run folder (beside state.pt, the training state)


def save_model(network: torch.nn.Module, config: ModelConfig, path: str | Path,
               extra_metadata: dict[str, str] | None = None, inference: InferenceConfig | None = None) -> None:
    """Writes PATH (safetensors) and PATH.with_suffix('.json') (the config), each atomically.

    inference: the settings this model is recommended with (stored as `inference_config` metadata).
    """
    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in network.state_dict().items()}
    metadata = {"model_config": json.dumps(to_dict(config)), **(extra_metadata or {})}
    if inference is not None:
        metadata["inference_config"] = json.dumps(to_dict(inference))
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata=metadata))
    atomic_write_text(path.with_suffix(".json"), json.dumps(to_dict(config), indent=2) + "\n")


INFERENCE_FIELDS = {f.name for f in dataclasses.fields(InferenceConfig)}


def recommended_inference(metadata: dict[str, str]) -> dict[str, Any]:
    """The inference settings a checkpoint's metadata recommends (a dict of InferenceConfig fields)."""
    if "inference_config" in metadata:
        return dict(json.loads(metadata["inference_config"]))
    if "inference_size" in metadata:  # checkpoints written before inference_config existed
        return {"size": int(metadata["inference_size"])}
    return {}


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint file a user means: a `stma train` run folder stands for its RUN/model.safetensors
    (the folder is what `stma train --out` was given, so people pass it); anything else is returned as is.

    Every loader goes through here (read_config, load_model), so segment, eval, export and the Python
    API accept the same paths."""
    path = Path(path)
    if path.is_dir():
        model = path / RUN_MODEL
        if model.is_file():
            return model
        if (path / "manifest.json").is_file():  # a `stma export` folder: graphs, not a checkpoint
            raise StmaInputError(f"{path}: a `stma export` folder (graphs and manifest.json), not a checkpoint; run it "
                                 "with `stma segment --engine onnx|torchscript --export-dir` (as it was exported), "
                                 "or pass the .safetensors checkpoint it was exported from")
        raise StmaInputError(f"{path}: a folder, and it holds no {RUN_MODEL}; pass a .safetensors checkpoint "
                             f"file, or a `stma train` run folder once it has saved {RUN_MODEL} (at its first "
                             "checkpoint)")
    return path


def _not_safetensors(path: Path, exc: Exception) -> str:
    """The error for a file that is not safetensors; a run's state.pt names the model file beside it."""
    beside = path.parent / RUN_MODEL
    if path.suffix.lower() in (".pt", ".pth", ".ckpt", ".bin"):
        fix = (f"pass {beside}, the model `stma train` saved beside it" if beside.is_file() else
               f"pass the {RUN_MODEL} `stma train` writes beside state.pt")
        return (f"{path}: not a safetensors model checkpoint (a {path.suffix} file is PyTorch's format; a `stma "
                f"train` run's state.pt is its training state, for --resume); {fix}")
    weights = path.with_suffix(".safetensors")
    if path.suffix.lower() == ".json" and weights.is_file():  # the config save_model writes beside the weights
        return (f"{path}: the model config written beside a checkpoint, not the checkpoint; pass {weights}")
    return (f"{path}: not a safetensors checkpoint ({' '.join(str(exc).split())}); pass a {RUN_MODEL} saved by "
            "`stma train` (or save_model), or its run folder")


def read_config(path: str | Path, check_inference: bool = True) -> tuple[ModelConfig, dict[str, str]]:
    """(ModelConfig, metadata) of a checkpoint file or run folder; one-line input errors otherwise.
    check_inference=False skips the recommended settings (ship, which replaces them)."""
    path = resolve_checkpoint(path)
    if not path.is_file():
        raise StmaInputError(f"{path}: checkpoint not found; pass an existing .safetensors file or a `stma train` "
                             "run folder as the checkpoint (checkpoint=..., or --checkpoint)")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise StmaInputError(_not_safetensors(path, exc)) from exc
    if "model_config" not in metadata:
        raise StmaInputError(f"{path}: checkpoint has no model_config metadata; "
                             "pass a file saved by `stma train` (or save_model)")
    fix = "pass a model.safetensors saved by `stma train` (or save_model)"
    try:
        saved = json.loads(metadata["model_config"])
        if not isinstance(saved, dict):
            raise ValueError(f"a JSON {type(saved).__name__}, not an object")
        config = from_dict(ModelConfig, saved)
    except (ValueError, TypeError) as exc:  # json's JSONDecodeError is a ValueError
        raise StmaInputError(f"{path}: unreadable model_config metadata ({' '.join(str(exc).split())}); {fix}") from exc
    problems = model_config_problems(config)
    if problems:
        raise StmaInputError(f"{path}: its model_config metadata describes no buildable network "
                             f"({'; '.join(problems)}); {fix}")
    try:  # the settings it recommends: unreadable ones were a JSONDecodeError/TypeError traceback or a
        recommended = recommended_inference(metadata) if check_inference else {}  # 'InferenceConfig.size is 10'
        InferenceConfig(**{k: v for k, v in recommended.items() if k in INFERENCE_FIELDS})  # the user never typed
    except (ValueError, TypeError) as exc:
        raise StmaInputError(f"{path}: unusable inference_config metadata ({' '.join(str(exc).split())}); re-ship it "
                             "with `python -m stma_core.training.ship FILE OUT.safetensors --size N`, or "
                             f"{fix}") from None
    return config, metadata


def check_state_fits(network: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """One line when a checkpoint's tensors do not fit the network its model_config builds (tensors missing,
    extra, or of another shape: weights of one model saved with another's config), instead of
    load_state_dict's page of size mismatches."""
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or reshaped:
        first = (f", e.g. {reshaped[0]} {list(state[reshaped[0]].shape)} where the config needs "
                 f"{list(expected[reshaped[0]].shape)}" if reshaped else
                 f", e.g. {(missing or unexpected)[0]}")
        raise StmaInputError(f"{path}: checkpoint does not match its model config ({len(missing)} missing, "
                             f"{len(unexpected)} unexpected, {len(reshaped)} of another shape{first}); the "
                             "weights were saved with another model's config: pass a model.safetensors saved by "
                             "`stma train` (or save_model)")


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu"):
    """-> (network in eval mode, its ModelConfig, metadata dict). path None = the shipped default model;
    a `stma train` run folder = its model.safetensors.

    device: a torch.device or a name ('auto', 'cpu', 'cuda', 'cuda:N', 'mps'). Unknown keys in a saved
    ModelConfig (such as `top_k` of older checkpoints, now an InferenceConfig setting) are ignored.
    """
    from stma_core.device import resolve_device
    from stma_core.model.network import STMANetwork

    device = resolve_device(device)

    path = resolve_checkpoint(path) if path is not None else DEFAULT_CHECKPOINT
    config, metadata = read_config(path)
    network = STMANetwork(config, pretrained_trunk=False)
    state = load_file(str(path))
    check_state_fits(network, state, path)
    network.load_state_dict(state)
    return network.to(device).eval(), config, metadata
