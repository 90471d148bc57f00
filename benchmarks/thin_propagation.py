"""A training-free high-resolution path for thin parts, tried on a model's saved predictions.

The stride-16 memory readout never carries 1-3 px structures (the paraglider's lines; docs/MODEL.md,
"Honest notes"). This asks whether a path that needs no training could add them back: each frame's
final mask is propagated to the next frame by label propagation at stride 2 on the trunk's ImageNet stem
features (each pixel takes the soft-max-weighted labels of its `--top` most similar pixels within
`--radius` stride-2 cells of the previous frame, as in self-supervised correspondence work), and only the
THIN parts of that propagated mask (what a `--open`-pixel opening removes), lying outside a `--band`-pixel
ring around the model's own mask and connected to it, are added to the model's mask. Blobs stay the
model's. Offline: it reads the model's predictions (`stma eval ... --pred-out DIR`), so the model's own
memory never sees the added parts (a close bound: they are thin, and the memory is stride 16).

    stma eval --dataset davis16-train --root ../shared/data/davis2016 --size 288 --pred-out out/train288
    python benchmarks/thin_propagation.py --root ../shared/data/davis2016 --pred out/train288 \
        --out out/train288-thin --sequences kite-walk paragliding
    stma eval --pred out/train288-thin --gt ../shared/data/davis2016 --split FILE_OF_THOSE_SEQUENCES

Writes DAVIS palette PNGs under --out/<sequence>/ (object 1 only: DAVIS 2016); prints the sequence names.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from stma_core.model.lite_backbone import LiteTrunk

DEFAULT_ROOT = Path(os.environ.get("STMA_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data")) \
    / "davis2016"


def stem_features(trunk: LiteTrunk, bgr: np.ndarray) -> torch.Tensor:
    """BGR uint8 (H, W, 3) -> unit-length stride-2 stem features (32, H/2, W/2), float32."""
    x = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        h = F.relu6(trunk._bn0(trunk._conv_stem((x - trunk.mean) / trunk.std)))
    return F.normalize(h, dim=1)[0]


def propagate(prev: torch.Tensor, cur: torch.Tensor, labels: torch.Tensor, radius: int, tau: float,
              top: int) -> torch.Tensor:
    """Labels (h, w) of the previous frame -> soft labels (h, w) of the current one (local window)."""
    channels, h, w = cur.shape
    side = 2 * radius + 1
    prev_pad = F.pad(prev, (radius,) * 4)
    labels_pad = F.pad(labels, (radius,) * 4)
    affinity = torch.empty(side * side, h, w)
    shifted = torch.empty(side * side, h, w)
    for i in range(side * side):
        dy, dx = divmod(i, side)
        affinity[i] = (cur * prev_pad[:, dy:dy + h, dx:dx + w]).sum(0) / tau
        shifted[i] = labels_pad[dy:dy + h, dx:dx + w]
    best = affinity.topk(top, dim=0)
    return (best.values.softmax(0) * shifted.gather(0, best.indices)).sum(0)


def thin_parts(propagated: np.ndarray, model: np.ndarray, band: int, opening: int) -> np.ndarray:
    """Bool (H, W): thin parts of `propagated` outside a ring around `model`, connected to it."""
    ring = cv2.dilate(model.astype(np.uint8), np.ones((2 * band + 1,) * 2, np.uint8)).astype(bool)
    candidates = propagated & ~ring
    opened = cv2.morphologyEx(candidates.astype(np.uint8), cv2.MORPH_OPEN, np.ones((opening, opening), np.uint8))
    candidates &= ~opened.astype(bool)
    count, components = cv2.connectedComponents((ring | candidates).astype(np.uint8), connectivity=8)
    keep = np.zeros(count, bool)
    keep[np.unique(components[ring])] = True
    keep[0] = False
    return candidates & keep[components]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--pred", type=Path, required=True, help="the model's predictions, <sequence>/<frame>.png")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sequences", nargs="+", required=True)
    parser.add_argument("--radius", type=int, default=6, help="search window, stride-2 cells")
    parser.add_argument("--tau", type=float, default=0.02, help="soft-max temperature")
    parser.add_argument("--top", type=int, default=4, help="matches kept per pixel")
    parser.add_argument("--threshold", type=float, default=0.3, help="propagated label threshold (re-binarized)")
    parser.add_argument("--open", type=int, default=7, help="opening size in pixels that defines 'thin'")
    parser.add_argument("--band", type=int, default=4, help="pixels around the model's mask left to the model")
    args = parser.parse_args()
    torch.set_num_threads(1)
    trunk = LiteTrunk("lite2").eval()
    for sequence in args.sequences:
        frames = sorted((args.root / "JPEGImages" / "480p" / sequence).glob("*.jpg"))
        first = Image.open(args.root / "Annotations" / "480p" / sequence / f"{frames[0].stem}.png")
        palette = first.getpalette()
        (args.out / sequence).mkdir(parents=True, exist_ok=True)
        final = np.array(first) == 1
        previous = None
        for t, path in enumerate(frames):
            features = stem_features(trunk, cv2.imread(str(path)))
            if t > 0:
                model = np.array(Image.open(args.pred / sequence / f"{path.stem}.png")) == 1
                labels = F.avg_pool2d(torch.from_numpy(final.astype(np.float32))[None, None], 2)[0, 0]
                soft = propagate(previous, features, labels, args.radius, args.tau, args.top)
                full = F.interpolate(soft[None, None], size=model.shape, mode="bilinear")[0, 0].numpy()
                final = model | thin_parts(full > args.threshold, model, args.band, args.open)
            previous = features
            out = Image.fromarray(final.astype(np.uint8), "P")
            out.putpalette(palette)
            out.save(args.out / sequence / f"{path.stem}.png")
        print(sequence, flush=True)


if __name__ == "__main__":
    main()
