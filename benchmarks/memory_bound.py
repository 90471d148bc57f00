"""Memory and time per frame on long videos: both must stop growing once the memories are full.

A DAVIS val clip is played forward, backward, forward... (real motion, no cuts) for --frames frames,
decoded one frame at a time (never all in memory) and segmented with the first frame's mask. Each
length runs in its own child process; for each it prints the resident memory (RSS) and s/frame just
after the memories filled and over the last frames, the peak RSS, and the final memory sizes.

    python benchmarks/memory_bound.py [--frames 300 3000] [--size 240] [--sequence car-shadow]
        [--window 50] [--threads 1] [--engine torch|onnx] [--checkpoint FILE]

Weights: --checkpoint, else the shipped default if present, else a random network (pretrained trunk).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segment_speed import clip_files, full_memory_frame, looped, make_factory, weights  # noqa: E402


def current_rss_mib() -> float:
    """Resident memory now (not the peak): /proc/self/statm on Linux."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args: dict[str, Any]) -> dict[str, Any]:
    import torch

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    files, mask_file = clip_files(args["sequence"])
    mask = (np.array(Image.open(mask_file)) > 0).astype(np.uint8)
    propagator = make_factory(args)()
    full, window, count = full_memory_frame(), args["window"], args["frames"]
    times: list[float] = []
    rss: dict[int, float] = {}
    for i, file in enumerate(looped(files, count)):
        frame = np.asarray(Image.open(file).convert("RGB"))  # decoded here, dropped after the step
        start = time.perf_counter()
        propagator.step(frame, mask if i == 0 else None)
        times.append(time.perf_counter() - start)
        if i in (full, min(full + window, count - 1), count - 1) or i % 100 == 0:
            rss[i] = round(current_rss_mib(), 1)
    early = times[full: full + window]
    late = times[-window:]
    early_end = min(full + window, count - 1)
    return {
        "frames": count, "size": args["size"], "engine": args["engine"], "threads": torch.get_num_threads(),
        "memory_full_from_frame": full,
        "s_per_frame_all": round(statistics.mean(times), 4),
        "s_per_frame_after_full": {"frames": [full, full + len(early)], "mean": round(statistics.mean(early), 4),
                                   "median": round(statistics.median(early), 4)},
        "s_per_frame_last": {"frames": [count - len(late), count], "mean": round(statistics.mean(late), 4),
                             "median": round(statistics.median(late), 4)},
        "rss_mib_after_full": rss[early_end], "rss_mib_end": rss[count - 1],
        "rss_growth_mib_after_full": round(rss[count - 1] - rss[early_end], 1),
        "rss_mib_every_100_frames": {k: v for k, v in sorted(rss.items()) if k % 100 == 0},
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "memory_sizes_end": {"spatial": len(propagator.spatial), "temporal": len(propagator.temporal)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[300, 3000])
    parser.add_argument("--size", type=int, default=480, help="short side the model processes")
    parser.add_argument("--sequence", default="car-shadow")
    parser.add_argument("--window", type=int, default=50, help="frames averaged after filling and at the end")
    parser.add_argument("--threads", type=int, default=1, help="torch/onnxruntime threads (0 = library default)")
    parser.add_argument("--engine", choices=["torch", "onnx"], default="torch")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    if min(args.frames) <= full_memory_frame() + args.window:
        sys.exit(f"error: --frames must exceed {full_memory_frame() + args.window} (memories fill, then --window)")
    results = []
    with tempfile.TemporaryDirectory(prefix="stma-membound-") as tmp_name:
        tmp = Path(tmp_name)
        checkpoint, weight_note = weights(args.checkpoint, tmp)
        onnx_dir = None
        if args.engine == "onnx":
            from stma_core.export import export_model
            from stma_core.inference.session import processing_size

            files, _ = clip_files(args.sequence)
            height, width = np.asarray(Image.open(files[0])).shape[:2]
            onnx_dir = str(tmp / "onnx")
            export_model(checkpoint, onnx_dir, "onnx", size=processing_size(height, width, args.size), objects=1)
        for frames in args.frames:
            spec = {"sequence": args.sequence, "frames": frames, "size": args.size, "window": args.window,
                    "threads": args.threads, "engine": args.engine, "onnx_dir": onnx_dir, "device": "cpu",
                    "checkpoint": checkpoint}
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"error: the {frames}-frame run failed:\n{proc.stderr[-2000:]}")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(json.dumps({"benchmark": "memory_bound", "sequence": args.sequence, "weights": weight_note,
                      "cpus": os.cpu_count(), "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
