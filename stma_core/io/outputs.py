"""More result formats for editors and researchers: mattes, cut-outs, soft probabilities, styled overlays.

Each format is one output of a video with one final path (a folder), written into its `.partial`
sibling and renamed when the whole video succeeded, by `OutputWriter` (the `VideoWriter` of
writers.py with these formats added). Frames stream: nothing grows with the video length.

Layout (KEY is an object id, `1`, `2`, ..., one per object given in the masks, or `all` for all
objects together with `objects="all"`; frame names are the input's):

    matte         OUT/<video>.matte/KEY/<frame>.png      8-bit grayscale, 255 = object, 0 = background
    matte-video   OUT/<video>.matte-video/KEY.mp4        the same matte as H.264 (yuv420p, CRF 12; gray); odd
                                                         sizes padded to even, as the overlay (EVEN_SIZE_FORMATS)
    cutout        OUT/<video>.cutout/KEY/<frame>.png     RGBA: the frame where the object is, transparent
                                                         (0, 0, 0, 0) elsewhere
    cutout-video  OUT/<video>.cutout-video/KEY.webm      VP9 with alpha (yuva420p); KEY.mov (ProRes 4444,
                                                         yuva444p10le) with alpha_codec="prores"
    prob          OUT/<video>.prob/<id>/<frame>.png      8-bit grayscale soft mask, value = round(255 * p)
    prob-npz      OUT/<video>.prob-npz/<frame>.npz       np.load(f): "ids" (n,) uint8 object ids,
                                                         "prob" (n, H, W) uint8 = round(255 * p)

p is the model's per-pixel probability of the object (softmax over background and objects, so the
values of one pixel sum to at most 255 + rounding); the id masks are the argmax. Methods without
probabilities (the copy and flow baselines) write their hard masks (0 or 255).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from PIL import Image

from stma_core.io.atomic import partial_path
from stma_core.io.palette import DAVIS_PALETTE
from stma_core.io.writers import (FORMATS, OVERLAY_ALPHA, FrameEncoder, OverlaySink, Sink, VideoWriter,
                                  overlay)

NEW_FORMATS = ("matte", "matte-video", "cutout", "cutout-video", "prob", "prob-npz")
ALL_FORMATS = FORMATS + NEW_FORMATS
VIDEO_FORMATS = ("overlay", "matte-video", "cutout-video")
"""Formats that encode a video (their frame rate is the input's, or --fps)."""
OVERLAY_STYLES = ("fill", "contour")
ALPHA_CODECS = {"vp9": ".webm", "prores": ".mov"}

SoftMasks = dict[int, np.ndarray]
"""object id -> HxW uint8 probability, value = round(255 * p)."""


@dataclass(frozen=True)
class OutputOptions:
    """How the formats of this module look.

    object_ids: every object id of the video (from its masks), so per-object outputs exist from frame 0.
    objects: "each" (one matte/cut-out per object) or "all" (one for all objects together).
    overlay_alpha: tint opacity 0..1 of the overlay; overlay_style: "fill" (tint + outline) or "contour"
    (outline only); labels: draw each object's id on it; alpha_codec: "vp9" (.webm) or "prores" (.mov).
    """

    object_ids: tuple[int, ...] = ()
    objects: str = "each"
    overlay_alpha: float = OVERLAY_ALPHA
    overlay_style: str = "fill"
    labels: bool = False
    alpha_codec: str = "vp9"
    sar: tuple[int, int] | None = None
    """The input's pixel aspect when not square (FrameSource.sar): video outputs carry it, so players show
    them as wide as the input (an anamorphic 240x180 shown 320x180)."""
    matrix: str | None = "smpte170m"
    """YUV matrix video outputs are encoded with and tagged with (FrameSource.matrix); None: untagged (BT.601)."""

    def keys(self) -> list[str]:
        return ["all"] if self.objects == "all" else [str(i) for i in self.object_ids]

    def binary_masks(self, mask: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
        """(KEY, HxW bool) for each matte/cut-out of one id mask."""
        if self.objects == "all":
            yield "all", mask != 0
        else:
            for object_id in self.object_ids:
                yield str(object_id), mask == object_id


def all_output_paths(out_dir: Path, video: str, formats: list[str] | tuple[str, ...]) -> dict[str, Path]:
    """Final path of each requested output of a video (see the module docstring for the layout)."""
    names = {"png": video, "rle": f"{video}.rle.json", "overlay": f"{video}.overlay.mp4",
             **{fmt: f"{video}.{fmt}" for fmt in NEW_FORMATS}}
    unknown = [f for f in formats if f not in names]
    if unknown:
        raise ValueError(f"unknown output format(s) {unknown}; choose from {', '.join(ALL_FORMATS)}")
    return {f: Path(out_dir) / names[f] for f in formats}


# ---- pictures ------------------------------------------------------------------------------------
def _line_width(shape: tuple[int, ...]) -> int:
    return max(1, round(min(shape[:2]) / 240))


def styled_overlay(frame: np.ndarray, mask: np.ndarray, alpha: float = OVERLAY_ALPHA, style: str = "fill",
                   labels: bool = False) -> np.ndarray:
    """HxWx3 uint8 RGB frame with the objects of the HxW uint8 id mask drawn in their DAVIS colours.

    style "fill": tinted with opacity `alpha` and outlined (exactly writers.overlay); "contour": only the
    outline, `alpha` = its opacity. labels: the id is written at each object's most interior point.
    """
    if style == "fill":
        out = overlay(frame, mask, alpha)
    else:
        out = frame.copy()
        lines = np.zeros_like(frame)
        for object_id in np.unique(mask):
            if object_id == 0:
                continue
            contours, _ = cv2.findContours((mask == object_id).astype(np.uint8), cv2.RETR_LIST,
                                           cv2.CHAIN_APPROX_SIMPLE)
            color = tuple(int(c) for c in DAVIS_PALETTE[object_id])
            cv2.drawContours(lines, contours, -1, color, _line_width(frame.shape) + 1, lineType=cv2.LINE_AA)
        drawn = lines.any(-1)
        out[drawn] = (out[drawn] * (1 - alpha) + lines[drawn] * alpha).astype(np.uint8)
    if labels:
        _draw_labels(out, mask)
    return out


def _draw_labels(image: np.ndarray, mask: np.ndarray) -> None:
    scale = max(0.4, min(image.shape[:2]) / 600)
    thick = _line_width(image.shape)
    for object_id in np.unique(mask):
        if object_id == 0:
            continue
        inside = np.pad((mask == object_id).astype(np.uint8), 1)  # the frame border counts as outside
        distance = cv2.distanceTransform(inside, cv2.DIST_L2, 3)[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(distance)), distance.shape)
        text = str(int(object_id))
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        org = (int(np.clip(x - tw // 2, 0, image.shape[1] - tw)), int(np.clip(y + th // 2, th, image.shape[0] - 1)))
        cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
        cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)


def cutout(frame: np.ndarray, binary: np.ndarray) -> np.ndarray:
    """HxWx4 uint8 RGBA: the frame where `binary` (HxW bool) is set, (0, 0, 0, 0) elsewhere."""
    rgba = np.zeros((*frame.shape[:2], 4), np.uint8)
    rgba[binary, :3] = frame[binary]
    rgba[binary, 3] = 255
    return rgba


def hard_probabilities(mask: np.ndarray, object_ids: tuple[int, ...]) -> SoftMasks:
    """Probabilities of a method that has none: 255 on the object's pixels, 0 elsewhere."""
    return {i: np.where(mask == i, np.uint8(255), np.uint8(0)) for i in object_ids}


# ---- video encoding ------------------------------------------------------------------------------
def _encoder(path: Path, size: tuple[int, int], fps: float, pix_fmt_in: str, codec: str, pix_fmt_out: str,
             params: list[str], options: OutputOptions) -> FrameEncoder:
    return FrameEncoder(path, size, fps, even=pix_fmt_out == "yuv420p" and codec == "libx264", sar=options.sar,
                        matrix=options.matrix, codec=codec, pix_fmt_in=pix_fmt_in, pix_fmt_out=pix_fmt_out,
                        quality=None, output_params=params)


def _matte_encoder(path: Path, size: tuple[int, int], fps: float, options: OutputOptions) -> FrameEncoder:
    return _encoder(path, size, fps, "gray", "libx264", "yuv420p", ["-crf", "12", "-f", "mp4"], options)


def _alpha_encoder(path: Path, size: tuple[int, int], fps: float, options: OutputOptions) -> FrameEncoder:
    if options.alpha_codec == "prores":
        return _encoder(path, size, fps, "rgba", "prores_ks", "yuva444p10le", ["-profile:v", "4444", "-f", "mov"],
                        options)
    return _encoder(path, size, fps, "rgba", "libvpx-vp9", "yuva420p",
                    ["-crf", "24", "-b:v", "0", "-deadline", "realtime", "-cpu-used", "8", "-row-mt", "1",
                     "-auto-alt-ref", "0", "-f", "webm"], options)


# ---- sinks ---------------------------------------------------------------------------------------
class _FolderSink:
    """An output folder (partial until committed); subclasses write files into it."""

    def __init__(self, final: Path) -> None:
        self.final, self.partial = final, partial_path(final)
        self.partial.mkdir()

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass


class MattePngSink(_FolderSink):
    def __init__(self, final: Path, options: OutputOptions) -> None:
        super().__init__(final)
        self.options = options
        for key in options.keys():
            (self.partial / key).mkdir()

    def write(self, name: str, frame: np.ndarray, mask: np.ndarray) -> None:
        for key, binary in self.options.binary_masks(mask):
            Image.fromarray(binary.astype(np.uint8) * 255, "L").save(self.partial / key / f"{name}.png")


class CutoutPngSink(MattePngSink):
    def write(self, name: str, frame: np.ndarray, mask: np.ndarray) -> None:
        for key, binary in self.options.binary_masks(mask):
            Image.fromarray(cutout(frame, binary), "RGBA").save(self.partial / key / f"{name}.png")


class _VideosSink(_FolderSink):
    """One video per KEY in the output folder, all encoders open while the video streams."""

    suffix = ".mp4"

    def __init__(self, final: Path, options: OutputOptions, size: tuple[int, int], fps: float) -> None:
        super().__init__(final)
        self.options = options
        self._encoders: dict[str, FrameEncoder] = {}
        try:
            for key in options.keys():
                self._encoders[key] = self._open(self.partial / f"{key}{self.suffix}", size, fps)
        except BaseException:
            self.close()
            raise

    def _open(self, path: Path, size: tuple[int, int], fps: float) -> FrameEncoder:
        return _matte_encoder(path, size, fps, self.options)

    def _image(self, frame: np.ndarray, binary: np.ndarray) -> np.ndarray:
        return binary.astype(np.uint8) * 255

    def write(self, name: str, frame: np.ndarray, mask: np.ndarray) -> None:
        for key, binary in self.options.binary_masks(mask):
            self._encoders[key].send(self._image(frame, binary))

    def finish(self) -> None:
        try:
            for encoder in self._encoders.values():
                encoder.finish()
        finally:
            self.close()

    def close(self) -> None:
        encoders, self._encoders = self._encoders, {}
        for encoder in encoders.values():
            encoder.close()  # a no-op for those finished


class MatteVideoSink(_VideosSink):
    pass


class CutoutVideoSink(_VideosSink):
    def __init__(self, final: Path, options: OutputOptions, size: tuple[int, int], fps: float) -> None:
        self.suffix = ALPHA_CODECS[options.alpha_codec]
        super().__init__(final, options, size, fps)

    def _open(self, path: Path, size: tuple[int, int], fps: float) -> FrameEncoder:
        return _alpha_encoder(path, size, fps, self.options)

    def _image(self, frame: np.ndarray, binary: np.ndarray) -> np.ndarray:
        return cutout(frame, binary)


class ProbPngSink(_FolderSink):
    """Soft masks as grayscale PNGs, one folder per object id."""

    wants_probabilities = True

    def __init__(self, final: Path, options: OutputOptions) -> None:
        super().__init__(final)
        self.ids = options.object_ids
        for object_id in self.ids:
            (self.partial / str(object_id)).mkdir()

    def _soft(self, mask: np.ndarray, soft: SoftMasks | None) -> SoftMasks:
        soft = hard_probabilities(mask, self.ids) if soft is None else soft
        zeros = None
        out = {}
        for object_id in self.ids:  # an object not given yet has probability 0
            if object_id not in soft:
                zeros = np.zeros(mask.shape, np.uint8) if zeros is None else zeros
            out[object_id] = soft.get(object_id, zeros)
        return out

    def write_soft(self, name: str, frame: np.ndarray, mask: np.ndarray, soft: SoftMasks | None) -> None:
        for object_id, prob in self._soft(mask, soft).items():
            Image.fromarray(prob, "L").save(self.partial / str(object_id) / f"{name}.png")


class ProbNpzSink(ProbPngSink):
    """One compressed npz per frame: ids (n,) uint8 and prob (n, H, W) uint8."""

    def __init__(self, final: Path, options: OutputOptions) -> None:
        _FolderSink.__init__(self, final)
        self.ids = options.object_ids

    def write_soft(self, name: str, frame: np.ndarray, mask: np.ndarray, soft: SoftMasks | None) -> None:
        probs = self._soft(mask, soft)
        stack = np.stack([probs[i] for i in self.ids]) if self.ids else np.zeros((0, *mask.shape), np.uint8)
        np.savez_compressed(self.partial / f"{name}.npz", ids=np.array(self.ids, np.uint8), prob=stack)


class StyledOverlaySink(OverlaySink):
    def __init__(self, final: Path, size: tuple[int, int], fps: float, options: OutputOptions) -> None:
        super().__init__(final, size, fps, options.sar, options.matrix)
        self.options = options

    def write(self, name: str, frame: np.ndarray, mask: np.ndarray) -> None:
        o = self.options
        self._encoder.send(styled_overlay(frame, mask, o.overlay_alpha, o.overlay_style, o.labels))


# ---- the writer ----------------------------------------------------------------------------------
class OutputWriter(VideoWriter):
    """`VideoWriter` with every format of ALL_FORMATS; `write` also takes the frame's soft masks.

        with OutputWriter(out, "bear", ["png", "matte", "prob"], (854, 480), 24.0,
                          OutputOptions(object_ids=(1, 2))) as writer:
            writer.write(name, frame, mask, session.object_probabilities())

    Same guarantees: nothing is visible under a final name until every output of the video is complete.
    """

    def __init__(self, out_dir: Path, video: str, formats: list[str], size: tuple[int, int], fps: float,
                 options: OutputOptions | None = None, overwrite: bool = False, queue_size: int = 8) -> None:
        super().__init__(out_dir, video, [f for f in formats if f in FORMATS], size, fps, overwrite, queue_size)
        self.options = options or OutputOptions()
        self.paths = all_output_paths(self.out_dir, video, formats)

    def write(self, name: str, frame: np.ndarray, mask: np.ndarray, soft: SoftMasks | None = None) -> None:
        """Queues one frame: HxWx3 uint8 RGB, HxW uint8 id mask, optional soft masks (copies: the writer owns them)."""
        super().write(name, frame, (mask, soft))  # type: ignore[arg-type]  # unpacked in _work

    def _open_sink(self, fmt: str, final: Path) -> Sink:
        o = self.options
        if fmt == "overlay":
            return StyledOverlaySink(final, self.size, self.fps, o)
        if fmt == "matte":
            return MattePngSink(final, o)
        if fmt == "matte-video":
            return MatteVideoSink(final, o, self.size, self.fps)
        if fmt == "cutout":
            return CutoutPngSink(final, o)
        if fmt == "cutout-video":
            return CutoutVideoSink(final, o, self.size, self.fps)
        if fmt == "prob":
            return ProbPngSink(final, o)
        if fmt == "prob-npz":
            return ProbNpzSink(final, o)
        return super()._open_sink(fmt, final)

    def _write_item(self, item: tuple) -> None:
        name, frame, (mask, soft) = item
        for sink in self._sinks:
            if getattr(sink, "wants_probabilities", False):
                sink.write_soft(name, frame, mask, soft)  # type: ignore[attr-defined]
            else:
                sink.write(name, frame, mask)


__all__ = ["ALL_FORMATS", "NEW_FORMATS", "VIDEO_FORMATS", "OutputOptions", "OutputWriter", "all_output_paths",
           "cutout", "hard_probabilities", "styled_overlay"]
