"""Turns a run's model.safetensors into a shippable checkpoint: same weights, the inference settings
it is recommended with, and a short provenance record (which runs, which steps) in its metadata.

    python -m stma_core.training.ship runs/main/model.safetensors stma_core/weights/NAME.safetensors \
        --size 288 --note "static 1500 DUTS + main 2000 DAVIS16 train"
"""

from __future__ import annotations

import argparse
from pathlib import Path

from safetensors.torch import load_file

from stma_core.checkpoint import read_config, save_model
from stma_core.config import InferenceConfig
from stma_core.model.network import STMANetwork


def ship(source: Path, target: Path, inference: InferenceConfig, note: str = "") -> None:
    """Copies the weights of `source` to `target` (atomic), recommending `inference`. Raises
    StmaInputError (from read_config) when `source` is not a checkpoint written by stma."""
    config, metadata = read_config(source)
    network = STMANetwork(config, pretrained_trunk=False)
    network.load_state_dict(load_file(str(source)))
    keep = {k: v for k, v in metadata.items() if k.startswith("train_")}
    if note:
        keep["provenance"] = note
    save_model(network, config, target, keep, inference=inference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--size", type=int, required=True, help="recommended processing short side (pixels)")
    parser.add_argument("--note", default="", help="provenance text stored in the metadata")
    args = parser.parse_args()
    ship(args.source, args.target, InferenceConfig(size=args.size), args.note)
    print(args.target)


if __name__ == "__main__":
    main()
