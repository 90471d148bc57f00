"""Shared fixtures: the real DAVIS data (skipped when absent) and an mp4 encoder for test videos."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from stma_core.io.palette import DAVIS_PALETTE_FLAT

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def shared_data_path() -> Path:
    """../shared/data beside the repository, or $STMA_SHARED_DATA."""
    return Path(os.environ.get("STMA_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_path()
    if not (path / "davis2016").is_dir():
        pytest.skip(f"shared DAVIS data not found at {path} (set STMA_SHARED_DATA to the shared data folder)")
    return path


@pytest.fixture(scope="session")
def davis16(shared_data: Path) -> Path:
    """DAVIS 2016 root (JPEGImages/480p/<seq>, Annotations/480p/<seq>)."""
    return shared_data / "davis2016"


@pytest.fixture(scope="session")
def tennis(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """DAVIS 2017 `tennis` fixture root: 2 frames, objects 1 and 2, 225 void pixels on frame 0.

    The real one from the shared data when present; else one made here in the same layout from the
    example clip (JPEG frames, DAVIS palette annotations), so the tests run everywhere.
    """
    path = shared_data_path() / "davis2017-tennis"
    if path.is_dir():
        return path
    root = tmp_path_factory.mktemp("tennis")
    images, annotations = root / "JPEGImages" / "480p" / "tennis", root / "Annotations" / "480p" / "tennis"
    images.mkdir(parents=True)
    annotations.mkdir(parents=True)
    frames, moving = moving_object_sequence(2, seed=7)
    car = np.array(Image.open(EXAMPLES / "car-shadow_mask.png"))
    for i, (frame, other) in enumerate(zip(frames, moving)):
        ids = np.where(other == 1, 2, car).astype(np.uint8)
        if i == 0:
            ys, xs = np.nonzero(car == 1)
            y, x = int(ys.min()), int(xs.min())
            ids[y:y + 15, x:x + 15] = 255  # a void block, as DAVIS marks unsure pixels
        Image.fromarray(frame).save(images / f"{i:05d}.jpg", quality=95)
        image = Image.fromarray(ids)
        image.putpalette(DAVIS_PALETTE_FLAT)
        image.save(annotations / f"{i:05d}.png")
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("tennis\n")
    return root


def encode_mp4(frames: Iterable[np.ndarray], path: Path, fps: float = 24, crf: int = 12) -> Path:
    """Encodes HxWx3 uint8 RGB frames (even sizes) as H.264 mp4; low CRF keeps pixels close to the input."""
    frames = iter(frames)
    first = next(frames)
    height, width = first.shape[:2]
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, quality=None, macro_block_size=1,
                                         ffmpeg_log_level="error", output_params=["-crf", str(crf)])
    writer.send(None)
    writer.send(np.ascontiguousarray(first).tobytes())
    for frame in frames:
        writer.send(np.ascontiguousarray(frame).tobytes())
    writer.close()
    return path


@pytest.fixture(scope="session")
def mp4_encoder() -> Callable[..., Path]:
    """The `encode_mp4(frames, path, fps=24, crf=12)` helper, for tests in other files."""
    return encode_mp4


def read_davis_frames(davis16: Path, sequence: str, count: int, scale: float = 1.0) -> list[np.ndarray]:
    """First `count` RGB frames of a DAVIS 2016 sequence, optionally downscaled (even sizes)."""
    files = sorted((davis16 / "JPEGImages" / "480p" / sequence).glob("*.jpg"))[:count]
    frames = []
    for file in files:
        image = Image.open(file).convert("RGB")
        if scale != 1.0:
            w, h = image.size
            image = image.resize((int(w * scale) // 2 * 2, int(h * scale) // 2 * 2), Image.BILINEAR)
        frames.append(np.asarray(image))
    return frames


def read_davis_mask(davis16: Path, sequence: str, index: int = 0) -> np.ndarray:
    return np.array(Image.open(davis16 / "Annotations" / "480p" / sequence / f"{index:05d}.png"))


def example_frames(count: int) -> list[np.ndarray]:
    """First `count` RGB frames of the bundled example clip (examples/car-shadow.mp4, DAVIS car-shadow),
    decoded by imageio-ffmpeg's own reader (not the code under test)."""
    reader = imageio_ffmpeg.read_frames(str(EXAMPLES / "car-shadow.mp4"))
    width, height = next(reader)["size"]
    frames = []
    for raw in reader:
        frames.append(np.frombuffer(raw, np.uint8).reshape(height, width, 3).copy())
        if len(frames) == count:
            break
    reader.close()
    return frames


@pytest.fixture(scope="session")
def car_shadow_mp4(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """A real 10-frame 854x480 mp4 of DAVIS car-shadow (from the bundled example), with its source frames."""
    frames = example_frames(10)
    path = encode_mp4(frames, tmp_path_factory.mktemp("video") / "car-shadow.mp4")
    return path, frames


def moving_object_sequence(count: int, seed: int, size: tuple[int, int] = (854, 480)
                           ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A generated sequence with exact ground truth: a textured ellipse (cut from the example clip) moving
    and turning over an example-clip background. -> (RGB frames, masks with object id 1)."""
    rng = np.random.default_rng(seed)
    width, height = size
    source = example_frames(count)
    texture = np.ascontiguousarray(source[0][::-1, ::-1])
    if texture.shape[:2] != (height, width):
        texture = cv2.resize(texture, size, interpolation=cv2.INTER_AREA)
    yy, xx = np.mgrid[:height, :width]
    cx, cy = rng.uniform(0.3, 0.5) * width, rng.uniform(0.35, 0.55) * height
    vx, vy = rng.uniform(6, 12) * rng.choice([-1, 1]), rng.uniform(3, 6) * rng.choice([-1, 1])
    frames, masks = [], []
    for t in range(count):
        background = cv2.resize(source[t], size, interpolation=cv2.INTER_AREA) if source[t].shape[:2] != (height, width) \
            else source[t]
        x, y = cx + vx * t, cy + vy * t
        a, b = width * 0.12 * (1 + 0.02 * t), height * 0.15
        inside = ((xx - x) / a) ** 2 + ((yy - y) / b) ** 2 < 1
        frame = background.copy()
        frame[inside] = texture[inside]
        frames.append(frame)
        masks.append(inside.astype(np.uint8))
    return frames, masks


@pytest.fixture(scope="session")
def shared_data_or_none() -> Path | None:
    """The shared data folder, or None where it is absent (for tests with a part that needs it)."""
    path = shared_data_path()
    return path if (path / "davis2016").is_dir() else None
