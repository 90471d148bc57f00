"""Seconds per frame of `stma segment` on a real DAVIS clip: model only and end to end, 1 and 3 objects.

Prints one JSON object. Each configuration runs in its own child process, so its peak RSS is its own:
  model  frames decoded beforehand; times propagator.step only (resize, network, memories, argmax)
  e2e    reads an H.264 mp4 of the clip, segments it and writes palette PNGs (the CLI's reader and writer)
s/frame is the wall time of a whole run divided by its frames; the median of --runs runs is reported,
plus the same over the frames after both memories are full ("full_memory"). Three objects are the
clip's annotated object split into three ids by column (equal pixel counts), so every id is real.

    python benchmarks/segment_speed.py [--sequence car-shadow] [--frames 40] [--runs 3] [--size 480]
        [--objects 1 3] [--modes model e2e] [--engine torch|onnx] [--onnx-dir DIR] [--device cpu|cuda]
        [--threads N] [--omp-passive] [--checkpoint FILE]

Weights: --checkpoint, else the shipped default if present, else a randomly initialised network with
the pretrained trunk (speed does not depend on the weights). DAVIS comes from $STMA_SHARED_DATA or
../shared/data beside the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    return Path(os.environ.get("STMA_SHARED_DATA", REPO.parent / "shared" / "data"))


def clip_files(sequence: str) -> tuple[list[Path], Path]:
    root = shared_data() / "davis2016"
    frames = sorted((root / "JPEGImages" / "480p" / sequence).glob("*.jpg"))
    if not frames:
        sys.exit(f"error: {root / 'JPEGImages' / '480p' / sequence}: no frames; set STMA_SHARED_DATA")
    return frames, root / "Annotations" / "480p" / sequence / f"{frames[0].stem}.png"


def looped(files: list[Path], count: int) -> Iterator[Path]:
    """count frame files of the clip played forward, backward, forward... (real motion, no jump cuts)."""
    cycle = files + files[-2:0:-1] if len(files) > 1 else files
    for i in range(count):
        yield cycle[i % len(cycle)]


def split_objects(mask: np.ndarray, count: int) -> np.ndarray:
    """The clip's object (all non-zero pixels) as `count` ids, split by column at equal pixel counts."""
    ys, xs = np.nonzero(mask)
    out = np.zeros(mask.shape, np.uint8)
    if count <= 1 or xs.size == 0:
        out[ys, xs] = 1
        return out
    cuts = np.quantile(xs, np.linspace(0, 1, count + 1)[1:-1])
    out[ys, xs] = (np.searchsorted(cuts, xs, side="right") + 1).astype(np.uint8)
    return out


def encode_mp4(files: list[Path], path: Path, fps: float = 24.0) -> None:
    import imageio_ffmpeg

    first = np.asarray(Image.open(files[0]).convert("RGB"))
    writer = imageio_ffmpeg.write_frames(str(path), (first.shape[1], first.shape[0]), fps=fps, quality=None,
                                         macro_block_size=1, ffmpeg_log_level="error", output_params=["-crf", "12"])
    writer.send(None)
    for file in files:
        writer.send(np.ascontiguousarray(np.asarray(Image.open(file).convert("RGB"))).tobytes())
    writer.close()


def make_factory(args: dict[str, Any]) -> Callable[[], Any]:
    """A per-video propagator factory for the engine asked for (the network is loaded once)."""
    if args["engine"] == "onnx":
        from stma_core.inference.onnx_session import make_onnx_propagator_factory

        return make_onnx_propagator_factory(args["onnx_dir"], threads=args["threads"])
    from stma_core.inference.session import session_factory

    return session_factory(checkpoint=args["checkpoint"], device=args["device"], size=args["size"],
                           kernel_sigma=args["kernel_sigma"])


def full_memory_frame() -> int:
    """First frame index at which both memories of the default InferenceConfig are full."""
    from stma_core.config import InferenceConfig

    cfg = InferenceConfig()
    return max(cfg.spatial_every * cfg.spatial_capacity, cfg.temporal_every * cfg.temporal_capacity) + 1


def child(args: dict[str, Any]) -> dict[str, Any]:
    """One configuration, in this process: returns its timings and peak RSS."""
    import torch

    if args["threads"]:
        torch.set_num_threads(args["threads"])
    files, mask_file = clip_files(args["sequence"])
    files = list(looped(files, args["frames"]))
    mask = split_objects(np.array(Image.open(mask_file)), args["objects"])
    factory = make_factory(args)
    sync = torch.cuda.synchronize if args["device"] == "cuda" else (lambda: None)
    run_seconds: list[float] = []
    per_frame: list[list[float]] = []
    if args["mode"] == "model":
        frames = [np.asarray(Image.open(f).convert("RGB")) for f in files]
        for _ in range(args["runs"]):
            propagator = factory()
            times = []
            start = time.perf_counter()
            for i, frame in enumerate(frames):
                t = time.perf_counter()
                propagator.step(frame, mask if i == 0 else None)
                sync()
                times.append(time.perf_counter() - t)
            run_seconds.append(time.perf_counter() - start)
            per_frame.append(times)
    else:
        from stma_core.io.frames import VideoFileSource
        from stma_core.io.writers import VideoWriter

        source = VideoFileSource(Path(args["mp4"]))
        out = Path(args["out"])
        out.mkdir(parents=True, exist_ok=True)
        for _ in range(args["runs"]):
            propagator = factory()
            times = []
            start = last = time.perf_counter()
            with VideoWriter(out, source.name, ["png"], source.size, source.fps, overwrite=True) as writer:
                for i, (name, frame) in enumerate(source):
                    writer.write(name, frame, propagator.step(frame, mask if i == 0 else None))
                    now = time.perf_counter()
                    times.append(now - last)
                    last = now
            run_seconds.append(time.perf_counter() - start)  # includes the writer's final flush
            per_frame.append(times)
    frames_done = len(per_frame[0])
    full = full_memory_frame()
    full_runs = [statistics.mean(t[full:]) for t in per_frame if len(t) > full]
    return {
        "engine": args["engine"], "device": args["device"], "mode": args["mode"], "objects": args["objects"],
        "frames": frames_done, "runs": args["runs"], "threads": torch.get_num_threads(),
        "s_per_frame": round(statistics.median(s / frames_done for s in run_seconds), 4),
        "s_per_frame_runs": [round(s / frames_done, 4) for s in run_seconds],
        "s_per_frame_full_memory": round(statistics.median(full_runs), 4) if full_runs else None,
        "first_frame_s": round(statistics.median(t[0] for t in per_frame), 4),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def weights(checkpoint: str | None, tmp: Path) -> tuple[str, str]:
    from stma_core.checkpoint import DEFAULT_CHECKPOINT

    if checkpoint:
        return checkpoint, checkpoint
    if DEFAULT_CHECKPOINT.is_file():
        return str(DEFAULT_CHECKPOINT), "shipped default"
    import torch

    from stma_core.checkpoint import save_model
    from stma_core.config import ModelConfig
    from stma_core.model.network import STMANetwork

    torch.manual_seed(0)
    path = tmp / "random.safetensors"
    save_model(STMANetwork(ModelConfig()), ModelConfig(), path)
    return str(path), "random init (pretrained trunk)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequence", default="car-shadow", help="DAVIS 2016 sequence (looped if --frames is larger)")
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size", type=int, default=480, help="short side the model processes")
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--modes", nargs="+", choices=["model", "e2e"], default=["model", "e2e"])
    parser.add_argument("--engine", choices=["torch", "onnx"], default="torch")
    parser.add_argument("--onnx-dir", default=None, help="an `stma export --format onnx` folder (default: export one)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch/onnxruntime threads (0 = library default)")
    parser.add_argument("--omp-passive", action="store_true",
                        help="children run with OMP_WAIT_POLICY=PASSIVE (idle OpenMP threads sleep, not spin)")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--kernel-sigma", type=int, default=None, help="readout kernel (default: the checkpoint's)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="stma-speed-") as tmp_name:
        tmp = Path(tmp_name)
        checkpoint, weight_note = weights(args.checkpoint, tmp)
        files, _ = clip_files(args.sequence)
        clip = list(looped(files, args.frames))
        height, width = np.asarray(Image.open(clip[0])).shape[:2]
        onnx_dir = args.onnx_dir
        if args.engine == "onnx" and onnx_dir is None:
            from stma_core.export import export_model
            from stma_core.inference.session import processing_size

            onnx_dir = str(tmp / "onnx")
            export_model(checkpoint, onnx_dir, "onnx", size=processing_size(height, width, args.size),
                         objects=max(args.objects), kernel_sigma=args.kernel_sigma)
        mp4 = tmp / f"{args.sequence}.mp4"
        if "e2e" in args.modes:
            encode_mp4(clip, mp4)
        for objects in args.objects:
            for mode in args.modes:
                spec = {"sequence": args.sequence, "frames": args.frames, "runs": args.runs, "size": args.size,
                        "objects": objects, "mode": mode, "engine": args.engine, "onnx_dir": onnx_dir,
                        "device": args.device, "threads": args.threads, "checkpoint": checkpoint,
                        "kernel_sigma": args.kernel_sigma,
                        "mp4": str(mp4), "out": str(tmp / "out")}
                env = {**os.environ, **({"OMP_WAIT_POLICY": "PASSIVE"} if args.omp_passive else {})}
                proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                                      capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    print(f"error: {mode} run with {objects} object(s) failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                    results.append({"mode": mode, "objects": objects, "error": proc.stderr.strip()[-300:]})
                    continue
                results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    import torch

    print(json.dumps({
        "benchmark": "segment_speed", "sequence": args.sequence, "frame_size": [width, height],
        "processing_short_side": args.size, "kernel_sigma": args.kernel_sigma, "weights": weight_note,
        "engine": args.engine,
        "threads": args.threads or "library default", "omp_wait_policy": "PASSIVE" if args.omp_passive else "default",
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()], "full_memory_from_frame": full_memory_frame(),
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
