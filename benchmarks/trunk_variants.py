"""Seconds per frame of each EfficientNet-Lite trunk variant, interleaved in one run, one thread.

Speed does not depend on the weights, so each variant is a network with its ImageNet trunk and a
freshly initialised rest, saved as a temporary checkpoint. Frames come from the bundled example clip
(examples/car-shadow.mp4, 854x480); each round runs every variant once over the same frames (one
object, the example's mask), so a busy machine slows them alike; the median over rounds is printed.

    python benchmarks/trunk_variants.py [--variants lite0 lite1 lite2] [--rounds 3] [--frames 20] [--size 288]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stma_core.checkpoint import DEFAULT_CHECKPOINT, read_config, save_model
from stma_core.inference.session import session_factory
from stma_core.io.frames import open_frames
from stma_core.model.network import STMANetwork

REPO = Path(__file__).resolve().parents[1]


def example_frames(count: int) -> tuple[list[np.ndarray], np.ndarray]:
    frames = [frame for _, (_, frame) in zip(range(count), open_frames(REPO / "examples" / "car-shadow.mp4"))]
    return frames, np.array(Image.open(REPO / "examples" / "car-shadow_mask.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["lite0", "lite1", "lite2"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--size", type=int, default=288, help="short side the network sees")
    args = parser.parse_args()
    torch.set_num_threads(1)
    frames, mask = example_frames(args.frames)
    base, _ = read_config(DEFAULT_CHECKPOINT)
    times: dict[str, list[float]] = {v: [] for v in args.variants}
    with tempfile.TemporaryDirectory() as tmp:
        factories = {}
        for variant in args.variants:
            config = replace(base, lite_variant=variant)
            path = Path(tmp) / f"{variant}.safetensors"
            save_model(STMANetwork(config, pretrained_trunk=True), config, path)
            factories[variant] = session_factory(checkpoint=str(path), device="cpu", size=args.size)
        for _ in range(args.rounds):
            for variant, make in factories.items():
                session = make()
                t0 = time.perf_counter()
                for i, frame in enumerate(frames):
                    session.step(frame, mask if i == 0 else None)
                times[variant].append((time.perf_counter() - t0) / len(frames))
    print(json.dumps({"size": args.size, "frames": args.frames, "rounds": args.rounds, "threads": 1,
                      "s_per_frame_median": {v: round(statistics.median(t), 4) for v, t in times.items()},
                      "s_per_frame_all": {v: [round(x, 4) for x in t] for v, t in times.items()}}, indent=2))


if __name__ == "__main__":
    main()
