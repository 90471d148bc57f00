"""Caches frozen-trunk features of a DAVIS split so training skips the trunk (several times more steps).

With the lite backbone frozen, the trunk's stride-4/8/16 maps of a frame never change during
training; computing them once turns each step into STML + memory + decoder work only.
Flip augmentation is applied to the cached maps directly (a close approximation for a conv trunk).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from stma_core.errors import StmaInputError
from stma_core.io.atomic import atomic_write
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


def check_sequences(root: Path, names: list[str], split_file: Path) -> None:
    """Fails early, naming the first sequence of the split that has no frames or no masks."""
    if not names:
        raise StmaInputError(f"{split_file}: the split lists no sequences; add sequence names, one a line")
    for name in names:
        frames, masks = frame_paths(root, name)
        if not frames:
            raise StmaInputError(f"{root / 'JPEGImages' / '480p' / name}: no .jpg frames for sequence {name!r} "
                                 f"listed in {split_file.name}; fix the split or the data root")
        if not masks[0].is_file():
            raise StmaInputError(f"{masks[0]}: missing annotation of sequence {name!r}; training needs every "
                                 "frame's mask under Annotations/480p")


def frame_paths(root: Path, name: str) -> tuple[list[Path], list[Path]]:
    frames = sorted((root / "JPEGImages" / "480p" / name).glob("*.jpg"))
    masks = [root / "Annotations" / "480p" / name / (p.stem + ".png") for p in frames]
    return frames, masks


def read_resized_frame(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A training frame as HxWx3 uint8 RGB at `size` (H, W), resized bilinearly: the one resize the
    cache applies (and benchmarks/gpu_campaign.py packs frames with, so the cache finds them at size).
    Upright (EXIF orientation applied) as `stma segment` reads frames; DAVIS JPEGs carry no orientation."""
    h, w = size
    return np.asarray(open_upright(path).convert("RGB").resize((w, h), Image.BILINEAR))


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


@torch.inference_mode()
def build_cache(root: Path, names: list[str], out: Path, size: tuple[int, int] = (288, 512),
                batch: int = 8, progress=None, variant: str = "lite0",
                device: str | torch.device = "cpu") -> None:
    """Encodes every frame of `names` at `size` (H, W) on `device` and writes one .pt file (CPU tensors)
    per sequence in `out`."""
    trunk = LiteTrunk(variant).eval().to(device)
    out.mkdir(parents=True, exist_ok=True)
    h, w = size
    for name in names:
        target = out / f"{name}.pt"
        if target.exists():
            continue
        image_files, mask_paths = frame_paths(root, name)
        images = [read_resized_frame(p, size) for p in image_files]
        masks = [resize_ids(np.asarray(Image.open(p)), (h, w)) for p in mask_paths]
        maps: dict[str, list[torch.Tensor]] = {"f4": [], "f8": [], "f16": []}
        for i in range(0, len(images), batch):
            x = torch.from_numpy(np.stack(images[i:i + batch])).permute(0, 3, 1, 2).to(device).float() / 255
            for key, value in trunk(x).items():
                maps[key].append(value.half().cpu())
        data = {k: torch.cat(v) for k, v in maps.items()}
        data["masks"] = torch.from_numpy(np.stack(masks).astype(np.uint8))
        atomic_write(target, lambda tmp: torch.save(data, tmp))
        if progress:
            progress(name, len(images))


def load_cache(out: Path, names: list[str]) -> list[CachedSequence]:
    seqs = []
    for name in names:
        d = torch.load(out / f"{name}.pt", weights_only=True)
        seqs.append(CachedSequence(name, d["f4"], d["f8"], d["f16"], d["masks"]))
    return seqs
