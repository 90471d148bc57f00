"""Shared fixtures: the real DAVIS data (skipped when absent) and an mp4 encoder for test videos."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

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
def tennis(shared_data: Path) -> Path:
    """DAVIS 2017 `tennis` fixture root: 2 frames, objects 1 and 2, void pixels."""
    path = shared_data / "davis2017-tennis"
    if not path.is_dir():
        pytest.skip(f"DAVIS 2017 tennis fixture not found at {path}")
    return path


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


@pytest.fixture(scope="session")
def car_shadow_mp4(tmp_path_factory: pytest.TempPathFactory, davis16: Path) -> tuple[Path, list[np.ndarray]]:
    """A real 10-frame 854x480 mp4 of DAVIS car-shadow, with the source frames it was made from."""
    frames = read_davis_frames(davis16, "car-shadow", 10)
    path = encode_mp4(frames, tmp_path_factory.mktemp("video") / "car-shadow.mp4")
    return path, frames


@pytest.fixture(scope="session")
def shared_data_or_none() -> Path | None:
    """The shared data folder, or None where it is absent (for tests with a part that needs it)."""
    path = shared_data_path()
    return path if (path / "davis2016").is_dir() else None
