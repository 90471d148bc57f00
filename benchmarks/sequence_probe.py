"""One DAVIS sequence through a checkpoint: per-frame J, and how sure the model is about the object
pixels it misses (the mean object probability on ground-truth pixels more than 8 px from the
predicted mask: near 0 means the part is lost, not merely under the threshold).

    python benchmarks/sequence_probe.py --sequence camel --from-frame 60              # late J of camel
    python benchmarks/sequence_probe.py --sequence paragliding-launch --probe 1 40    # the glider's lines
        [--checkpoint FILE] [--size N] [--root ../shared/data/davis2016]

Prints one JSON object. Reads the first frame's annotation only (object 1), like the official protocol.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from stma_core.inference.session import session_factory

DEFAULT_ROOT = Path(os.environ.get("STMA_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")) \
    / "davis2016"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequence", required=True)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--checkpoint", default=None, help="a model.safetensors (default: the shipped model)")
    parser.add_argument("--size", type=int, default=None, help="processing size (default: the checkpoint's)")
    parser.add_argument("--from-frame", type=int, default=1, help="mean J over the frames from this one on")
    parser.add_argument("--probe", type=int, nargs="*", default=[], help="frames to report missed-pixel probability on")
    args = parser.parse_args()
    torch.set_num_threads(1)
    frames = sorted((args.root / "JPEGImages" / "480p" / args.sequence).glob("*.jpg"))
    masks = sorted((args.root / "Annotations" / "480p" / args.sequence).glob("*.png"))
    session = session_factory(args.checkpoint, "cpu", size=args.size)()
    js, probes = [], {}
    for index, (image, mask) in enumerate(zip(frames, masks)):
        gt = np.array(Image.open(mask)) > 0
        pred = session.step(np.asarray(Image.open(image).convert("RGB")), gt.astype(np.uint8) if index == 0 else None) == 1
        union = (gt | pred).sum()
        js.append(1.0 if union == 0 else float((gt & pred).sum() / union))
        if index in args.probe:
            far = cv2.distanceTransform((~pred).astype(np.uint8), cv2.DIST_L2, 3) > 8
            missed = gt & far
            prob = session.probabilities[1].float().cpu().numpy()
            probes[index] = {"missed_pixels": int(missed.sum()),
                             "mean_probability_on_missed": round(float(prob[missed].mean()), 4) if missed.any() else None}
    print(json.dumps({"sequence": args.sequence, "checkpoint": args.checkpoint or "shipped default",
                      "frames": len(js), f"mean_J_from_frame_{args.from_frame}": round(float(np.mean(js[args.from_frame:])), 3),
                      "missed_probability": probes}, indent=2))


if __name__ == "__main__":
    main()
