"""`stma segment` end to end on real clips (the shipped example, DAVIS frames encoded here)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner, Result

from conftest import EXAMPLES, encode_mp4, example_frames, read_davis_mask
from stma_cli.app import app
from stma_core.checkpoint import DEFAULT_CHECKPOINT
from stma_core.io.writers import decode_rle, save_palette_png

EXAMPLE_VIDEO = EXAMPLES / "car-shadow.mp4"
EXAMPLE_MASK = EXAMPLES / "car-shadow_mask.png"
SMALL = (426, 240)


def segment(*args: object, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, ["segment", *(str(a) for a in args)], env=env)


def assert_bad_input(result: Result, *fragments: str) -> None:
    """Exit 2 with exactly one `error:` line on stderr naming the problem; nothing on stdout."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.stdout == ""


def png_ids(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


@pytest.fixture(scope="session")
def small_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """Three real 6-frame 426x240 mp4s made from the bundled example clip (as is, mirrored, upside down)
    with their first-frame palette masks; no dataset needed."""
    root = tmp_path_factory.mktemp("clips")
    frames = [cv2.resize(f, SMALL, interpolation=cv2.INTER_AREA) for f in example_frames(6)]
    first = cv2.resize(png_ids(EXAMPLE_MASK), SMALL, interpolation=cv2.INTER_NEAREST)
    clips = {}
    for sequence, flip in (("car-shadow", lambda a: a), ("dog", lambda a: a[:, ::-1]), ("camel", lambda a: a[::-1])):
        video = encode_mp4([np.ascontiguousarray(flip(f)) for f in frames], root / f"{sequence}.mp4")
        mask = root / f"{sequence}.png"
        save_palette_png(np.ascontiguousarray(flip(first)), mask)
        clips[sequence] = (video, mask)
    return clips


@pytest.fixture()
def clip(small_clips: dict[str, tuple[Path, Path]]) -> tuple[Path, Path]:
    return small_clips["car-shadow"]


# ---- success paths ---------------------------------------------------------------------------------
def test_example_clip_end_to_end_with_copy(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = segment(EXAMPLE_VIDEO, "--mask", EXAMPLE_MASK, "--method", "copy", "--out", out,
                     "-f", "png", "-f", "rle", "-f", "overlay")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [str(out / "car-shadow"), str(out / "car-shadow.rle.json"),
                                          str(out / "car-shadow.overlay.mp4")]
    assert "frames/s" in result.stderr
    mask = png_ids(EXAMPLE_MASK)
    pngs = sorted((out / "car-shadow").iterdir())
    assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(40)]
    assert all(np.array_equal(png_ids(p), mask) for p in pngs[::7])  # copy repeats the first mask
    data = json.loads((out / "car-shadow.rle.json").read_text())
    assert (data["video"], data["width"], data["height"], len(data["frames"])) == ("car-shadow", 854, 480, 40)
    assert np.array_equal(decode_rle(data["frames"][39]["objects"], 480, 854), mask)
    reader = imageio_ffmpeg.read_frames(str(out / "car-shadow.overlay.mp4"))
    assert next(reader)["size"] == (854, 480)
    assert sum(1 for _ in reader) == 40
    assert sorted(p.name for p in out.iterdir()) == ["car-shadow", "car-shadow.overlay.mp4", "car-shadow.rle.json"]


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(),
                    reason=f"the shipped model {DEFAULT_CHECKPOINT.name} is not in stma_core/weights yet")
def test_default_model_end_to_end(tmp_path: Path, clip: tuple[Path, Path], davis16: Path) -> None:
    """The one run of the real model: defaults only (method stma, shipped weights, device auto)."""
    video, mask = clip
    out = tmp_path / "out"
    result = segment(video, "--mask", mask, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out / 'car-shadow'}\n"
    assert np.array_equal(png_ids(out / "car-shadow" / "00000.png"), png_ids(mask))
    last = png_ids(out / "car-shadow" / "00005.png") == 1
    truth = cv2.resize(read_davis_mask(davis16, "car-shadow", 5), SMALL, interpolation=cv2.INTER_NEAREST) == 1
    assert (last & truth).sum() / (last | truth).sum() > 0.5


def test_frame_folder_with_annotation_folder_keeps_user_ids(tmp_path: Path, tennis: Path) -> None:
    out = tmp_path / "out"
    result = segment(tennis / "JPEGImages" / "480p" / "tennis", "--mask-dir", tennis / "Annotations" / "480p",
                     "--method", "flow", "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [str(out / "tennis")]
    truth = png_ids(tennis / "Annotations" / "480p" / "tennis" / "00000.png")
    first, second = png_ids(out / "tennis" / "00000.png"), png_ids(out / "tennis" / "00001.png")
    assert np.array_equal(first, np.where(truth == 255, 0, truth))  # void became background
    assert set(np.unique(second)) == {0, 1, 2}


def test_frame_folder_images_are_checked_for_animation_once(tmp_path: Path, tennis: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The folder scan that sorts INPUT into frames or videos opens each image once (an animated PNG/WebP is a
    video); opening the frame folder for segmenting used to scan it, opening every image, a second time."""
    from stma_core.io import frames

    opened: list[Path] = []
    real = frames.is_animation

    def counted(path: Path) -> bool:
        opened.append(Path(path))
        return real(path)

    monkeypatch.setattr(frames, "is_animation", counted)
    folder = tennis / "JPEGImages" / "480p" / "tennis"
    result = segment(folder, "--mask-dir", tennis / "Annotations" / "480p", "--method", "copy",
                     "--out", tmp_path / "out", "--quiet")
    assert result.exit_code == 0, result.output
    images = sorted(p for p in folder.iterdir() if p.suffix == ".jpg")
    assert len(images) >= 2 and sorted(opened) == images


def test_davis_layout_as_a_batch(tmp_path: Path, tennis: Path) -> None:
    """JPEGImages/480p (a folder of frame folders) with --mask-dir Annotations/480p (a folder of <video>/)."""
    out = tmp_path / "out"
    result = segment(tennis / "JPEGImages" / "480p", "--mask-dir", tennis / "Annotations" / "480p",
                     "--method", "copy", "--out", out, "-f", "rle")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [str(out / "tennis.rle.json")]
    assert "1 done, 0 skipped, 0 failed" in result.stderr and "void pixel(s)" in result.stderr
    frames = json.loads((out / "tennis.rle.json").read_text())["frames"]
    assert [f["frame"] for f in frames] == ["00000", "00001"] and set(frames[1]["objects"]) == {"1", "2"}


def test_object_given_on_a_later_frame_of_a_video(tmp_path: Path, clip: tuple[Path, Path]) -> None:
    video, mask = clip
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    shutil.copy(mask, annotations / "00003.png")
    out = tmp_path / "out"
    result = segment(video, "--mask-dir", annotations, "--method", "copy", "--out", out)
    assert result.exit_code == 0, result.output
    ids = [png_ids(out / "car-shadow" / f"{i:05d}.png") for i in range(6)]
    assert all(not m.any() for m in ids[:3])
    assert all(np.array_equal(m, png_ids(mask)) for m in ids[3:])


def test_batch_with_a_failing_video(tmp_path: Path, small_clips: dict[str, tuple[Path, Path]]) -> None:
    videos, masks, out = tmp_path / "videos", tmp_path / "masks", tmp_path / "out"
    videos.mkdir()
    masks.mkdir()
    for name, (video, mask) in small_clips.items():
        if name != "dog":
            shutil.copy(video, videos / video.name)
        shutil.copy(mask, masks / mask.name)
    (videos / "dog.mp4").write_text("a text file renamed to .mp4\n")
    result = segment(videos, "--mask", masks, "--method", "copy", "--out", out, "-f", "png", "-f", "rle")
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == [str(out / n) for n in
                                          ("camel", "camel.rle.json", "car-shadow", "car-shadow.rle.json")]
    assert f"error: {videos / 'dog.mp4'}: ffmpeg cannot decode a frame of it" in result.stderr
    assert "2 done, 0 skipped, 1 failed" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["camel", "camel.rle.json", "car-shadow", "car-shadow.rle.json"]
    assert len(list((out / "camel").iterdir())) == 6

    again = segment(videos, "--mask", masks, "--method", "copy", "--out", out, "-f", "png", "-f", "rle")
    assert again.exit_code == 1 and "0 done, 2 skipped, 1 failed" in again.stderr
    assert again.stdout == result.stdout

    # a new format for finished videos: only the missing output is produced
    more = segment(videos, "--mask", masks, "--method", "copy", "--out", out, "-f", "rle", "-f", "overlay", "--quiet")
    assert more.exit_code == 1
    assert (out / "camel.overlay.mp4").is_file() and "skipped" not in more.stderr  # quiet: no table


def test_two_batch_inputs_with_one_name_fail_before_any_work(tmp_path: Path,
                                                             small_clips: dict[str, tuple[Path, Path]]) -> None:
    """camel.mp4 and camel.mov would write the same outputs: one line naming both, exit 2, nothing written
    (it used to be found only after the first of them was segmented)."""
    videos, out = tmp_path / "videos", tmp_path / "out"
    videos.mkdir()
    video, mask = small_clips["camel"]
    shutil.copy(video, videos / "camel.mp4")
    shutil.copy(video, videos / "camel.mov")
    result = segment(videos, "--mask", mask.parent, "--method", "copy", "--out", out)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "camel.mov" in lines[0] and "camel.mp4" in lines[0], lines
    assert "is also named 'camel'" in lines[0] and "rename one of them" in lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_torchrun_ranks_split_the_batch(tmp_path: Path, small_clips: dict[str, tuple[Path, Path]]) -> None:
    videos, masks = tmp_path / "videos", tmp_path / "masks"
    videos.mkdir()
    masks.mkdir()
    for video, mask in small_clips.values():
        shutil.copy(video, videos / video.name)
        shutil.copy(mask, masks / mask.name)
    for rank, expected in ((0, ["camel", "dog"]), (1, ["car-shadow"])):
        out = tmp_path / f"out{rank}"
        result = segment(videos, "--mask", masks, "--method", "copy", "--out", out, "--quiet",
                         env={"WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank)})
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines() == [str(out / name) for name in expected]


def test_quiet_prints_only_paths(tmp_path: Path, clip: tuple[Path, Path]) -> None:
    video, mask = clip
    out = tmp_path / "out"
    result = segment(video, "--mask", mask, "--method", "copy", "--out", out, "-f", "rle", "-f", "png", "-q")
    assert result.exit_code == 0
    assert result.stdout == f"{out / 'car-shadow.rle.json'}\n{out / 'car-shadow'}\n"
    assert result.stderr == ""


def test_size_above_the_input_is_a_note_not_an_upscale(tmp_path: Path, clip: tuple[Path, Path]) -> None:
    """--size larger than the video's short side runs at the input size; the user is told so (not --quiet)."""
    video, mask = clip  # 426x240
    above = segment(video, "--mask", mask, "--size", 480, "--end", 2, "--out", tmp_path / "a")
    assert above.exit_code == 0, above.output
    assert "--size 480 is above the video's short side (240 pixels)" in above.stderr
    assert "runs at 240" in above.stderr
    for args, out in ((["--size", 200], "b"), (["--size", 480, "-q"], "c"), ([], "d")):  # below, quiet, default
        result = segment(video, "--mask", mask, "--end", 2, "--out", tmp_path / out, *args)
        assert result.exit_code == 0, result.output
        assert "short side" not in result.stderr, result.stderr


def test_mask_dir_with_two_files_for_one_frame_is_refused(tmp_path: Path, clip: tuple[Path, Path]) -> None:
    """3.png and 00003.png both annotate frame 3 of a video: one silently replaced the other; now an error
    naming both, before anything is written."""
    video, mask = clip
    annotations = tmp_path / "ann"
    annotations.mkdir()
    shutil.copy(mask, annotations / "00000.png")
    shutil.copy(mask, annotations / "00003.png")
    shutil.copy(mask, annotations / "3.png")
    out = tmp_path / "out"
    assert_bad_input(segment(video, "--mask-dir", annotations, "--method", "copy", "--out", out),
                     "00003.png and 3.png both annotate frame 00003", "keep one of them")
    assert not out.exists()


def _batch(root: Path, clips: dict[str, tuple[Path, Path]], names: dict[str, str]) -> Path:
    """A batch folder: for each name -> clip key, <name>.mp4 with its mask <name>.png beside it."""
    root.mkdir()
    for name, key in names.items():
        video, mask = clips[key]
        shutil.copy(video, root / f"{name}.mp4")
        shutil.copy(mask, root / f"{name}.png")
    return root


def test_adding_a_format_to_a_finished_batch_says_what_was_kept(tmp_path: Path,
                                                               small_clips: dict[str, tuple[Path, Path]]) -> None:
    """A batch re-run with one more format keeps the earlier run's PNGs and writes only the new RLE, maybe
    with other settings: that mix was silent. A warning (kept with --quiet) names what was kept and how to
    redo all; --overwrite does."""
    batch = _batch(tmp_path / "batch", small_clips, {"a": "car-shadow"})
    out = tmp_path / "out"
    assert segment(batch, "--method", "copy", "--out", out, "-f", "png", "-q").exit_code == 0
    again = segment(batch, "--method", "flow", "--out", out, "-f", "png", "-f", "rle", "-q")
    assert again.exit_code == 0, again.output
    assert f"warning: {batch / 'a.mp4'}: kept {out / 'a'} from an earlier run and wrote only rle now" in again.stderr
    assert "--overwrite" in again.stderr and (out / "a.rle.json").exists()
    redo = segment(batch, "--method", "flow", "--out", out, "-f", "png", "-f", "rle", "--overwrite", "-q")
    assert redo.exit_code == 0 and redo.stderr == ""


def test_batch_outputs_that_would_land_on_each_other_are_refused(tmp_path: Path,
                                                                 small_clips: dict[str, tuple[Path, Path]]) -> None:
    """a.cutout.mp4's png folder is a.mp4's cutout folder: one video's outputs silently replaced the
    other's. Refused before any work, naming both inputs."""
    batch = _batch(tmp_path / "batch", small_clips, {"a": "car-shadow", "a.cutout": "dog"})
    out = tmp_path / "out"
    result = segment(batch, "--method", "copy", "--out", out, "-f", "png", "-f", "cutout")
    assert_bad_input(result, f"its output {out / 'a.cutout'} is also an output of", "separate --out")
    assert not out.exists()


def test_a_baseline_says_frames_before_a_later_first_mask_stay_empty(tmp_path: Path,
                                                                     clip: tuple[Path, Path]) -> None:
    """--direction both is the default, but baselines run forward only: with the first mask on frame 3,
    frames 0-2 came out empty without a word. A note says so (not with --quiet)."""
    video, mask = clip
    annotations = tmp_path / "ann"
    annotations.mkdir()
    shutil.copy(mask, annotations / "00003.png")
    result = segment(video, "--mask-dir", annotations, "--method", "copy", "--out", tmp_path / "o")
    assert result.exit_code == 0, result.output
    assert "the first mask is on frame 3; this baseline runs forward only" in result.stderr
    assert not png_ids(tmp_path / "o" / "car-shadow" / "00002.png").any()
    quiet = segment(video, "--mask-dir", annotations, "--method", "copy", "--out", tmp_path / "q", "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""
    # a frame folder's index 3 is frame_0013.jpg, not 00003: the note names the frame as well
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, image in enumerate(example_frames(4)):
        Image.fromarray(cv2.resize(image, SMALL, interpolation=cv2.INTER_AREA)).save(frames / f"frame_{i + 10:04d}.jpg")
    (annotations / "00003.png").rename(annotations / "frame_0013.png")
    result = segment(frames, "--mask-dir", annotations, "--method", "copy", "--out", tmp_path / "f")
    assert result.exit_code == 0, result.output
    assert "the first mask is on frame 3 (frame_0013); this baseline runs forward only" in result.stderr


def test_rgb_antialiased_mask_is_reported_not_split(tmp_path: Path, clip: tuple[Path, Path]) -> None:
    video, _ = clip
    car = png_ids(EXAMPLE_MASK)
    red = (car[..., None] * np.array([255, 60, 0])).astype(np.uint8)
    smooth = cv2.resize(red, SMALL, interpolation=cv2.INTER_AREA)  # anti-aliased edge colours
    mask = tmp_path / "drawn.png"
    Image.fromarray(smooth).save(mask)
    out = tmp_path / "out"
    result = segment(video, "--mask", mask, "--method", "copy", "--out", out)
    assert result.exit_code == 0, result.output
    assert "stray colour(s)" in result.stderr and "rgb(255, 60, 0) -> 1" in result.stderr
    assert set(np.unique(png_ids(out / "car-shadow" / "00005.png"))) == {0, 1}


def test_mask_with_the_same_aspect_is_resized(tmp_path: Path, clip: tuple[Path, Path]) -> None:
    video, _ = clip
    mask = tmp_path / "full.png"
    save_palette_png(png_ids(EXAMPLE_MASK), mask)  # 854x480 for a 426x240 video
    out = tmp_path / "out"
    result = segment(video, "--mask", mask, "--method", "copy", "--out", out)
    assert result.exit_code == 0, result.output
    assert "resized (nearest)" in result.stderr
    assert png_ids(out / "car-shadow" / "00000.png").shape == (240, 426)


# ---- bad input: exit 2, one line, nothing written ----------------------------------------------------
def test_missing_video(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_bad_input(segment(tmp_path / "nope.mp4", "--mask", EXAMPLE_MASK, "--out", out), "nope.mp4: no such file")
    assert not out.exists()


def test_not_a_video(tmp_path: Path) -> None:
    fake = tmp_path / "holiday.mp4"
    fake.write_text("not a video\n")
    out = tmp_path / "out"
    assert_bad_input(segment(fake, "--mask", EXAMPLE_MASK, "--method", "copy", "--out", out),
                     "holiday.mp4: ffmpeg cannot decode a frame of it", "damaged or incomplete")
    assert not out.exists()


def test_mask_with_another_aspect_ratio(tmp_path: Path, clip: tuple[Path, Path]) -> None:
    video, mask = clip
    square = tmp_path / "square.png"
    save_palette_png(png_ids(mask)[:, :240], square)
    out = tmp_path / "out"
    assert_bad_input(segment(video, "--mask", square, "--method", "copy", "--out", out),
                     "square.png: mask is 240x240 but", "another aspect ratio")
    assert not out.exists()


def test_mask_without_object(tmp_path: Path, clip: tuple[Path, Path]) -> None:
    video, _ = clip
    empty = tmp_path / "empty.png"
    save_palette_png(np.zeros((240, 426), np.uint8), empty)
    assert_bad_input(segment(video, "--mask", empty, "--method", "copy", "--out", tmp_path / "out"),
                     "empty.png: mask has no object")


def test_mask_with_too_many_objects(tmp_path: Path, clip: tuple[Path, Path]) -> None:
    video, _ = clip
    rng = np.random.default_rng(1)
    colours = rng.choice(2**24 - 1, size=16 * 20, replace=False) + 1
    tiles = np.repeat(np.repeat(colours.reshape(16, 20), 15, 0), 21, 1)[:240, :426]
    rgb = np.stack([(tiles >> 16) & 255, (tiles >> 8) & 255, tiles & 255], -1).astype(np.uint8)
    rgb[:15, :21] = 0
    crowded = tmp_path / "crowded.png"
    Image.fromarray(rgb).save(crowded)
    assert_bad_input(segment(video, "--mask", crowded, "--method", "copy", "--out", tmp_path / "out"),
                     "crowded.png:", "at most 254")


def test_unwritable_output_folder(tmp_path: Path, clip: tuple[Path, Path]) -> None:
    video, mask = clip
    blocker = tmp_path / "results.txt"
    blocker.write_text("a file where the output folder should go\n")
    assert_bad_input(segment(video, "--mask", mask, "--method", "copy", "--out", blocker / "run1"),
                     "run1: output folder is not writable", "pass --out")


def test_existing_outputs_need_overwrite(tmp_path: Path, clip: tuple[Path, Path]) -> None:
    video, mask = clip
    out = tmp_path / "out"
    assert segment(video, "--mask", mask, "--method", "copy", "--out", out, "-q").exit_code == 0
    before = (out / "car-shadow" / "00000.png").stat().st_mtime_ns
    assert_bad_input(segment(video, "--mask", mask, "--method", "copy", "--out", out),
                     "car-shadow: output already exists", "--overwrite")
    assert (out / "car-shadow" / "00000.png").stat().st_mtime_ns == before
    result = segment(video, "--mask", mask, "--method", "copy", "--out", out, "--overwrite", "-q")
    assert result.exit_code == 0 and result.stdout == f"{out / 'car-shadow'}\n"


def test_bad_frame_midway_leaves_no_output(tmp_path: Path) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    for index, frame in enumerate(example_frames(4)):
        Image.fromarray(frame).save(frames / f"{index:05d}.jpg")
    (frames / "00002.jpg").write_bytes(b"truncated")
    out = tmp_path / "out"
    mask = EXAMPLE_MASK
    assert_bad_input(segment(frames, "--mask", mask, "--method", "copy", "--out", out, "-f", "png", "-f", "overlay"),
                     "00002.jpg: not a readable image")
    assert not out.exists()
    # a real JPEG cut short: libjpeg alone would decode it with a grey bottom and only print a warning
    whole = (frames / "00001.jpg").read_bytes()
    (frames / "00002.jpg").write_bytes(whole[: len(whole) // 2])
    assert_bad_input(segment(frames, "--mask", mask, "--method", "copy", "--out", out, "-f", "png"),
                     "00002.jpg: not a readable image, or truncated")
    assert not out.exists()


@pytest.mark.parametrize("args, fragment", [
    ([], "--mask: no mask given and no car-shadow.png or car-shadow_mask.png beside"),
    (["--format", "gif"], "--format: unknown format 'gif'"),
    (["--method", "magic"], "--method: unknown method 'magic'"),
    (["--device", "tpu"], "--device: unknown device 'tpu'"),
    (["--method", "copy", "--direction", "backward"], "--direction backward: the copy baseline runs forward only"),
    (["--direction", "backward"], "--direction backward: a --mask annotates the first frame processed"),
])
def test_bad_options(tmp_path: Path, args: list[str], fragment: str) -> None:
    video = tmp_path / "car-shadow.mp4"  # alone: no car-shadow_mask.png beside it as in examples/
    shutil.copy(EXAMPLE_VIDEO, video)
    mask_args = [] if not args else ["--mask", str(EXAMPLE_MASK)]
    assert_bad_input(segment(video, *mask_args, *args, "--out", tmp_path / "out"), fragment)
    assert not (tmp_path / "out").exists()


def test_direction_both_segments_frames_before_the_first_mask_and_mask_dir_corrects(tmp_path: Path):
    """A frame folder whose only masks are on frames 3 and 5 (5: a correction erasing half the car)."""
    from stma_core.io.frames import open_frames

    frames_dir, masks_dir = tmp_path / "clip", tmp_path / "ann"
    frames_dir.mkdir()
    masks_dir.mkdir()
    for i, (_, frame) in zip(range(7), open_frames(EXAMPLES / "car-shadow.mp4")):
        small = cv2.resize(frame, (427, 240), interpolation=cv2.INTER_AREA)
        Image.fromarray(small).save(frames_dir / f"{i:05d}.png")
    car = (np.asarray(Image.open(EXAMPLES / "car-shadow_mask.png").resize((427, 240), Image.NEAREST)) > 0)
    Image.fromarray(car.astype(np.uint8)).save(masks_dir / "00003.png")
    half = car.copy()
    half[:, int(np.median(np.nonzero(car)[1])):] = False
    Image.fromarray(half.astype(np.uint8)).save(masks_dir / "00005.png")
    outs = {}
    for direction in ("forward", "both"):
        result = segment(frames_dir, "--mask-dir", masks_dir, "--out", tmp_path / direction, "--quiet",
                         "--direction", direction)
        assert result.exit_code == 0, result.output
        outs[direction] = [np.asarray(Image.open(tmp_path / direction / "clip" / f"{i:05d}.png")) for i in range(7)]
    assert not any(outs["forward"][i].any() for i in range(3))  # forward: nothing before the first mask
    assert all((outs["both"][i] == 1).sum() > 0.5 * car.sum() for i in range(3))  # both: segmented backwards
    for i in range(3, 7):
        assert np.array_equal(outs["both"][i], outs["forward"][i])  # from the first mask on, the same run
    given = outs["both"][5] == 1
    # the correction replaced the prediction (it was dropped before: only first appearances were used);
    # that it carries on to later frames is tested on the session (tests/test_session_api.py)
    assert (given & half).sum() / (given | half).sum() > 0.95


def test_direction_both_says_which_frames_miss_an_object_given_after_the_first_mask(tmp_path: Path):
    """Car on frame 3, a second object first on frame 5, --direction both: the backward pass segments object 2 on
    frames 0-2 but the forward pass (from frame 3) has it only from 5 on, so frames 3-4 miss it; that was silent.
    One warning line says so (and no Python warning); with every object on the first mask's frame, nothing."""
    from stma_core.io.frames import open_frames

    frames_dir, masks_dir = tmp_path / "clip", tmp_path / "ann"
    frames_dir.mkdir()
    masks_dir.mkdir()
    for i, (_, frame) in zip(range(6), open_frames(EXAMPLES / "car-shadow.mp4")):
        Image.fromarray(cv2.resize(frame, (214, 120), interpolation=cv2.INTER_AREA)).save(frames_dir / f"{i:05d}.png")
    car = (np.asarray(Image.open(EXAMPLES / "car-shadow_mask.png").resize((214, 120), Image.NEAREST)) > 0)
    Image.fromarray(car.astype(np.uint8)).save(masks_dir / "00003.png")
    box = np.zeros((120, 214), np.uint8)
    box[10:40, 10:60] = 2
    Image.fromarray(box).save(masks_dir / "00005.png")
    result = segment(frames_dir, "--mask-dir", masks_dir, "--out", tmp_path / "out", "--quiet", "--size", 64)
    assert result.exit_code == 0, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"warning: {frames_dir}: direction both: object(s) [2] first "
                                                   "given on frame 00005 are missing from frames 00003 to 00004"), lines
    out = [np.asarray(Image.open(tmp_path / "out" / "clip" / f"{i:05d}.png")) for i in range(6)]
    assert not any((out[i] == 2).any() for i in (3, 4)) and (out[5] == 2).any()
    Image.fromarray(np.where(box != 0, box, car.astype(np.uint8))).save(masks_dir / "00003.png")
    (masks_dir / "00005.png").unlink()
    result = segment(frames_dir, "--mask-dir", masks_dir, "--out", tmp_path / "out2", "--quiet", "--size", 64)
    assert result.exit_code == 0 and result.stderr == "", result.output


def test_a_batch_video_without_a_mask_beside_it_fails_alone(tmp_path: Path,
                                                            small_clips: dict[str, tuple[Path, Path]]) -> None:
    """Masks beside their videos, one missing: the others run; that video gets its error line and row (exit 1)."""
    videos, out = tmp_path / "videos", tmp_path / "out"
    videos.mkdir()
    for name, (video, mask) in small_clips.items():
        shutil.copy(video, videos / video.name)
        if name != "dog":
            shutil.copy(mask, videos / mask.name)
    result = segment(videos, "--method", "copy", "--out", out, "-f", "png")
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == [str(out / "camel"), str(out / "car-shadow")]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "dog.mp4 has no dog.png or dog_mask.png beside it" in errors[0], result.stderr
    assert "2 done, 0 skipped, 1 failed" in result.stderr


def test_batch_mask_folder_inside_the_input_folder_is_not_a_video(tmp_path: Path,
                                                                  small_clips: dict[str, tuple[Path, Path]]) -> None:
    """videos/masks/ (--mask) holds PNGs, so the folder scan took it for a frame folder: a third 'video'
    that failed ('videos/masks/masks.png: mask file not found') and made the batch exit 1. It is the
    masks, not an input: the batch segments the videos only."""
    videos, out = tmp_path / "videos", tmp_path / "out"
    masks = videos / "masks"
    masks.mkdir(parents=True)
    for name in ("camel", "car-shadow"):
        video, mask = small_clips[name]
        shutil.copy(video, videos / video.name)
        shutil.copy(mask, masks / mask.name)
    result = segment(videos, "--mask", masks, "--method", "copy", "--out", out, "-f", "rle")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [str(out / "camel.rle.json"), str(out / "car-shadow.rle.json")]
    assert "2 done, 0 skipped, 0 failed" in result.stderr


def test_an_output_that_would_replace_the_input_frames_or_masks_is_refused(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """`stma segment frames -o .` (or -o the frame folder's parent): the png output folder `./frames` is the
    input itself. The run said 'output already exists; pass --overwrite', and with --overwrite it replaced the
    user's frames with masks. Now: one line naming both, exit 2, the frames (and masks) untouched."""
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, image in enumerate(example_frames(3)):
        Image.fromarray(cv2.resize(image, SMALL, interpolation=cv2.INTER_AREA)).save(frames / f"frame_{i + 10:04d}.jpg")
    mask = tmp_path / "mask.png"
    save_palette_png(cv2.resize(png_ids(EXAMPLE_MASK), SMALL, interpolation=cv2.INTER_NEAREST), mask)
    before = sorted(p.name for p in frames.iterdir())
    monkeypatch.chdir(tmp_path)
    for extra in ((), ("--overwrite",)):
        result = segment("frames", "--mask", mask, "--method", "copy", "--out", ".", "-f", "rle", "-f", "png", *extra)
        assert result.exit_code == 2, result.output
        assert result.stderr.strip() == "error: frames: the png output would replace the input frames; choose another --out"
        assert sorted(p.name for p in frames.iterdir()) == before and not Path("frames.rle.json").exists()

    # annotations in a previous run's output folder: --mask-dir out/frames with --out out
    out = tmp_path / "out"
    (out / "frames").mkdir(parents=True)
    shutil.copy(mask, out / "frames" / "frame_0010.png")
    result = segment(frames, "--mask-dir", out / "frames", "--method", "copy", "--out", out, "--overwrite")
    assert result.exit_code == 2 and "would replace the --mask-dir" in result.stderr, result.output
    assert [p.name for p in (out / "frames").iterdir()] == ["frame_0010.png"]
    assert np.array_equal(png_ids(out / "frames" / "frame_0010.png"), png_ids(mask))


def test_a_library_warning_is_one_warning_line(tmp_path: Path) -> None:
    """The session's warning for an object smaller than one network cell reached the terminal as Python's
    two lines (`.../session.py:NNN: UserWarning: ...` and the source line `warnings.warn(`); the CLI shows
    it as its own one `warning:` line."""
    tiny = np.zeros(np.array(Image.open(EXAMPLES / "car-shadow_mask.png")).shape[:2], np.uint8)
    tiny[100:104, 200:204] = 1  # 16 pixels: under one 16x16 cell at any processing size up to the frame's
    save_palette_png(tiny, tmp_path / "tiny.png")
    result = segment(EXAMPLES / "car-shadow.mp4", "--mask", tmp_path / "tiny.png", "--end", 2, "--size", 128,
                     "-o", tmp_path / "out", "-q")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if "network sees" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: frame 0: object 1 (16 pixels"), result.stderr
    assert "UserWarning" not in result.stderr and "warnings.warn" not in result.stderr, result.stderr
