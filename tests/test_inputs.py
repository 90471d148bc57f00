"""Inputs as people's tools make them (issue 9): videos from phones and editors, masks from other tools.

Every case is a real file made here (mp4s encoded by ffmpeg, masks drawn and saved as PNG/JPEG) or the
bundled example clip; no dataset is needed.
"""

from __future__ import annotations

import re
import shutil
import sys
import subprocess
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner, Result

from conftest import EXAMPLES, encode_mp4, example_frames
from stma_cli.app import app
from stma_core.errors import StmaInputError
from stma_core.io.frames import VideoFileSource, open_frames, scan_folder
from stma_core.io.masks import load_mask
from stma_core.io.palette import DAVIS_PALETTE
from stma_core.io.writers import save_palette_png

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
EXAMPLE_VIDEO = EXAMPLES / "car-shadow.mp4"
EXAMPLE_MASK = EXAMPLES / "car-shadow_mask.png"
VFR_DURATIONS = [0.04, 0.2, 0.04, 0.04, 0.3, 0.04, 0.1, 0.04, 0.04, 0.25, 0.04]


def segment(*args: object) -> Result:
    return CliRunner().invoke(app, ["segment", *(str(a) for a in args)])


def ffmpeg(*args: object) -> None:
    subprocess.run([FFMPEG, "-y", "-v", "error", *(str(a) for a in args)], check=True)


def colour_frames(count: int, size: tuple[int, int] = (96, 64)) -> list[np.ndarray]:
    """Frames of flat, clearly distinct colours, so a decoded frame tells which source frame it is."""
    frames = []
    for i in range(count):
        frame = np.zeros((size[1], size[0], 3), np.uint8)
        frame[:] = ((i * 23) % 256, 255 - (i * 23) % 256, (i * 71) % 256)
        frames.append(frame)
    return frames


def which_frame(frame: np.ndarray, sources: list[np.ndarray]) -> int:
    mean = frame.reshape(-1, 3).mean(0)
    return int(np.argmin([np.abs(s.reshape(-1, 3).mean(0) - mean).sum() for s in sources]))


@pytest.fixture(scope="module")
def vfr_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """An 11-frame variable-frame-rate mp4 (frame durations from 40 to 300 ms), like a phone recording."""
    root = tmp_path_factory.mktemp("vfr")
    frames = colour_frames(len(VFR_DURATIONS))
    lines = []
    for i, (frame, duration) in enumerate(zip(frames, VFR_DURATIONS)):
        Image.fromarray(frame).save(root / f"{i}.png")
        lines.append(f"file '{root / f'{i}.png'}'\nduration {duration}")
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    ffmpeg("-f", "concat", "-safe", "0", "-i", root / "list.txt", "-fps_mode", "vfr", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", root / "phone.mp4")
    return root / "phone.mp4", frames


JITTER_TIMES = [0.0, 0.0287, 0.0575, 0.0903, 0.1396, 0.1749, 0.2021, 0.2379, 0.2675, 0.3087, 0.3397, 0.3567,
                0.4071, 0.4240, 0.4713]
"""Capture times (s) of a phone-like recording: about 30 fps with jitter, some frames 1/600 s apart."""


@pytest.fixture(scope="module")
def jittery_video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray]]:
    """15 frames with jittered timing in a 1/600 time base (as iPhones write), encoded the way ffmpeg
    does by default: timestamps rounded to 1/30 s and nudged apart by the mp4 muxer, so some frames lie a
    tick apart or share a timestamp ("32.14 fps, 30 tbr, 600 tbn"). `ffmpeg -i FILE -f null -` decodes it
    cleanly; reading it once failed with "non monotonically increasing dts"."""
    root = tmp_path_factory.mktemp("jitter")
    frames = colour_frames(len(JITTER_TIMES))
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(root / f"{i}.png")
    when = "+".join(f"eq(N\\,{i})*{t}" for i, t in enumerate(JITTER_TIMES))
    ffmpeg("-framerate", "30", "-i", root / "%d.png", "-vf", f"setpts=({when})/TB", "-fps_mode", "passthrough",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-video_track_timescale", "600", root / "iphone.mp4")
    return root / "iphone.mp4", frames


@pytest.fixture(scope="module")
def short_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """25 frames of the example clip at 214x120, index at the start (faststart) like web videos."""
    root = tmp_path_factory.mktemp("short")
    ffmpeg("-i", EXAMPLE_VIDEO, "-frames:v", "25", "-s", "214x120", "-c:v", "libx264", "-g", "5",
           "-movflags", "+faststart", root / "clip.mp4")
    return root / "clip.mp4"


# ---- 1. video: every frame exactly once, or a clear failure ---------------------------------------------
def test_variable_frame_rate_video_gives_every_frame_once_in_order(vfr_video: tuple[Path, list[np.ndarray]]) -> None:
    path, sources = vfr_video
    source = open_frames(path)
    read = list(source)
    packets = VideoFileSource(path).packets
    assert len(read) == packets and source.frame_count == packets
    order = [which_frame(frame, sources) for _, frame in read]
    assert order == list(range(len(sources)))[:len(read)] and len(read) >= len(sources)
    assert [name for name, _ in read] == [f"{i:05d}" for i in range(len(read))]


def test_variable_frame_rate_video_segments_every_frame_and_mask_dir_frames_match(
        tmp_path: Path, vfr_video: tuple[Path, list[np.ndarray]]) -> None:
    path, sources = vfr_video
    n = VideoFileSource(path).packets
    annotations = tmp_path / "ann"
    annotations.mkdir()
    first, later = np.zeros((64, 96), np.uint8), np.zeros((64, 96), np.uint8)
    first[5:20, 5:20] = 1
    later[30:50, 40:80] = 2
    save_palette_png(first, annotations / "00000.png")
    save_palette_png(later, annotations / "00004.png")  # the 300 ms frame
    out = tmp_path / "out"
    result = segment(path, "--mask-dir", annotations, "--method", "copy", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    pngs = sorted((out / "phone").iterdir())
    assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(n)]
    objects = [set(np.unique(np.array(Image.open(p))).tolist()) for p in pngs]
    assert objects[:4] == [{0, 1}] * 4 and all(o == {0, 1, 2} for o in objects[4:])


def test_jittery_phone_video_gives_every_frame_once_in_order(tmp_path: Path,
                                                            jittery_video: tuple[Path, list[np.ndarray]]) -> None:
    path, sources = jittery_video
    read = list(open_frames(path))
    assert [which_frame(frame, sources) for _, frame in read] == list(range(len(sources)))
    out = tmp_path / "out"
    mask = np.zeros((64, 96), np.uint8)
    mask[10:30, 20:50] = 1
    save_palette_png(mask, tmp_path / "mask.png")
    result = segment(path, "--mask", tmp_path / "mask.png", "--method", "copy", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    assert [p.name for p in sorted((out / "iphone").iterdir())] == [f"{i:05d}.png" for i in range(len(sources))]


def test_suggested_re_encode_keeps_every_frame_of_a_jittery_video(
        tmp_path: Path, jittery_video: tuple[Path, list[np.ndarray]]) -> None:
    """The command damaged-video errors suggest must not itself drop frames (a constant-rate re-encode does)."""
    from stma_core.io.frames import _REENCODE
    path, sources = jittery_video
    args = _REENCODE.split()[1:]
    args[args.index("IN")], args[args.index("OUT.mp4")] = str(path), str(tmp_path / "re.mp4")
    ffmpeg(*args)
    assert [which_frame(f, sources) for _, f in open_frames(tmp_path / "re.mp4")] == list(range(len(sources)))


def test_truncated_video_is_a_failure_not_a_shorter_result(tmp_path: Path, short_video: Path) -> None:
    data = short_video.read_bytes()
    cut = tmp_path / "download.mp4"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(StmaInputError, match=r"download.mp4: decoded (\d+) of 25 frames: file truncated\?"):
        list(open_frames(cut))
    out = tmp_path / "out"
    mask = tmp_path / "mask.png"
    save_palette_png(cv2.resize(np.array(Image.open(EXAMPLE_MASK)), (214, 120), interpolation=cv2.INTER_NEAREST), mask)
    # A real process, so ffmpeg's own stderr would show if it leaked: one line only.
    run = subprocess.run([sys.executable, "-m", "stma_cli.app", "segment", str(cut), "--mask", str(mask),
                          "--method", "copy", "--out", str(out), "-f", "png", "-f", "overlay"],
                         capture_output=True, text=True)
    assert run.returncode == 2
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {cut}: decoded ") and "of 25 frames" in lines[0], run.stderr
    assert run.stdout == "" and not out.exists()


def test_cut_off_matroska_is_a_failure_too(tmp_path: Path) -> None:
    mkv = tmp_path / "clip.mkv"
    ffmpeg("-i", EXAMPLE_VIDEO, "-frames:v", "20", "-s", "214x120", "-c:v", "libx264", mkv)
    data = mkv.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[:len(data) * 6 // 10])
    with pytest.raises(StmaInputError, match=r"cut.mkv: decoded \d+ of 20 frames: file truncated\?"):
        list(open_frames(cut))


def test_trimmed_mp4_with_an_edit_list_is_complete(tmp_path: Path) -> None:
    """Editors trim without re-encoding: the file keeps packets it does not show. Not a truncation."""
    trimmed = tmp_path / "trimmed.mp4"
    ffmpeg("-ss", "0.5", "-i", EXAMPLE_VIDEO, "-c", "copy", trimmed)
    source = open_frames(trimmed)
    frames = list(source)
    assert source.packets > len(frames) == source.expected_frames == source.frame_count
    reference = imageio_ffmpeg.read_frames(str(trimmed))  # an independent decode of the same file
    next(reference)
    assert len(frames) == sum(1 for _ in reference)


@pytest.mark.parametrize("name, audio_first", [("clip.mp4", True), ("clip.mkv", False), ("clip.webm", False)])
def test_video_whose_audio_outlasts_it_is_complete(tmp_path: Path, name: str, audio_first: bool) -> None:
    """The container's duration is its longest stream: 12 frames (0.5 s) with a 1 s sound track is not a cut-off
    12-of-24-frame file. It once failed as "decoded 12 of 24 frames: file truncated?", whatever the order of
    the streams."""
    for i, frame in enumerate(colour_frames(12)):
        Image.fromarray(frame).save(tmp_path / f"{i}.png")
    video = ["-framerate", "24", "-i", tmp_path / "%d.png"]
    audio = ["-f", "lavfi", "-i", "sine=duration=1"]
    codecs = ["-c:v", "libvpx-vp9", "-c:a", "libopus"] if name.endswith(".webm") else ["-c:v", "libx264", "-c:a", "aac"]
    inputs = audio + video if audio_first else video + audio
    ffmpeg(*inputs, "-map", f"{int(audio_first)}:v", "-map", f"{int(not audio_first)}:a", *codecs,
           "-pix_fmt", "yuv420p", tmp_path / name)
    source = open_frames(tmp_path / name)
    frames = list(source)
    assert [which_frame(f, colour_frames(12)) for _, f in frames] == list(range(12))
    assert source.frame_count == 12
    mask = np.zeros((64, 96), np.uint8)
    mask[10:30, 20:50] = 1
    save_palette_png(mask, tmp_path / "mask.png")
    result = segment(tmp_path / name, "--mask", tmp_path / "mask.png", "--method", "copy", "-f", "png",
                     "-f", "overlay", "--out", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out" / "clip").iterdir())) == 12
    assert sum(1 for _ in imageio_ffmpeg.read_frames(str(tmp_path / "out" / "clip.overlay.mp4"))) - 1 == 12


def test_cut_off_video_with_a_sound_track_is_still_a_failure(tmp_path: Path) -> None:
    """The promise of a file whose every stream stops early is still its duration: a cut-off download with
    sound is not read as a shorter video."""
    whole = tmp_path / "whole.mp4"
    ffmpeg("-i", EXAMPLE_VIDEO, "-f", "lavfi", "-i", "sine=duration=1.2", "-frames:v", "25", "-s", "214x120",
           "-c:v", "libx264", "-g", "5", "-c:a", "aac", "-shortest", "-movflags", "+faststart", whole)
    assert len(list(open_frames(whole))) == 25
    data = whole.read_bytes()
    cut = tmp_path / "download.mp4"
    cut.write_bytes(data[:len(data) // 2])
    with pytest.raises(StmaInputError, match=r"download.mp4: decoded \d+ of 2\d frames: file truncated\?"):
        list(open_frames(cut))


def test_video_whose_subtitles_outlast_it_is_complete(tmp_path: Path) -> None:
    """A Matroska file's duration spans its subtitles too: 12 frames with a caption shown until 2 s failed as
    "decoded 12 of 48 frames: file truncated?"."""
    for i, frame in enumerate(colour_frames(12)):
        Image.fromarray(frame).save(tmp_path / f"{i}.png")
    (tmp_path / "captions.srt").write_text("1\n00:00:00,000 --> 00:00:02,000\nhello\n")
    ffmpeg("-framerate", "24", "-i", tmp_path / "%d.png", "-i", tmp_path / "captions.srt", "-map", "0", "-map", "1",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:s", "srt", tmp_path / "clip.mkv")
    source = open_frames(tmp_path / "clip.mkv")
    assert [which_frame(f, colour_frames(12)) for _, f in source] == list(range(12)) and source.frame_count == 12


def test_damaged_video_whose_index_is_lost_says_so(tmp_path: Path) -> None:
    plain = tmp_path / "plain.mp4"
    ffmpeg("-i", EXAMPLE_VIDEO, "-frames:v", "10", "-s", "214x120", "-c:v", "libx264", plain)  # index at the end
    data = plain.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:len(data) // 2])
    result = segment(cut, "--mask", EXAMPLE_MASK, "--method", "copy", "--out", tmp_path / "out")
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line and "cut.mp4: ffmpeg cannot decode a frame of it" in line
    assert "damaged or incomplete" in line and "pass a video (.mp4" not in line


@pytest.mark.parametrize("extension", [".m4v", ".mpg", ".ts", ".clip"])
def test_any_file_ffmpeg_decodes_is_a_video(tmp_path: Path, extension: str) -> None:
    target = tmp_path / f"clip{extension}"
    fmt = ["-f", "mp4"] if extension == ".clip" else []
    ffmpeg("-i", EXAMPLE_VIDEO, "-frames:v", "4", "-s", "214x120", *fmt, target)
    frames = list(open_frames(target))
    assert len(frames) == 4 and frames[3][1].shape == (120, 214, 3)


def test_cover_art_is_not_the_video(tmp_path: Path, short_video: Path) -> None:
    """ffmpeg lists a file's cover picture as a one-frame video stream. A song with a cover was segmented
    as a one-frame video of its cover, and a batch folder took it for a video; now it is a file without
    a video stream. A video with a cover reads its own frames, wherever the cover is listed."""
    cover = tmp_path / "cover.png"
    Image.fromarray(colour_frames(1, (80, 80))[0]).save(cover)
    song = tmp_path / "song.mp3"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=1", "-i", cover, "-map", "0", "-map", "1", "-c:a", "libmp3lame",
           "-c:v", "png", "-disposition:v", "attached_pic", song)
    with pytest.raises(StmaInputError, match=r"song.mp3: file has no video stream \(audio with a cover picture\)"):
        open_frames(song)
    result = segment(song, "--mask", cover, "--method", "copy", "--out", tmp_path / "out")
    assert result.exit_code == 2 and not (tmp_path / "out").exists()
    assert scan_folder(tmp_path).videos == [] and (tmp_path / "song.mp3").exists()
    movie = tmp_path / "movie.mkv"
    ffmpeg("-i", short_video, "-c", "copy", "-attach", cover, "-metadata:s:t", "mimetype=image/png", movie)
    frames = list(open_frames(movie))
    assert len(frames) == 25 and frames[0][1].shape == (120, 214, 3)


@pytest.mark.parametrize("rate", ["24000/1001", "30000/1001", "25"])
def test_video_outputs_keep_an_ntsc_rate_exactly(tmp_path: Path, rate: str) -> None:
    """ffmpeg prints 24000/1001 as "23.98 fps"; overlays were written at 23.98, which drifts a frame from the
    source every 4 minutes, so they no longer lined up with it in an editor. Outputs keep the exact rate."""
    for i, frame in enumerate(colour_frames(6)):
        Image.fromarray(frame).save(tmp_path / f"{i}.png")
    ffmpeg("-framerate", rate, "-i", tmp_path / "%d.png", "-c:v", "libx264", "-pix_fmt", "yuv420p", tmp_path / "clip.mp4")
    num, _, den = rate.partition("/")
    want = int(num) / int(den or 1)
    assert open_frames(tmp_path / "clip.mp4").fps == pytest.approx(want, rel=1e-9)
    mask = np.zeros((64, 96), np.uint8)
    mask[10:30, 20:50] = 1
    save_palette_png(mask, tmp_path / "mask.png")
    result = segment(tmp_path / "clip.mp4", "--mask", tmp_path / "mask.png", "--method", "copy", "-f", "overlay",
                     "--out", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    listing = subprocess.run([FFMPEG, "-v", "error", "-i", tmp_path / "out" / "clip.overlay.mp4", "-c", "copy",
                              "-f", "framecrc", "-"], capture_output=True, text=True, check=True).stdout
    tb_num, tb_den = map(int, listing.split("#tb 0: ")[1].split()[0].split("/"))
    durations = {int(line.split(",")[3]) for line in listing.splitlines() if line.startswith("0,")}
    assert len(durations) == 1 and durations.pop() * tb_num / tb_den == pytest.approx(1 / want, rel=1e-9)


@pytest.mark.parametrize("name", ["clip.png", "clip.webp"])
def test_animated_png_and_webp_are_videos(tmp_path: Path, name: str) -> None:
    """An animated PNG (browsers and GIF converters save APNG as .png) or WebP was refused as "a single
    image, not a video"; ffmpeg decodes it as the video it is. A still image is still refused."""
    sources = colour_frames(6)
    images = [Image.fromarray(f) for f in sources]
    options = {"lossless": True} if name.endswith(".webp") else {}
    images[0].save(tmp_path / name, save_all=True, append_images=images[1:], duration=100, loop=0, **options)
    frames = list(open_frames(tmp_path / name))
    assert [which_frame(f, sources) for _, f in frames] == list(range(6))
    assert all(np.array_equal(f, s) for (_, f), s in zip(frames, sources))
    mask = np.zeros((64, 96), np.uint8)
    mask[10:30, 20:50] = 1
    save_palette_png(mask, tmp_path / "clip_mask.png")  # found beside it, as beside any video
    result = segment(tmp_path / name, "--method", "copy", "-f", "png", "-f", "overlay", "--out", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out" / "clip").iterdir())) == 6
    images[0].save(tmp_path / "still.png")
    with pytest.raises(StmaInputError, match="still.png: is a single image, not a video"):
        open_frames(tmp_path / "still.png")


def test_animated_images_in_a_batch_folder_are_videos(tmp_path: Path, short_video: Path) -> None:
    """A folder of a video and an animated WebP was refused as 'mixed' (the WebP taken for a stray image), and
    a folder of animated WebPs of one size was read as a frame folder of their first pictures."""
    folder = tmp_path / "clips"
    folder.mkdir()
    shutil.copy(short_video, folder / "car.mp4")
    images = [Image.fromarray(f) for f in colour_frames(5)]
    images[0].save(folder / "sticker.webp", save_all=True, append_images=images[1:], duration=100, lossless=True)
    mask = np.zeros((64, 96), np.uint8)
    mask[10:30, 20:50] = 1
    save_palette_png(mask, folder / "sticker.png")  # the still PNG beside it is its mask
    save_palette_png(cv2.resize(np.array(Image.open(EXAMPLE_MASK)), (214, 120), interpolation=cv2.INTER_NEAREST),
                     folder / "car.png")
    contents = scan_folder(folder)
    assert contents.kind == "batch" and [p.name for p in contents.videos] == ["car.mp4", "sticker.webp"]
    result = segment(folder, "--method", "copy", "--out", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "out" / "sticker").iterdir())) == 5 and len(list((tmp_path / "out" / "car").iterdir())) == 25
    only = tmp_path / "stickers"
    only.mkdir()
    for name in ("a.webp", "b.webp"):
        shutil.copy(folder / "sticker.webp", only / name)
    assert scan_folder(only).kind == "batch"


def test_a_file_with_two_videos_says_which_is_read(tmp_path: Path) -> None:
    """A file with two video streams (a second camera, a preview track) had its first read without a word;
    a second stream longer than the first made the file's duration, so the first failed as truncated."""
    sources = colour_frames(4)
    for i, frame in enumerate(sources):
        Image.fromarray(frame).save(tmp_path / f"{i}.png")
    ffmpeg("-framerate", "24", "-i", tmp_path / "%d.png", "-framerate", "8", "-i", tmp_path / "%d.png",
           "-filter_complex", "[1:v]negate[n]", "-map", "0:v", "-map", "[n]", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", tmp_path / "two.mkv")
    assert [which_frame(f, sources) for _, f in open_frames(tmp_path / "two.mkv")] == [0, 1, 2, 3]
    mask = np.zeros((64, 96), np.uint8)
    mask[10:30, 20:50] = 1
    save_palette_png(mask, tmp_path / "two.png")
    result = segment(tmp_path / "two.mkv", "--method", "copy", "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "two.mkv: holds 2 video streams; the first is read (96x64); for another, extract it first " \
           "(ffmpeg -i IN -map 0:v:1 -c copy OUT.mkv)" in result.stderr


def test_rotated_phone_video_is_read_upright(tmp_path: Path, short_video: Path) -> None:
    rotated = tmp_path / "portrait.mp4"
    ffmpeg("-display_rotation", "90", "-i", short_video, "-c", "copy", rotated)
    plain, turned = open_frames(short_video), open_frames(rotated)
    assert plain.size == (214, 120) and turned.size == (120, 214)
    for (_, a), (_, b) in zip(plain, turned):
        assert b.shape == (214, 120, 3) and np.array_equal(np.rot90(a, 1), b)


def test_folder_of_videos_with_a_stray_image_is_explained(tmp_path: Path, short_video: Path) -> None:
    folder = tmp_path / "trip"
    folder.mkdir()
    shutil.copy(short_video, folder / "a.mp4")
    shutil.copy(short_video, folder / "b.mov")
    Image.fromarray(example_frames(1)[0]).save(folder / "cover.jpg")
    contents = scan_folder(folder)
    assert contents.kind == "mixed" and [p.name for p in contents.videos] == ["a.mp4", "b.mov"]
    result = segment(folder, "--mask", tmp_path, "--method", "copy", "--out", tmp_path / "out")
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line and "2 videos (a.mp4, b.mov)" in line and "1 image (cover.jpg)" in line
    assert "move the images out" in line and not (tmp_path / "out").exists()


def test_mask_beside_its_video_just_works(tmp_path: Path, short_video: Path) -> None:
    folder = tmp_path / "shoot"
    folder.mkdir()
    mask = cv2.resize(np.array(Image.open(EXAMPLE_MASK)), (214, 120), interpolation=cv2.INTER_NEAREST)
    for name in ("clip", "take2"):
        shutil.copy(short_video, folder / f"{name}.mp4")
        save_palette_png(mask, folder / f"{name}.png")
    assert scan_folder(folder).kind == "batch"
    out = tmp_path / "out"
    result = segment(folder, "--method", "copy", "--out", out, "-q")  # no --mask: clip.png is clip.mp4's mask
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [str(out / "clip"), str(out / "take2")]
    single = segment(folder / "clip.mp4", "--method", "copy", "--out", tmp_path / "one", "-q")
    assert single.exit_code == 0, single.output
    assert np.array_equal(np.array(Image.open(tmp_path / "one" / "clip" / "00000.png")), mask)


# ---- 2. masks read as the person meant them ---------------------------------------------------------------
def test_lossless_id_masks_keep_every_object_whatever_its_size(tmp_path: Path) -> None:
    tiny = np.zeros((480, 854), np.uint8)
    tiny[200:220, 300:320] = 1  # 0/1 gray, 20x20 object: 0.1% of the frame
    mask = load_mask(_save(tiny, tmp_path / "tiny.png"))
    assert mask.object_ids == [1] and int((mask.ids == 1).sum()) == 400 and not mask.warnings
    two = np.zeros((480, 854), np.uint8)
    two[100:300, 100:500] = 1
    two[400:404, 700:704] = 2  # 16 pixels
    two[10, 10] = 3  # and a single pixel
    mask = load_mask(_save(two, tmp_path / "two.png"))
    assert np.array_equal(mask.ids, two) and mask.object_ids == [1, 2, 3]
    davis = DAVIS_PALETTE[two]  # the same id map drawn in DAVIS colours (RGB)
    assert np.array_equal(load_mask(_save(davis, tmp_path / "two_rgb.png")).ids, two)


@pytest.mark.parametrize("colour, quality", [((128, 0, 0), 90), ((255, 0, 0), 75), ((0, 200, 60), 60)])
def test_lossy_mask_never_invents_objects(tmp_path: Path, colour: tuple[int, int, int], quality: int) -> None:
    truth = np.array(Image.open(EXAMPLE_MASK)) == 1
    rgb = np.zeros((*truth.shape, 3), np.uint8)
    rgb[truth] = colour
    path = tmp_path / "mask.jpg"
    Image.fromarray(rgb).save(path, quality=quality)
    mask = load_mask(path)
    assert mask.object_ids == [1]
    got = mask.ids == 1
    assert (got & truth).sum() / (got | truth).sum() > 0.98
    assert any("compression noise" in w for w in mask.warnings)


def test_lossy_mask_keeps_two_objects_apart(tmp_path: Path) -> None:
    ids = np.zeros((240, 426), np.uint8)
    ids[120:220, 250:400], ids[20:100, 50:200] = 1, 2  # object 2 comes first in raster order
    path = tmp_path / "two.jpg"
    Image.fromarray(DAVIS_PALETTE[ids]).save(path, quality=70)
    mask = load_mask(path)
    assert mask.object_ids == [1, 2]  # DAVIS colours a few units off after JPEG keep their DAVIS ids
    for k in (1, 2):
        assert ((mask.ids == k) & (ids == k)).sum() / ((mask.ids == k) | (ids == k)).sum() > 0.97


@pytest.mark.parametrize("quality, blur", [(70, 0), (95, 0), (80, 2), (60, 4)])
def test_lossy_colour_mask_keeps_a_small_object(tmp_path: Path, quality: int, blur: int) -> None:
    """JPEG noise leaves a small object (here 50x20 pixels beside the car) no pixel whose 8 neighbours share
    its exact colour, so it was taken for noise and given to the background, silently: the object was lost.
    A steady area of one colour marks it now; soft (blurred) edges between colours still invent nothing."""
    truth = np.array(Image.open(EXAMPLE_MASK)).astype(np.uint8)
    truth[400:420, 30:80] = 2
    rgb = np.zeros((*truth.shape, 3), np.uint8)
    rgb[truth == 1], rgb[truth == 2] = (255, 0, 0), (0, 200, 0)
    if blur:
        rgb = cv2.GaussianBlur(rgb, (0, 0), blur)
    path = tmp_path / "mask.jpg"
    Image.fromarray(rgb).save(path, quality=quality)
    mask = load_mask(path)
    assert len(mask.object_ids) == 2
    for k in (1, 2):  # each object is one id of the mask (whichever), with its pixels
        want = truth == k
        have = mask.ids == np.bincount(mask.ids[want]).argmax()
        assert (have & want).sum() / (have | want).sum() > 0.9


def test_id_mask_saved_as_jpeg_invents_no_object_and_says_so(tmp_path: Path) -> None:
    """An id map (0/1/2) written with cv2.imwrite("mask.jpg", ids) (quality 95) came back with level 3 on a few
    edge pixels, read verbatim as a third object to track, without a word; at usual qualities its edges
    move by pixels too. Noise levels go to the nearest id, and a warning says to save id masks as PNG."""
    ids = np.array(Image.open(EXAMPLE_MASK)).astype(np.uint8)
    ids[403:421, 33:79] = 2  # off JPEG's 8x8 grid
    cv2.imwrite(str(tmp_path / "ids.jpg"), ids)
    levels = set(np.unique(np.array(Image.open(tmp_path / "ids.jpg"))).tolist())
    assert levels - {0, 1, 2}  # the case at hand: JPEG made levels that are not ids
    mask = load_mask(tmp_path / "ids.jpg")
    assert mask.object_ids == [1, 2]
    for k in (1, 2):
        assert ((mask.ids == k) & (ids == k)).sum() / ((mask.ids == k) | (ids == k)).sum() > 0.9
    assert len(mask.warnings) == 1 and "id mask (gray levels 0..2) saved as JPEG" in mask.warnings[0]
    assert "save id masks as PNG" in mask.warnings[0]
    cv2.imwrite(str(tmp_path / "ids.png"), ids)  # the same mask as PNG: exact, no warning
    png = load_mask(tmp_path / "ids.png")
    assert np.array_equal(png.ids, ids) and not png.warnings


def test_colour_mask_stored_with_a_quantised_palette_is_read_by_its_colours(tmp_path: Path, short_video: Path) -> None:
    """Quantisers and PNG optimisers store a few-colour mask as a palette PNG in any index order (PIL's
    quantize puts black at index 2 here): its indices are not ids. Read as ids, the background became
    object 2 and the green object background, silently."""
    ids = np.zeros((120, 214), np.uint8)
    ids[20:70, 30:120], ids[80:110, 140:200] = 1, 2
    rgb = np.zeros((120, 214, 3), np.uint8)
    rgb[ids == 1], rgb[ids == 2] = (255, 0, 0), (0, 255, 0)
    quantised = Image.fromarray(rgb).quantize(3)
    assert np.array(quantised)[0, 0] != 0  # black is not index 0: the case at hand
    quantised.save(tmp_path / "clip.png")
    mask = load_mask(tmp_path / "clip.png")
    assert np.array_equal(mask.ids, ids) and mask.mapping == {1: "rgb(255, 0, 0)", 2: "rgb(0, 255, 0)"}
    assert "black is index" in mask.warnings[0]
    video = tmp_path / "clip.mp4"
    shutil.copy(short_video, video)
    result = segment(video, "--method", "copy", "--end", "2", "--out", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.array(Image.open(tmp_path / "out" / "clip" / "00000.png")), ids)
    close = ids.copy()  # a close-up: the object covers more than the background, whatever the palette order
    close[5:115, 5:200] = np.where(close[5:115, 5:200] == 2, 2, 1)
    Image.fromarray(np.stack([np.where(close == 1, 255, 0), np.where(close == 2, 255, 0), np.zeros_like(close)],
                             2).astype(np.uint8)).quantize(3).save(tmp_path / "close.png")
    assert np.array_equal(load_mask(tmp_path / "close.png").ids, close)
    # id maps keep their indices: DAVIS's palette, and a palette that does not tell the ids apart
    for palette in (DAVIS_PALETTE.ravel().tolist(), [0] * 768):
        image = Image.fromarray(ids, "P")
        image.putpalette(palette)
        image.save(tmp_path / "ids.png")
        assert load_mask(tmp_path / "ids.png").kind == "palette"
        assert np.array_equal(load_mask(tmp_path / "ids.png").ids, ids)


def test_mask_stack_says_only_its_first_picture_is_read(tmp_path: Path) -> None:
    """ImageJ/Fiji save the masks of a clip as one TIFF stack; given as --mask, its first page was read as
    the first frame's mask and the others dropped without a word."""
    pages = []
    for i in range(4):
        page = np.zeros((64, 96), np.uint8)
        page[10:40, 10 + 5 * i:50 + 5 * i] = 1
        pages.append(Image.fromarray(page))
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    mask = load_mask(tmp_path / "stack.tif")
    assert np.array_equal(mask.ids, np.array(pages[0]))
    assert mask.warnings == [f"{tmp_path / 'stack.tif'}: holds 4 pictures (a stack or animation); only the first is "
                             "read, as one frame's mask; for masks of several frames pass --mask-dir with one PNG a frame"]
    pages[0].save(tmp_path / "one.tif")
    assert not load_mask(tmp_path / "one.tif").warnings


def test_rgba_cutout_alpha_is_the_object(tmp_path: Path) -> None:
    frame = example_frames(1)[0]
    truth = np.array(Image.open(EXAMPLE_MASK)) == 1
    rgba = np.dstack([frame, np.where(truth, 255, 0).astype(np.uint8)])
    mask = load_mask(_save(rgba, tmp_path / "cutout.png"))
    assert mask.kind == "alpha" and mask.object_ids == [1] and np.array_equal(mask.ids == 1, truth)
    # a feathered edge (soft alpha) and a black silhouette: still the opaque half of the alpha
    soft = cv2.GaussianBlur(truth.astype(np.float32), (9, 9), 3)
    silhouette = np.dstack([np.zeros((*truth.shape, 3), np.uint8), np.round(soft * 255).astype(np.uint8)])
    mask = load_mask(_save(silhouette, tmp_path / "silhouette.png"))
    assert mask.object_ids == [1] and np.array_equal(mask.ids == 1, soft >= 127.5 / 255)


def test_davis_void_colour_is_void_in_rgb_as_in_palette_masks(tmp_path: Path) -> None:
    ids = np.zeros((120, 200), np.uint8)
    ids[20:60, 20:80], ids[60:100, 120:180] = 1, 255
    palette = load_mask(_save_palette(ids, tmp_path / "p.png"))
    rgb = load_mask(_save(DAVIS_PALETTE[ids], tmp_path / "rgb.png"))
    assert np.array_equal(palette.ids, rgb.ids) and rgb.object_ids == [1]
    assert any("void" in w for w in rgb.warnings)
    Image.fromarray(DAVIS_PALETTE[ids]).save(tmp_path / "rgb.jpg", quality=85)  # and after JPEG
    lossy = load_mask(tmp_path / "rgb.jpg")
    assert lossy.object_ids == [1] and any("void" in w for w in lossy.warnings)
    assert ((lossy.ids == 1) & (ids == 1)).sum() / ((lossy.ids == 1) | (ids == 1)).sum() > 0.97


def _save(array: np.ndarray, path: Path) -> Path:
    Image.fromarray(array).save(path)
    return path


def _save_palette(ids: np.ndarray, path: Path) -> Path:
    save_palette_png(ids, path)
    return path


# ---- 3. frame folders as cameras and editors write them ---------------------------------------------------
def _upright_truth(stored: np.ndarray, orientation: int) -> np.ndarray:
    """What a viewer shows for a stored image and its EXIF orientation (the EXIF 2.3 definitions)."""
    return {1: stored, 2: stored[:, ::-1], 3: stored[::-1, ::-1], 4: stored[::-1], 5: stored.swapaxes(0, 1),
            6: np.rot90(stored, -1), 7: stored[::-1, ::-1].swapaxes(0, 1), 8: np.rot90(stored, 1)}[orientation]


@pytest.mark.parametrize("extension", [".jpg", ".png", ".webp", ".tif"])
def test_frame_images_are_read_upright_whatever_their_exif_orientation(tmp_path: Path, extension: str) -> None:
    from stma_core.io.frames import read_image_frame
    stored = np.zeros((24, 40, 3), np.uint8)
    stored[:8, :16] = (250, 20, 20)  # a red block in the stored top-left corner, green elsewhere
    stored[8:, :, 1] = 200
    for orientation in range(1, 9):
        image = Image.fromarray(stored)
        exif = image.getexif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}{extension}"
        image.save(path, exif=exif, **({"quality": 98} if extension == ".jpg" else {"lossless": True}
                                       if extension == ".webp" else {}))
        got, want = read_image_frame(path), _upright_truth(stored, orientation)
        assert got.shape == want.shape, (orientation, got.shape)
        error = np.abs(got.astype(int) - want)
        assert (error.mean() < 4 if extension == ".jpg" else error.max() == 0), orientation  # JPEG: edges ring


def test_exif_rotated_jpeg_folder_is_segmented_upright(tmp_path: Path) -> None:
    """Phone JPEGs stored sideways with Orientation=6: frames, sizes and masks are the upright picture
    (they were read raw: a mask drawn on the upright frame was refused, or on square frames silently misplaced)."""
    folder = tmp_path / "phone"
    folder.mkdir()
    upright = colour_frames(3, size=(48, 64))  # 48 wide, 64 high, as people see them
    for i, frame in enumerate(upright):
        frame[:16, :16] = (255, 255, 255)  # a white block at the top left of the upright picture
        stored = Image.fromarray(np.ascontiguousarray(np.rot90(frame, 1)))  # the sensor's rows: 64x48
        exif = stored.getexif()
        exif[0x0112] = 6
        stored.save(folder / f"{i:03d}.jpg", exif=exif, quality=98)
    source = open_frames(folder)
    assert source.size == (48, 64)
    for (_, got), want in zip(source, upright):
        assert got.shape == (64, 48, 3) and np.abs(got.astype(int) - want).mean() < 3
        assert got[2:14, 2:14].min() > 200  # the block is where the viewer shows it
    mask = np.zeros((64, 48), np.uint8)
    mask[:16, :16] = 1
    save_palette_png(mask, tmp_path / "mask.png")
    result = segment(folder, "--mask", tmp_path / "mask.png", "--method", "copy", "--out", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.array(Image.open(tmp_path / "out" / "phone" / "000.png")), mask)


def test_pil_frames_given_to_the_api_are_turned_upright(tmp_path: Path) -> None:
    from stma_core.inference.session import _pil_frame
    stored = np.zeros((24, 40, 3), np.uint8)
    stored[:8, :16] = 255
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 8
    image.save(tmp_path / "f.png", exif=exif)
    assert np.array_equal(np.asarray(_pil_frame(Image.open(tmp_path / "f.png"))), np.rot90(stored, 1))


@pytest.mark.parametrize("extension", [".webp", ".tif", ".tiff", ".bmp"])
def test_frame_folders_of_webp_tiff_and_bmp_images(tmp_path: Path, extension: str) -> None:
    """Frames in these formats (masks in them were already read) make a frame folder, alone or in a batch."""
    batch = tmp_path / "shoot"
    folder = batch / "take"
    folder.mkdir(parents=True)
    frames = colour_frames(4, size=(40, 30))
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i}{extension}", **({"lossless": True} if extension == ".webp" else {}))
    assert scan_folder(folder).kind == "frames" and scan_folder(batch).frame_folders == [folder]
    read = list(open_frames(folder))
    assert [name for name, _ in read] == ["0", "1", "2", "3"]
    assert all(np.array_equal(got, want) for (_, got), want in zip(read, frames))
    mask = np.zeros((30, 40), np.uint8)
    mask[5:15, 5:20] = 1
    save_palette_png(mask, batch / "take.png")  # the mask beside the frame folder, as beside a video
    result = segment(batch, "--method", "copy", "--out", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out" / "take").iterdir()) == ["0.png", "1.png", "2.png", "3.png"]


def test_a_jpeg_thumbnail_beside_a_video_is_not_its_mask(tmp_path: Path, short_video: Path) -> None:
    """Batch and single-video runs take the same mask beside a video: clip.png or clip_mask.png, never a
    clip.jpg thumbnail (a batch once turned the photo into a one-object mask with only warnings)."""
    folder = tmp_path / "thumb"
    folder.mkdir()
    shutil.copy(short_video, folder / "clip.mp4")
    Image.fromarray(example_frames(1)[0]).resize((214, 120)).save(folder / "clip.jpg")
    contents = scan_folder(folder)
    assert contents.kind == "batch" and contents.masks == {} and contents.not_masks == {"clip": [folder / "clip.jpg"]}
    for target in (folder, folder / "clip.mp4"):
        out = tmp_path / f"out_{target.name}"
        result = segment(target, "--method", "copy", "--out", out)
        assert result.exit_code != 0
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "clip.jpg is not taken as its mask" in errors[0], result.stderr
        assert "save it as clip.png" in errors[0] and not (out / "clip").exists()
    mask = cv2.resize(np.array(Image.open(EXAMPLE_MASK)), (214, 120), interpolation=cv2.INTER_NEAREST)
    save_palette_png(mask, folder / "clip_mask.png")  # with a PNG mask beside it, both modes take that
    for target in (folder, folder / "clip.mp4"):
        out = tmp_path / f"ok_{target.name}"
        result = segment(target, "--method", "copy", "--out", out, "-q")
        assert result.exit_code == 0, result.output
        assert np.array_equal(np.array(Image.open(out / "clip" / "00000.png")), mask)
    # clip.PNG (a camera's or Windows tool's upper-case extension) is a PNG mask too, in both modes
    (folder / "clip_mask.png").rename(folder / "clip.PNG")
    assert scan_folder(folder).masks == {"clip": folder / "clip.PNG"}
    for target in (folder, folder / "clip.mp4"):
        out = tmp_path / f"upper_{target.name}"
        result = segment(target, "--method", "copy", "--out", out, "-q")
        assert result.exit_code == 0, result.output
        assert np.array_equal(np.array(Image.open(out / "clip" / "00000.png")), mask)


# ---- 4. masks of another size than the frames: what the error or warning says ---------------------------
def test_mask_drawn_on_a_rotated_videos_stored_frame_is_explained(tmp_path: Path, short_video: Path) -> None:
    rotated = tmp_path / "portrait.mp4"
    ffmpeg("-display_rotation", "90", "-i", short_video, "-c", "copy", rotated)
    sideways = np.zeros((120, 214), np.uint8)  # the stored 214x120 frame, not the upright 120x214 one
    sideways[20:60, 30:90] = 1
    save_palette_png(sideways, tmp_path / "mask.png")
    result = segment(rotated, "--mask", tmp_path / "mask.png", "--method", "copy", "--out", tmp_path / "out")
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line and "mask is 214x120 but" in line and "is read upright, 120x214" in line, line
    assert "rotation metadata" in line and "draw the mask on the upright frame" in line


def test_anamorphic_video_takes_a_mask_drawn_at_its_shown_size(tmp_path: Path) -> None:
    """SAR 4:3: stored 240x180, shown 320x180. A mask drawn on the shown picture is resized to the stored
    frames with a warning (it was 'another aspect ratio'); a mask of neither shape names both sizes."""
    video = tmp_path / "wide.mp4"
    ffmpeg("-i", EXAMPLE_VIDEO, "-frames:v", "3", "-vf", "scale=240:180,setsar=4/3", "-c:v", "libx264", video)
    source = open_frames(video)
    assert source.size == (240, 180) and source.display_size == (320, 180) and not source.turned
    shown = np.zeros((180, 320), np.uint8)
    shown[40:120, 80:240] = 1  # a box at x 80..240 of the shown picture = x 60..180 of the stored frames
    save_palette_png(shown, tmp_path / "shown.png")
    out = tmp_path / "out"
    result = segment(video, "--mask", tmp_path / "shown.png", "--method", "copy", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    assert "non-square pixels" in result.stderr and "resized (nearest) to its stored 240x180" in result.stderr
    expected = np.zeros((180, 240), np.uint8)
    expected[40:120, 60:180] = 1
    assert np.array_equal(np.array(Image.open(out / "wide" / "00000.png")), expected)
    save_palette_png(np.ones((100, 100), np.uint8), tmp_path / "square.png")
    result = segment(video, "--mask", tmp_path / "square.png", "--method", "copy", "--out", tmp_path / "o2")
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line and "non-square pixels: stored 240x180, shown 320x180" in line, line


def test_video_outputs_of_an_anamorphic_video_are_shown_as_wide_as_it(tmp_path: Path) -> None:
    """Stored 240x180 with SAR 4:3 (shown 320x180): the overlay, matte and cut-out videos were written with
    square pixels, so players showed them squeezed to 4:3 beside the 16:9 source. They carry its SAR now."""
    video = tmp_path / "wide.mp4"
    ffmpeg("-i", EXAMPLE_VIDEO, "-frames:v", "3", "-vf", "scale=240:180,setsar=4/3", "-c:v", "libx264", video)
    assert open_frames(video).sar == (4, 3)
    mask = np.zeros((180, 240), np.uint8)
    mask[40:120, 60:180] = 1
    save_palette_png(mask, tmp_path / "wide.png")
    for codec in ("vp9", "prores"):
        out = tmp_path / codec
        result = segment(video, "--method", "copy", "-f", "overlay", "-f", "matte-video", "-f", "cutout-video",
                         "--alpha-codec", codec, "--out", out, "-q")
        assert result.exit_code == 0, result.output
        outputs = [out / "wide.overlay.mp4", out / "wide.matte-video" / "1.mp4",
                   out / "wide.cutout-video" / f"1{'.webm' if codec == 'vp9' else '.mov'}"]
        for path in outputs:
            header = subprocess.run([FFMPEG, "-hide_banner", "-i", path], capture_output=True, text=True).stderr
            assert "240x180" in header and "SAR 4:3 DAR 16:9" in header, (path, header)
    square = tmp_path / "square.mp4"  # square pixels: no SAR written, as before
    ffmpeg("-i", EXAMPLE_VIDEO, "-frames:v", "2", "-s", "240x180", "-c:v", "libx264", square)
    assert open_frames(square).sar is None


def _as_a_player_shows(path: Path, size: tuple[int, int]) -> tuple[str | None, np.ndarray]:
    """(matrix tag, first frame as RGB decoded as players do: with the tag, else BT.709 for HD, BT.601 below)."""
    header = subprocess.run([FFMPEG, "-hide_banner", "-i", path], capture_output=True, text=True).stderr
    tag = re.search(r"Video: .*?yuv\w*\((?:tv|pc), (bt709|smpte170m|bt470bg)\b", header)
    matrix = tag.group(1) if tag else ("bt709" if size[1] >= 720 else "bt601")
    matrix = "bt601" if matrix in ("smpte170m", "bt470bg") else matrix
    decoded = subprocess.run([FFMPEG, "-v", "error", "-i", path, "-frames:v", "1", "-vf",
                              f"scale=in_color_matrix={matrix},format=rgb24", "-f", "rawvideo", "-"],
                             capture_output=True, check=True).stdout
    return (tag.group(1) if tag else None), np.frombuffer(decoded, np.uint8).reshape(size[1], size[0], 3).astype(int)


@pytest.mark.parametrize("tagged", [True, False])
def test_video_outputs_show_the_inputs_colours_in_players(tmp_path: Path, tagged: bool) -> None:
    """The overlay was encoded with BT.601 and not tagged, and players take an untagged HD video for BT.709:
    beside a BT.709 source (as phones and cameras tag theirs) its red 255,0,0 showed as 255,23,0. Video
    outputs mirror the input's matrix now; an untagged input keeps untagged outputs, which players then show
    as they show the input (both read as BT.709 at HD)."""
    bars = np.zeros((720, 1280, 3), np.uint8)
    bars[:, :320], bars[:, 320:640], bars[:, 640:960], bars[:, 960:] = (220, 40, 30), (40, 200, 60), (50, 60, 210), (200, 150, 100)
    Image.fromarray(bars).save(tmp_path / "bars.png")  # colours that no matrix takes out of gamut
    tag = "" if tagged else ",setparams=colorspace=unknown"  # an untagged BT.709 video, as some recorders write
    ffmpeg("-loop", "1", "-i", tmp_path / "bars.png", "-frames:v", "2", "-vf",
           f"scale=out_color_matrix=bt709,format=yuv420p{tag}", "-c:v", "libx264", "-crf", "1", tmp_path / "hd.mp4")
    source_tag, source_shown = _as_a_player_shows(tmp_path / "hd.mp4", (1280, 720))
    assert source_tag == ("bt709" if tagged else None)
    mask = np.zeros((720, 1280), np.uint8)
    mask[650:700, 1200:1260] = 1  # away from the points compared below
    save_palette_png(mask, tmp_path / "hd.png")
    result = segment(tmp_path / "hd.mp4", "--method", "copy", "-f", "overlay", "-f", "cutout-video", "-f", "matte-video",
                     "--overlay-alpha", "0", "--out", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    for path in (tmp_path / "out" / "hd.overlay.mp4", tmp_path / "out" / "hd.cutout-video" / "1.webm",
                 tmp_path / "out" / "hd.matte-video" / "1.mp4"):
        tag, shown = _as_a_player_shows(path, (1280, 720))
        assert tag == source_tag, path
        if path.suffix == ".mp4" and "overlay" in path.name:
            for x in (160, 480, 800, 1100):
                assert np.abs(shown[360, x] - source_shown[360, x]).max() <= 6, (x, shown[360, x], source_shown[360, x])
                if tagged:
                    assert np.abs(shown[360, x] - bars[360, x]).max() <= 6, (x, shown[360, x])


# ---- 5. odd-sized inputs -------------------------------------------------------------------------------
def test_odd_sized_video_outputs_and_the_note_on_padded_ones(tmp_path: Path) -> None:
    """A 107x61 video (H.264 4:4:4 takes odd sizes): PNGs and cutout-video are 107x61; overlay is 108x62
    (H.264 4:2:0 needs even sizes) and a note says so, once, naming the padded outputs."""
    video = tmp_path / "odd.mp4"
    ffmpeg("-i", EXAMPLE_VIDEO, "-frames:v", "3", "-vf", "scale=107:61", "-c:v", "libx264", "-pix_fmt", "yuv444p", video)
    assert open_frames(video).size == (107, 61)
    mask = np.zeros((61, 107), np.uint8)
    mask[10:40, 20:70] = 1
    save_palette_png(mask, tmp_path / "mask.png")
    out = tmp_path / "out"
    result = segment(video, "--mask", tmp_path / "mask.png", "--method", "copy", "--out", out,
                     "-f", "png", "-f", "overlay", "-f", "cutout-video")
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if "H.264 needs even sizes" in line]
    assert len(notes) == 1 and "overlay is 108x62, not 107x61" in notes[0], result.stderr
    assert np.array(Image.open(out / "odd" / "00000.png")).shape == (61, 107)
    reader = imageio_ffmpeg.read_frames(str(out / "odd.cutout-video" / "1.webm"))
    assert next(reader)["size"] == (107, 61)
    reader.close()
    quiet = segment(video, "--mask", tmp_path / "mask.png", "--method", "copy", "--out", tmp_path / "o2",
                    "-f", "png", "-f", "cutout-video")
    assert quiet.exit_code == 0 and "even sizes" not in quiet.stderr  # nothing padded, no note


def test_frame_names_of_a_video_of_100000_frames_or_more_sort_in_frame_order(tmp_path: Path) -> None:
    """Frame 100000 was named '100000' beside '99999', so tools that sort output names (ls, glob, the
    DAVIS toolkit) put it between 10000 and 10001; a file of that many frames gets 6-digit names for every
    frame, shorter ones keep DAVIS's 5."""
    long, short = tmp_path / "long.mp4", tmp_path / "short.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:size=32x32:rate=1000", "-frames:v", "100001", "-c:v", "libx264",
           "-preset", "ultrafast", "-g", "1000", long)
    ffmpeg("-f", "lavfi", "-i", "color=c=gray:size=32x32:rate=1000", "-frames:v", "100000", "-c:v", "libx264",
           "-preset", "ultrafast", "-g", "1000", short)
    source = VideoFileSource(long)
    names = [source.frame_name(i) for i in (0, 9, 10000, 99999, 100000)]
    assert names == ["000000", "000009", "010000", "099999", "100000"]
    assert names == sorted(names)
    assert [VideoFileSource(short).frame_name(i) for i in (0, 99999)] == ["00000", "99999"]
