"""Builds a multi-object DAVIS-layout set from single-object sequences placed side by side.

DAVIS 2016 has one object per sequence. Pairing two sequences side by side (the left keeps id 1,
the right becomes id 2; both cut to the shorter length) gives real two-object videos with full
ground truth, scorable with `stma eval --pred ... --gt OUT --split val`.

    python benchmarks/compose_multi_object.py --root ../shared/data/davis2016 --split val --out out/davis16-val-pairs
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from stma_core.io.palette import DAVIS_PALETTE_FLAT


def compose(root: Path, split: str, out: Path) -> list[str]:
    names = (root / "ImageSets" / "2016" / f"{split}.txt").read_text().split()
    pairs = [(names[i], names[i + 1]) for i in range(0, len(names) - 1, 2)]
    made = []
    for left, right in pairs:
        name = f"{left}+{right}"
        lf = sorted((root / "JPEGImages/480p" / left).glob("*.jpg"))
        rf = sorted((root / "JPEGImages/480p" / right).glob("*.jpg"))
        (out / "JPEGImages/480p" / name).mkdir(parents=True, exist_ok=True)
        (out / "Annotations/480p" / name).mkdir(parents=True, exist_ok=True)
        for i in range(min(len(lf), len(rf))):
            frames = [np.asarray(Image.open(p).convert("RGB")) for p in (lf[i], rf[i])]
            masks = [np.asarray(Image.open(root / "Annotations/480p" / s / f"{p.stem}.png"))
                     for s, p in ((left, lf[i]), (right, rf[i]))]
            mask = np.concatenate([(masks[0] == 1).astype(np.uint8), (masks[1] == 1).astype(np.uint8) * 2], 1)
            Image.fromarray(np.concatenate(frames, 1)).save(out / "JPEGImages/480p" / name / f"{i:05d}.jpg", quality=95)
            png = Image.fromarray(mask, mode="P")
            png.putpalette(DAVIS_PALETTE_FLAT)
            png.save(out / "Annotations/480p" / name / f"{i:05d}.png")
        made.append(name)
    (out / "ImageSets/2017").mkdir(parents=True, exist_ok=True)
    (out / "ImageSets/2017" / f"{split}.txt").write_text("\n".join(made) + "\n")
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    made = compose(args.root, args.split, args.out)
    print(json.dumps({"out": str(args.out), "sequences": made}))


if __name__ == "__main__":
    main()
