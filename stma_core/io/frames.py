"""Streaming frame readers: a video file or a folder of images, one frame at a time.

A video is never held in memory: video files are decoded by an ffmpeg subprocess
(`imageio_ffmpeg.read_frames`) and image folders are read file by file.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterator

import cv2
import imageio_ffmpeg
import numpy as np
from PIL import Image, UnidentifiedImageError

from stma_core.errors import StmaInputError

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
FOLDER_FPS = 24.0
"""Frame rate assumed for image folders (DAVIS and YouTube-VOS clips are 24-30 fps); used for overlays."""

_SUPPORTED = f"a video ({', '.join(VIDEO_EXTENSIONS)}) or a folder of {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} frames"


def natural_key(name: str) -> list[object]:
    """Sort key that orders embedded numbers by value, so '2.jpg' comes before '10.jpg'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def image_files(folder: Path) -> list[Path]:
    """Frame images of a folder in natural order (hidden files skipped)."""
    files = [p for p in folder.iterdir()
             if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.name))


def is_video_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS


def is_frame_folder(path: Path) -> bool:
    return path.is_dir() and any(
        p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") for p in path.iterdir())


def find_videos(folder: Path) -> list[Path]:
    """Inputs of a batch folder: video files and sub-folders holding frames, in natural order."""
    found = [p for p in folder.iterdir()
             if not p.name.startswith(".") and (is_video_file(p) or is_frame_folder(p))]
    return sorted(found, key=lambda p: natural_key(p.name))


class FrameSource(ABC):
    """One input video. Iterate it (as often as needed) for (frame name, HxWx3 uint8 RGB frame) pairs."""

    path: Path
    name: str
    size: tuple[int, int]
    """(width, height) of every frame."""
    fps: float
    frame_count: int
    """Number of frames; for video files it comes from the container and may be off by a few."""

    @abstractmethod
    def frame_name(self, index: int) -> str:
        """Name of frame `index`, used for output files and to match annotation PNGs."""

    @abstractmethod
    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        ...


class VideoFileSource(FrameSource):
    """A video file decoded by ffmpeg; frames are named 00000, 00001, ... like DAVIS frames."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.stem
        meta = self._probe()
        self.size = (int(meta["size"][0]), int(meta["size"][1]))
        self.fps = float(meta.get("fps") or FOLDER_FPS)
        self.frame_count = self._count(float(meta.get("duration") or 0.0))

    def _open(self) -> Iterator:
        return imageio_ffmpeg.read_frames(str(self.path))

    def _probe(self) -> dict:
        reader = self._open()
        try:
            meta = next(reader)
        except (OSError, RuntimeError, StopIteration) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StmaInputError(
                f"{self.path}: not a readable video ({reason[:160]}); pass {_SUPPORTED}") from exc
        finally:
            reader.close()
        if not meta.get("size"):
            raise StmaInputError(f"{self.path}: no video stream found; pass {_SUPPORTED}")
        return meta

    def _count(self, duration: float) -> int:
        """Frame count without decoding (ffmpeg stream copy); the duration estimate if that fails."""
        try:
            return int(imageio_ffmpeg.count_frames_and_secs(str(self.path))[0])
        except (RuntimeError, OSError, ValueError):
            return max(1, round(duration * self.fps))

    def frame_name(self, index: int) -> str:
        return f"{index:05d}"

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        reader = self._open()
        index = 0
        try:
            meta = next(reader)
            width, height = meta["size"]
            for raw in reader:
                if len(raw) != width * height * 3:  # rotated videos report the stored size
                    width, height = height, width
                frame = np.frombuffer(raw, np.uint8).reshape(height, width, 3).copy()
                yield self.frame_name(index), frame
                index += 1
        except (OSError, RuntimeError) as exc:
            raise StmaInputError(
                f"{self.path}: video cannot be decoded after frame {index} ({str(exc).strip()[:160]}); "
                "re-encode it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4)") from exc
        finally:
            reader.close()


class FrameFolderSource(FrameSource):
    """A folder of JPEG/PNG frames in natural order; frame names are the file stems."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.name
        self.files = image_files(path)
        if not self.files:
            raise StmaInputError(f"{path}: folder holds no .jpg/.jpeg/.png frames; pass {_SUPPORTED}")
        stems = [p.stem for p in self.files]
        if len(set(stems)) != len(stems):
            dup = next(s for s in stems if stems.count(s) > 1)
            raise StmaInputError(f"{path}: two frames are named {dup!r} (different extensions); keep one per name")
        self._names = stems
        try:
            with Image.open(self.files[0]) as first:
                self.size = (int(first.size[0]), int(first.size[1]))
        except (OSError, UnidentifiedImageError) as exc:
            raise StmaInputError(f"{self.files[0]}: not a readable image ({exc}); replace or remove it") from exc
        self.fps = FOLDER_FPS
        self.frame_count = len(self.files)

    def frame_name(self, index: int) -> str:
        return self._names[index]

    @property
    def frame_names(self) -> list[str]:
        return list(self._names)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for name, file in zip(self._names, self.files):
            bgr = cv2.imread(str(file), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
            if bgr is None:
                raise StmaInputError(f"{file}: not a readable image; replace or remove it")
            if (bgr.shape[1], bgr.shape[0]) != self.size:
                raise StmaInputError(
                    f"{file}: frame is {bgr.shape[1]}x{bgr.shape[0]} but the first frame is "
                    f"{self.size[0]}x{self.size[1]}; resize all frames to one size")
            yield name, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def open_frames(path: str | Path) -> FrameSource:
    """Opens a video file or frame folder, checking it can be read (not its every frame)."""
    path = Path(path)
    if not path.exists():
        raise StmaInputError(f"{path}: no such file or folder; check the path")
    if path.is_dir():
        return FrameFolderSource(path)
    if path.suffix.lower() not in VIDEO_EXTENSIONS:
        raise StmaInputError(f"{path}: unsupported file type {path.suffix or '(none)'!r}; pass {_SUPPORTED}")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise StmaInputError(f"{path}: cannot be read ({exc.strerror}); check its permissions") from exc
    return VideoFileSource(path)
