"""Model checkpoints as safetensors with the ModelConfig inside (and beside, as JSON).

Nothing is unpickled: safetensors holds tensors only, the config is plain JSON metadata.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from stma_core.config import ModelConfig, from_dict, to_dict
from stma_core.errors import StmaInputError

DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "stma_lite0_davis16.safetensors"


def save_model(network: torch.nn.Module, config: ModelConfig, path: str | Path,
               extra_metadata: dict[str, str] | None = None) -> None:
    """Writes PATH (safetensors) and PATH.with_suffix('.json') (the config), each atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in network.state_dict().items()}
    metadata = {"model_config": json.dumps(to_dict(config)), **(extra_metadata or {})}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a checkpoint is meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    json_path = path.with_suffix(".json")
    tmp_json = json_path.with_name(json_path.name + ".tmp")
    tmp_json.write_text(json.dumps(to_dict(config), indent=2) + "\n")
    os.replace(tmp_json, json_path)


def read_config(path: str | Path) -> tuple[ModelConfig, dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise StmaInputError(f"{path}: checkpoint not found; pass --checkpoint with an existing .safetensors file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise StmaInputError(f"{path}: not a safetensors checkpoint ({exc}); pass a file saved by `stma train`") from exc
    if "model_config" not in metadata:
        raise StmaInputError(f"{path}: checkpoint has no model_config metadata; pass a file saved by `stma train`")
    return from_dict(ModelConfig, json.loads(metadata["model_config"])), metadata


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu"):
    """-> (network in eval mode, its config, metadata). path None = the shipped default model."""
    from stma_core.model.network import STMANetwork

    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    config, metadata = read_config(path)
    network = STMANetwork(config, pretrained_trunk=False)
    state = load_file(str(path))
    missing, unexpected = network.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise StmaInputError(f"{path}: checkpoint does not match its model config "
                             f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")
    return network.to(device).eval(), config, metadata
