"""How long `stma eval` takes to score DAVIS 2016 val (10 sequences) with copy-baseline predictions.

Prints one JSON object: the median of --runs timings of the scoring alone (predictions are written once
beforehand), sequences/s and frames/s. Usage:
    python benchmarks/eval_speed.py [--root DAVIS2016_ROOT] [--runs 3] [--workers N]
The root defaults to $STMA_DAVIS16_ROOT, else ../shared/data/davis2016 beside the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from stma_core.eval.datasets import resolve_split
from stma_core.eval.run_dataset import segment_davis
from stma_core.eval.scoring import score_predictions
from stma_core.inference.factory import make_propagator_factory

REPO = Path(__file__).resolve().parents[1]


def default_root() -> Path:
    env = os.environ.get("STMA_DAVIS16_ROOT")
    if env:
        return Path(env)
    shared = Path(os.environ.get("STMA_SHARED_DATA", REPO.parent / "shared" / "data"))
    return shared / "davis2016"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="DAVIS 2016 root (2017 layout, ImageSets/2016)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="scoring threads (default: one per CPU)")
    args = parser.parse_args()
    root = args.root or default_root()
    split, sequences = resolve_split(root, str(root / "ImageSets" / "2016" / "val.txt"))
    with tempfile.TemporaryDirectory(prefix="stma-eval-speed-") as tmp:
        pred = Path(tmp)
        segment_davis(root, sequences, make_propagator_factory("copy"), pred)
        timings = []
        frames = 0
        for _ in range(args.runs):
            start = time.perf_counter()
            result = score_predictions(pred, root, sequences, split, workers=args.workers)
            timings.append(time.perf_counter() - start)
            frames = sum(len(o.frames) for o in result.objects)
    median = statistics.median(timings)
    print(json.dumps({
        "benchmark": "eval_speed",
        "dataset": "davis16-val",
        "predictions": "copy baseline",
        "sequences": len(sequences),
        "frames_scored": frames,
        "runs_s": [round(t, 3) for t in timings],
        "median_s": round(median, 3),
        "sequences_per_s": round(len(sequences) / median, 2),
        "frames_per_s": round(frames / median, 1),
        "workers": args.workers or min(os.cpu_count() or 1, len(sequences)),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }))


if __name__ == "__main__":
    main()
