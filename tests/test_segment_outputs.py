"""The issue-11 outputs of `stma segment` on real clips: each written file is decoded and compared with
the palette PNG masks of the same run (matte, cut-out, soft probabilities, styled overlay, frame range)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner, Result

from conftest import EXAMPLES, encode_mp4, read_davis_frames, read_davis_mask
from stma_cli.app import app
from stma_core.io.outputs import OutputOptions, styled_overlay
from stma_core.io.writers import overlay, save_palette_png

SMALL = (426, 240)


def segment(*args: object) -> Result:
    return CliRunner().invoke(app, ["segment", *(str(a) for a in args)])


def ids(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def decode(path: Path, pix_fmt: str = "rgb24", channels: int = 3, codec: str | None = None) -> tuple[dict, list[np.ndarray]]:
    """Every frame of a video as HxW(xC) uint8, with ffmpeg's metadata."""
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt=pix_fmt, bpp=channels,
                                        input_params=["-c:v", codec] if codec else None)
    meta = next(reader)
    width, height = meta["size"]
    shape = (height, width, channels) if channels > 1 else (height, width)
    return meta, [np.frombuffer(raw, np.uint8).reshape(shape).copy() for raw in reader]


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a == b).mean())


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory, davis16: Path) -> tuple[Path, Path, list[np.ndarray]]:
    """A real 6-frame 426x240 mp4 of DAVIS car-shadow, its first-frame mask, and its decoded frames."""
    root = tmp_path_factory.mktemp("outputs-clip")
    video = encode_mp4(read_davis_frames(davis16, "car-shadow", 6, scale=0.5), root / "car-shadow.mp4")
    mask = root / "car-shadow.png"
    save_palette_png(cv2.resize(read_davis_mask(davis16, "car-shadow"), SMALL, interpolation=cv2.INTER_NEAREST), mask)
    return video, mask, decode(video)[1]


@pytest.fixture(scope="module")
def two_objects(tmp_path_factory: pytest.TempPathFactory, clip: tuple[Path, Path, list[np.ndarray]]) -> Path:
    """The clip's mask plus a second object (id 2) on the road."""
    mask = ids(clip[1]).copy()
    mask[200:235, 20:120] = 2
    path = tmp_path_factory.mktemp("two") / "two.png"
    save_palette_png(mask, path)
    return path


def test_every_new_format_decodes_to_the_png_masks(tmp_path: Path, clip: tuple[Path, Path, list[np.ndarray]]) -> None:
    video, mask, frames = clip
    result = segment(video, "--mask", mask, "--out", tmp_path, "--device", "cpu", "-f", "png", "-f", "matte",
                     "-f", "matte-video", "-f", "cutout", "-f", "cutout-video", "-f", "prob", "-f", "prob-npz",
                     "-f", "overlay", "--quiet")
    assert result.exit_code == 0, result.output
    names = [f"{i:05d}" for i in range(6)]
    masks = [ids(tmp_path / "car-shadow" / f"{n}.png") for n in names]
    assert all((m == 1).any() for m in masks)

    for name, m in zip(names, masks):  # PNG mattes: exactly the object's pixels
        matte = ids(tmp_path / "car-shadow.matte" / "1" / f"{name}.png")
        assert matte.dtype == np.uint8 and set(np.unique(matte)) <= {0, 255}
        np.testing.assert_array_equal(matte == 255, m == 1)

    _, matte_frames = decode(tmp_path / "car-shadow.matte-video" / "1.mp4", "gray", 1)
    assert len(matte_frames) == 6
    for decoded, m in zip(matte_frames, masks):
        assert agreement(decoded > 127, m == 1) > 0.998

    for name, m, frame in zip(names, masks, frames):  # RGBA cut-outs: the frame inside, transparent outside
        rgba = np.array(Image.open(tmp_path / "car-shadow.cutout" / "1" / f"{name}.png"))
        assert rgba.shape == (*m.shape, 4)
        np.testing.assert_array_equal(rgba[..., 3] == 255, m == 1)
        np.testing.assert_array_equal(rgba[m == 1, :3], frame[m == 1])
        assert not rgba[m == 0].any()

    meta, cut_frames = decode(tmp_path / "car-shadow.cutout-video" / "1.webm", "rgba", 4, codec="libvpx-vp9")
    assert meta["codec"] == "vp9" and "yuva420p" in meta["pix_fmt"] and len(cut_frames) == 6
    for decoded, m in zip(cut_frames, masks):
        assert agreement(decoded[..., 3] > 127, m == 1) > 0.995

    for name, m in zip(names, masks):  # soft masks: thresholded at 0.5 they are the argmax masks
        prob = ids(tmp_path / "car-shadow.prob" / "1" / f"{name}.png")
        assert agreement(prob >= 128, m == 1) > 0.999
        npz = np.load(tmp_path / "car-shadow.prob-npz" / f"{name}.npz")
        assert npz["ids"].tolist() == [1] and npz["prob"].dtype == np.uint8
        np.testing.assert_array_equal(npz["prob"][0], prob)
    assert ((prob > 10) & (prob < 245)).any(), "probabilities are soft, not the hard mask"

    _, over = decode(tmp_path / "car-shadow.overlay.mp4")
    assert len(over) == 6
    assert not list(tmp_path.glob("*.partial"))


def test_two_objects_each_and_all(tmp_path: Path, clip: tuple[Path, Path, list[np.ndarray]], two_objects: Path) -> None:
    video = clip[0]
    each, together = tmp_path / "each", tmp_path / "all"
    result = segment(video, "--mask", two_objects, "--out", each, "--method", "copy", "-f", "png", "-f", "matte",
                     "-f", "prob", "-f", "prob-npz", "--quiet")
    assert result.exit_code == 0, result.output
    first = ids(each / "car-shadow" / "00003.png")
    assert set(np.unique(first)) == {0, 1, 2}
    for object_id in (1, 2):
        matte = ids(each / "car-shadow.matte" / str(object_id) / "00003.png")
        np.testing.assert_array_equal(matte == 255, first == object_id)
        prob = ids(each / "car-shadow.prob" / str(object_id) / "00003.png")  # a baseline has hard probabilities
        np.testing.assert_array_equal(prob, np.where(first == object_id, 255, 0))
    npz = np.load(each / "car-shadow.prob-npz" / "00003.npz")
    assert npz["ids"].tolist() == [1, 2] and npz["prob"].shape == (2, 240, 426)

    result = segment(video, "--mask", two_objects, "--out", together, "--method", "copy", "-f", "matte",
                     "-f", "cutout", "--objects", "all", "--quiet")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (together / "car-shadow.matte").iterdir()) == ["all"]
    matte = ids(together / "car-shadow.matte" / "all" / "00003.png")
    np.testing.assert_array_equal(matte == 255, first != 0)
    rgba = np.array(Image.open(together / "car-shadow.cutout" / "all" / "00003.png"))
    np.testing.assert_array_equal(rgba[..., 3] == 255, first != 0)


def test_prores_cutout_keeps_alpha(tmp_path: Path, clip: tuple[Path, Path, list[np.ndarray]]) -> None:
    video, mask, _ = clip
    result = segment(video, "--mask", mask, "--out", tmp_path, "--method", "copy", "-f", "cutout-video",
                     "--alpha-codec", "prores", "--end", "3", "--quiet")
    assert result.exit_code == 0, result.output
    meta, frames = decode(tmp_path / "car-shadow.cutout-video" / "1.mov", "rgba", 4)
    assert meta["codec"].startswith("prores") and len(frames) == 3
    assert agreement(frames[0][..., 3] > 127, ids(mask) == 1) > 0.999


def test_frame_range_and_output_fps(tmp_path: Path, clip: tuple[Path, Path, list[np.ndarray]]) -> None:
    video, mask, _ = clip
    result = segment(video, "--mask", mask, "--out", tmp_path, "--method", "copy", "-f", "png", "-f", "overlay",
                     "-f", "matte-video", "--start", "1", "--end", "6", "--stride", "2", "--quiet")
    assert result.exit_code == 0, result.output
    assert sorted(p.stem for p in (tmp_path / "car-shadow").glob("*.png")) == ["00001", "00003", "00005"]
    # the --mask file annotates the first processed frame: the copy baseline repeats it exactly
    np.testing.assert_array_equal(ids(tmp_path / "car-shadow" / "00005.png"), ids(mask))
    meta, frames = decode(tmp_path / "car-shadow.overlay.mp4")
    assert len(frames) == 3 and meta["fps"] == pytest.approx(12.0)  # 24 fps / stride 2
    _, mattes = decode(tmp_path / "car-shadow.matte-video" / "1.mp4", "gray", 1)
    assert len(mattes) == 3


def test_fps_for_a_frame_folder(tmp_path: Path, clip: tuple[Path, Path, list[np.ndarray]]) -> None:
    video, mask, frames = clip
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames[:3]):
        Image.fromarray(frame).save(folder / f"{i:05d}.png")
    result = segment(folder, "--mask", mask, "--out", tmp_path / "out", "--method", "copy", "-f", "overlay",
                     "-f", "matte-video", "--fps", "5", "--quiet")
    assert result.exit_code == 0, result.output
    assert decode(tmp_path / "out" / "frames.overlay.mp4")[0]["fps"] == pytest.approx(5.0)
    assert decode(tmp_path / "out" / "frames.matte-video" / "1.mp4", "gray", 1)[0]["fps"] == pytest.approx(5.0)


def test_mask_folder_outside_the_range_is_an_error(tmp_path: Path, clip: tuple[Path, Path, list[np.ndarray]]) -> None:
    video, mask, _ = clip
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    (annotations / "00000.png").write_bytes(mask.read_bytes())
    out = tmp_path / "out"
    result = segment(video, "--mask-dir", annotations, "--out", out, "--method", "copy", "--start", "1")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and "--start/--end/--stride" in result.stderr
    assert not out.exists()


def _skipped_object_annotations(tmp_path: Path, car: np.ndarray) -> Path:
    """A --mask-dir: frame 1 annotates the car (object 1); frame 2 adds object 2 (top-left corner)."""
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    save_palette_png(car, annotations / "00001.png")
    both = car.copy()
    both[:40, :60] = 2
    save_palette_png(both, annotations / "00002.png")
    return annotations


def test_an_object_annotated_only_on_a_skipped_frame_is_a_warning(
        tmp_path: Path, clip: tuple[Path, Path, list[np.ndarray]]) -> None:
    """--mask-dir with --stride: object 2, annotated only on frame 2 (skipped by --start 1 --stride 2),
    is named in a warning instead of vanishing silently; object 1 (on processed frame 1) is tracked."""
    video, mask, _ = clip
    annotations = _skipped_object_annotations(tmp_path, np.array(Image.open(mask)))
    result = segment(video, "--mask-dir", annotations, "--out", tmp_path / "out", "--method", "copy",
                     "--start", "1", "--stride", "2", "--quiet")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "not tracked" in line]
    assert len(warnings) == 1 and "00002.png: object(s) [2]" in warnings[0], result.stderr
    saved = sorted((tmp_path / "out" / video.stem).glob("*.png"))
    assert saved and all(set(np.unique(np.array(Image.open(p)))) <= {0, 1} for p in saved)


def test_load_masks_returns_the_skipped_object_warnings_on_their_own(tmp_path: Path) -> None:
    """_load_masks hands back the warnings about objects annotated only on skipped frames as a list of their
    own (they used to be appended to the first processed mask's warnings); each object is named once."""
    from stma_cli.segment_cmd import Job, _load_masks
    from stma_core.io.frames import open_frames

    video = EXAMPLES / "car-shadow.mp4"
    annotations = _skipped_object_annotations(tmp_path, np.array(Image.open(EXAMPLES / "car-shadow_mask.png")))
    three = np.array(Image.open(annotations / "00002.png"))
    three[-40:, -60:] = 3
    save_palette_png(three, annotations / "00004.png")  # object 2 again (named once) and object 3
    source = open_frames(video)
    select = range(1, source.frame_count, 2)  # --start 1 --stride 2: frames 2 and 4 are skipped
    given, loaded, warnings = _load_masks(Job(video, "car-shadow", mask_dir=annotations), source, 1,
                                          lambda name: int(name) in select)
    assert list(given) == [source.frame_name(1)] and set(np.unique(given[source.frame_name(1)])) == {0, 1}
    assert [m.path.name for m in loaded] == ["00001.png"] and loaded[0].warnings == []
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith(f"{annotations / '00002.png'}: object(s) [2] are annotated only on frames")
    assert warnings[1].startswith(f"{annotations / '00004.png'}: object(s) [3] are annotated only on frames")
    _, _, none = _load_masks(Job(video, "car-shadow", mask_dir=annotations), source)  # every frame: no warning
    assert none == []


def test_a_failing_frame_leaves_no_new_output(tmp_path: Path, clip: tuple[Path, Path, list[np.ndarray]]) -> None:
    _, mask, frames = clip
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames[:4]):
        Image.fromarray(frame).save(folder / f"{i:05d}.png")
    (folder / "00002.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    result = segment(folder, "--mask", mask, "--out", out, "--method", "copy", "-f", "matte", "-f", "cutout-video",
                     "-f", "prob-npz", "-f", "matte-video")
    assert result.exit_code == 2, result.output
    assert "00002.png" in result.stderr
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("args, fragment", [
    (["--overlay-alpha", "1.5"], "--overlay-alpha"),
    (["--stride", "0"], "--stride"),
    (["--start", "3", "--end", "2"], "--end"),
    (["--objects", "some"], "--objects"),
    (["--overlay-style", "dots"], "--overlay-style"),
    (["--alpha-codec", "gif"], "--alpha-codec"),
    (["--fps", "0"], "--fps"),
    (["-f", "mattes"], "matte-video"),
])
def test_bad_options_are_one_line_errors(tmp_path: Path, args: list[str], fragment: str) -> None:
    result = segment(EXAMPLES / "car-shadow.mp4", "--mask", EXAMPLES / "car-shadow_mask.png", "--out", tmp_path / "o",
                     *args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert not (tmp_path / "o").exists()


def test_bundled_example_with_styled_overlay(tmp_path: Path) -> None:
    result = segment(EXAMPLES / "car-shadow.mp4", "--mask", EXAMPLES / "car-shadow_mask.png", "--out", tmp_path,
                     "--method", "copy", "-f", "overlay", "-f", "cutout", "--end", "2", "--overlay-style", "contour",
                     "--overlay-alpha", "1", "--labels", "--quiet")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "car-shadow.cutout" / "1").iterdir()) == ["00000.png", "00001.png"]
    assert len(decode(tmp_path / "car-shadow.overlay.mp4")[1]) == 2


def test_overlay_styles() -> None:
    frame = np.full((120, 160, 3), 100, np.uint8)
    mask = np.zeros((120, 160), np.uint8)
    mask[30:90, 40:120] = 3
    np.testing.assert_array_equal(styled_overlay(frame, mask, 0.5), overlay(frame, mask, 0.5))  # default unchanged
    contour = styled_overlay(frame, mask, 1.0, "contour")
    assert (contour[55:65, 70:90] == 100).all(), "contour style leaves the inside untouched"
    assert (contour[30, 60] == (128, 128, 0)).all(), "the outline is drawn in the id's DAVIS colour (olive for 3)"
    light = styled_overlay(frame, mask, 0.2)
    assert abs(int(light[60, 80, 0]) - 100) < abs(int(overlay(frame, mask, 0.8)[60, 80, 0]) - 100)
    labelled = styled_overlay(frame, mask, 0.5, "fill", labels=True)
    changed = np.argwhere((labelled != styled_overlay(frame, mask, 0.5)).any(-1))
    assert len(changed) and (mask[changed[:, 0], changed[:, 1]] == 3).all(), "the label is drawn inside the object"


def test_output_options_keys() -> None:
    mask = np.array([[0, 1], [2, 2]], np.uint8)
    each = dict(OutputOptions(object_ids=(1, 2)).binary_masks(mask))
    assert list(each) == ["1", "2"] and each["2"].sum() == 2
    assert dict(OutputOptions(object_ids=(1, 2), objects="all").binary_masks(mask))["all"].sum() == 3


def test_session_probabilities_accessor(clip: tuple[Path, Path, list[np.ndarray]]) -> None:
    from stma_core.inference.factory import make_propagator

    session = make_propagator("stma", device="cpu")
    first, frames = ids(clip[1]), clip[2]
    with pytest.raises(RuntimeError, match="call step"):
        session.object_probabilities()
    session.step(frames[0], first)
    labels = session.step(frames[1])
    probs = session.object_probabilities()
    assert list(probs) == [1] and probs[1].shape == labels.shape and probs[1].dtype == np.uint8
    assert agreement(probs[1] >= 128, labels == 1) > 0.999


def test_fps_without_a_video_output_warns(tmp_path: Path, clip: tuple[Path, Path, list[np.ndarray]]) -> None:
    video, mask, _ = clip
    result = segment(video, "--mask", mask, "--out", tmp_path, "--method", "copy", "-f", "matte", "--fps", "5",
                     "--end", "2")
    assert result.exit_code == 0, result.output
    assert "warning: --fps only sets the frame rate" in result.stderr


def test_style_options_without_their_output_warn(tmp_path: Path, clip: tuple[Path, Path, list[np.ndarray]]) -> None:
    """--labels, --overlay-style/-alpha, --objects and --alpha-codec were silently ignored when no output they
    style was requested (`-f prob --objects all` gives per-object files, `-f png --labels` no labels): like
    --fps, each now says so; with its output requested, nothing is said."""
    video, mask, _ = clip
    result = segment(video, "--mask", mask, "--out", tmp_path / "a", "--method", "copy", "-f", "png", "-f", "prob",
                     "--end", "2", "--labels", "--overlay-style", "contour", "--overlay-alpha", "0.8",
                     "--objects", "all", "--alpha-codec", "prores")
    assert result.exit_code == 0, result.output
    warned = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warned == [
        "warning: --objects only applies to matte, matte-video, cutout, cutout-video outputs; none is requested "
        "(add -f matte)",
        "warning: --overlay-alpha only applies to overlay outputs; none is requested (add -f overlay)",
        "warning: --overlay-style only applies to overlay outputs; none is requested (add -f overlay)",
        "warning: --labels only applies to overlay outputs; none is requested (add -f overlay)",
        "warning: --alpha-codec only applies to cutout-video outputs; none is requested (add -f cutout-video)"]
    assert sorted(p.name for p in (tmp_path / "a" / "car-shadow.prob").iterdir()) == ["1"]
    result = segment(video, "--mask", mask, "--out", tmp_path / "b", "--method", "copy", "-f", "overlay",
                     "-f", "matte", "--end", "2", "--labels", "--overlay-style", "contour", "--objects", "all")
    assert result.exit_code == 0 and "warning" not in result.stderr, result.output


def test_option_warnings_reach_quiet_runs_and_the_json_summary(tmp_path: Path) -> None:
    """`--fps 5 -f png -q` (or --labels without an overlay) said nothing: these warnings were hidden by --quiet,
    which the README says hides notes only, and with --json a script never learnt of them (each video's entry has
    only its own warnings). They now reach stderr with --quiet and the summary's top-level `warnings`."""
    video, mask = EXAMPLES / "car-shadow.mp4", EXAMPLES / "car-shadow_mask.png"  # no shared data needed
    result = segment(video, "--mask", mask, "--out", tmp_path / "a", "--method", "copy", "-f", "png", "--fps", "5",
                     "--labels", "--end", "2", "-q")
    assert result.exit_code == 0, result.output
    lines = ["--fps only sets the frame rate of overlay, matte-video, cutout-video outputs; none is requested",
             "--labels only applies to overlay outputs; none is requested (add -f overlay)"]
    assert result.stderr.splitlines() == [f"warning: {line}" for line in lines]
    result = segment(video, "--mask", mask, "--out", tmp_path / "b", "--method", "copy", "-f", "png", "--fps", "5",
                     "--labels", "--end", "2", "-q", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["warnings"] == lines and "warnings" not in payload["videos"][0]
    result = segment(video, "--mask", mask, "--out", tmp_path / "c", "--method", "copy", "--end", "2", "--json")
    assert result.exit_code == 0 and "warnings" not in json.loads(result.stdout), result.output  # none: no key


def test_batch_skips_videos_whose_new_outputs_exist(tmp_path: Path, clip: tuple[Path, Path, list[np.ndarray]]) -> None:
    video, mask, _ = clip
    videos, masks = tmp_path / "videos", tmp_path / "masks"
    videos.mkdir()
    masks.mkdir()
    (videos / "a.mp4").write_bytes(video.read_bytes())
    (masks / "a.png").write_bytes(mask.read_bytes())
    args = (videos, "--mask", masks, "--out", tmp_path / "out", "--method", "copy", "-f", "matte", "-f", "prob-npz",
            "--end", "2")
    assert segment(*args).exit_code == 0
    stamp = (tmp_path / "out" / "a.matte" / "1" / "00000.png").stat().st_mtime_ns
    again = segment(*args)
    assert again.exit_code == 0 and "skipped" in again.stderr
    assert (tmp_path / "out" / "a.matte" / "1" / "00000.png").stat().st_mtime_ns == stamp
