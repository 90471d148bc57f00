"""Streaming frame readers: a video file or a folder of images, one frame at a time.

A video is never held in memory: video files are decoded by an ffmpeg subprocess (the binary that
imageio-ffmpeg ships) and image folders are read file by file.

Every frame of a video file is delivered exactly once, in decode order: ffmpeg runs with
`-fps_mode passthrough`, so a variable-frame-rate file (phone recordings, screen captures) is not
converted to a constant rate (which duplicates and drops frames). Output frame i is the file's
decoded frame i, and `--mask-dir` frame numbers count the same frames. A file that decodes with
errors, or to fewer frames than its container holds (a cut-off download), is an error of that
video, never a shorter result. ffmpeg's own messages are captured, never printed.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import cv2
import imageio_ffmpeg
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from stma_core.errors import StmaInputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")
"""Frame images (every one also read by PIL, which checks it is complete); the same set everywhere a folder
is sorted into frames, videos and masks, so a folder of .webp frames is a frame folder as .jpg ones are."""
IMAGE_NAMES = "jpg/png/webp/tif/bmp"
MASK_BESIDE = ("{}.png", "{}_mask.png")
"""Names of the mask beside a video `clip.mp4` (or frame folder `clip/`) when none is given: PNG only.
Any other image named like it (a `clip.jpg` thumbnail or poster frame) is never taken as its mask: a
photo read as a mask becomes a one-object mask without complaint, and lossy JPEG blurs a mask's edges."""
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
                    ".3gp", ".flv", ".wmv", ".ogv", ".mxf", ".vob", ".y4m", ".gif")
"""Names taken for videos without asking ffmpeg; any other file is a video if ffmpeg finds a video stream."""
NOT_VIDEO_EXTENSIONS = (".txt", ".json", ".csv", ".md", ".yaml", ".yml", ".xml", ".zip", ".tar", ".gz", ".pdf",
                        ".npy", ".npz", ".pt", ".pth", ".safetensors", ".onnx", ".py", ".sh", ".log", ".partial")
"""Files never probed as videos (text, archives, models)."""
FOLDER_FPS = 24.0
"""Frame rate assumed for image folders (DAVIS and YouTube-VOS clips are 24-30 fps); used for overlays."""

_SUPPORTED = "a video file (anything ffmpeg decodes: mp4, mov, mkv, webm, avi, m4v, mpg, ts, ...) " \
             f"or a folder of {IMAGE_NAMES} frames"
_REENCODE = "ffmpeg -i IN -fps_mode passthrough -c:v libx264 OUT.mp4"
"""The re-encode errors suggest: `-fps_mode passthrough` keeps every frame of a variable-frame-rate file
(ffmpeg's default for mp4 output converts to a constant rate, dropping and duplicating frames)."""
_FRAME_FILES = "/".join(IMAGE_EXTENSIONS)
_DECODE_ERROR = re.compile(r"error|invalid|corrupt|partial file|truncat|missing|not found|could not|failed",
                           re.IGNORECASE)


def natural_key(name: str) -> list[object]:
    """Sort key that orders embedded numbers by value, so '2.jpg' comes before '10.jpg'."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and not path.name.endswith(".partial")


def image_files(folder: Path) -> list[Path]:
    """Frame images (IMAGE_EXTENSIONS) of a folder in natural order (hidden files skipped)."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and _visible(p)]
    return sorted(files, key=lambda p: natural_key(p.name))


def _ffmpeg() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


def _run(args: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([_ffmpeg(), "-hide_banner", "-nostdin", *args], stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=timeout, start_new_session=True)


def _first_problem(text: str) -> str:
    """The most telling line of ffmpeg's stderr, without its `[h264 @ 0x...]` prefix."""
    lines = [re.sub(r"^(\[[^\]]*\]\s*)+", "", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    for line in lines:
        if _DECODE_ERROR.search(line):
            return line[:160]
    return lines[0][:160] if lines else "no details"


def has_video_stream(path: Path) -> bool:
    """True if ffmpeg finds a video stream in the file (cheap: reads the header only)."""
    try:
        result = _run(["-i", str(path)], timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return _video_stream(result.stderr.decode("utf-8", "replace")) is not None


_VIDEO = "0:V:0"
"""The video read: the first video stream that is not an attached picture (the cover art of an mp3, m4a or
mkv, which ffmpeg lists as a one-frame video stream)."""


def _video_stream(header: str) -> re.Match | None:
    """The line of ffmpeg's description of a file that describes _VIDEO (group 1: after 'Video: ')."""
    return re.search(r"^\s*Stream #\S+.*?: Video: (?!.*\(attached pic\))(.*)$", header, re.MULTILINE)


def is_video_file(path: Path) -> bool:
    """A file that is a video: a video name, an animated PNG or WebP, or (any other name) a file ffmpeg finds
    a moving video in."""
    if not path.is_file() or not _visible(path):
        return False
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return True
    if suffix in IMAGE_EXTENSIONS:
        return is_animation(path)
    if suffix in NOT_VIDEO_EXTENSIONS:
        return False
    return has_video_stream(path)


def is_frame_folder(path: Path) -> bool:
    return path.is_dir() and bool(image_files(path))


@dataclass
class FolderContents:
    """What a folder holds, so its kind (frames, or a batch of videos) comes from its content."""

    folder: Path
    images: list[Path] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)
    frame_folders: list[Path] = field(default_factory=list)
    masks: dict[str, Path] = field(default_factory=dict)
    """MASK_BESIDE images named like an input of the folder (`clip.png` beside `clip.mp4`): its mask."""
    not_masks: dict[str, list[Path]] = field(default_factory=dict)
    """Other images named like an input (`clip.jpg` beside `clip.mp4`, a thumbnail): neither a mask nor
    a frame; kept to say why they were not taken as its mask when it has none."""

    @property
    def inputs(self) -> list[Path]:
        return sorted(self.videos + self.frame_folders, key=lambda p: natural_key(p.name))

    @property
    def kind(self) -> str:
        """'frames', 'batch', 'mixed' or 'empty'."""
        if self.images and not self.inputs:
            return "frames"
        if self.inputs and not self.images:
            return "batch"
        if self.images and self.inputs:
            return "mixed"
        return "empty"

    def describe(self) -> str:
        parts = []
        for label, items in (("video", self.videos), ("frame folder", self.frame_folders), ("image", self.images)):
            if items:
                names = ", ".join(p.name for p in items[:3]) + (", ..." if len(items) > 3 else "")
                parts.append(f"{len(items)} {label}{'s' if len(items) > 1 else ''} ({names})")
        return " and ".join(parts)


def scan_folder(folder: Path) -> FolderContents:
    """Sorts a folder's entries into frame images, videos, frame sub-folders and masks of its inputs.

    The masks are found by the rule single-input runs use (MASK_BESIDE), so a batch never takes a file
    as a video's mask that `stma segment folder/clip.mp4` would not.
    """
    contents = FolderContents(folder)
    entries = sorted((p for p in folder.iterdir() if _visible(p)), key=lambda p: natural_key(p.name))
    contents.videos = [p for p in entries if is_video_file(p)]  # animated PNG/WebP too
    videos = set(contents.videos)
    images = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and p not in videos]
    contents.frame_folders = [p for p in entries if is_frame_folder(p)]
    names = {input_name(p) for p in contents.inputs}
    for image in images:
        owner = next((n for n in (image.stem, image.stem[:-5] if image.stem.endswith("_mask") else None)
                      if n in names), None)
        if owner is None:
            contents.images.append(image)
        elif image.name.lower() in {pattern.format(owner).lower() for pattern in MASK_BESIDE}:
            contents.masks.setdefault(owner, image)
        else:
            contents.not_masks.setdefault(owner, []).append(image)
    return contents


def input_name(path: Path) -> str:
    """Name of an input (its outputs and masks are named after it): `clip` for clip.mp4 and clip/, also when the
    folder is given as `.` or `..` (whose own names would make the outputs --out itself or its parent)."""
    if path.is_dir():
        return _named(path).name
    return path.stem


def _named(path: Path) -> Path:
    """`path`, or its absolute form when it ends in `.` or `..` (no name of its own; symlinks are kept).

    Relative ones are taken from the shell's current folder ($PWD) when it is the same folder: after `cd
    clips/mylink` (a link to /data/x123) `.` is `clips/mylink`, as `stma segment mylink` from clips/ names it,
    with its mask `clips/mylink.png` beside it, not x123 (os.getcwd() gives the link's target)."""
    if path.name not in ("", ".", ".."):
        return path
    physical = os.path.abspath(path)
    shell = os.environ.get("PWD", "")
    if not path.is_absolute() and os.path.isabs(shell):
        logical = os.path.normpath(os.path.join(shell, path))
        try:
            if logical != physical and os.path.samefile(logical, physical):
                return Path(logical)
        except OSError:
            pass
    return Path(physical)


def mask_beside(path: Path) -> tuple[Path | None, list[Path]]:
    """-> (the MASK_BESIDE mask of a video or frame folder, or None; other images named like it, which
    are not its mask). The one rule for single inputs and batches."""
    path = _named(path)  # `.`: the mask beside the current folder is in its parent
    name = input_name(path)
    wanted = [pattern.format(name).lower() for pattern in MASK_BESIDE]  # clip.PNG is a PNG too
    named = [p for p in path.parent.iterdir() if p.is_file() and _visible(p) and p != path
             and p.suffix.lower() in IMAGE_EXTENSIONS and p.stem in (name, f"{name}_mask")] \
        if path.parent.is_dir() else []
    masks = sorted((p for p in named if p.name.lower() in wanted), key=lambda p: wanted.index(p.name.lower()))
    others = [p for p in named if p.name.lower() not in wanted]
    return (masks[0] if masks else None), sorted(others, key=lambda p: natural_key(p.name))


def not_a_mask_note(others: list[Path]) -> str:
    """Why images named like a video were not taken as its mask ('' for none), for the no-mask error."""
    if not others:
        return ""
    names = ", ".join(p.name for p in others)
    png = others[0].with_suffix(".png").name
    return (f" ({names} is not taken as its mask: only PNG masks are found beside a video, a JPEG or other "
            f"image named like it is taken for a thumbnail; if it is the mask, save it as {png})")


def find_videos(folder: Path) -> list[Path]:
    """Inputs of a batch folder: video files and sub-folders holding frames, in natural order."""
    return scan_folder(folder).inputs


class FrameSource(ABC):
    """One input video. Iterate it (as often as needed) for (frame name, HxWx3 uint8 RGB frame) pairs."""

    path: Path
    name: str
    size: tuple[int, int]
    """(width, height) of every frame."""
    fps: float
    frame_count: int
    """Number of frames (for video files: the packets of the video stream, counted without decoding)."""
    display_size: tuple[int, int] | None = None
    """(width, height) a player shows the frames at, when not `size`: a video with non-square pixels
    (anamorphic, SAR other than 1:1) is stored narrower or wider than it is shown. Frames stay stored-size."""
    turned: bool = False
    """True when the frames are read turned a quarter by the file's rotation metadata (a phone video)."""
    sar: tuple[int, int] | None = None
    """(width, height) of a pixel on screen when not square (anamorphic video), for the frames as read (upright)."""
    matrix: str | None = "smpte170m"
    """YUV matrix for video outputs (FrameEncoder): a video's own tag (bt709, ...); None for an untagged YUV
    video (decoded with BT.601 as ffmpeg does, and players show its outputs as they show it); smpte170m
    (BT.601) for RGB sources (frame images, RGB codecs)."""
    other_videos: int = 0
    """Video streams of the file besides the one read (cover pictures not counted): a note says which is read."""

    @abstractmethod
    def frame_name(self, index: int) -> str:
        """Name of frame `index`, used for output files and to match annotation PNGs."""

    @abstractmethod
    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        ...


class _StderrCollector(threading.Thread):
    """Drains a subprocess's stderr so it can neither block nor reach the terminal."""

    def __init__(self, stream) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.chunks: list[bytes] = []

    def run(self) -> None:
        for chunk in iter(lambda: self.stream.read(4096), b""):
            if sum(len(c) for c in self.chunks) < 1 << 20:
                self.chunks.append(chunk)

    @property
    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", "replace")


class VideoFileSource(FrameSource):
    """A video file decoded by ffmpeg; frames are named 00000, 00001, ... like DAVIS frames (000000, ... in a
    file of 100,000 frames or more, so names sort in frame order)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = path.stem
        header, first = self._probe()
        self.size = (int(first.shape[1]), int(first.shape[0]))  # after the file's rotation is applied
        stream = _video_stream(header)
        self.turned, self.display_size, self.sar = _shape_metadata(stream, self.size)
        self.matrix = _matrix(stream)
        inputs = header.split("Stream mapping:")[0]  # not the streams of ffmpeg's own output
        self.other_videos = len(re.findall(r"^\s*Stream #\S+.*?: Video: (?!.*\(attached pic\))", inputs,
                                           re.MULTILINE)) - 1
        fps = re.search(r"(\d+(?:\.\d+)?)(k?) fps", stream.group(1)) if stream else None
        printed = float(fps.group(1)) * (1000 if fps.group(2) else 1) if fps else 0.0
        self.fps = _exact_rate(printed) if printed > 0 else FOLDER_FPS
        duration = re.search(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", header)
        seconds = (int(duration.group(1)) * 3600 + int(duration.group(2)) * 60 + float(duration.group(3))
                   if duration else 0.0)
        scan = self._scan_packets()
        self.packets = scan.packets
        """Video packets in the file (counted without decoding); can exceed the shown frames (edit lists)."""
        cut_off = seconds > 0 and scan.end is not None and scan.end < 0.95 * seconds - 1 / self.fps
        self.expected_frames = round(seconds * self.fps) if cut_off else scan.shown
        """Frames the file promises (0 when unknown): its video packets less those an edit list hides (a
        trimmed mp4 keeps packets it does not show). The container's duration is a file's longest stream
        (an audio or subtitle track often outlasts the video), so it only counts when the packets of every
        stream stop clearly before it: a cut-off file, which then promises duration x average rate."""
        self.frame_count = self.expected_frames or self.packets or 1
        self._digits = max(5, len(str(max(self.packets, self.frame_count) - 1)))
        """Digits of frame names: 5 as DAVIS, more when the file holds 100,000 frames or more, so that the
        names of every frame sort in frame order (the packets bound the frames a decode delivers)."""

    def _probe(self) -> tuple[str, np.ndarray]:
        """ffmpeg's description of the file, and its first frame decoded (to learn the displayed size)."""
        try:
            result = _run(["-i", str(self.path), "-map", _VIDEO, "-frames:v", "1", "-f", "image2pipe",
                           "-c:v", "png", "-"])
        except subprocess.TimeoutExpired as exc:
            raise StmaInputError(f"{self.path}: ffmpeg did not answer within 2 minutes; "
                                 "check that the file is a local video") from exc
        except OSError as exc:
            raise StmaInputError(f"{self.path}: cannot run ffmpeg ({exc}); reinstall imageio-ffmpeg") from exc
        header = result.stderr.decode("utf-8", "replace")
        first = cv2.imdecode(np.frombuffer(result.stdout, np.uint8), cv2.IMREAD_COLOR) if result.stdout else None
        if first is None:
            has_stream = _video_stream(header) is not None
            if "Stream #" in header and not has_stream:
                what = "audio with a cover picture" if "(attached pic)" in header else "audio only?"
                raise StmaInputError(f"{self.path}: file has no video stream ({what}); pass {_SUPPORTED}")
            known = self.path.suffix.lower() in VIDEO_EXTENSIONS
            what = ("the video is damaged or incomplete (a cut-off download?); re-download it or re-encode it "
                    f"({_REENCODE})" if known or has_stream else
                    f"if it is a video it is damaged, else pass {_SUPPORTED}")
            raise StmaInputError(f"{self.path}: ffmpeg cannot decode a frame of it ({_first_problem(header)}); {what}")
        return header, cv2.cvtColor(first, cv2.COLOR_BGR2RGB)

    def _scan_packets(self) -> "_PacketScan":
        """The video stream's packets and where the packets of every video, audio, subtitle and data stream
        end (what the container's duration spans), read by copying them (no decoding) to ffmpeg's framecrc
        listing; all zero/None if unknown."""
        try:
            others = ["-map", "0:V?", "-map", "0:a?", "-map", "0:s?", "-map", "0:d?"]  # what the duration spans
            result = _run(["-i", str(self.path), "-map", _VIDEO, *others, "-c", "copy", "-f", "framecrc", "-"],
                          timeout=600)
        except (OSError, subprocess.TimeoutExpired):
            return _PacketScan()
        return _PacketScan.parse(result.stdout.decode("utf-8", "replace"))

    def frame_name(self, index: int) -> str:
        return f"{index:0{self._digits}d}"

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        width, height = self.size
        frame_bytes = width * height * 3
        # `settb=1,setpts=N` renumbers the decoded frames 0, 1, 2, ... seconds before the rawvideo muxer
        # sees them. Without it the muxer gets the file's own timestamps in a time base of 1/(guessed
        # rate): a phone or screen recording whose frames come closer together than that (jittered
        # timing, two frames a 1/600 s tick apart, even equal timestamps) maps two frames to one
        # timestamp, and the muxer reports "non monotonically increasing dts" although every frame was
        # decoded, which would fail the video. Renumbering happens after decoding, so it changes no
        # frame, drops none and adds none (`-fps_mode passthrough` keeps ffmpeg from doing so either);
        # only the raw stream's timestamps, which nothing reads, differ.
        cmd = [_ffmpeg(), "-hide_banner", "-nostdin", "-v", "error", "-i", str(self.path), "-map", _VIDEO,
               "-vf", "settb=1,setpts=N", "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
        # Own session: Ctrl-C reaches Python (which stops ffmpeg below), not ffmpeg mid-frame.
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   start_new_session=True, bufsize=0)
        errors = _StderrCollector(process.stderr)
        errors.start()
        index = 0
        finished = False
        try:
            assert process.stdout is not None
            while True:
                raw = _read_exactly(process.stdout, frame_bytes)
                if len(raw) < frame_bytes:
                    break
                yield self.frame_name(index), np.frombuffer(raw, np.uint8).reshape(height, width, 3).copy()
                index += 1
            finished = True
        finally:
            if not finished and process.poll() is None:
                process.kill()
            process.wait()
            errors.join(timeout=5)
        self._check_complete(index, process.returncode, errors.text)

    def _check_complete(self, decoded: int, returncode: int, stderr: str) -> None:
        """A decode error, or clearly fewer frames than the container promises, fails the video (one line).

        The promise (duration x average rate) is rounded in ffmpeg's header, hence the small tolerance;
        a cut-off file also makes ffmpeg report errors, which fail the video whatever the count.
        """
        promised = self.expected_frames or self.packets
        short = bool(promised) and decoded < 0.95 * promised - 1
        problem = returncode != 0 or _DECODE_ERROR.search(stderr) is not None
        if short or (problem and decoded < promised):
            raise StmaInputError(
                f"{self.path}: decoded {decoded} of {promised} frames: file truncated? ({_first_problem(stderr)}); "
                f"re-download or re-encode the video ({_REENCODE})")
        if problem:
            raise StmaInputError(
                f"{self.path}: decode error after {decoded} frames ({_first_problem(stderr)}); the video is "
                f"damaged: re-encode it ({_REENCODE}) and check the result")


_NO_TIMESTAMP = -(1 << 63)
_DISCARD = 0x4
"""AV_PKT_FLAG_DISCARD: a packet decoded only as a reference, never shown (before an edit list's start)."""


@dataclass
class _PacketScan:
    """What `ffmpeg -c copy -f framecrc` lists of a file: stream 0 is the video, any others its audio,
    subtitles and data."""

    packets: int = 0
    """Video packets."""
    shown: int = 0
    """Video packets without the discard flag: the frames a decode delivers."""
    end: float | None = None
    """Seconds at which the last packet of any listed stream ends (None when no timestamps are known)."""

    @classmethod
    def parse(cls, listing: str) -> "_PacketScan":
        scan = cls()
        bases: dict[int, float] = {}
        for line in listing.splitlines():
            base = re.match(r"#tb (\d+): (\d+)/(\d+)", line)
            if base:
                bases[int(base.group(1))] = int(base.group(2)) / max(1, int(base.group(3)))
                continue
            fields = [f.strip() for f in line.split(",")]
            if line.startswith("#") or len(fields) < 6 or not all(f.lstrip("-").isdigit() for f in fields[:5]):
                continue
            stream, dts, pts, length = (int(f) for f in fields[:4])
            flags = int(fields[6][2:], 16) if len(fields) > 6 and fields[6].startswith("F=") else 0
            if stream == 0:
                scan.packets += 1
                scan.shown += not flags & _DISCARD
            when = pts if pts != _NO_TIMESTAMP else dts
            if when != _NO_TIMESTAMP and stream in bases:
                end = (when + max(length, 0)) * bases[stream]
                scan.end = end if scan.end is None else max(scan.end, end)
        return scan


def _exact_rate(printed: float) -> float:
    """The frame rate ffmpeg prints to two decimals, made exact where it is an NTSC rate N*1000/1001 (23.98 is
    24000/1001 = 23.976..., 29.97, 59.94, 119.88): video outputs at the rounded rate drift from the source, a
    frame every 4 minutes at 23.98, so they no longer line up with it in an editor."""
    ntsc = round(printed) * 1000 / 1001
    return ntsc if printed != round(printed) and abs(printed - ntsc) < 0.006 else printed


YUV_MATRICES = ("bt709", "smpte170m", "bt470bg", "smpte240m", "fcc", "bt2020nc")
"""Matrix tags ffmpeg both decodes with and encodes with (a video output mirrors its input's)."""


def _matrix(stream: re.Match | None) -> str | None:
    """The YUV matrix of a video stream from ffmpeg's description ('yuv420p(tv, bt709/unknown/unknown, ...)',
    'yuv420p(tv, bt709, progressive)' when all three tags agree), smpte170m for an RGB codec, else None."""
    if stream is None:
        return None
    described = re.match(r"[^,]+, (\w+)(?:\(([^)]*)\))?", stream.group(1))
    pix_fmt, details = (described.group(1), described.group(2) or "") if described else ("", "")
    if pix_fmt.startswith(("rgb", "bgr", "argb", "abgr", "gbr", "pal8", "gray")):
        return "smpte170m"
    tags = [part.strip().split("/")[0] for part in details.split(",")]
    return next((tag for tag in tags if tag in YUV_MATRICES), None)


def _shape_metadata(stream: re.Match | None, size: tuple[int, int]
                    ) -> tuple[bool, tuple[int, int] | None, tuple[int, int] | None]:
    """-> (frames turned a quarter by rotation metadata, displayed (width, height) if pixels are not square,
    the pixel aspect of the frames as read if not square), from ffmpeg's description of the video stream
    (_video_stream); the shown size explains masks drawn at another size, the pixel aspect goes to the
    video outputs."""
    stored = re.search(r", (\d{1,5})x(\d{1,5})\b", stream.group(1)) if stream else None
    turned = bool(stored) and (int(stored.group(1)), int(stored.group(2))) == (size[1], size[0]) != size
    sar = re.search(r"\[SAR (\d+):(\d+) DAR", stream.group(1)) if stream else None
    if not sar or int(sar.group(1)) == int(sar.group(2)) or not int(sar.group(1)) * int(sar.group(2)):
        return turned, None, None
    pixel = (int(sar.group(2)), int(sar.group(1))) if turned else (int(sar.group(1)), int(sar.group(2)))
    ratio = int(sar.group(1)) / int(sar.group(2))  # a stored pixel's width / height on screen
    width, height = size
    shown = (width, round(height * ratio)) if turned else (round(width * ratio), height)
    return turned, (shown if shown != size else None), pixel


def _read_exactly(stream, count: int) -> bytes:
    parts, got = [], 0
    while got < count:
        chunk = stream.read(count - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


class FrameFolderSource(FrameSource):
    """A folder of frame images (IMAGE_EXTENSIONS) in natural order; frame names are the file stems.

    Frames are read upright: a JPEG's EXIF orientation is applied (as every viewer and cv2.imread do), so
    `size` and masks refer to the picture people see, not to the sensor's stored rows.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = input_name(path)
        self.files = image_files(path)
        if not self.files:
            raise StmaInputError(f"{path}: folder holds no {_FRAME_FILES} frames; pass {_SUPPORTED}")
        stems = [p.stem for p in self.files]
        if len(set(stems)) != len(stems):
            dup = next(s for s in stems if stems.count(s) > 1)
            raise StmaInputError(f"{path}: two frames are named {dup!r} (different extensions); keep one per name")
        self._names = stems
        first = read_image_frame(self.files[0])  # decoded, so the size is the upright one, whatever the format
        self.size = (int(first.shape[1]), int(first.shape[0]))
        self.fps = FOLDER_FPS
        self.frame_count = len(self.files)

    def frame_name(self, index: int) -> str:
        return self._names[index]

    @property
    def frame_names(self) -> list[str]:
        return list(self._names)

    def frame(self, index: int) -> np.ndarray:
        """Frame `index` as HxWx3 uint8 RGB, upright; StmaInputError if it is unreadable or not at `size`."""
        file = self.files[index]
        rgb = read_image_frame(file)
        if (rgb.shape[1], rgb.shape[0]) != self.size:
            raise StmaInputError(
                f"{file}: frame is {rgb.shape[1]}x{rgb.shape[0]} (upright) but the first frame is "
                f"{self.size[0]}x{self.size[1]}; resize all frames to one size")
        return rgb

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        for index, name in enumerate(self._names):
            yield name, self.frame(index)


_JPEG_START, _JPEG_END = b"\xff\xd8", b"\xff\xd9"
_PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk and its CRC close every complete PNG


_ORIENTATION_TAG = 0x0112


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened image; 1 (as stored) when it has none or it is unreadable."""
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except (OSError, SyntaxError, ValueError, TypeError):
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def upright(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """A stored HxWxC image turned as its EXIF orientation says; the same turns as PIL's
    ImageOps.exif_transpose (checked by a test for all eight)."""
    turned = {1: rgb, 2: rgb[:, ::-1], 3: rgb[::-1, ::-1], 4: rgb[::-1], 5: rgb.swapaxes(0, 1),
              6: np.rot90(rgb, -1), 7: rgb[::-1, ::-1].swapaxes(0, 1), 8: np.rot90(rgb, 1)}[orientation]
    return np.ascontiguousarray(turned)


def upright_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of an image file as read_image_frame returns it (EXIF orientation applied), from
    its header only; None when it cannot be opened (read_image_frame reports that when it reads it)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            return (height, width) if _orientation(image) in (5, 6, 7, 8) else (width, height)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return None


def open_upright(path: Path) -> Image.Image:
    """An image file as PIL shows it upright (EXIF orientation applied); for readers outside this module."""
    with Image.open(path) as image:
        turned = ImageOps.exif_transpose(image)
        return image.copy() if turned is None or turned is image else turned


def read_image_frame(file: Path, fix: str = "replace or remove it") -> np.ndarray:
    """One image file as an HxWx3 uint8 RGB frame, upright (its EXIF orientation applied).

    A phone JPEG stores the sensor's rows and an Orientation tag; every viewer (and cv2.imread) shows it
    turned, and masks are drawn on what they show, so reading it raw would misplace every mask.

    StmaInputError names the file and the `fix` when it is not an image or is truncated: libjpeg decodes
    a cut-off JPEG into a frame with a grey bottom and only prints a warning. A file that ends the way a
    complete JPEG or PNG ends is decoded once, by cv2 (which also scales 16-bit PNGs to 8 bits); any
    other (and every webp/tif/bmp) is first decoded fully by PIL, which refuses what it cannot finish.
    """
    try:
        data = Path(file).read_bytes()
    except OSError as exc:
        raise StmaInputError(f"{file}: cannot be read ({exc.strerror or exc}); {fix}") from None
    tail = data.rstrip(b"\0")
    complete = tail.endswith(_PNG_END) or (data.startswith(_JPEG_START) and tail.endswith(_JPEG_END))
    orientation, rgb = 1, None
    try:
        with Image.open(io.BytesIO(data)) as image:
            orientation = _orientation(image)
            if not complete:
                image.load()
            if image.format not in ("JPEG", "PNG", "MPO"):
                # webp/tif/bmp: PIL decodes them (cv2 5 fails on some tagged TIFFs). Its TIFF reader turns
                # the image itself and drops the tag when loading, so the tag is read again after loading.
                image.load()
                orientation = _orientation(image)
                rgb = _pil_rgb(image)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        if not complete:
            raise StmaInputError(f"{file}: not a readable image, or truncated ({exc}); {fix}") from None
    if rgb is None:
        # cv2 is told to ignore the orientation; it is applied below, the same way for every format
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if bgr is None:
            raise StmaInputError(f"{file}: not a readable image; {fix}")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return upright(rgb, orientation)


def _pil_rgb(image: Image.Image) -> np.ndarray:
    """A loaded PIL image as HxWx3 uint8 RGB; 16-bit grey is scaled to 8 bits (as cv2 does), not clipped."""
    if image.mode.startswith("I"):
        values = np.asarray(image).astype(np.int64)
        grey = (np.clip(values, 0, 65535) >> 8 if image.mode.startswith("I;16") or values.max() > 255
                else values).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB")).copy()


ANIMATION_FORMATS = ("PNG", "WEBP")
"""Image formats that also hold animations ffmpeg decodes as videos: APNG (saved as .png by browsers and
GIF converters) and animated WebP (web clips, stickers)."""


def is_animation(path: Path) -> bool:
    """True for an animated PNG or WebP (more than one frame): a video with an image's name."""
    try:
        with Image.open(path) as image:
            return image.format in ANIMATION_FORMATS and bool(getattr(image, "is_animated", False))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return False


def open_frames(path: str | Path, contents: FolderContents | None = None) -> FrameSource:
    """Opens a video file or frame folder, checking it can be read (not its every frame).

    contents: scan_folder(path) of a folder, when the caller has already scanned it (it is not scanned again)."""
    path = Path(path)
    if not path.exists():
        raise StmaInputError(f"{path}: no such file or folder; check the path")
    if path.is_dir():
        contents = contents if contents is not None else scan_folder(path)
        if contents.kind != "frames" and not contents.images:
            raise StmaInputError(f"{path}: folder holds no {_FRAME_FILES} frames; pass {_SUPPORTED}")
        return FrameFolderSource(path)
    if path.suffix.lower() in IMAGE_EXTENSIONS and not is_animation(path):
        raise StmaInputError(f"{path}: is a single image, not a video; pass a video file or the folder "
                             "holding all frames")
    if not os.access(path, os.R_OK):
        raise StmaInputError(f"{path}: cannot be read (permission denied); check its permissions")
    if path.stat().st_size == 0:
        raise StmaInputError(f"{path}: file is empty (0 bytes); re-download or re-export the video")
    return VideoFileSource(path)
