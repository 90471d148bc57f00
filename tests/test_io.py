"""stma_core.io on real inputs: DAVIS frames, mp4s encoded here, DAVIS annotation PNGs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from conftest import EXAMPLES, example_frames, moving_object_sequence
from stma_core.errors import StmaInputError, StmaOutputError
from stma_core.io.atomic import partial_path
from stma_core.io.frames import FrameFolderSource, VideoFileSource, find_videos, natural_key, open_frames
from stma_core.io.masks import fit_mask, keep_new_objects, load_mask, load_mask_folder
from stma_core.io.palette import DAVIS_PALETTE, DAVIS_PALETTE_FLAT
from stma_core.io.writers import VideoWriter, decode_rle, encode_rle, output_paths, overlay, save_palette_png


def _save(array: np.ndarray, path: Path) -> Path:
    Image.fromarray(array).save(path)
    return path


def example_mask() -> np.ndarray:
    """First-frame mask of the bundled example clip (DAVIS car-shadow, ids 0/1, 854x480)."""
    return np.array(Image.open(EXAMPLES / "car-shadow_mask.png"))


def _tennis_ids(tennis: Path, index: int = 0) -> np.ndarray:
    return np.array(Image.open(tennis / "Annotations" / "480p" / "tennis" / f"{index:05d}.png"))


# ---- frames ------------------------------------------------------------------------------------------
def test_natural_sort_orders_numbers_by_value(tmp_path: Path) -> None:
    assert sorted(["10.jpg", "2.jpg", "1.jpg", "frame_100.png", "frame_20.png"], key=natural_key) == [
        "1.jpg", "2.jpg", "10.jpg", "frame_20.png", "frame_100.png"]
    for index, name in enumerate(["10", "2", "1"]):
        _save(np.full((8, 10, 3), index * 60, np.uint8), tmp_path / f"{name}.png")
    source = open_frames(tmp_path)
    assert isinstance(source, FrameFolderSource)
    assert [name for name, _ in source] == ["1", "2", "10"]
    assert source.size == (10, 8) and source.frame_count == 3


def test_video_reader_matches_encoded_davis_frames(car_shadow_mp4: tuple[Path, list[np.ndarray]]) -> None:
    path, frames = car_shadow_mp4
    source = open_frames(path)
    assert isinstance(source, VideoFileSource)
    assert source.name == "car-shadow" and source.size == (854, 480)
    assert source.frame_count == len(frames) and source.fps == pytest.approx(24, abs=0.1)
    read = list(source)
    assert [name for name, _ in read] == [f"{i:05d}" for i in range(len(frames))]
    for (_, got), want in zip(read, frames):
        assert got.shape == (480, 854, 3) and got.dtype == np.uint8 and got.flags.writeable
        assert np.abs(got.astype(int) - want).mean() < 3.0  # H.264 at CRF 12: close, not exact
    first_again = next(iter(source))[1]  # a source can be read again (a fresh ffmpeg stream)
    assert np.array_equal(first_again, read[0][1])


@pytest.mark.parametrize("extension", [".mov", ".mkv", ".avi", ".webm"])
def test_other_containers(tmp_path: Path, car_shadow_mp4: tuple[Path, list[np.ndarray]], extension: str) -> None:
    target = tmp_path / f"clip{extension}"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(car_shadow_mp4[0]), "-frames:v", "3",
                    "-s", "214x120", "-an", str(target)], check=True)
    source = open_frames(target)
    frames = list(source)
    assert source.size == (214, 120) and source.frame_count == 3 and len(frames) == 3
    assert frames[2][0] == "00002" and frames[2][1].shape == (120, 214, 3)


def test_frame_folder_reads_davis_frames_exactly(tmp_path: Path) -> None:
    folder = tmp_path / "car-shadow"
    folder.mkdir()
    for i, frame in enumerate(example_frames(40)):
        Image.fromarray(frame).save(folder / f"{i:05d}.jpg")
    source = open_frames(folder)
    assert source.name == "car-shadow" and source.size == (854, 480) and source.frame_count == 40
    name, frame = next(iter(source))
    assert name == "00000"
    assert np.array_equal(frame, np.asarray(Image.open(folder / "00000.jpg").convert("RGB")))


def test_reader_errors_name_the_file(tmp_path: Path) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n")
    with pytest.raises(StmaInputError, match="notes.mp4: ffmpeg cannot decode a frame of it .*damaged or incomplete"):
        open_frames(fake)
    with pytest.raises(StmaInputError, match="missing.mp4: no such file"):
        open_frames(tmp_path / "missing.mp4")
    text = tmp_path / "clip.txt"
    text.write_text("x")
    with pytest.raises(StmaInputError, match="clip.txt: ffmpeg cannot decode .*else pass a video file"):
        open_frames(text)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(StmaInputError, match="empty: folder holds no"):
        open_frames(empty)


def test_frame_folder_with_a_bad_frame_fails_when_reached(tmp_path: Path) -> None:
    _save(np.zeros((8, 10, 3), np.uint8), tmp_path / "00000.png")
    _save(np.zeros((6, 10, 3), np.uint8), tmp_path / "00001.png")
    (tmp_path / "00002.jpg").write_bytes(b"not a jpeg")
    frames = iter(open_frames(tmp_path))
    next(frames)
    with pytest.raises(StmaInputError, match="00001.png: frame is 10x6"):
        next(frames)


def test_find_videos_lists_videos_and_frame_folders(tmp_path: Path, car_shadow_mp4: tuple[Path, list]) -> None:
    shutil.copy(car_shadow_mp4[0], tmp_path / "b10.mp4")
    shutil.copy(car_shadow_mp4[0], tmp_path / "b2.MOV")
    (tmp_path / "frames").mkdir()
    _save(np.zeros((8, 8, 3), np.uint8), tmp_path / "frames" / "0.jpg")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "no_frames").mkdir()
    assert [p.name for p in find_videos(tmp_path)] == ["b2.MOV", "b10.mp4", "frames"]


# ---- masks -------------------------------------------------------------------------------------------
def test_palette_mask_with_two_objects_and_void(tennis: Path) -> None:
    path = tennis / "Annotations" / "480p" / "tennis" / "00000.png"
    raw = _tennis_ids(tennis)
    mask = load_mask(path)
    assert mask.kind == "palette" and mask.object_ids == [1, 2] and mask.mapping == {}
    assert np.array_equal(mask.ids, np.where(raw == 255, 0, raw))
    assert len(mask.warnings) == 1 and "225 void pixel(s)" in mask.warnings[0]


def test_grayscale_masks(tmp_path: Path) -> None:
    car = example_mask()
    for name, values, mapping in (("bin255", car * 255, {1: "gray 255"}), ("bin1", car, {})):
        mask = load_mask(_save(values.astype(np.uint8), tmp_path / f"{name}.png"))
        assert mask.kind == "binary" and np.array_equal(mask.ids, car) and mask.mapping == mapping
    levels = np.zeros((60, 90), np.uint8)
    levels[10:30, 10:30], levels[35:55, 40:80], levels[5:25, 50:85] = 128, 255, 60
    mask = load_mask(_save(levels, tmp_path / "levels.png"))
    assert mask.kind == "gray" and mask.object_ids == [1, 2, 3]
    assert mask.mapping == {1: "gray 60", 2: "gray 128", 3: "gray 255"}
    assert np.array_equal(mask.ids, np.select([levels == 60, levels == 128, levels == 255], [1, 2, 3], 0))
    ids = np.zeros((60, 90), np.uint8)
    ids[10:30, 10:30], ids[35:55, 40:80] = 3, 7  # an id map saved as grayscale keeps its ids
    mask = load_mask(_save(ids, tmp_path / "ids.png"))
    assert mask.object_ids == [3, 7] and mask.mapping == {}


def test_wide_integer_masks_keep_every_instance_id(tmp_path: Path) -> None:
    """16-bit masks from labelling/panoptic tools (ids 1, 2, 300 or 1000, 1001, ...) were divided by 257 as
    if 8-bit levels stored in 16 bits, silently merging or dropping objects: ids above 255 are now read
    exactly and renumbered in sorted order, the mapping returned; a true 8-bit-in-16 mask still scales."""
    quads = np.zeros((60, 90), np.uint16)
    regions = (np.s_[5:25, 5:40], np.s_[5:25, 50:85], np.s_[35:55, 20:70])
    for values, ids, mapping in (((1, 2, 300), [1, 2, 3], {3: "gray 300"}),
                                 ((1000, 1001, 1002), [1, 2, 3], {1: "gray 1000", 2: "gray 1001", 3: "gray 1002"}),
                                 ((256, 512, 768), [1, 2, 3], {1: "gray 256", 2: "gray 512", 3: "gray 768"}),
                                 ((257, 514, 771), [1, 2, 3], {}),  # 8-bit ids 1, 2, 3 stored in 16 bits
                                 ((70000, 2, 5), [1, 2, 3], {1: "gray 2", 2: "gray 5", 3: "gray 70000"})):
        wide = np.zeros((60, 90), np.uint32 if max(values) > 65535 else np.uint16)
        for region, value in zip(regions, values):
            wide[region] = value
        if wide.dtype == np.uint16:
            path = tmp_path / f"ids_{values[0]}.png"
            cv2.imwrite(str(path), wide)  # as OpenCV-based tools write them
        else:  # 32-bit ids: a TIFF (PNG stops at 16 bits)
            path = tmp_path / f"ids_{values[0]}.tif"
            Image.fromarray(wide.astype(np.int32), mode="I").save(path)
        mask = load_mask(path)
        assert mask.object_ids == ids and mask.mapping == mapping, (values, mask.object_ids, mask.mapping)
        order = np.argsort(values)
        for rank, index in enumerate(order, 1):
            region = regions[index]
            assert (mask.ids[region] == rank).all(), values
        assert (mask.ids > 0).sum() == sum((wide[r] > 0).sum() for r in regions) and not mask.warnings
    single = np.zeros((60, 90), np.uint16)
    single[regions[0]] = 1000
    cv2.imwrite(str(tmp_path / "one.png"), single)
    mask = load_mask(tmp_path / "one.png")
    assert mask.object_ids == [1] and mask.mapping == {1: "gray 1000"} and (mask.ids[regions[0]] == 1).all()
    car = example_mask()
    cv2.imwrite(str(tmp_path / "car16.png"), car.astype(np.uint16) * 65535)
    mask = load_mask(tmp_path / "car16.png")
    assert mask.kind == "binary" and np.array_equal(mask.ids, car)


def test_float_and_bilevel_masks(tmp_path: Path) -> None:
    """A soft float mask (probabilities) was cut where p == 1.0 by PIL's conversion, silently: it is refused
    now, as the Python API refuses soft masks; integer-valued float masks and 1-bit PNGs read as ids."""
    car = example_mask()
    soft = cv2.GaussianBlur(car.astype(np.float32), (15, 15), 4)
    assert 0 < soft.min() or len(np.unique(soft)) > 10
    Image.fromarray(soft, mode="F").save(tmp_path / "soft.tif")
    with pytest.raises(StmaInputError, match=r"soft.tif: a soft \(probability\) mask.*threshold it first"):
        load_mask(tmp_path / "soft.tif")
    Image.fromarray(car.astype(np.float32), mode="F").save(tmp_path / "hard.tif")
    mask = load_mask(tmp_path / "hard.tif")
    assert mask.kind == "binary" and np.array_equal(mask.ids, car)
    Image.fromarray(car.astype(bool)).save(tmp_path / "bool.png")
    assert Image.open(tmp_path / "bool.png").mode == "1"
    mask = load_mask(tmp_path / "bool.png")
    assert mask.kind == "binary" and np.array_equal(mask.ids, car)


def test_gray_255_beside_small_ids_is_void(tmp_path: Path) -> None:
    """The DAVIS/VOC convention in a grayscale label map: 0/1/2/7 ids with 255 on the 'ignore' pixels became
    a fourth object; 255 is void there (background, with a warning), as in palette masks. 0/255 stays a
    binary mask and 60/128/255 stay shades (test_grayscale_masks)."""
    labels = np.zeros((60, 90), np.uint8)
    labels[5:25, 5:40], labels[5:25, 50:85], labels[35:55, 20:70] = 1, 2, 7
    labels[25:27, :] = 255  # an ignore band
    mask = load_mask(_save(labels, tmp_path / "voc.png"))
    assert mask.object_ids == [1, 2, 7] and mask.mapping == {}
    assert np.array_equal(mask.ids, np.where(labels == 255, 0, labels))
    assert len(mask.warnings) == 1 and "180 pixel(s) of gray 255 treated as void (background), as DAVIS and VOC" in mask.warnings[0]
    only = np.where(labels == 255, 255, np.where(labels > 0, 1, 0)).astype(np.uint8)
    mask = load_mask(_save(only, tmp_path / "one_and_void.png"))
    assert mask.object_ids == [1] and "treated as void" in mask.warnings[0]


def test_an_annotation_folder_reads_every_gray_mask_by_the_same_rules(tmp_path: Path) -> None:
    """Each file of a --mask-dir was read on its own: a 16-bit frame-0 mask with id 300 became object 1, and
    a later 16-bit mask with ids 1 and 2 (all <= 255) was read verbatim, so its new object 1 silently
    'corrected' the first object; a void band (gray 255 beside small ids) on frame 0 became object 1 on a
    later frame holding only the band (read as a 0/255 binary mask). The folder now decides once."""
    car = np.zeros((60, 90), np.uint16)
    car[20:40, 20:60] = 300
    later = np.zeros((60, 90), np.uint16)
    later[2:10, 2:10], later[50:58, 2:10] = 1, 2
    wide = tmp_path / "wide"
    wide.mkdir()
    cv2.imwrite(str(wide / "00000.png"), car)
    cv2.imwrite(str(wide / "00003.png"), later)
    masks = load_mask_folder(wide)
    assert masks["00000"].object_ids == [1] and (masks["00000"].ids[20:40, 20:60] == 1).all()
    assert masks["00003"].object_ids == [2, 3]  # new objects, not a correction of object 1
    assert (masks["00003"].ids[2:10, 2:10] == 2).all() and (masks["00003"].ids[50:58, 2:10] == 3).all()
    assert masks["00003"].mapping == {2: "gray 1", 3: "gray 2"}

    first = np.zeros((60, 90), np.uint8)
    first[20:40, 20:60], first[:5] = 1, 255  # object 1 and a void band
    band_only = np.zeros((60, 90), np.uint8)
    band_only[:5] = 255
    void = tmp_path / "void"
    void.mkdir()
    _save(first, void / "00000.png")
    _save(band_only, void / "00004.png")
    masks = load_mask_folder(void)
    assert masks["00000"].object_ids == [1] and masks["00004"].object_ids == []  # the band stays void
    assert "as in the other masks of this folder" in masks["00004"].warnings[0]
    # alone, a 0/255 mask is still one object
    assert load_mask(void / "00004.png").object_ids == [1]


def test_an_annotation_folder_decodes_each_gray_mask_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A grayscale --mask-dir mask was decoded twice: once for the folder's rules (SeriesRules), again for its ids."""
    from stma_core.io import masks as mask_module

    first = np.zeros((60, 90), np.uint8)
    first[20:40, 20:60], first[:5] = 1, 255  # object 1 and a void band
    later = np.zeros((60, 90), np.uint8)
    later[2:10, 2:10] = 2
    for name, ids in (("00000.png", first), ("00004.png", later)):
        _save(ids, tmp_path / name)
    read: list[Path] = []
    real = mask_module._read_image

    def counted(path: Path):
        read.append(path)
        return real(path)

    monkeypatch.setattr(mask_module, "_read_image", counted)
    masks = load_mask_folder(tmp_path)
    assert sorted(read) == [tmp_path / "00000.png", tmp_path / "00004.png"]
    assert masks["00000"].object_ids == [1] and masks["00004"].object_ids == [2]


def test_a_mask_with_an_exif_orientation_is_read_upright(tmp_path: Path) -> None:
    """Frames are read upright by their EXIF orientation; a mask saved with its photo's tag (an editor keeps
    it) was read raw, so it lay turned over the upright frame. Masks are turned the same way now."""
    stored = np.zeros((24, 40), np.uint8)
    stored[:8, :16] = 1
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 8  # shown turned a quarter counter-clockwise
    image.save(tmp_path / "m.png", exif=exif)
    mask = load_mask(tmp_path / "m.png")
    assert np.array_equal(mask.ids, np.rot90(stored, 1)) and mask.kind == "binary"


def test_antialiased_grayscale_mask_stays_one_object(tmp_path: Path) -> None:
    car = example_mask()
    smooth = cv2.resize(car.astype(np.uint8) * 255, (640, 360), interpolation=cv2.INTER_AREA)
    assert len(np.unique(smooth)) > 10  # real anti-aliasing: many gray levels on the edge
    mask = load_mask(_save(smooth, tmp_path / "smooth.png"))
    assert mask.kind == "binary" and mask.object_ids == [1]
    assert "stray colour" in mask.warnings[0]
    reference = cv2.resize(car, (640, 360), interpolation=cv2.INTER_NEAREST)
    iou = ((mask.ids == 1) & (reference == 1)).sum() / ((mask.ids == 1) | (reference == 1)).sum()
    assert iou > 0.97


def test_rgb_mask_colours_become_ids(tmp_path: Path, tennis: Path) -> None:
    ids = np.where(_tennis_ids(tennis) == 255, 0, _tennis_ids(tennis))
    rgb = np.zeros((*ids.shape, 3), np.uint8)
    rgb[ids == 1], rgb[ids == 2] = (255, 200, 0), (0, 90, 255)
    mask = load_mask(_save(rgb, tmp_path / "rgb.png"))
    assert mask.kind == "rgb" and not mask.warnings
    first = {1: "rgb(255, 200, 0)", 2: "rgb(0, 90, 255)"}
    # ids follow order of first appearance in raster order
    order = sorted([1, 2], key=lambda i: np.flatnonzero(ids.ravel() == i)[0])
    assert mask.mapping == {new: first[old] for new, old in enumerate(order, start=1)}
    for new, old in enumerate(order, start=1):
        assert np.array_equal(mask.ids == new, ids == old)
    davis = DAVIS_PALETTE[ids]  # a palette mask converted to RGB keeps its DAVIS ids
    mask = load_mask(_save(davis, tmp_path / "davis_rgb.png"))
    assert np.array_equal(mask.ids, ids) and mask.mapping == {1: "rgb(128, 0, 0)", 2: "rgb(0, 128, 0)"}


def test_antialiased_rgb_mask_reports_strays_and_invents_no_object(tmp_path: Path, tennis: Path) -> None:
    full = np.where(_tennis_ids(tennis) == 255, 0, _tennis_ids(tennis))
    rgb = np.zeros((*full.shape, 3), np.uint8)
    rgb[full == 1], rgb[full == 2] = (230, 30, 30), (40, 220, 60)
    smooth = cv2.resize(rgb, (640, 360), interpolation=cv2.INTER_AREA)  # area-averaged edges, as drawing tools do
    assert len(np.unique(smooth.reshape(-1, 3), axis=0)) > 20
    mask = load_mask(_save(smooth, tmp_path / "aa.png"))
    assert mask.object_ids == [1, 2]
    assert len(mask.warnings) == 1 and "stray colour(s)" in mask.warnings[0]
    by_colour = {v: k for k, v in mask.mapping.items()}
    for colour, original in (("rgb(230, 30, 30)", 1), ("rgb(40, 220, 60)", 2)):
        coverage = cv2.resize((full == original).astype(np.float32), (640, 360), interpolation=cv2.INTER_AREA)
        got, want = mask.ids == by_colour[colour], coverage > 0.5
        assert (got & want).sum() / (got | want).sum() > 0.9


def test_mask_without_object_or_with_too_many_objects(tmp_path: Path) -> None:
    with pytest.raises(StmaInputError, match="empty.png: mask has no object"):
        load_mask(_save(np.zeros((20, 30), np.uint8), tmp_path / "empty.png"))
    for level in (1, 128, 255):  # one flat non-black level everywhere: it is the background, no object
        with pytest.raises(StmaInputError, match=f"flat{level}.png: mask has no object"):
            load_mask(_save(np.full((20, 30), level, np.uint8), tmp_path / f"flat{level}.png"))
    with pytest.raises(StmaInputError, match="flatrgb.png: mask has no object"):
        load_mask(_save(np.full((20, 30, 3), (200, 30, 30), np.uint8), tmp_path / "flatrgb.png"))
    rng = np.random.default_rng(0)
    colours = rng.choice(2**24 - 1, size=300, replace=False) + 1
    tiles = np.repeat(np.repeat(colours.reshape(15, 20), 4, 0), 4, 1)
    rgb = np.stack([(tiles >> 16) & 255, (tiles >> 8) & 255, tiles & 255], -1).astype(np.uint8)
    rgb[:4, :4] = 0
    with pytest.raises(StmaInputError, match="many.png: .*at most 254"):
        load_mask(_save(rgb, tmp_path / "many.png"))


def test_fit_mask_resizes_same_aspect_and_rejects_other_aspect(tmp_path: Path) -> None:
    car = example_mask()
    half = cv2.resize(car, (427, 240), interpolation=cv2.INTER_NEAREST)
    mask = load_mask(_save(half, tmp_path / "half.png"))
    fitted = fit_mask(mask, (854, 480), "video.mp4")
    assert fitted.ids.shape == (480, 854) and "resized (nearest)" in fitted.warnings[-1]
    assert ((fitted.ids == 1) & (car == 1)).sum() / ((fitted.ids == 1) | (car == 1)).sum() > 0.97
    square = load_mask(_save(car[:, :480], tmp_path / "square.png"))
    with pytest.raises(StmaInputError, match="square.png: mask is 480x480 but video.mp4 is 854x480"):
        fit_mask(square, (854, 480), "video.mp4")


def test_mask_folder_and_objects_appearing_later(tmp_path: Path, tennis: Path) -> None:
    masks = load_mask_folder(tennis / "Annotations" / "480p" / "tennis")
    assert list(masks) == ["00000", "00001"] and all(m.object_ids == [1, 2] for m in masks.values())
    first = masks["00000"].ids
    only_one = np.where(first == 2, 0, first).astype(np.uint8)
    given = keep_new_objects([("00000", only_one), ("00003", masks["00001"].ids), ("00005", first)])
    assert list(given) == ["00000", "00003"]  # 00005 adds no new object
    assert np.array_equal(given["00000"], only_one)
    assert np.unique(given["00003"]).tolist() == [0, 2]
    with pytest.raises(StmaInputError, match="no .png masks"):
        load_mask_folder(tmp_path)


def test_rgb_mask_folder_keeps_colour_ids_across_files(tmp_path: Path) -> None:
    a = np.zeros((20, 30, 3), np.uint8)
    a[2:8, 2:8] = (10, 200, 90)
    b = a.copy()
    b[10:18, 10:25] = (250, 250, 0)  # appears on a later frame, first in raster order there
    b[2:8, 2:8] = 0
    b[12:18, 2:8] = (10, 200, 90)
    _save(a, tmp_path / "00000.png")
    _save(b, tmp_path / "00004.png")
    masks = load_mask_folder(tmp_path)
    assert masks["00000"].mapping == {1: "rgb(10, 200, 90)"}
    assert masks["00004"].mapping == {1: "rgb(10, 200, 90)", 2: "rgb(250, 250, 0)"}


# ---- writers -----------------------------------------------------------------------------------------
def test_palette_png_and_rle_round_trip(tmp_path: Path, tennis: Path) -> None:
    ids = np.where(_tennis_ids(tennis) == 255, 0, _tennis_ids(tennis)).astype(np.uint8)
    save_palette_png(ids, tmp_path / "m.png")
    image = Image.open(tmp_path / "m.png")
    assert image.mode == "P" and image.getpalette()[:768] == DAVIS_PALETTE_FLAT
    assert np.array_equal(np.array(image), ids)
    objects = json.loads(json.dumps(encode_rle(ids)))  # counts are plain strings
    assert set(objects) == {"1", "2"} and objects["1"]["size"] == [480, 854]
    assert np.array_equal(decode_rle(objects, 480, 854), ids)


def _write_video(out: Path, formats: list[str], frames: list[np.ndarray], masks: list[np.ndarray],
                 overwrite: bool = False, fail_at: int | None = None) -> VideoWriter:
    height, width = frames[0].shape[:2]
    with VideoWriter(out, "clip", formats, (width, height), 24.0, overwrite=overwrite, queue_size=2) as writer:
        for index, (frame, mask) in enumerate(zip(frames, masks)):
            if index == fail_at:
                raise RuntimeError("propagator crashed")
            writer.write(f"{index:05d}", frame, mask)
    return writer


def _clip(count: int = 5) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """426x240 frames of the example clip, with masks of an object moving over them."""
    frames = [cv2.resize(f, (426, 240), interpolation=cv2.INTER_AREA) for f in example_frames(count)]
    return frames, moving_object_sequence(count, seed=3, size=(426, 240))[1]


def test_video_writer_outputs(tmp_path: Path) -> None:
    frames, masks = _clip()
    masks[2] = masks[2] * 3  # id 3 on one frame
    writer = _write_video(tmp_path, ["png", "rle", "overlay"], frames, masks)
    paths = writer.paths
    assert paths == output_paths(tmp_path, "clip", ["png", "rle", "overlay"])
    pngs = sorted(paths["png"].iterdir())
    assert [p.name for p in pngs] == [f"{i:05d}.png" for i in range(5)]
    for png, mask in zip(pngs, masks):
        assert np.array_equal(np.array(Image.open(png)), mask)
    data = json.loads(paths["rle"].read_text())
    assert (data["video"], data["width"], data["height"]) == ("clip", 426, 240)
    assert [f["frame"] for f in data["frames"]] == [f"{i:05d}" for i in range(5)]
    assert list(data["frames"][2]["objects"]) == ["3"]
    for entry, mask in zip(data["frames"], masks):
        assert np.array_equal(decode_rle(entry["objects"], 240, 426), mask)
    reader = imageio_ffmpeg.read_frames(str(paths["overlay"]))
    meta = next(reader)
    overlay_frames = [np.frombuffer(b, np.uint8).reshape(240, 426, 3) for b in reader]
    assert meta["size"] == (426, 240) and len(overlay_frames) == 5
    for got, frame, mask in zip(overlay_frames, frames, masks):
        assert np.abs(got.astype(int) - overlay(frame, mask)).mean() < 5.0  # H.264 (default quality) of the blend
    assert not list(tmp_path.glob("*.partial"))


def test_overlay_blends_davis_colours() -> None:
    frame = np.full((4, 6, 3), 100, np.uint8)
    mask = np.zeros((4, 6), np.uint8)
    mask[:, 3:] = 2
    out = overlay(frame, mask)
    assert np.array_equal(out[:, :2], frame[:, :2])  # background untouched
    assert out[0, 3].tolist() == DAVIS_PALETTE[2].tolist()  # outline in the object's colour
    assert out[0, 5].tolist() == [50, 114, 50]  # inside: half frame, half DAVIS green (0, 128, 0)


def _decode_all(path: Path, pix_fmt: str, channels: int, codec: str | None = None) -> tuple[tuple[int, int], list]:
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt=pix_fmt, bpp=channels,
                                        input_params=["-c:v", codec] if codec else None)
    width, height = next(reader)["size"]
    return (width, height), [np.frombuffer(raw, np.uint8).reshape(height, width, channels) for raw in reader]


@pytest.mark.parametrize("alpha_codec", ["vp9", "prores"])
def test_odd_sized_videos_keep_the_size_where_the_codec_allows(tmp_path: Path, alpha_codec: str) -> None:
    """45x33 frames: cutout-video (VP9 or ProRes, which take odd sizes) is 45x33 like the PNGs; H.264
    4:2:0 (overlay, matte-video) refuses odd sizes, so those are 46x34 with the edge repeated."""
    from stma_core.io.outputs import OutputOptions, OutputWriter
    from stma_core.io.writers import padded_size
    frame = np.full((33, 45, 3), 100, np.uint8)
    mask = np.zeros((33, 45), np.uint8)
    mask[5:20, 10:30] = 1
    formats = ["png", "overlay", "matte-video", "cutout-video"]
    options = OutputOptions(object_ids=(1,), alpha_codec=alpha_codec)
    with OutputWriter(tmp_path, "clip", formats, (45, 33), 24.0, options) as writer:
        for i in range(3):
            writer.write(f"{i:05d}", frame, mask)
    assert padded_size(formats, (45, 33)) == (["overlay", "matte-video"], (46, 34))
    assert padded_size(formats, (44, 32))[0] == []
    suffix = "webm" if alpha_codec == "vp9" else "mov"
    size, cut = _decode_all(tmp_path / "clip.cutout-video" / f"1.{suffix}", "rgba", 4,
                            "libvpx-vp9" if alpha_codec == "vp9" else None)
    assert size == (45, 33) and len(cut) == 3
    assert ((cut[0][..., 3] > 127) == (mask == 1)).mean() > 0.99
    assert np.array(Image.open(tmp_path / "clip" / "00000.png")).shape == (33, 45)
    size, over = _decode_all(tmp_path / "clip.overlay.mp4", "rgb24", 3)
    assert size == (46, 34) and len(over) == 3
    size, matte = _decode_all(tmp_path / "clip.matte-video" / "1.mp4", "gray", 1)
    assert size == (46, 34) and ((matte[0][:33, :45, 0] > 127) == (mask == 1)).mean() > 0.99


def test_failure_mid_video_leaves_nothing(tmp_path: Path) -> None:
    frames, masks = _clip()
    with pytest.raises(RuntimeError, match="propagator crashed"):
        _write_video(tmp_path, ["png", "rle", "overlay"], frames, masks, fail_at=3)
    assert list(tmp_path.iterdir()) == []


def test_writer_thread_failure_reaches_caller_and_cleans_up(tmp_path: Path,
                                                             tmp_path_factory: pytest.TempPathFactory) -> None:
    frames, masks = _clip()
    elsewhere = tmp_path_factory.mktemp("moved") / "png"
    with pytest.raises(StmaOutputError, match="writing outputs failed"):
        with VideoWriter(tmp_path, "clip", ["png", "rle"], (426, 240), 24.0) as writer:
            writer.write("00000", frames[0], masks[0])
            os.rename(partial_path(writer.paths["png"]), elsewhere)  # the partial folder disappears
            for index in range(1, 5):
                writer.write(f"{index:05d}", frames[index], masks[index])
    assert list(tmp_path.iterdir()) == []


def test_existing_outputs_need_overwrite(tmp_path: Path) -> None:
    frames, masks = _clip(2)
    _write_video(tmp_path, ["png"], frames, masks)
    with pytest.raises(StmaOutputError, match="clip: output already exists; pass --overwrite"):
        _write_video(tmp_path, ["png"], frames, masks)
    flipped = [np.ascontiguousarray(m[:, ::-1]) for m in masks]
    (tmp_path / "clip" / "stale.png").write_bytes(b"")
    _write_video(tmp_path, ["png"], frames[:1], flipped[:1], overwrite=True)
    assert [p.name for p in (tmp_path / "clip").iterdir()] == ["00000.png"]  # replaced as a whole
    assert np.array_equal(np.array(Image.open(tmp_path / "clip" / "00000.png")), flipped[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip"]


@pytest.mark.parametrize("fmt", ["overlay", "matte-video", "cutout-video"])
def test_a_video_aborted_before_its_first_frame_logs_nothing(tmp_path, caplog, fmt):
    """ffmpeg's writer warns "No frames have been written" when closed empty; nothing may reach the terminal."""
    import logging

    from stma_core.io.outputs import OutputOptions, OutputWriter

    caplog.set_level(logging.DEBUG)
    with pytest.raises(KeyboardInterrupt):
        with OutputWriter(tmp_path, "clip", [fmt], (64, 48), 24.0, OutputOptions(object_ids=(1,))):
            raise KeyboardInterrupt
    assert not [r for r in caplog.records if r.name.startswith("imageio_ffmpeg")], caplog.text
    assert not list(tmp_path.iterdir())


def test_commit_never_replaces_an_output_another_run_finished_meanwhile(tmp_path: Path) -> None:
    """Checked-then-renamed outputs let a second run replace a first's result without --overwrite when both
    passed the check before either finished; the commit itself now refuses, for files and folders."""
    from stma_core.errors import StmaOutputError
    from stma_core.io.atomic import commit

    final_file, final_dir = tmp_path / "v.rle.json", tmp_path / "v"
    partial_file, partial_dir = partial_path(final_file), partial_path(final_dir)
    partial_file.write_text("mine")
    partial_dir.mkdir()
    (partial_dir / "00000.png").write_text("mine")
    final_file.write_text("theirs")  # another run finished first
    final_dir.mkdir()
    (final_dir / "00000.png").write_text("theirs")
    for partial, final in ((partial_file, final_file), (partial_dir, final_dir)):
        with pytest.raises(StmaOutputError, match="already exists"):
            commit(partial, final, overwrite=False)
    assert final_file.read_text() == "theirs" and (final_dir / "00000.png").read_text() == "theirs"
    commit(partial_file, final_file, overwrite=True)
    commit(partial_dir, final_dir, overwrite=True)
    assert final_file.read_text() == "mine" and (final_dir / "00000.png").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v", "v.rle.json"]


def test_stale_partials_of_dead_runs_are_removed_not_those_of_live_ones(tmp_path: Path) -> None:
    import subprocess
    import sys

    from stma_core.io.atomic import remove_stale_partials

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        final = tmp_path / "clip.rle.json"
        for name in (f"clip.rle.json.{dead.pid}.partial", "clip.rle.json.partial", f"clip.rle.json.{live.pid}.partial",
                     f"clip.{dead.pid}.partial"):  # the last is another output's (the clip/ folder)
            (tmp_path / name).write_text("x")
        remove_stale_partials(final)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"clip.rle.json.{live.pid}.partial",
                                                                      f"clip.{dead.pid}.partial"])
    finally:
        live.kill()
        live.wait()


def test_an_annotation_folder_keeps_only_a_bounded_share_of_its_gray_masks_decoded(tmp_path: Path) -> None:
    """Decoding each gray --mask-dir mask once held every decoded image of the folder until all were loaded: a
    folder of 400 16-bit 854x480 masks peaked at 400 MB instead of 235 MB, one annotating every frame of a long
    1080p video gigabytes more. SeriesRules.of now keeps images only up to a byte budget (the rest are decoded
    again by load_mask), and the masks read are the same either way."""
    from stma_core.io.masks import DECODED_BUDGET, ColorIds, SeriesRules

    files = []
    for i in range(6):
        ids = np.zeros((60, 90), np.uint16)
        ids[10:30, 5 + 5 * i:40 + 5 * i], ids[40:50, 60:80] = 1000, 300 + i % 2  # 16-bit instance ids
        files.append(tmp_path / f"{i:05d}.png")
        Image.fromarray(ids).save(files[-1])
    decoded: dict[Path, Image.Image] = {}
    rules = SeriesRules.of(files, decoded, budget=2 * 60 * 90 * 2)  # room for two 16-bit 60x90 masks
    assert rules.exact and sorted(decoded) == files[:2]
    assert sum(image.width * image.height * 2 for image in decoded.values()) <= 2 * 60 * 90 * 2
    whole = load_mask_folder(tmp_path)  # the default budget holds them all: the same masks
    assert DECODED_BUDGET >= 6 * 60 * 90 * 2
    colors = ColorIds()
    again = {p.stem: load_mask(p, colors, require_object=False, series=rules, image=decoded.pop(p, None))
             for p in files}
    for name, mask in whole.items():
        assert np.array_equal(mask.ids, again[name].ids) and mask.mapping == again[name].mapping
    assert [sorted(whole[p.stem].object_ids) for p in files] == [[1, 2], [2, 3]] * 3  # 300, 1000, 301
