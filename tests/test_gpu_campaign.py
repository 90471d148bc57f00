"""benchmarks/gpu_campaign.py: the data pack (size limit, held-out stills, layout) and the two-stage
time-boxed run, on CPU with a tiny model and data generated here (no shared data needed; seconds)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import moving_object_sequence
from stma_core.checkpoint import load_model
from stma_core.io.palette import DAVIS_PALETTE_FLAT
from stma_core.model.lite_backbone import LiteTrunk
from stma_core.training.config_io import load_train_config

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gpu_campaign", REPO / "benchmarks" / "gpu_campaign.py")
campaign = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(campaign)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A DAVIS-layout root (2 train sequences of 6 frames at 176x96 plus a val one that must not be packed)
    and a DUTS-like still folder pair (14 photos with soft-edged masks, 400x300)."""
    root = tmp_path_factory.mktemp("sources")
    davis = root / "davis"
    for index, name in enumerate(("seq-a", "seq-b", "val-seq")):
        frames, masks = moving_object_sequence(6, seed=index, size=(176, 96))
        for sub in ("JPEGImages", "Annotations"):
            (davis / sub / "480p" / name).mkdir(parents=True)
        for i, (frame, mask) in enumerate(zip(frames, masks)):
            Image.fromarray(frame).save(davis / "JPEGImages" / "480p" / name / f"{i:05d}.jpg", quality=95)
            image = Image.fromarray(mask)
            image.putpalette(DAVIS_PALETTE_FLAT)
            image.save(davis / "Annotations" / "480p" / name / f"{i:05d}.png")
    (davis / "ImageSets" / "2016").mkdir(parents=True)
    (davis / "ImageSets" / "2016" / "train.txt").write_text("seq-a\nseq-b\n")
    (davis / "ImageSets" / "2016" / "val.txt").write_text("val-seq\n")
    images, masks = root / "duts" / "images", root / "duts" / "masks"
    images.mkdir(parents=True)
    masks.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:300, :400]
    for i in range(14):
        photo = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
        cx, cy, r = rng.uniform(120, 280), rng.uniform(90, 210), rng.uniform(40, 80)
        soft = np.clip((r - np.hypot(xx - cx, yy - cy)) * 40 + 128, 0, 255).astype(np.uint8)  # soft edge
        Image.fromarray(photo).save(images / f"still_{i:03d}.jpg", quality=90)
        Image.fromarray(soft).save(masks / f"still_{i:03d}.png")
    return davis, images, masks


@pytest.fixture(scope="module")
def pack(sources: tuple[Path, Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    davis, images, masks = sources
    out = tmp_path_factory.mktemp("pack") / "gpu_pack"
    budget = 2.94  # MiB: the trunk weights (2.79), all of DAVIS (0.08), and only some of the stills (12 KiB each)
    summary = campaign.pack(davis, images, masks, out, max_mib=budget, davis_share=0.1, duts_short_side=160,
                            duts_holdout=4)
    return out, summary


def test_pack_fits_and_holds_the_right_files(pack: tuple[Path, dict], sources: tuple[Path, Path, Path]) -> None:
    out, summary = pack
    assert campaign.pack_size_mib(out) <= summary["max_mib"]
    assert abs(campaign.pack_size_mib(out) - summary["mib"]) < 0.01
    assert json.loads((out / "pack.json").read_text())["duts"] == summary["duts"]
    assert not out.with_name(out.name + ".partial").exists()
    davis = out / "davis"
    assert sorted(p.name for p in (davis / "JPEGImages" / "480p").iterdir()) == ["seq-a", "seq-b"]  # never val
    assert summary["davis"] == {**summary["davis"], "sequences": 2, "frames": 12}
    assert 30 <= summary["davis"]["jpeg_quality"] <= 90
    for seq in ("seq-a", "seq-b"):  # masks recompressed losslessly: same ids
        for original in sorted((sources[0] / "Annotations" / "480p" / seq).glob("*.png")):
            packed = Image.open(davis / "Annotations" / "480p" / seq / original.name)
            assert packed.mode == "P" and np.array_equal(np.array(packed), np.array(Image.open(original)))
    stills = sorted(p.stem for p in (out / "duts" / "images").iterdir())
    assert 0 < summary["duts"]["stills"] == len(stills) < 10  # some, not all 10 training stills fit
    assert summary["duts"]["training_stills"] == 10 and summary["duts"]["held_out_excluded"] == 4
    assert not set(stills) & {f"still_{i:03d}" for i in range(10, 14)}  # the held-out last 4 by name
    for stem in stills:
        image, mask = Image.open(out / "duts" / "images" / f"{stem}.jpg"), Image.open(out / "duts" / "masks" / f"{stem}.png")
        assert min(image.size) == 160 and image.size == mask.size
        assert set(np.unique(np.array(mask.convert("L")))) <= {0, 255}
    weights = torch.load(out / "weights" / campaign.TRUNK_FILE, weights_only=True)
    reference = LiteTrunk("lite0").state_dict()
    assert weights.keys() == reference.keys() and all(torch.equal(weights[k], reference[k]) for k in weights)


def test_lite_weights_from_a_folder(pack: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    """STMA_LITE_WEIGHTS makes the trunk read the pack's file (the device has no efficientnet package)."""
    monkeypatch.setenv("STMA_LITE_WEIGHTS", str(pack[0] / "weights"))
    monkeypatch.setattr("importlib.import_module", lambda name: (_ for _ in ()).throw(ImportError(name)))
    trunk = LiteTrunk("lite0")
    monkeypatch.undo()
    assert all(torch.equal(a, b) for a, b in zip(trunk.state_dict().values(), LiteTrunk("lite0").state_dict().values()))


def test_run_trains_both_stages_and_exports(pack: tuple[Path, dict], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("STMA_LITE_WEIGHTS", "")  # restored after the test (run sets it to the pack's weights)
    export = tmp_path / "export"
    code = campaign.main(["run", "--pack", str(pack[0]), "--out", str(tmp_path / "run"), "--minutes-static", "0.0001",
                          "--minutes-main", "5", "--device", "cpu", "--tiny", "--export", str(export)])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    static, main = summary["stages"]["static"], summary["stages"]["main"]
    assert static["steps"] == 1 and not static["finished_all_steps"]  # the budget stopped it after one step
    assert main["steps"] == main["planned_steps"] == 3 and main["finished_all_steps"]
    for stage in (static, main):
        assert stage["it_per_s"] > 0 and np.isfinite(stage["final_loss"]) and stage["batch_size"] == 2
    assert sorted(p.name for p in export.iterdir()) == ["main_curves.png", "main_log.jsonl", "main_model.safetensors",
                                                        "static_log.jsonl", "static_model.safetensors", "summary.json"]
    _, config, metadata = load_model(export / "main_model.safetensors")
    assert metadata["train_stage"] == "main" and metadata["train_step"] == "3" and config.embed_dim == 32
    main_config = json.loads((tmp_path / "run" / "main" / "train_config.json").read_text())
    assert main_config["init_from"] == str(tmp_path / "run" / "static" / "model.safetensors")
    assert main_config["static_holdout"] == 0 and main_config["static_mix_prob"] == 0.25  # mixes pack stills
    assert main_config["static_images"] == str(pack[0] / "duts" / "images")
    assert json.loads((export / "summary.json").read_text())["checkpoint"] == main["model"]


def test_run_steps_override_moves_the_lr_decay(tmp_path: Path) -> None:
    path = campaign._stage_config(campaign.MAIN_CONFIG, tmp_path, "main", {}, 4000)
    cfg = load_train_config(path)
    assert cfg.steps == 4000 and cfg.lr_decay_steps == (3200,)


def test_gpu_configs_match_the_cpu_recipe() -> None:
    """Same model section (checkpoints interchangeable) and recipe; a GPU batch, autocast, threads for clips."""
    for gpu, cpu in (("lite0_duts_static_gpu", "lite0_duts_static_cpu"), ("lite0_davis16_main_gpu", "lite0_davis16_main_cpu")):
        g, c = (load_train_config(REPO / "configs" / f"{name}.yaml") for name in (gpu, cpu))
        assert g.model == c.model and g.stage == c.stage and g.crop == c.crop and g.clip_length == c.clip_length
        assert g.static_mix_prob == c.static_mix_prob and g.static_holdout == c.static_holdout == 300
        assert g.batch_size == 32 and g.amp and g.data_threads > 0 and c.lr < g.lr <= 8 * c.lr


@pytest.mark.parametrize("args, fragment", [
    (["pack", "--davis", "{tmp}/nowhere", "--duts-images", "{tmp}", "--duts-masks", "{tmp}", "--out", "{tmp}/p"],
     "DAVIS root not found"),
    (["run", "--pack", "{tmp}", "--out", "{tmp}/r", "--minutes-static", "1", "--minutes-main", "1", "--device", "cpu"],
     "not a pack (no pack.json)"),
])
def test_bad_input_is_one_line(args: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert campaign.main([a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err


def test_pack_that_cannot_fit(sources: tuple[Path, Path, Path], tmp_path: Path) -> None:
    with pytest.raises(campaign.CampaignError, match="raise --max-mib"):
        campaign.pack(*sources, tmp_path / "p", max_mib=0.5, duts_holdout=4)
    assert not (tmp_path / "p").exists() and not (tmp_path / "p.partial").exists()
