"""Static-stage data: the generic still-image folder reader and the synthetic clips made from it.

Stills are generated here (textured backgrounds with a saturated, uniquely coloured object and a
soft-edged grey mask, as salient-object sets such as DUTS ship them), so these tests run anywhere.
A unique colour lets a test find where the object really is in a warped frame and check the
annotation against it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

from stma_cli.app import app
from stma_core.checkpoint import load_model
from stma_core.training.static_data import list_still_folder, read_still_mask, synth_clip

COLOURS = {"red": (255, 0, 0), "blue": (0, 0, 255)}


def _make_still(folder: Path, name: str, colour: tuple[int, int, int], seed: int) -> None:
    """A 160x240 still: grey-green noise background, one disc of `colour`, soft 0..255 mask (DUTS style)."""
    rng = np.random.default_rng(seed)
    h, w = 160, 240
    image = (rng.uniform(60, 140, (h, w, 1)) * np.array([0.8, 1.0, 0.8])).astype(np.uint8).repeat(1, 2)
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = 70 + seed * 3, 110 + seed * 5, 38
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    inside = dist <= r
    image[inside] = colour
    soft = np.clip((r + 1.5 - dist) / 3, 0, 1) * 255  # a 3-pixel soft edge, like a matting mask
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / "images" / f"{name}.jpg", quality=98)
    Image.fromarray(soft.astype(np.uint8), "L").save(folder / "masks" / f"{name}.png")


@pytest.fixture(scope="module")
def stills(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stills")
    for i, colour in enumerate(("red", "blue", "red", "blue")):
        _make_still(root, f"s{i}_{colour}", COLOURS[colour], i)
    (root / "images" / "orphan.jpg").write_bytes((root / "images" / "s0_red.jpg").read_bytes())  # no mask
    return root


def _colour_pixels(frames: torch.Tensor, colour: tuple[int, int, int]) -> torch.Tensor:
    """(T, 3, H, W) frames in [0, 1] -> (T, H, W) bool: pixels close to `colour` (after colour jitter)."""
    target = torch.tensor(colour, dtype=torch.float32).view(1, 3, 1, 1) / 255
    other = 1 - target
    return ((frames * target).sum(1) / target.sum() > 0.55) & ((frames * other).sum(1) / other.sum() < 0.35)


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum().clamp(min=1))


def test_still_folder_pairs_by_stem_and_holds_out_the_last(stills: Path) -> None:
    train, held = list_still_folder(stills / "images", stills / "masks", holdout=1)
    assert [p.image.stem for p in train] == ["s0_red", "s1_blue", "s2_red"]  # orphan.jpg has no mask
    assert [p.image.stem for p in held] == ["s3_blue"]
    assert all(p.mask.stem == p.image.stem for p in train + held)


def test_soft_grey_masks_are_cut_at_128_and_id_masks_keep_ids(stills: Path, tmp_path: Path) -> None:
    mask = read_still_mask(stills / "masks" / "s0_red.png")
    soft = np.array(Image.open(stills / "masks" / "s0_red.png"))
    assert set(np.unique(mask)) == {0, 1}
    assert np.array_equal(mask == 1, soft >= 128)
    ids = np.zeros((20, 30), np.uint8)
    ids[2:6, 2:6], ids[10:12, 20:22] = 1, 2  # a grey id mask: 0/1/2, a 4-pixel object 2 stays
    Image.fromarray(ids, "L").save(tmp_path / "ids.png")
    assert np.array_equal(read_still_mask(tmp_path / "ids.png"), ids)


def test_still_folder_errors_name_the_folder(stills: Path, tmp_path: Path) -> None:
    from stma_core.errors import StmaInputError

    with pytest.raises(StmaInputError, match="mask folder"):
        list_still_folder(stills / "images", tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StmaInputError, match="no image has a .png mask"):
        list_still_folder(stills / "images", tmp_path / "empty")
    with pytest.raises(StmaInputError, match="static_holdout"):
        list_still_folder(stills / "images", stills / "masks", holdout=4)


def test_clip_from_two_stills_has_two_moving_objects_whose_masks_follow_the_warps(stills: Path) -> None:
    train, _ = list_still_folder(stills / "images", stills / "masks")
    two = [p for p in train if "red" in p.image.stem][:1] + [p for p in train if "blue" in p.image.stem][:1]
    for seed in range(4):
        clip = synth_clip(two, 5, (128, 128), 2, (160, 240), np.random.default_rng(seed))
        assert clip.masks.shape == (5, 2, 128, 128) and clip.masks.sum(1).max() <= 1
        assert (clip.masks[0].flatten(1).sum(1) > 0).all()
        coloured = _colour_pixels(clip.frames, COLOURS["red"]) | _colour_pixels(clip.frames, COLOURS["blue"])
        # every visible object pixel is annotated and every annotation lies on an object: masks follow warps
        assert _iou(clip.masks.sum(1) > 0, coloured) > 0.85, seed
        for k in range(2):
            mask = clip.masks[:, k] > 0
            inside = max(float((mask & _colour_pixels(clip.frames, c)).sum() / mask.sum()) for c in COLOURS.values())
            assert inside > 0.85, (seed, k, inside)  # one object, one colour
            centres = [torch.nonzero(clip.masks[t, k]).float().mean(0) for t in range(5)]
            assert max(float((c - centres[0]).norm()) for c in centres[1:]) > 1.0  # the object moves


def test_distractor_is_drawn_but_not_annotated(stills: Path) -> None:
    train, _ = list_still_folder(stills / "images", stills / "masks")
    red = [p for p in train if "red" in p.image.stem]
    drawn_more = 0
    for seed in range(4):
        clip = synth_clip(red, 3, (128, 128), 1, (160, 240), np.random.default_rng(seed), distractor_prob=1.0)
        assert clip.masks.shape == (3, 1, 128, 128)
        red_pixels = _colour_pixels(clip.frames, COLOURS["red"])
        annotated = clip.masks[:, 0] > 0
        # the distractor (a second red disc) adds red pixels that are not annotated
        drawn_more += int((red_pixels & ~annotated).sum() > 0.3 * annotated.sum())
    assert drawn_more >= 3


def test_region_target_is_a_background_region_not_the_salient_object(stills: Path) -> None:
    train, _ = list_still_folder(stills / "images", stills / "masks")
    clip = synth_clip(train[:1], 3, (128, 128), 1, (160, 240), np.random.default_rng(0), region_prob=1.0)
    red_pixels = _colour_pixels(clip.frames, COLOURS["red"])
    assert _iou(clip.masks[:, 0] > 0, red_pixels) < 0.5


def test_static_stage_trains_from_a_still_folder_without_davis(stills: Path, tmp_path: Path) -> None:
    config = tmp_path / "static.yaml"
    config.write_text(yaml.safe_dump({
        "stage": "static", "steps": 2, "batch_size": 1, "clip_length": 2, "crop": [64, 64],
        "frame_size": [96, 160], "checkpoint_every": 2, "log_every": 1, "threads": 1, "static_holdout": 1,
        "static_distractor_prob": 0.5, "model": {"embed_dim": 32, "stml_depth": 1, "num_heads": 2, "key_dim": 16,
                                                 "value_dim": 32, "decoder_dims": [16, 16, 8]}}))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--static-images", str(stills / "images"),
                                      "--static-masks", str(stills / "masks"), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    # orphan.jpg has no mask: it is left out, and the note says so (it gave only the count of pairs)
    assert (f"static stage: 3 still image + mask pairs from {stills / 'images'} (1 held out; 1 image(s) without a "
            f".png mask of the same name in {stills / 'masks'} left out: orphan.jpg)") in result.stderr, result.stderr
    _, _, metadata = load_model(out / "model.safetensors")
    assert metadata["train_stage"] == "static" and metadata["train_step"] == "2"
    # a still folder without its mask folder is one clear error, exit 2
    result = CliRunner().invoke(app, ["train", "--config", str(config), "--static-images", str(stills / "images"),
                                      "--out", str(tmp_path / "run2"), "--device", "cpu", "--quiet"])
    assert result.exit_code == 2 and "go together" in result.output
