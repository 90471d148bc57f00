"""One command that checks the CUDA path end to end and prints one JSON object (under 8 minutes on one GPU).

    python benchmarks/gpu_check.py                      # needs CUDA; fails at once with one line otherwise
    python benchmarks/gpu_check.py --device cpu --smoke # the same code at tiny sizes, for CI without a GPU

Checks (each a key of the JSON, with "ok", its numbers and "seconds"; a failing check records its
error and the others still run; the exit code is 1 if any check failed):

- autocast:   the bundled 854x480 clip (examples/car-shadow.mp4) at 480p with autocast (bf16/fp16) and
              in fp32; per-frame IoU of the two mask sequences, ok when the minimum is >= 0.98.
- speed:      frames/s (CUDA-synchronised, after 5 warm-up frames) and peak GPU memory (MiB) for 1 and 3
              objects (the car split into 3 ids by column), autocast on and off.
- long_video: 1000 frames (the clip played forward, backward, ...) with memory sampled every 100
              frames; ok when allocated memory after frame 100 varies by less than 16 MiB (flat).
- compile:    torch.compile of the trunk and decoder: compile time, frames/s against eager, mask IoU.
- train_amp:  a few AdamW steps of the unrolled training loss on one real clip batch under autocast
              (+ GradScaler for fp16): losses finite and the last below the first.
- onnx_cuda:  an ONNX export run by onnxruntime's CUDAExecutionProvider, masks against PyTorch (IoU);
              skipped (not failed) when onnxruntime-gpu is not installed.

--smoke shrinks everything (short side 64, 8 frames, 40 looped frames, 2 train steps, compile with the
"eager" backend, no ONNX) so the script's non-CUDA parts run in seconds on a CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLIP = REPO / "examples" / "car-shadow.mp4"
CLIP_MASK = REPO / "examples" / "car-shadow_mask.png"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling benchmark scripts
from segment_speed import split_objects  # noqa: E402  the same id split the CPU speed benchmark uses
IOU_MIN = 0.98


@dataclasses.dataclass
class Plan:
    """Sizes of every check (full GPU run vs --smoke)."""

    size: int = 480
    frames: int = 40
    loop_frames: int = 1000
    sample_every: int = 100
    warmup: int = 5
    train_steps: int = 8
    train_crop: tuple[int, int] = (384, 384)
    train_length: int = 3
    train_batch: int = 4
    compile_backend: str = "inductor"
    onnx: bool = True

    @staticmethod
    def smoke() -> "Plan":
        return Plan(size=64, frames=8, loop_frames=40, sample_every=10, warmup=1, train_steps=2, train_crop=(64, 64),
                    train_length=3, train_batch=1, compile_backend="eager", onnx=False)


# ---- helpers ---------------------------------------------------------------------------------------
def load_clip(count: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The first `count` RGB frames (HxWx3 uint8) of the bundled clip and its first-frame id mask (HxW uint8)."""
    from PIL import Image

    from stma_core.io.frames import open_frames

    frames = [frame for _, (_, frame) in zip(range(count), open_frames(CLIP))]
    return frames, (np.array(Image.open(CLIP_MASK)) > 0).astype(np.uint8)


def mean_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over the ids present in either mask of their IoU (1.0 when both are empty)."""
    ids = [i for i in np.union1d(np.unique(a), np.unique(b)) if i != 0]
    if not ids:
        return 1.0
    return float(np.mean([((a == i) & (b == i)).sum() / max(((a == i) | (b == i)).sum(), 1) for i in ids]))


class Device:
    """Synchronisation and memory counters of the device under test (RSS on a CPU)."""

    def __init__(self, name: str) -> None:
        import torch

        self.torch, self.name = torch, name
        self.cuda = name.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_mib(self) -> float:
        if self.cuda:
            return round(self.torch.cuda.max_memory_allocated() / 2**20, 1)
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    def now_mib(self) -> float:
        if self.cuda:
            return round(self.torch.cuda.memory_allocated() / 2**20, 1)
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def run_clip(make: Callable[[], Any], frames: list[np.ndarray], mask: np.ndarray, dev: Device,
             warmup: int = 0) -> tuple[list[np.ndarray], float]:
    """Segments the frames with a fresh session; -> (masks, frames/s over the frames after `warmup`)."""
    session = make()
    masks, start = [], None
    for i, frame in enumerate(frames):
        if i == warmup:
            dev.sync()
            start = time.perf_counter()
        masks.append(session.step(frame, mask if i == 0 else None))
    dev.sync()
    timed = len(frames) - warmup
    fps = timed / (time.perf_counter() - start) if start is not None and timed > 0 else float("nan")
    return masks, round(fps, 2)


def check(name: str, results: dict[str, Any], fn: Callable[[], dict[str, Any]]) -> None:
    """Runs one check; its dict (or its error) goes into results[name] with the time it took."""
    start = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - recorded, the other checks still run
        out = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    out["seconds"] = round(time.perf_counter() - start, 1)
    results[name] = out
    print(f"[gpu_check] {name}: {'ok' if out.get('ok') else out.get('skipped') or 'FAILED'} "
          f"({out['seconds']} s)", file=sys.stderr, flush=True)


# ---- checks ----------------------------------------------------------------------------------------
def factory(device: str, size: int, amp: bool) -> Callable[[], Any]:
    from stma_core.inference.session import session_factory

    return session_factory(device=device, size=size, amp=amp)


def check_autocast(plan: Plan, dev: Device, frames: list[np.ndarray], mask: np.ndarray) -> dict[str, Any]:
    amp, amp_fps = run_clip(factory(dev.name, plan.size, True), frames, mask, dev)
    fp32, fp32_fps = run_clip(factory(dev.name, plan.size, False), frames, mask, dev)
    ious = [mean_iou(a, b) for a, b in zip(amp, fp32)]
    dtype = None
    if dev.cuda:
        dtype = "bfloat16" if dev.torch.cuda.is_bf16_supported() else "float16"
    return {"ok": min(ious) >= IOU_MIN, "autocast_dtype": dtype, "frames": len(frames), "size": plan.size,
            "iou_min": round(min(ious), 4), "iou_mean": round(float(np.mean(ious)), 4), "threshold": IOU_MIN}


def check_speed(plan: Plan, dev: Device, frames: list[np.ndarray], mask: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {"size": plan.size, "frames": len(frames), "warmup": plan.warmup}
    for amp in (True, False):
        make = factory(dev.name, plan.size, amp)
        for objects in (1, 3):
            dev.reset_peak()
            _, fps = run_clip(make, frames, split_objects(mask, objects), dev, plan.warmup)
            key = f"{objects}obj_{'amp' if amp else 'fp32'}"
            out[key] = {"fps": fps, "peak_mib": dev.peak_mib()}
    out["ok"] = all(v["fps"] > 0 for k, v in out.items() if isinstance(v, dict))
    return out


def check_long_video(plan: Plan, dev: Device, frames: list[np.ndarray], mask: np.ndarray) -> dict[str, Any]:
    cycle = frames + frames[-2:0:-1]
    session = factory(dev.name, plan.size, True)()
    dev.reset_peak()
    samples: dict[int, float] = {}
    start = time.perf_counter()
    for i in range(plan.loop_frames):
        session.step(cycle[i % len(cycle)], mask if i == 0 else None)
        if (i + 1) % plan.sample_every == 0:
            dev.sync()
            samples[i + 1] = dev.now_mib()
    dev.sync()
    seconds = time.perf_counter() - start
    after = [v for k, v in samples.items() if k > plan.sample_every]
    spread = round(max(after) - min(after), 1) if after else 0.0
    return {"ok": spread < 16.0, "frames": plan.loop_frames, "fps": round(plan.loop_frames / seconds, 2),
            "memory_mib_by_frame": samples, "spread_mib_after_first_sample": spread, "peak_mib": dev.peak_mib(),
            "temporal_memory": len(session.temporal), "memory_kind": "cuda allocated" if dev.cuda else "RSS"}


def check_compile(plan: Plan, dev: Device, frames: list[np.ndarray], mask: np.ndarray) -> dict[str, Any]:
    torch = dev.torch
    make = factory(dev.name, plan.size, True)
    eager, eager_fps = run_clip(make, frames, mask, dev, plan.warmup)
    network = make().engine.network
    trunk, decoder = network.trunk, getattr(network, "decoder", None)
    start = time.perf_counter()
    try:
        network.trunk = torch.compile(trunk, backend=plan.compile_backend)
        if decoder is not None:
            network.decoder = torch.compile(decoder, backend=plan.compile_backend)
        first = make()
        first.step(frames[0], mask)  # triggers compilation
        dev.sync()
        compile_seconds = time.perf_counter() - start
        compiled, compiled_fps = run_clip(make, frames, mask, dev, plan.warmup)
    finally:
        network.trunk = trunk
        if decoder is not None:
            network.decoder = decoder
    ious = [mean_iou(a, b) for a, b in zip(eager, compiled)]
    return {"ok": min(ious) >= IOU_MIN, "backend": plan.compile_backend, "compiled": ["trunk", "decoder"],
            "compile_seconds": round(compile_seconds, 1), "eager_fps": eager_fps, "compiled_fps": compiled_fps,
            "iou_min": round(min(ious), 4)}


def check_train_amp(plan: Plan, dev: Device, frames: list[np.ndarray], mask: np.ndarray) -> dict[str, Any]:
    import torch
    import torch.nn.functional as F

    from stma_core.config import ModelConfig
    from stma_core.model.network import STMANetwork
    from stma_core.training.unroll import unroll_sequence

    torch.manual_seed(0)
    network = STMANetwork(ModelConfig(), pretrained_trunk=True).to(dev.name)
    network.train()
    network.trunk.eval()
    for name, p in network.named_parameters():
        p.requires_grad_(not name.startswith("trunk."))
    params = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=2e-4)
    use_amp = dev.cuda
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    autocast = (lambda: torch.autocast("cuda", dtype=amp_dtype)) if use_amp else (lambda: torch.autocast("cpu", enabled=False))

    # one batch of real clips: frames t, t+1, t+2 from different start points, resized to the crop
    h, w = plan.train_crop
    clips, masks = [], []
    for b in range(plan.train_batch):
        idx = [min(b * 2 + t, len(frames) - 1) for t in range(plan.train_length)]
        clips.append(torch.stack([torch.from_numpy(frames[i]).permute(2, 0, 1) for i in idx]))
        m = torch.from_numpy(mask).float()[None, None].expand(plan.train_length, 1, *mask.shape)
        masks.append(m)
    images = F.interpolate(torch.stack(clips).flatten(0, 1).float() / 255, size=(h, w), mode="bilinear",
                           align_corners=False).unflatten(0, (plan.train_batch, plan.train_length)).to(dev.name)
    labels = (F.interpolate(torch.stack(masks).flatten(0, 1), size=(h, w), mode="nearest")
              .unflatten(0, (plan.train_batch, plan.train_length)).to(dev.name))  # (B, T, 1, H, W)
    rng = random.Random(0)
    losses, times = [], []
    dev.reset_peak()
    for _ in range(plan.train_steps):
        start = time.perf_counter()
        with autocast():
            feats = [network.encode_frame(images[:, t]) for t in range(plan.train_length)]
            loss, _ = unroll_sequence(network, feats, labels, 1.0, rng)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(optimizer)
        scaler.update()
        dev.sync()
        times.append(time.perf_counter() - start)
        losses.append(round(float(loss.detach()), 5))
    finite = all(np.isfinite(losses))
    return {"ok": finite and losses[-1] < losses[0], "amp_dtype": str(amp_dtype).replace("torch.", "") if use_amp else None,
            "grad_scaler": scaler.is_enabled(), "batch": plan.train_batch, "clip_length": plan.train_length,
            "crop": list(plan.train_crop), "losses": losses,
            "s_per_step": round(float(np.median(times[1:] if len(times) > 1 else times)), 4),
            "peak_mib": dev.peak_mib()}


def check_onnx_cuda(plan: Plan, dev: Device, frames: list[np.ndarray], mask: np.ndarray) -> dict[str, Any]:
    if not plan.onnx:
        return {"ok": True, "skipped": "not run with --smoke"}
    try:
        import onnxruntime as ort
    except ImportError:
        return {"ok": True, "skipped": "onnxruntime is not installed (pip install onnxruntime-gpu)"}
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"ok": True, "skipped": f"onnxruntime {ort.__version__} has no CUDAExecutionProvider "
                                       "(pip install onnxruntime-gpu)"}
    from stma_core.export.exporter import export_model
    from stma_core.config import InferenceConfig
    from stma_core.inference.onnx_session import ExportedEngine, OrtRunner
    from stma_core.inference.session import VideoSession

    class CudaRunner(OrtRunner):
        def run(self, name: str, inputs: list[Any]) -> list[Any]:
            if name not in self._sessions:
                spec = self.manifest.graphs[name]
                self._sessions[name] = ort.InferenceSession(
                    str(self.folder / spec.file), self.options,
                    providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
            return super().run(name, inputs)

    height, width = frames[0].shape[:2]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        manifest = export_model(None, tmp, "onnx", size=(plan.size, round(width * plan.size / height)), objects=1)
        export_seconds = time.perf_counter() - start
        runner = CudaRunner(Path(tmp), manifest)
        engine = ExportedEngine(runner, manifest)
        ort_masks, ort_fps = run_clip(lambda: VideoSession(engine, InferenceConfig(**manifest.inference.__dict__)),
                                      frames, mask, Device("cpu"), plan.warmup)
        providers = {name: s.get_providers()[0] for name, s in runner._sessions.items()}
    torch_masks, _ = run_clip(factory(dev.name, plan.size, False), frames, mask, dev)
    ious = [mean_iou(a, b) for a, b in zip(ort_masks, torch_masks)]
    on_cuda = all(p == "CUDAExecutionProvider" for p in providers.values())
    return {"ok": on_cuda and min(ious) >= IOU_MIN, "onnxruntime": ort.__version__, "providers": providers,
            "export_seconds": round(export_seconds, 1), "fps": ort_fps, "iou_min_vs_torch_fp32": round(min(ious), 4)}


# ---- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (only with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script itself in seconds")
    parser.add_argument("--only", nargs="*", default=None,
                        help="run only these checks (autocast speed long_video compile train_amp onnx_cuda)")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: CUDA is not available (torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
              "run this on a machine with an NVIDIA GPU, or check the script with --device cpu --smoke",
              file=sys.stderr)
        return 2
    if args.device == "cpu" and not args.smoke:
        print("error: --device cpu is only for --smoke (the full check would take hours on a CPU); add --smoke",
              file=sys.stderr)
        return 2
    plan = Plan.smoke() if args.smoke else Plan()
    dev = Device(args.device)
    if ":" in args.device:
        torch.cuda.set_device(int(args.device.split(":")[1]))
    frames, mask = load_clip(plan.frames)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if dev.cuda else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "smoke": args.smoke,
        "clip": f"{CLIP.relative_to(REPO)} ({frames[0].shape[1]}x{frames[0].shape[0]}, {len(frames)} frames)",
    }
    checks = {"autocast": check_autocast, "speed": check_speed, "long_video": check_long_video,
              "compile": check_compile, "train_amp": check_train_amp, "onnx_cuda": check_onnx_cuda}
    start = time.perf_counter()
    for name, fn in checks.items():
        if args.only is None or name in args.only:
            check(name, results, lambda fn=fn: fn(plan, dev, frames, mask))
    results["seconds"] = round(time.perf_counter() - start, 1)
    results["ok"] = all(v.get("ok", False) for v in results.values() if isinstance(v, dict))
    text = json.dumps(results, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
