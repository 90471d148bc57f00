"""Caches frozen-trunk features of a DAVIS split so training skips the trunk (several times more steps).

With the lite backbone frozen, the trunk's stride-4/8/16 maps of a frame never change during
training; computing them once turns each step into STML + memory + decoder work only.
Flip augmentation is applied to the cached maps directly (a close approximation for a conv trunk).

A cache folder records what it was built from (source.json: the resolved data root and, per sequence,
a fingerprint of its frame and mask files: names, sizes, mtimes), so a folder reused for another
dataset of the same name, or after annotations changed, is rebuilt instead of silently trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import hashlib
import json

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from stma_core.errors import StmaInputError
from stma_core.eval.datasets import frame_images, short_list
from stma_core.eval.run_dataset import check_annotation_size
from stma_core.eval.scoring import read_id_mask
from stma_core.ids import VOID_ID
from stma_core.io.atomic import atomic_write, atomic_write_text
from stma_core.io.frames import open_upright
from stma_core.model.lite_backbone import LiteTrunk


@dataclass
class CachedSequence:
    name: str
    f4: torch.Tensor  # T, C4, H/4, W/4  (float16)
    f8: torch.Tensor
    f16: torch.Tensor
    masks: torch.Tensor  # T, H, W uint8 ids

    def __len__(self) -> int:
        return self.masks.shape[0]


def check_sequences(root: Path, names: list[str], split_file: Path, every_mask: bool = True) -> None:
    """Fails early (one line): a sequence of the split without frames, a missing annotation (every frame's
    with `every_mask`, the stage main: it trains on every frame; else the first, as the static stage takes the
    annotated frames), or one that is not a palette/grayscale id PNG (read_id_mask, the evaluator's rule),
    before any caching."""
    if not names:
        raise StmaInputError(f"{split_file}: the split lists no sequences; add sequence names, one a line")
    missing: list[Path] = []
    annotations: list[Path] = []
    for name in names:
        frames, masks = frame_paths(root, name)
        if not frames:
            flat = root / "JPEGImages" / name
            if frame_images(flat):  # YouTube-VOS style, no 480p/ level: the frames are there, one folder up
                raise StmaInputError(f"{root / 'JPEGImages' / '480p' / name}: no frames for sequence {name!r}, but "
                                     f"{flat} holds them; training reads the DAVIS layout: move the sequence folders "
                                     "of JPEGImages/ and Annotations/ into a 480p/ folder in each "
                                     "(JPEGImages/480p/<seq>/, Annotations/480p/<seq>/)")
            raise StmaInputError(f"{root / 'JPEGImages' / '480p' / name}: no frames (jpg, png, webp, tif, bmp) for sequence "
                                 f"{name!r} listed in {split_file.name}; fix the split or the data root")
        missing += [m for m in (masks if every_mask else masks[:1]) if not m.is_file()]
        annotations += [m for m in masks if every_mask or m.is_file()]
    if missing:
        raise StmaInputError(f"{missing[0]}: missing annotation ({len(missing)} frame(s) of the split without a "
                             "mask under Annotations/480p); training needs every frame's mask (sparsely annotated "
                             "data such as YouTube-VOS train: keep only annotated frames in JPEGImages)")
    for mask in annotations:  # headers only: cheap for a whole data set
        read_id_mask(mask, "training annotation", header_only=True)
    for name in names:  # frames and masks are resized to frame_size each on its own: another size went unnoticed
        for frame, mask in zip(*frame_paths(root, name)):
            if mask.is_file():
                check_annotation_size(frame, mask)  # headers only, as `stma eval` checks them


def frame_paths(root: Path, name: str) -> tuple[list[Path], list[Path]]:
    """A sequence's frames in natural order (2.jpg before 10.jpg) and of any type, as `stma segment` and
    `stma eval` read them (eval.datasets.frame_images; DAVIS's zero-padded .jpg names sort the same either
    way), and the .png annotation path of each."""
    frames = frame_images(root / "JPEGImages" / "480p" / name)
    masks = [root / "Annotations" / "480p" / name / (p.stem + ".png") for p in frames]
    return frames, masks


def sequence_fingerprint(root: Path, name: str) -> str:
    """A cheap fingerprint of a sequence's frame and mask files (names, sizes, mtimes): changes when any
    is added, removed, replaced or edited, without reading the pixels."""
    digest = hashlib.sha1()
    for path in (p for pair in zip(*frame_paths(root, name)) for p in pair):
        try:
            stat = path.stat()
            digest.update(f"{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path.name}\0missing\n".encode())
    return digest.hexdigest()


def data_record(root: Path, names: list[str]) -> dict:
    """What a cache or a run was built from: the resolved data root and each sequence's fingerprint."""
    return {"data": str(root.resolve()), "sequences": {n: sequence_fingerprint(root, n) for n in names}}


def changed_sequences(record: dict, current: dict) -> list[str]:
    """Sequences of `current` whose data root or files differ from `record`'s."""
    same_root = record.get("data") == current["data"]
    old = record.get("sequences", {})
    return [n for n, fp in current["sequences"].items() if not same_root or old.get(n) != fp]


def read_resized_frame(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A training frame as HxWx3 uint8 RGB at `size` (H, W), resized bilinearly: the one resize the
    cache applies (and benchmarks/gpu_campaign.py packs frames with, so the cache finds them at size).
    Upright (EXIF orientation applied) as `stma segment` reads frames; DAVIS JPEGs carry no orientation."""
    h, w = size
    return np.asarray(read_upright_rgb(path).resize((w, h), Image.BILINEAR))


def read_upright_rgb(path: Path) -> Image.Image:
    """A training image as PIL shows it (EXIF orientation applied), RGB, decoded in full here; a file that is no
    image or is cut off (a partial copy: PIL stops with 'image file is truncated') was a traceback deep in
    caching or mid-run, and is one line naming it now. Decoding is PIL's, as before, so caches stay the same."""
    try:
        return open_upright(path).convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise StmaInputError(f"{path}: not a readable image, or truncated ({' '.join(str(exc).split())}); replace "
                             "it, or remove it (with its mask)") from None


def resize_ids(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Id mask (H, W) uint8 -> `size` (H, W). Upscaling resizes each id's indicator bilinearly and takes
    the arg-max, so a 288p DAVIS train mask trained at 480p has smooth edges instead of nearest-neighbour
    stairs that the images (resized bilinearly) do not have; downscaling stays nearest."""
    h, w = size
    if ids.shape == (h, w):
        return ids
    if h < ids.shape[0] or w < ids.shape[1]:
        return cv2.resize(ids, (w, h), interpolation=cv2.INTER_NEAREST)
    values = np.unique(ids)
    soft = np.stack([cv2.resize((ids == v).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
                     for v in values])
    return values[soft.argmax(0)].astype(ids.dtype)


SOURCE_FILE = "source.json"


@torch.inference_mode()
def build_cache(root: Path, names: list[str], out: Path, size: tuple[int, int] = (288, 512),
                batch: int = 8, progress=None, variant: str = "lite0",
                device: str | torch.device = "cpu", note=None, current: dict | None = None) -> None:
    """Encodes every frame of `names` at `size` (H, W) on `device` and writes one .pt file (CPU tensors)
    per sequence in `out`. A sequence already cached from the same data root and files is kept; one cached
    from other files (another dataset, edited annotations, or a cache without a record) is rebuilt, and
    `note` is told so. Masks are read as the evaluator reads them (read_id_mask). `current`: data_record(root,
    names) when the caller already made it (it stats every file)."""
    out.mkdir(parents=True, exist_ok=True)
    source = out / SOURCE_FILE
    current = current if current is not None else data_record(root, names)
    record = json.loads(source.read_text()) if source.is_file() else {}
    changed = [n for n in changed_sequences(record, current) if (out / f"{n}.pt").exists()]
    if changed and note:
        made = (f"from {record['data']}" if record.get("data") != current["data"] else "from other files") \
            if record else "without a record of its data (an older stma)"
        note(f"note: the feature cache {out} was made {made}; rebuilding {len(changed)} sequence(s) "
             f"({short_list(changed, 4)}) from {current['data']}")
    kept = {"data": current["data"],
            "sequences": {n: fp for n, fp in record.get("sequences", {}).items()
                          if record.get("data") == current["data"] and n not in changed}}
    trunk = None
    h, w = size
    for name in names:
        target = out / f"{name}.pt"
        if target.exists() and name not in changed:
            kept["sequences"][name] = current["sequences"][name]
            continue
        if trunk is None:
            trunk = LiteTrunk(variant).eval().to(device)
        image_files, mask_paths = frame_paths(root, name)
        images = [read_resized_frame(p, size) for p in image_files]
        masks = [resize_ids(read_id_mask(p, "training annotation"), (h, w)) for p in mask_paths]
        maps: dict[str, list[torch.Tensor]] = {"f4": [], "f8": [], "f16": []}
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.stack(images[i:i + batch])).permute(0, 3, 1, 2).to(device).float() / 255
            for key, value in trunk(x).items():
                maps[key].append(value.half().cpu())
        data = {k: torch.cat(v) for k, v in maps.items()}
        data["masks"] = torch.from_numpy(np.stack(masks).astype(np.uint8))
        atomic_write(target, lambda tmp: torch.save(data, tmp))
        kept["sequences"][name] = current["sequences"][name]
        atomic_write_text(source, json.dumps(kept, indent=1) + "\n")  # after each: an interrupted build resumes
        if progress:
            progress(name, len(images))
    atomic_write_text(source, json.dumps(kept, indent=1) + "\n")


def training_ids(masks: torch.Tensor) -> torch.Tensor:
    """A sequence's cached id masks (T, H, W) as training targets, by the evaluator's rules: void (255) is
    background, except in a sequence whose only non-zero value is 255 (original DAVIS 2016 0/255 masks),
    where 255 is object 1."""
    void = masks == VOID_ID
    if not void.any():
        return masks
    if not ((masks > 0) & ~void).any():
        return void.to(torch.uint8)
    return masks.masked_fill(void, 0)


def load_cache(out: Path, names: list[str]) -> list[CachedSequence]:
    seqs = []
    for name in names:
        d = torch.load(out / f"{name}.pt", weights_only=True)
        seqs.append(CachedSequence(name, d["f4"], d["f8"], d["f16"], training_ids(d["masks"])))
    return seqs
