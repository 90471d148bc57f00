"""How well a textureless background region is held: IoU per frame on a clip of one frame repeated.

The bundled example clip's first frame, repeated; the target is a patch of plain asphalt below-left of
the car (nothing salient about it). Any memory-based tracker has nothing else to go on, so the IoU
should stay near 1. Prints JSON: per setting, the IoU of each frame after the annotated one.
The same case, with a threshold, is `tests/test_follows_annotation.py`.

    python benchmarks/background_patch.py [--checkpoint FILE] [--size 480] [--frames 8] --kernel-sigma 0 3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stma_core.inference.session import session_factory
from stma_core.io.frames import open_frames

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def patch_ious(checkpoint: str | None, size: int | None, frames: int, kernel_sigma: int | None) -> list[float]:
    _, first = next(iter(open_frames(EXAMPLES / "car-shadow.mp4")))
    patch = np.zeros(first.shape[:2], np.uint8)
    patch[300:400, 80:230] = 1
    session = session_factory(checkpoint, "cpu", size=size, kernel_sigma=kernel_sigma)()
    ious = []
    for index in range(frames):
        pred = session.step(first, patch if index == 0 else None) == 1
        if index:
            ious.append(round(float((pred & (patch == 1)).sum() / max((pred | (patch == 1)).sum(), 1)), 3))
    return ious


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="a model.safetensors (default: the shipped model)")
    parser.add_argument("--size", type=int, default=None, help="processing size (default: the checkpoint's)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--kernel-sigma", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {str(s): patch_ious(args.checkpoint, args.size, args.frames, s) for s in args.kernel_sigma}
    print(json.dumps({"checkpoint": args.checkpoint or "default", "size": args.size, "iou_per_frame": results}))


if __name__ == "__main__":
    main()
