"""Result writers: DAVIS palette PNGs, COCO RLE JSON and an overlay mp4, one video at a time.

Encoding PNGs and H.264 costs about as much as a fast model step, so a background thread does it
while the next frame is segmented; its queue is bounded so memory stays flat on long videos. Every
output is written to a `.partial` sibling and renamed only when the whole video succeeded.

RLE JSON schema (one file per video, `<out>/<video>.rle.json`):
    {"video": "<name>", "width": W, "height": H,
     "frames": [{"frame": "00000",
                 "objects": {"1": {"size": [H, W], "counts": "<COCO compressed RLE string>"}, ...}},
                ...]}
Every segmented frame is listed in order (those --start/--end/--stride choose; "frame" is its name); an object
missing from a frame's "objects" has no pixels there.
Decode with pycocotools: mask = pycocotools.mask.decode({"size": [H, W], "counts": counts}).
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import threading
import warnings
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol

import imageio_ffmpeg
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from stma_core.errors import StmaOutputError
from stma_core.io.atomic import commit, partial_path, remove_path, remove_stale_partials
from stma_core.io.frames import _StderrCollector
from stma_core.io.palette import DAVIS_PALETTE, DAVIS_PALETTE_FLAT

FORMATS = ("png", "rle", "overlay")
OVERLAY_ALPHA = 0.5


def output_paths(out_dir: Path, video: str, formats: list[str] | tuple[str, ...]) -> dict[str, Path]:
    """Final path of each requested output of a video: png -> folder, rle -> .rle.json, overlay -> .overlay.mp4."""
    names = {"png": video, "rle": f"{video}.rle.json", "overlay": f"{video}.overlay.mp4"}
    unknown = [f for f in formats if f not in names]
    if unknown:
        raise ValueError(f"unknown output format(s) {unknown}; choose from {', '.join(FORMATS)}")
    return {f: out_dir / names[f] for f in formats}


def save_palette_png(mask: np.ndarray, path: Path) -> None:
    """One HxW uint8 id mask as a DAVIS palette PNG (pixel value = id)."""
    image = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))
    image.putpalette(DAVIS_PALETTE_FLAT)
    image.save(path)


def encode_rle(mask: np.ndarray) -> dict[str, dict[str, object]]:
    """id mask -> {"<id>": {"size": [H, W], "counts": str}} with JSON-safe (str) COCO counts."""
    objects: dict[str, dict[str, object]] = {}
    for object_id in np.unique(mask):
        if object_id == 0:
            continue
        rle = mask_utils.encode(np.asfortranarray(mask == object_id, dtype=np.uint8))
        objects[str(int(object_id))] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
    return objects


def decode_rle(objects: dict[str, dict[str, object]], height: int, width: int) -> np.ndarray:
    """Inverse of `encode_rle` (for readers of the JSON, e.g. tests and eval)."""
    mask = np.zeros((height, width), np.uint8)
    for key, rle in objects.items():
        with warnings.catch_warnings():  # pycocotools' own __array__ predates numpy 2; harmless
            warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
            binary = mask_utils.decode({"size": list(rle["size"]), "counts": str(rle["counts"]).encode("ascii")})
        mask[binary.astype(bool)] = int(key)
    return mask


def overlay(frame: np.ndarray, mask: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """Frame with objects tinted in their DAVIS colour and outlined, for eyeballing results."""
    colors = DAVIS_PALETTE[mask].astype(np.float32)
    out = frame.astype(np.float32)
    objects = mask != 0
    out[objects] = out[objects] * (1 - alpha) + colors[objects] * alpha
    edge = np.zeros(mask.shape, bool)
    horizontal = mask[:, :-1] != mask[:, 1:]
    vertical = mask[:-1, :] != mask[1:, :]
    edge[:, :-1] |= horizontal
    edge[:, 1:] |= horizontal
    edge[:-1, :] |= vertical
    edge[1:, :] |= vertical
    edge &= objects
    out[edge] = colors[edge]
    return out.astype(np.uint8)


class Sink(Protocol):
    """One output of one video, written to `partial` until committed."""

    final: Path
    partial: Path

    def write(self, name: str, frame: np.ndarray, mask: np.ndarray) -> None: ...

    def finish(self) -> None:
        """Flushes and closes the partial output (the video is complete)."""

    def close(self) -> None:
        """Releases handles without finishing (the run failed); safe to call twice."""


class PngSink:
    def __init__(self, final: Path) -> None:
        self.final, self.partial = final, partial_path(final)
        self.partial.mkdir()

    def write(self, name: str, frame: np.ndarray, mask: np.ndarray) -> None:
        save_palette_png(mask, self.partial / f"{name}.png")

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass


class RleSink:
    """Streams the JSON frame by frame, so even long videos never sit in memory."""

    def __init__(self, final: Path, video: str, size: tuple[int, int]) -> None:
        self.final, self.partial = final, partial_path(final)
        self._file: IO[str] | None = open(self.partial, "w", encoding="utf-8")
        header = json.dumps({"video": video, "width": size[0], "height": size[1]})
        self._file.write(header[:-1] + ', "frames": [')
        self._first = True

    def write(self, name: str, frame: np.ndarray, mask: np.ndarray) -> None:
        assert self._file is not None
        entry = json.dumps({"frame": name, "objects": encode_rle(mask)}, separators=(",", ":"))
        self._file.write(("\n" if self._first else ",\n") + entry)
        self._first = False

    def finish(self) -> None:
        assert self._file is not None
        self._file.write("\n]}\n")
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class FrameEncoder:
    """One ffmpeg process fed raw frames on its stdin. With `even` (H.264 4:2:0, whose encoder refuses
    odd sizes and whose cropping works in 2-pixel steps) odd sizes are padded to even: RGB/grey edges are
    repeated, alpha padding is transparent. VP9 and ProRes take odd sizes, so their videos keep the
    frames' size. options: codec (default libx264), pix_fmt_in (rgb24), pix_fmt_out (yuv420p), quality
    (1..10, imageio-ffmpeg's scale, default 5: libx264 CRF 25; None: the codec's own) and output_params.
    sar: the input's pixel aspect (FrameSource.sar), so players show the video as wide as the input.
    matrix: the YUV matrix to encode with and tag (FrameSource.matrix: the input's own); None leaves the video
    untagged, converted with BT.601 as the frames of an untagged input were decoded, so players show it as
    they show that input. A tagged matrix keeps players, which take an untagged HD video for BT.709, from
    shifting the colours of an HD video encoded with BT.601 (red 255,0,0 shown as 255,23,0).

    ffmpeg's messages are collected, never shown; an encoder that fails (a full disk while it writes the
    file's index at the end, an unwritable file) raises OSError with ffmpeg's reason from `send` or
    `finish`, so a broken video is never taken for a finished one. (imageio_ffmpeg.write_frames, used
    before, let ffmpeg print to the terminal and ignored its exit status: an mp4 whose index could not be
    written, which no player opens, was kept as a finished output.)"""

    def __init__(self, path: Path, size: tuple[int, int], fps: float, even: bool = True,
                 sar: tuple[int, int] | None = None, matrix: str | None = None, **options) -> None:
        width, height = size
        self.path = Path(path)
        self._pad = (height % 2, width % 2) if even else (0, 0)
        params = [*options.get("output_params", [])]
        if matrix is not None:  # ffmpeg converts with the matrix the output is tagged with
            params += ["-colorspace", matrix, "-color_range", "tv"]
        if sar is not None:
            params += ["-vf", f"setsar={sar[0]}/{sar[1]}"]
        codec = options.get("codec") or "libx264"
        quality = options.get("quality", 5)
        if quality is not None and codec == "libx264":  # imageio-ffmpeg's quality scale, as before
            params = ["-crf", str(int((1 - quality / 10) * 51)), *params]
        rate = Fraction(fps).limit_denominator()  # a rational, so 24000/1001 stays exact
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-f", "rawvideo", "-vcodec", "rawvideo",
               "-s", f"{width + self._pad[1]}x{height + self._pad[0]}", "-pix_fmt", options.get("pix_fmt_in", "rgb24"),
               "-r", str(rate), "-i", "-", "-an", "-vcodec", codec, "-pix_fmt", options.get("pix_fmt_out", "yuv420p"),
               "-v", "error", *params, str(self.path)]
        # Own session: Ctrl-C reaches Python (which stops ffmpeg in close()), not ffmpeg mid-file.
        self._process: subprocess.Popen | None = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        self._errors = _StderrCollector(self._process.stderr)
        self._errors.start()

    def send(self, image: np.ndarray) -> None:
        process = self._process
        assert process is not None and process.stdin is not None
        if any(self._pad):
            pad = ((0, self._pad[0]), (0, self._pad[1])) + ((0, 0),) * (image.ndim - 2)
            image = np.pad(image, pad, mode="edge" if image.ndim == 2 or image.shape[-1] == 3 else "constant")
        try:
            process.stdin.write(np.ascontiguousarray(image).tobytes())
        except OSError:  # ffmpeg stopped (it could not open or write its file): its reason, not "Broken pipe"
            raise self._failure(self._stop(kill=False, timeout=10)) from None

    def finish(self) -> None:
        """Ends the video: ffmpeg writes the rest of the file; OSError with ffmpeg's reason if it fails."""
        if self._process is None:
            return
        returncode = self._stop(kill=False)
        if returncode != 0:
            raise self._failure(returncode)

    def close(self) -> None:
        """Abandons the video (the run failed or was interrupted): ffmpeg is stopped; safe to call twice."""
        if self._process is not None:
            self._stop(kill=True)

    def _stop(self, kill: bool, timeout: float | None = None) -> int:
        process, self._process = self._process, None
        assert process is not None
        try:
            if kill:
                process.kill()
            else:
                try:
                    process.stdin.close()  # type: ignore[union-attr]  # end of input: ffmpeg finishes the file
                except OSError:
                    pass
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        except BaseException:  # Ctrl-C while ffmpeg finishes: it must not outlive us
            process.kill()
            process.wait()
            raise
        finally:
            self._errors.join(timeout=5)
        return process.returncode

    def _failure(self, returncode: int) -> OSError:
        final = re.sub(r"\.\d+\.partial(?=[/\\]|$)", "", str(self.path))  # the name the user will look for
        problem = _ffmpeg_problem(self._errors.text)
        if problem is None and returncode < 0:  # killed: SIGXFSZ is a file size limit (ulimit -f)
            name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else -returncode
            problem = f"stopped by signal {name}"
        return OSError(f"ffmpeg could not write {final} ({problem or f'exit status {returncode}'})")


def _ffmpeg_problem(text: str) -> str | None:
    """The first telling line of an encoder's stderr, without its `[out#0/mp4 @ 0x...]` prefixes."""
    lines = [re.sub(r"^(\[[^\]]*\]\s*)+", "", line).strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("Conversion failed")]
    return lines[0][:200] if lines else None


EVEN_SIZE_FORMATS = ("overlay", "matte-video")
"""Outputs encoded as H.264 4:2:0 (played everywhere), which needs even sizes: an odd-sized video's are one
pixel wider and/or higher (edge repeated); every other output keeps the input's size."""


def padded_size(formats: list[str] | tuple[str, ...], size: tuple[int, int]) -> tuple[list[str], tuple[int, int]]:
    """-> (the requested formats that are padded for `size` (width, height), their padded size)."""
    width, height = size
    padded = [f for f in formats if f in EVEN_SIZE_FORMATS] if width % 2 or height % 2 else []
    return padded, (width + width % 2, height + height % 2)


class OverlaySink:
    """H.264 mp4 of the frames with the masks blended in."""

    def __init__(self, final: Path, size: tuple[int, int], fps: float, sar: tuple[int, int] | None = None,
                 matrix: str | None = None) -> None:
        self.final, self.partial = final, partial_path(final)
        self._encoder = FrameEncoder(self.partial, size, fps, sar=sar, matrix=matrix, output_params=["-f", "mp4"])

    def write(self, name: str, frame: np.ndarray, mask: np.ndarray) -> None:
        self._encoder.send(overlay(frame, mask))

    def finish(self) -> None:
        self._encoder.finish()

    def close(self) -> None:
        self._encoder.close()


_STOP = object()


def _writing_failed(out_dir: Path, error: OSError) -> StmaOutputError:
    return StmaOutputError(f"{out_dir}: writing outputs failed ({error}); check free space and permissions of --out")


class VideoWriter:
    """All requested outputs of one video, written off the compute thread, committed all-or-nothing.

        with VideoWriter(out, "bear", ["png", "rle"], (854, 480), 24.0) as writer:
            for name, frame in source:
                writer.write(name, frame, propagator.step(frame))

    Leaving the block with an exception removes every partial output; leaving it normally renames
    them to their final names. Existing outputs raise StmaOutputError unless `overwrite`.
    """

    def __init__(self, out_dir: Path, video: str, formats: list[str], size: tuple[int, int], fps: float,
                 overwrite: bool = False, queue_size: int = 8) -> None:
        self.out_dir, self.video, self.size, self.fps, self.overwrite = Path(out_dir), video, size, fps, overwrite
        self.paths = output_paths(self.out_dir, video, formats)
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._sinks: list[Sink] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name=f"stma-writer-{video}", daemon=True)

    def __enter__(self) -> "VideoWriter":
        if not self.overwrite:
            for path in self.paths.values():
                if path.exists():
                    raise StmaOutputError(f"{path}: output already exists; "
                                          "pass --overwrite to replace it or choose another --out")
        self._check_name_lengths()
        try:
            remove_stale_partials(*self.paths.values())  # left by a killed run (not those of a run going on)
            for fmt, final in self.paths.items():
                self._sinks.append(self._open_sink(fmt, final))
        except BaseException as exc:
            self._discard()
            if isinstance(exc, OSError):
                raise StmaOutputError(f"{self.out_dir}: cannot create outputs ({exc}); "
                                      "pass --out with a writable folder") from exc
            raise
        self._thread.start()
        return self

    def write(self, name: str, frame: np.ndarray, mask: np.ndarray) -> None:
        """Queues one frame's result; blocks while the queue is full; re-raises a writer-thread failure."""
        while True:
            self._raise_worker_error()
            try:
                self._queue.put((name, frame, mask), timeout=0.5)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    self._raise_worker_error()
                    raise StmaOutputError(f"{self.out_dir}: output writer stopped; rerun")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop()
        if exc_type is not None or self._error is not None:
            self._discard()
            if exc_type is None:
                self._raise_worker_error()
            return
        try:
            for sink in self._sinks:
                sink.finish()
            for sink in self._sinks:
                commit(sink.partial, sink.final, self.overwrite)
        except BaseException as exc:
            self._discard()
            if isinstance(exc, OSError):  # the end of a file (an mp4's index, the JSON's close) on a full disk
                raise _writing_failed(self.out_dir, exc) from exc
            raise

    # ---- internals -------------------------------------------------------------------------
    def _check_name_lengths(self) -> None:
        """An output whose name (or its partial's) the file system cannot hold is refused before any frame,
        naming the input to rename: ffmpeg and the file calls would fail later, one by one, mid-video."""
        try:
            limit = os.pathconf(self.out_dir, "PC_NAME_MAX")
        except (OSError, ValueError):
            limit = 255
        for final in self.paths.values():
            name = partial_path(final).name
            if len(os.fsencode(name)) > limit:
                raise StmaOutputError(f"{self.video}: output name {final.name!r} is too long for the file system of "
                                      f"{self.out_dir} (with its temporary suffix {len(os.fsencode(name))} bytes, the "
                                      f"limit is {limit}); rename the input to a shorter name")

    def _open_sink(self, fmt: str, final: Path) -> Sink:
        """Creates the partial output of one format (subclasses add formats, see io/outputs.py)."""
        if fmt == "png":
            return PngSink(final)
        if fmt == "rle":
            return RleSink(final, self.video, self.size)
        return OverlaySink(final, self.size, self.fps)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is not None:
                continue  # keep draining so the producer never blocks forever
            try:
                self._write_item(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self._error = exc

    def _write_item(self, item: tuple) -> None:
        """Hands one queued frame to every sink (on the writer thread); a writer with richer items
        (io/outputs.py: soft masks too) unpacks its own."""
        for sink in self._sinks:
            sink.write(*item)

    def _stop(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join()

    def _raise_worker_error(self) -> None:
        if self._error is not None:
            error = self._error
            if isinstance(error, OSError):
                raise _writing_failed(self.out_dir, error) from error
            raise error

    def _discard(self) -> None:
        for sink in self._sinks:
            try:
                sink.close()
            except OSError:  # the JSON's buffered end on a full disk, again: it is thrown away; the first error stands
                pass
            finally:
                remove_path(sink.partial)
