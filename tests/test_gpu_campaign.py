"""benchmarks/gpu_campaign.py: the data pack (size limit, held-out stills, layout) and the two-stage
time-boxed run, on CPU with a tiny model and data generated here (no shared data needed; seconds)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
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
    """A Lite0 pack whose size limit leaves room for about half of the 10 training stills: measured on a
    pack without a limit, so the test does not depend on this machine's encoder's exact sizes."""
    davis, images, masks = sources
    full = campaign.pack(davis, images, masks, tmp_path_factory.mktemp("full") / "p", max_mib=100, variant="lite0",
                         duts_short_side=160, duts_holdout=4)
    assert full["duts"]["stills"] == 10
    budget = full["data_mib"] - full["duts"]["mib"] / 2 + 0.004  # pack.json's reserve
    out = tmp_path_factory.mktemp("pack") / "gpu_pack"
    summary = campaign.pack(davis, images, masks, out, max_mib=budget, variant="lite0", duts_short_side=160,
                            duts_holdout=4)
    return out, summary


def test_pack_fits_and_holds_the_right_files(pack: tuple[Path, dict], sources: tuple[Path, Path, Path]) -> None:
    from stma_core.training.feature_cache import resize_ids

    out, summary = pack
    assert campaign.pack_size_mib(out) <= summary["max_mib"]
    assert abs(campaign.pack_size_mib(out) - summary["mib"]) < 0.01
    assert json.loads((out / "pack.json").read_text())["duts"] == summary["duts"]
    assert summary["format"] == campaign.PACK_FORMAT and summary["variant"] == "lite0"
    assert not out.with_name(out.name + ".partial").exists()
    davis = out / "davis"
    assert sorted(p.name for p in (davis / "videos").iterdir()) == ["seq-a.mp4", "seq-b.mp4"]  # never val
    h, w = summary["davis"]["frame_size"]
    assert (h, w) == tuple(load_train_config(campaign.MAIN_CONFIG).frame_size)
    assert summary["davis"] == {**summary["davis"], "sequences": 2, "frames": 12}
    assert summary["davis"]["psnr_db_min"] > 30  # measured here by decoding the written videos
    for seq in ("seq-a", "seq-b"):  # masks resized as the feature cache resizes them: same ids, palette kept
        originals = sorted((sources[0] / "Annotations" / "480p" / seq).glob("*.png"))
        assert json.loads((davis / "frames.json").read_text())[seq] == [p.stem for p in originals]
        for original in originals:
            packed = Image.open(davis / "Annotations" / "480p" / seq / original.name)
            expected = resize_ids(np.array(Image.open(original)), (h, w))
            assert packed.mode == "P" and np.array_equal(np.array(packed), expected)
    stills = sorted(p.stem for p in (out / "duts" / "images").iterdir())
    assert 0 < summary["duts"]["stills"] == len(stills) < 10  # some, not all 10 training stills fit
    assert summary["duts"]["training_stills"] == 10 and summary["duts"]["held_out_excluded"] == 4
    assert not set(stills) & {f"still_{i:03d}" for i in range(10, 14)}  # the held-out last 4 by name
    for stem in stills:
        image, mask = Image.open(out / "duts" / "images" / f"{stem}.webp"), Image.open(out / "duts" / "masks" / f"{stem}.png")
        assert min(image.size) == 160 and image.size == mask.size
        assert set(np.unique(np.array(mask.convert("L")))) <= {0, 255}
    weights = torch.load(out / "weights" / campaign.trunk_file("lite0"), weights_only=True)
    reference = LiteTrunk("lite0").state_dict()
    assert weights.keys() == reference.keys() and all(torch.equal(weights[k], reference[k]) for k in weights)


def test_unpack_gives_the_davis_layout(pack: tuple[Path, dict], sources: tuple[Path, Path, Path],
                                       tmp_path: Path) -> None:
    """The videos decode back to the frames, named as the originals, at the training frame size, close to
    the resized originals (the PSNR the pack recorded)."""
    out, summary = pack
    root = tmp_path / "davis"
    assert campaign.unpack_davis(out, root) == {"sequences": 2, "frames": 12}
    h, w = summary["davis"]["frame_size"]
    for seq in ("seq-a", "seq-b"):
        originals = sorted((sources[0] / "JPEGImages" / "480p" / seq).glob("*.jpg"))
        frames = sorted((root / "JPEGImages" / "480p" / seq).glob("*.jpg"))
        assert [p.name for p in frames] == [p.name for p in originals]
        for frame, original in zip(frames, originals):
            decoded = np.array(Image.open(frame))
            resized = np.array(Image.open(original).convert("RGB").resize((w, h), Image.BILINEAR))
            assert decoded.shape == (h, w, 3) and cv2.PSNR(decoded, resized) > 28
        assert len(list((root / "Annotations" / "480p" / seq).glob("*.png"))) == 6
    assert (root / "ImageSets" / "2016" / "train.txt").read_text() == "seq-a\nseq-b\n"


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
    assert summary["davis_unpacked"]["frames"] == 12 and summary["probes"] == {}


def test_zipped_pack_travels_as_one_file_and_runs(sources: tuple[Path, Path, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """--out X.zip: the same pack as one uncompressed file (the device tool refused ~4,800 small files);
    `run --pack X.zip` unpacks it into the run folder and trains from it."""
    monkeypatch.setenv("STMA_LITE_WEIGHTS", "")
    davis, images, masks = sources
    out = tmp_path / "carry" / "gpu_pack.zip"
    full = campaign.pack(davis, images, masks, tmp_path / "full.zip", max_mib=100, variant="lite0",
                         duts_short_side=160, duts_holdout=4)
    budget = full["zip_mib"] - 0.02  # binding: the zip's own headers must count, not only the contents
    summary = campaign.pack(davis, images, masks, out, max_mib=budget, variant="lite0", duts_short_side=160,
                            duts_holdout=4)
    assert summary["pack"] == str(out) and out.is_file() and not list(out.parent.glob("*.partial"))
    assert out.stat().st_size <= budget * campaign.MIB and summary["duts"]["stills"] < 10
    assert abs(summary["zip_mib"] - summary["mib"]) < 0.1  # stored, not compressed: about the same size
    run = campaign.run(out, tmp_path / "run", 0, 0.01, device="cpu", tiny=True)
    assert run["pack"]["pack"] == str(out) and (tmp_path / "run" / "gpu_pack" / "pack.json").is_file()
    assert run["stages"]["main"]["steps"] >= 1 and run["checkpoint"]
    assert run["stages"]["main"]["init_from"] is None  # tiny: no starting weights (JSON null, not "None")
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == run  # also without --export


def test_bad_zips_are_one_line_and_leave_nothing(pack: tuple[Path, dict], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    """A truncated zip, a zip without the pack, a missing pack and a bad option are refused before
    anything is written, so the same --out works once the input is fixed."""
    import shutil
    import zipfile

    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as archive:
        for path in sorted(pack[0].rglob("*")):
            if path.is_file():
                archive.write(path, f"{campaign.PACK_FOLDER}/{path.relative_to(pack[0]).as_posix()}")
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("readme.txt", "not a pack")
    out = tmp_path / "run"
    cases = [(truncated, "cpu", "not a readable zip"), (other, "cpu", "no gpu_pack/pack.json inside"),
             (tmp_path / "missing.zip", "cpu", "pack not found")]
    if not torch.cuda.is_available():
        cases.append((good, "cuda", "CUDA is not available"))
    for path, device, fragment in cases:
        code = campaign.main(["run", "--pack", str(path), "--out", str(out), "--minutes-static", "0",
                              "--minutes-main", "0.01", "--device", device, "--tiny"])
        err = capsys.readouterr().err.splitlines()
        assert code == 2 and len(err) == 1 and fragment in err[0], err
        assert not out.exists() or not any(out.iterdir())
    shutil.rmtree(out, ignore_errors=True)


def test_probe_sizes_each_stage_to_its_budget(pack: tuple[Path, dict], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """--probe-seconds: each stage's steps/s is measured first and its planned steps are 95 % of what its
    budget allows at that rate (with the lr decay moved along)."""
    monkeypatch.setenv("STMA_LITE_WEIGHTS", "")
    minutes = {"static": 0.04, "main": 0.06}
    summary = campaign.run(pack[0], tmp_path / "run", minutes["static"], minutes["main"], device="cpu", tiny=True,
                           probe_seconds=1.5)
    for stage in ("static", "main"):
        probe, result = summary["probes"][stage], summary["stages"][stage]
        assert probe["steps"] > campaign.PROBE_WARMUP_STEPS and probe["it_per_s"] > 0
        assert result["planned_steps"] == probe["planned_steps"] == int(probe["it_per_s"] * 60 * minutes[stage] * 0.95)
        assert 1 <= result["steps"] <= result["planned_steps"]
        assert not (tmp_path / "run" / f"probe_{stage}").exists()  # the probe's scratch run is removed
        cfg = load_train_config(tmp_path / "run" / f"{stage}.yaml")
        assert cfg.steps == probe["planned_steps"]
        base = load_train_config(campaign.CONFIGS["lite0"][0 if stage == "static" else 1])
        # the lr decay keeps its place in the run (the tiny step override does not move it)
        expected = max(1, round(base.lr_decay_steps[0] * cfg.steps / base.steps))
        assert cfg.lr_decay_steps == (expected,), (cfg.lr_decay_steps, cfg.steps)


def test_a_failing_stage_is_recorded_and_the_exit_code_says_so(pack: tuple[Path, dict], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture) -> None:
    """Starting weights of another model config: each stage records the one-line error, the run goes on
    to the end, prints its summary and exits 1."""
    monkeypatch.setenv("STMA_LITE_WEIGHTS", "")
    code = campaign.main(["run", "--pack", str(pack[0]), "--out", str(tmp_path / "run"), "--minutes-static", "0.01",
                          "--minutes-main", "0.01", "--device", "cpu", "--tiny",
                          "--init-from", str(campaign.LITE0_MODEL)])
    assert code == 1
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    for stage in ("static", "main"):
        assert "another model config" in summary["stages"][stage]["error"]
    assert summary["checkpoint"] is None and "Traceback" not in captured.err


def test_run_steps_override_moves_the_lr_decay(tmp_path: Path) -> None:
    path = campaign._stage_config(campaign.MAIN_CONFIG, tmp_path, "main", {}, 4000)
    cfg = load_train_config(path)
    assert cfg.steps == 4000 and cfg.lr_decay_steps == (3200,)
    assert (cfg.bootstrap_warmup, cfg.bootstrap_ramp) == (200, 800)  # 100 and 400 of 2000 steps


def test_gpu_configs_match_the_cpu_recipe() -> None:
    """Same model section (checkpoints interchangeable) and recipe; a GPU batch, autocast, threads for clips."""
    for gpu, cpu in (("lite0_duts_static_gpu", "lite0_duts_static_cpu"), ("lite0_davis16_main_gpu", "lite0_davis16_main_cpu"),
                     ("lite2_duts_static_gpu", "lite2_duts_static_cpu"),
                     ("lite2_davis16_main_gpu", "lite2_davis16_main_toptrunk_cpu")):
        g, c = (load_train_config(REPO / "configs" / f"{name}.yaml") for name in (gpu, cpu))
        assert g.model == c.model and g.stage == c.stage and g.crop == c.crop and g.clip_length == c.clip_length
        assert g.static_mix_prob == c.static_mix_prob and g.static_holdout == c.static_holdout == 300
        assert g.frame_size == c.frame_size and g.seed == c.seed
        assert g.batch_size == 32 and g.data_threads > 0 and c.lr < g.lr <= 8 * c.lr
        assert g.amp == (gpu.startswith("lite0"))  # Lite2: float32, measured faster there
        assert g.trunk_top_lr / g.lr == c.trunk_top_lr / c.lr  # trainable top stages keep their share of the lr
    for variant, (static, main, init) in campaign.CONFIGS.items():  # each variant's start fits its configs
        _, config, _ = load_model(init)
        assert config == load_train_config(static).model == load_train_config(main).model


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


def test_pack_that_cannot_fit(sources: tuple[Path, Path, Path], pack: tuple[Path, dict], tmp_path: Path) -> None:
    with pytest.raises(campaign.CampaignError, match="raise --max-mib"):
        campaign.pack(*sources, tmp_path / "p", max_mib=0.5, variant="lite0", duts_holdout=4)
    assert not (tmp_path / "p").exists() and not (tmp_path / "p.partial").exists()
    # room for the weights and part of the first sequence: it stops after that sequence, not after all of them
    out, _ = pack
    weights, davis = (sum(f.stat().st_size for f in (out / part).rglob("*") if f.is_file()) / campaign.MIB
                      for part in ("weights", "davis"))
    budget = weights + 0.004 + davis / 4  # 0.004: pack.json's reserve; each of the 2 sequences is ~half of davis
    with pytest.raises(campaign.CampaignError, match="and 1 of the 2 train sequences"):
        campaign.pack(*sources, tmp_path / "q", max_mib=budget, variant="lite0", duts_holdout=4)
    assert not (tmp_path / "q").exists() and not (tmp_path / "q.partial").exists()
