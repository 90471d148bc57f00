"""Turns a run's model.safetensors into a shippable checkpoint: same weights, the inference settings
it is recommended with, and a short provenance record (which runs, which steps) in its metadata.

    python -m stma_core.training.ship runs/main/model.safetensors stma_core/weights/NAME.safetensors \
        --size 288 --note "static 1500 DUTS + main 2000 DAVIS16 train"

The source may be a `stma train` run folder (its model.safetensors). An existing target is replaced only with
--overwrite. Bad input is one `error:` line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from safetensors.torch import load_file

from stma_core.checkpoint import check_state_fits, read_config, resolve_checkpoint, save_model
from stma_core.config import InferenceConfig
from stma_core.errors import StmaInputError
from stma_core.model.network import STMANetwork


def ship(source: Path, target: Path, inference: InferenceConfig, note: str = "") -> None:
    """Copies the weights of `source` to `target` (atomic), recommending `inference`. Raises
    StmaInputError (from read_config) when `source` is not a checkpoint written by stma; a `stma train` run
    folder stands for its model.safetensors."""
    source = resolve_checkpoint(source)
    config, metadata = read_config(source, check_inference=False)  # replaced here: ship mends a broken one
    network = STMANetwork(config, pretrained_trunk=False)
    state = load_file(str(source))
    check_state_fits(network, state, source)  # one line, not load_state_dict's page of size mismatches
    network.load_state_dict(state)
    keep = {k: v for k, v in metadata.items() if k.startswith("train_")}
    if note:
        keep["provenance"] = note
    save_model(network, config, target, keep, inference=inference)


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("source", type=Path, help="a run's model.safetensors, or the `stma train --out` run folder")
    parser.add_argument("target", type=Path, help="the checkpoint to write (.safetensors)")
    parser.add_argument("--size", type=int, required=True, help="recommended processing short side (pixels)")
    parser.add_argument("--note", default="", help="provenance text stored in the metadata")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing target file")
    args = parser.parse_args()
    try:
        if args.target.exists() and not args.overwrite:
            raise StmaInputError(f"{args.target}: exists; pass --overwrite to replace it, or another target")
        beside = args.target.with_suffix(".json")  # save_model writes the config there
        if beside.exists() and not args.overwrite:
            raise StmaInputError(f"{beside}: exists, and the checkpoint's config would be written over it; pass "
                                 "--overwrite to replace it, or another target")
        if args.target.is_dir():
            raise StmaInputError(f"{args.target}: is a folder; pass the .safetensors file to write")
        if args.target.suffix != ".safetensors":  # save_model writes TARGET.json beside (x.json: over the weights)
            raise StmaInputError(f"{args.target}: a checkpoint is a .safetensors file (its config goes to the .json "
                                 f"beside it); pass {args.target.with_suffix('.safetensors')}")
        ship(args.source, args.target, InferenceConfig(size=args.size), args.note)
    except (StmaInputError, ValueError) as exc:  # ValueError: a --size under the minimum, named by InferenceConfig
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(args.target)


if __name__ == "__main__":
    main()
