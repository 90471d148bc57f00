"""`stma train`: exact resume, logs/curves/checkpoints, the static stage, and one-line input errors.

Everything runs on a tiny DAVIS-layout copy of two real train sequences (6 frames each, 176x96)
and a tiny model, so the whole file takes seconds on a CPU.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner, Result

from conftest import example_frames
from stma_cli.app import app
from stma_core.checkpoint import load_model
from stma_core.model.lite_backbone import LiteTrunk
from stma_core.training.config_io import load_train_config
from stma_core.training.run import prepare_trainer
from stma_core.training.static_data import list_still_pairs, synth_clip

REPO = Path(__file__).resolve().parents[1]
SEQUENCES = ("bear", "boat")
TINY_MODEL = {"embed_dim": 32, "stml_depth": 1, "num_heads": 2, "key_dim": 16, "value_dim": 32,
              "decoder_dims": [16, 16, 8]}
TINY = {"stage": "main", "steps": 4, "batch_size": 1, "clip_length": 3, "crop": [64, 128],
        "frame_size": [96, 176], "checkpoint_every": 2, "log_every": 1, "threads": 1,
        "bootstrap_warmup": 1, "bootstrap_ramp": 2, "max_gap_low": 1, "max_gap_high": 3, "model": TINY_MODEL}


def make_tiny_davis(davis16: Path, dst: Path, frames: int = 6, size: tuple[int, int] = (176, 96)) -> Path:
    """A DAVIS-layout copy of the first `frames` frames of SEQUENCES, resized to `size` (W, H)."""
    for name in SEQUENCES:
        for sub, ext, resample in (("JPEGImages", "jpg", Image.BILINEAR), ("Annotations", "png", Image.NEAREST)):
            folder = dst / sub / "480p" / name
            folder.mkdir(parents=True, exist_ok=True)
            for file in sorted((davis16 / sub / "480p" / name).glob(f"*.{ext}"))[:frames]:
                Image.open(file).resize(size, resample).save(folder / file.name)
    (dst / "ImageSets" / "2016").mkdir(parents=True, exist_ok=True)
    (dst / "ImageSets" / "2016" / "train.txt").write_text("\n".join(SEQUENCES) + "\n")
    return dst


def write_config(path: Path, **overrides: object) -> Path:
    path.write_text(yaml.safe_dump({**TINY, **overrides}))
    return path


@pytest.fixture(scope="module")
def tiny_davis(davis16: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_davis(davis16, tmp_path_factory.mktemp("tiny") / "davis")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def train(*args: object) -> Result:
    return CliRunner().invoke(app, ["train", *(str(a) for a in args)])


def assert_bad_input(result: Result, *fragments: str) -> None:
    """Exit 2 with exactly one `error:` line on stderr naming the problem."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def log_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def recording(trainer) -> list[float]:
    """Records the raw loss of every step the trainer takes."""
    losses: list[float] = []
    step = trainer.train_step

    def wrapped() -> float:
        losses.append(step())
        return losses[-1]

    trainer.train_step = wrapped
    return losses


# ---- exact resume, logs, curves, checkpoints ----------------------------------------------------

def test_resume_matches_uninterrupted_run(tiny_davis: Path, cache_dir: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "tiny.yaml")
    straight = prepare_trainer(config, tiny_davis, tmp_path / "straight", cache_dir=cache_dir)
    straight_losses = recording(straight)
    straight.run()

    first = prepare_trainer(config, tiny_davis, tmp_path / "split", cache_dir=cache_dir)
    split_losses = recording(first)
    first.run(until=2)
    with (tmp_path / "split" / "log.jsonl").open("a") as log:  # a line written after the checkpoint, then a crash
        log.write(json.dumps({"step": 3, "loss": 9.0, "lr": 1.0}) + "\n")
    second = prepare_trainer(config, tiny_davis, tmp_path / "split", resume=True, cache_dir=cache_dir)
    assert second.step == 2
    resumed_losses = recording(second)
    second.run()
    split_losses += resumed_losses

    assert len(straight_losses) == len(split_losses) == 4
    assert all(math.isfinite(v) for v in straight_losses)
    np.testing.assert_allclose(split_losses, straight_losses, rtol=0, atol=1e-5)
    for (name, a), b in zip(straight.network.state_dict().items(), second.network.state_dict().values()):
        assert torch.equal(a, b), name
    straight_log, split_log = log_records(tmp_path / "straight"), log_records(tmp_path / "split")
    assert [r["step"] for r in split_log] == [1, 2, 3, 4]  # the stale step-3 line was dropped on resume
    assert [r["loss"] for r in split_log] == [r["loss"] for r in straight_log]
    assert {"step", "loss", "lr", "it_per_s", "loss_mean"} <= set(straight_log[-1])


def test_resume_says_what_it_did_and_keeps_the_start_it_recorded(tiny_davis: Path, cache_dir: Path,
                                                                   tmp_path: Path) -> None:
    """--resume where no run is yet starts one and says so; with another --init-from than the run started from
    it is one error line (before, the new path silently replaced the record); on a finished run it says that
    nothing was trained (before: only the caching and resumed lines)."""
    config = write_config(tmp_path / "tiny.yaml", steps=2)
    common = ("--config", config, "--data", tiny_davis, "--cache-dir", cache_dir, "--device", "cpu")
    start = tmp_path / "start"
    result = train(*common, "--out", start, "--resume", "--until", 1)
    assert result.exit_code == 0, result.output
    assert f"note: --resume: no run found in {start} (no state.pt), so a new run starts there" in result.stderr
    assert log_records(start)[-1]["step"] == 1

    out, init = tmp_path / "run", start / "model.safetensors"
    assert train(*common, "--out", out, "--init-from", init, "--until", 1).exit_code == 0
    assert_bad_input(train(*common, "--out", out, "--resume", "--init-from", out / "model.safetensors"),
                     f"--init-from: {out / 'model.safetensors'} is not what the run in {out} started from ({init})",
                     "drop --init-from")
    assert json.loads((out / "train_config.json").read_text())["init_from"] == str(init)
    assert torch.load(out / "state.pt", weights_only=True)["step"] == 1
    result = train(*common, "--out", out, "--resume", "--init-from", init)  # the same one is fine
    assert result.exit_code == 0, result.output
    assert "no run found" not in result.stderr and "nothing was trained" not in result.stderr
    assert [r["step"] for r in log_records(out)] == [1, 2]

    finished = train(*common, "--out", out, "--resume")
    assert finished.exit_code == 0, finished.output
    assert f"note: the run in {out} is already at its final step (2); nothing was trained" in finished.stderr
    assert [r["step"] for r in log_records(out)] == [1, 2]
    assert json.loads((out / "train_config.json").read_text())["init_from"] == str(init)


def test_run_folder_holds_checkpoints_and_curves(tiny_davis: Path, cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = train("--config", write_config(tmp_path / "tiny.yaml", steps=2), "--data", tiny_davis,
                   "--out", out, "--cache-dir", cache_dir, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out / "model.safetensors")
    assert "step 2/2" in result.stderr  # not a terminal: one plain progress line per log record
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("*.tmp"))
    state = torch.load(out / "state.pt", weights_only=True)
    assert {"step", "model", "optimizer", "torch_rng", "py_rng"} <= set(state) and state["step"] == 2
    network, config, metadata = load_model(out / "model.safetensors")
    assert config.embed_dim == 32 and metadata["train_step"] == "2"
    assert json.loads((out / "train_config.json").read_text())["steps"] == 2


def test_time_budget_stops_and_resumes_exactly(tiny_davis: Path, cache_dir: Path, tmp_path: Path) -> None:
    """--max-minutes stops at the end of the first step past the budget, saves like --until, and --resume
    then ends with the weights of an uninterrupted run."""
    from safetensors.torch import load_file

    config = write_config(tmp_path / "tiny.yaml")
    common = ("--data", tiny_davis, "--cache-dir", cache_dir, "--device", "cpu")
    straight = train("--config", config, "--out", tmp_path / "straight", *common, "--quiet")
    assert straight.exit_code == 0, straight.output
    out = tmp_path / "budget"
    stopped = train("--config", config, "--out", out, *common, "--max-minutes", "0.000001", "--quiet")
    # unfinished: exit 3 and one line, also with --quiet (before: exit 0 and, with --quiet, nothing)
    assert stopped.exit_code == 3, stopped.output
    assert stopped.stderr.splitlines() == ["note: unfinished: time budget of 1e-06 min used up at step 1/4; "
                                           "state and model saved, continue with --resume"]
    assert stopped.stdout.strip() == str(out / "model.safetensors")
    assert torch.load(out / "state.pt", weights_only=True)["step"] == 1
    assert load_model(out / "model.safetensors")[2]["train_step"] == "1"
    assert [r["step"] for r in log_records(out)] == [1] and "it_per_s" in log_records(out)[0]
    resumed = train("--config", config, "--out", out, *common, "--resume", "--max-minutes", "60", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    a, b = load_file(str(tmp_path / "straight" / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in log_records(out)] == [r["loss"] for r in log_records(tmp_path / "straight")]


def test_time_budget_must_be_positive(tmp_path: Path) -> None:
    result = train("--config", write_config(tmp_path / "c.yaml"), "--data", tmp_path, "--out", tmp_path / "o",
                   "--max-minutes", "0")
    assert_bad_input(result, "--max-minutes 0", "positive")


# ---- static stage ---------------------------------------------------------------------------------

def test_static_clips_are_deterministic_and_valid(tiny_davis: Path) -> None:
    pairs = list_still_pairs(tiny_davis, list(SEQUENCES))
    assert len(pairs) == 12
    clip = synth_clip(pairs, 3, (64, 96), 3, (96, 176), np.random.default_rng(7))
    again = synth_clip(pairs, 3, (64, 96), 3, (96, 176), np.random.default_rng(7))
    assert clip.frames.shape == (3, 3, 64, 96) and clip.masks.shape == (3, 3, 64, 96)
    assert torch.equal(clip.frames, again.frames) and torch.equal(clip.masks, again.masks)
    assert 0 <= clip.frames.min() and clip.frames.max() <= 1
    assert clip.masks.sum(1).max() <= 1  # objects never overlap
    assert (clip.masks[0].flatten(1).sum(1) > 0).all()  # every object is visible in the first frame
    assert not torch.equal(clip.frames[0], clip.frames[1])  # frames are deformed independently


def test_static_stage_trains_and_feeds_main_stage(tiny_davis: Path, cache_dir: Path, tmp_path: Path) -> None:
    static = write_config(tmp_path / "static.yaml", stage="static", steps=2, crop=[64, 96],
                          multi_object_prob=1.0, static_max_objects=3)
    out = tmp_path / "static"
    result = train("--config", static, "--data", tiny_davis, "--out", out, "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    records = log_records(out)
    assert [r["step"] for r in records] == [1, 2] and all(math.isfinite(r["loss"]) for r in records)
    network, _, metadata = load_model(out / "model.safetensors")
    assert metadata["train_stage"] == "static" and not network.training

    main = write_config(tmp_path / "main.yaml", steps=2)
    result = train("--config", main, "--data", tiny_davis, "--out", tmp_path / "main", "--cache-dir", cache_dir,
                   "--init-from", out / "model.safetensors", "--device", "cpu", "--quiet", "--until", 1)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "main" / "train_config.json").read_text())["init_from"] == str(
        out / "model.safetensors")
    result = train("--config", main, "--data", tiny_davis, "--out", tmp_path / "main", "--cache-dir", cache_dir,
                   "--resume", "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "main" / "train_config.json").read_text())
    assert saved["init_from"] == str(out / "model.safetensors")  # a resume keeps the record of the start
    assert log_records(tmp_path / "main")[-1]["step"] == 2
    # --init-from RUN (the static stage's run folder) means RUN/model.safetensors, as --checkpoint does
    result = train("--config", main, "--data", tiny_davis, "--out", tmp_path / "main2", "--cache-dir", cache_dir,
                   "--init-from", out, "--device", "cpu", "--quiet", "--until", 1)
    assert result.exit_code == 0, result.output


def test_threaded_clip_synthesis_gives_the_same_steps(tiny_davis: Path, tmp_path: Path) -> None:
    """data_threads > 0 synthesizes a batch's static clips in parallel from seeds drawn in order: same losses."""
    losses = []
    for threads in (0, 2):
        config = write_config(tmp_path / f"s{threads}.yaml", stage="static", steps=2, batch_size=3, crop=[64, 96],
                              data_threads=threads)
        trainer = prepare_trainer(config, tiny_davis, tmp_path / f"run{threads}")
        losses.append(recording(trainer))
        trainer.run()
    assert len(losses[0]) == 2 and losses[0] == losses[1]


def test_recipe_stages_load() -> None:
    static = load_train_config(REPO / "configs" / "static_then_main_gpu.yaml", "static")
    main = load_train_config(REPO / "configs" / "static_then_main_gpu.yaml", "main")
    assert (static.stage, main.stage) == ("static", "main")
    assert static.model == main.model and static.lr == main.lr == 3e-5 and static.batch_size == 16
    assert main.lr_decay_steps == (100000,) and main.init_from and static.amp
    assert load_train_config(REPO / "configs" / "lite0_static_cpu.yaml").model == \
        load_train_config(REPO / "configs" / "lite0_davis16_cpu.yaml").model


# ---- trainable top trunk stages ------------------------------------------------------------------

def test_trunk_top_stages_are_the_end_of_the_trunk() -> None:
    """forward_top(f8) is the trunk's own stride-16 map: training on cached stride-8 maps computes what
    inference computes from the image."""
    frame = example_frames(1)[0][:224, :320]
    image = torch.from_numpy(frame.copy()).permute(2, 0, 1)[None].float() / 255
    for variant in ("lite0", "lite2"):
        trunk = LiteTrunk(variant).eval()
        with torch.no_grad():
            maps = trunk(image)
            torch.testing.assert_close(trunk.forward_top(maps["f8"]), maps["f16"], rtol=0, atol=0)
        top = {id(p) for p in trunk.top_parameters()}
        first_top = trunk._blocks[trunk.top_start]
        assert all(id(p) in top for p in first_top.parameters())
        assert not any(id(p) in top for p in trunk._blocks[trunk.top_start - 1].parameters())


def test_trunk_top_lr_trains_only_the_top_stages(tiny_davis: Path, cache_dir: Path, tmp_path: Path) -> None:
    """trunk_top_lr > 0: the top stages' weights move, the lower stages and BatchNorm statistics do not,
    the saved model carries the trained stages, and resume is exact."""
    config = write_config(tmp_path / "top.yaml", trunk_top_lr=1e-3)
    straight = prepare_trainer(config, tiny_davis, tmp_path / "straight", cache_dir=cache_dir)
    before = {k: v.clone() for k, v in straight.network.trunk.state_dict().items()}
    losses = recording(straight)
    straight.run()
    after = straight.network.trunk.state_dict()
    top = straight.network.trunk.top_start
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved, "no trunk weight trained"
    assert all(int(k.split(".")[1]) >= top for k in moved), sorted(moved)[:3]
    assert not any("running_" in k for k in moved)  # BatchNorm statistics stay frozen
    assert any(k.endswith("_project_conv.weight") for k in moved)
    saved, _, _ = load_model(tmp_path / "straight" / "model.safetensors")
    for k in moved:
        assert torch.equal(saved.trunk.state_dict()[k], after[k]), k

    first = prepare_trainer(config, tiny_davis, tmp_path / "split", cache_dir=cache_dir)
    split = recording(first)
    first.run(until=2)
    second = prepare_trainer(config, tiny_davis, tmp_path / "split", resume=True, cache_dir=cache_dir)
    resumed = recording(second)
    second.run()
    split += resumed
    np.testing.assert_allclose(split, losses, rtol=0, atol=1e-5)
    for k, v in after.items():
        assert torch.equal(second.network.trunk.state_dict()[k], v), k

    frozen = write_config(tmp_path / "frozen.yaml")
    result = train("--config", frozen, "--data", tiny_davis, "--out", tmp_path / "split", "--cache-dir", cache_dir,
                   "--resume", "--device", "cpu")
    assert_bad_input(result, "split", "trunk_top_lr (0.001 -> 0.0)", "start a new --out")


def test_a_fine_tune_keeps_its_starting_models_recommended_settings(tiny_davis: Path, cache_dir: Path,
                                                                    tmp_path: Path) -> None:
    """A run from scratch recommends the scale it learned at (min frame_size); a fine-tune of a shipped model
    keeps the settings that model recommends (the shipped one's 480, chosen on full val, not its 288
    training size), also across --resume."""
    from stma_core.checkpoint import recommended_inference
    from stma_core.config import InferenceConfig
    from stma_core.training.ship import ship

    config = write_config(tmp_path / "c.yaml", steps=2)
    prepare_trainer(config, tiny_davis, tmp_path / "scratch", cache_dir=cache_dir).run()
    assert recommended_inference(load_model(tmp_path / "scratch" / "model.safetensors")[2])["size"] == 96
    ship(tmp_path / "scratch" / "model.safetensors", tmp_path / "shipped.safetensors",
         InferenceConfig(size=200, top_k=20))
    fine = prepare_trainer(config, tiny_davis, tmp_path / "fine", cache_dir=cache_dir,
                           init_from=tmp_path / "shipped.safetensors")
    fine.run(until=1)
    settings = recommended_inference(load_model(tmp_path / "fine" / "model.safetensors")[2])
    assert settings["size"] == 200 and settings["top_k"] == 20
    (tmp_path / "shipped.safetensors").unlink()  # resume reads the settings from its own state
    prepare_trainer(config, tiny_davis, tmp_path / "fine", resume=True, cache_dir=cache_dir).run()
    assert recommended_inference(load_model(tmp_path / "fine" / "model.safetensors")[2])["size"] == 200


def test_frozen_stage_from_trained_top_stages_uses_them(tiny_davis: Path, cache_dir: Path, tmp_path: Path) -> None:
    """The cache holds the ImageNet trunk's maps. A frozen-trunk main stage that starts from (or resumes) a
    model whose top stages were trained computes the stride-16 maps with those stages, as inference does,
    instead of reading the cache's; the first loss proves it (it equals the loss of the trained-top run
    given the same maps). A trunk changed below stride 8 is refused in one line."""
    trained = prepare_trainer(write_config(tmp_path / "top.yaml", trunk_top_lr=1e-2, steps=2), tiny_davis,
                              tmp_path / "top", cache_dir=cache_dir)
    trained.run()
    model = tmp_path / "top" / "model.safetensors"
    frozen = write_config(tmp_path / "frozen.yaml")
    plain = prepare_trainer(frozen, tiny_davis, tmp_path / "plain", cache_dir=cache_dir)
    assert not plain._loss.recompute_top  # ImageNet top stages: the cache's stride-16 maps are the model's
    fine = prepare_trainer(frozen, tiny_davis, tmp_path / "fine", cache_dir=cache_dir, init_from=model)
    assert fine._loss.recompute_top
    maps, masks = fine._video_batch()
    with torch.no_grad():
        own = fine.network.trunk.forward_top(maps["f8"].flatten(0, 1)).unflatten(0, maps["f8"].shape[:2])
        assert not torch.allclose(own, maps["f16"], atol=1e-3)  # the trained stages do change the map
        used = fine.clip_loss(maps, masks, 1.0, __import__("random").Random(0))
        expected = fine.clip_loss({**maps, "f16": own}, masks, 1.0, __import__("random").Random(0))
    assert torch.equal(used, expected)
    fine.run(until=1)
    resumed = prepare_trainer(frozen, tiny_davis, tmp_path / "fine", resume=True, cache_dir=cache_dir)
    assert resumed._loss.recompute_top

    network, config, _ = load_model(model)
    with torch.no_grad():
        network.trunk._conv_stem.weight.mul_(1.1)
    from stma_core.checkpoint import save_model

    save_model(network, config, tmp_path / "stem.safetensors")
    result = train("--config", frozen, "--data", tiny_davis, "--out", tmp_path / "stem", "--cache-dir", cache_dir,
                   "--init-from", tmp_path / "stem.safetensors", "--device", "cpu")
    assert_bad_input(result, "stem.safetensors", "below the stride-16")


# ---- one-line errors --------------------------------------------------------------------------------

def test_ship_takes_a_run_folder_and_replaces_a_model_only_when_asked(tmp_path: Path, monkeypatch, capsys) -> None:
    """`python -m stma_core.training.ship RUN OUT --size N`, as README writes it: a run folder (what every other
    command takes) was a traceback ('OSError: No such device'), and so were a missing source and a --size under
    the minimum; an existing OUT was silently overwritten. Now: the folder's model, one error line (exit 2),
    and an existing OUT only with --overwrite."""
    from stma_core.checkpoint import recommended_inference, save_model
    from stma_core.config import ModelConfig
    from stma_core.model.network import STMANetwork
    from stma_core.training.ship import main

    config = ModelConfig(**TINY_MODEL)
    (tmp_path / "run").mkdir()
    save_model(STMANetwork(config, pretrained_trunk=False), config, tmp_path / "run" / "model.safetensors")

    def ship(*args: object) -> tuple[int, str, str]:
        monkeypatch.setattr("sys.argv", ["ship", *(str(a) for a in args)])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    target = tmp_path / "shipped.safetensors"
    assert ship(tmp_path / "run", target, "--size", 200) == (0, f"{target}\n", "")
    assert recommended_inference(load_model(target)[2])["size"] == 200
    before = target.read_bytes()
    code, out, err = ship(tmp_path / "run", target, "--size", 300)
    assert code == 2 and out == ""
    assert err == f"error: {target}: exists; pass --overwrite to replace it, or another target\n"
    assert target.read_bytes() == before
    assert ship(tmp_path / "run", target, "--size", 300, "--overwrite")[0] == 0
    assert recommended_inference(load_model(target)[2])["size"] == 300
    for args, says in (((tmp_path / "nowhere.safetensors", tmp_path / "a.safetensors", "--size", 200),
                        "checkpoint not found"),
                       ((tmp_path / "run", tmp_path / "b.safetensors", "--size", 10), "InferenceConfig.size is 10")):
        code, out, err = ship(*args)
        assert code == 2 and err.startswith("error: ") and says in err and err.count("\n") == 1, err
        assert not args[1].exists()
    # a target named model.json got the weights, then the config JSON written over them (save_model writes
    # TARGET.json beside), and x.pt a safetensors file under PyTorch's suffix; tensors of another model than
    # the source's config were load_state_dict's traceback. Each is one line now, nothing written.
    other = ModelConfig(**{**TINY_MODEL, "embed_dim": 64})
    save_model(STMANetwork(other, pretrained_trunk=False), config, tmp_path / "mixed.safetensors")
    for args, says in (((tmp_path / "run", tmp_path / "model.json", "--size", 200),
                        "model.json: a checkpoint is a .safetensors file"),
                       ((tmp_path / "run", tmp_path / "model.pt", "--size", 200), "pass " + str(tmp_path / "model.safetensors")),
                       ((tmp_path / "mixed.safetensors", tmp_path / "c.safetensors", "--size", 200),
                        "checkpoint does not match its model config")):
        code, out, err = ship(*args)
        assert code == 2 and err.startswith("error: ") and says in err and err.count("\n") == 1, err
        assert not args[1].exists() and not args[1].with_suffix(".json").exists()
    # someone's notes.json beside a new notes.safetensors was replaced by the config without asking
    (tmp_path / "notes.json").write_text("mine\n")
    code, out, err = ship(tmp_path / "run", tmp_path / "notes.safetensors", "--size", 200)
    assert code == 2 and f"{tmp_path / 'notes.json'}: exists, and the checkpoint's config would be written over" in err
    assert (tmp_path / "notes.json").read_text() == "mine\n" and not (tmp_path / "notes.safetensors").exists()



def test_ship_help_describes_the_whole_command() -> None:
    """`python -m stma_core.training.ship --help` cut its description mid-sentence ("same weights, the inference
    settings") and said nothing of its two arguments; the run folder README allows as the source was not named."""
    import subprocess
    import sys

    shown = subprocess.run([sys.executable, "-m", "stma_core.training.ship", "--help"], capture_output=True,
                           text=True, check=True).stdout
    text = " ".join(shown.split())
    assert "the inference settings it is recommended with, and a short provenance record" in text, text
    assert "source a run's model.safetensors, or the `stma train --out` run folder" in text, text
    assert "target the checkpoint to write" in text, text

def test_a_new_run_never_overwrites_a_model_in_its_out_folder(tiny_davis: Path, tmp_path: Path) -> None:
    """--out a folder holding someone's model.safetensors but no state.pt (a folder of models, a run whose state
    was deleted): a new run (or --resume, which starts fresh without state.pt) overwrote that model at its first
    checkpoint, silently."""
    out = tmp_path / "models"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"mine")
    for extra in ((), ("--resume",)):
        result = train("--config", write_config(tmp_path / "c.yaml"), "--data", tiny_davis, "--out", out, *extra,
                       "--device", "cpu")
        assert_bad_input(result, "models: holds a model.safetensors but no state.pt", "choose a new --out")
    assert (out / "model.safetensors").read_bytes() == b"mine" and sorted(p.name for p in out.iterdir()) == [
        "model.safetensors"]


def test_missing_data_root(tmp_path: Path) -> None:
    result = train("--config", write_config(tmp_path / "c.yaml"), "--data", tmp_path / "nowhere", "--out", tmp_path / "o")
    assert_bad_input(result, "nowhere", "data root not found")


def test_missing_split_file(tmp_path: Path) -> None:
    (tmp_path / "davis" / "JPEGImages").mkdir(parents=True)
    result = train("--config", write_config(tmp_path / "c.yaml"), "--data", tmp_path / "davis", "--out", tmp_path / "o")
    assert_bad_input(result, "ImageSets/2016/train.txt")


def test_until_below_one_and_a_cache_dir_that_is_a_file_are_one_line(tmp_path: Path) -> None:
    """`--until 0` (or negative) on a new run trained nothing, exited 0 and printed RUN/model.safetensors, a file
    it never wrote, for the next command of a script to fail on; `--cache-dir` naming a file was a
    NotADirectoryError traceback after the data was checked. Both are one line now, before any work."""
    config = write_config(tmp_path / "c.yaml")
    for until in (0, -5):
        result = train("--config", config, "--data", tmp_path, "--out", tmp_path / "o", "--until", until)
        assert_bad_input(result, f"--until {until}: the step to stop after must be at least 1")
        assert result.stdout == ""
    result = train("--config", config, "--data", tmp_path, "--out", tmp_path / "o", "--cache-dir", config)
    assert_bad_input(result, f"{config}: --cache-dir is a file, not a folder")
    assert not (tmp_path / "o").exists()


def test_sequences_without_the_480p_level_are_named(tmp_path: Path) -> None:
    """Own data laid out YouTube-VOS style (JPEGImages/<seq>/, no 480p/) was 'no frames for sequence' or 'no
    sequence folders under JPEGImages/480p', which reads as if the frames were missing; the error now says
    where they are and what to move."""
    masks, _ = two_objects_with_void(3)
    root = tmp_path / "mine"
    write_sequence(root, "clip", masks)
    for sub in ("JPEGImages", "Annotations"):
        (root / sub / "480p" / "clip").rename(root / sub / "clip")
        (root / sub / "480p").rmdir()
    result = train("--config", write_config(tmp_path / "c.yaml", **SMALL), "--data", root, "--out", tmp_path / "o")
    assert_bad_input(result, "no sequence folders under", f"but 1 under {root / 'JPEGImages'}", "into a 480p/ folder")
    write_split(root, "clip")
    result = train("--config", write_config(tmp_path / "c.yaml", **SMALL), "--data", root, "--out", tmp_path / "o")
    assert_bad_input(result, f"no frames for sequence 'clip', but {root / 'JPEGImages' / 'clip'} holds them",
                     "JPEGImages/480p/<seq>/, Annotations/480p/<seq>/")


def test_split_naming_a_missing_sequence(tmp_path: Path) -> None:
    (tmp_path / "davis" / "ImageSets" / "2016").mkdir(parents=True)
    (tmp_path / "davis" / "ImageSets" / "2016" / "train.txt").write_text("ghost\n")
    result = train("--config", write_config(tmp_path / "c.yaml"), "--data", tmp_path / "davis", "--out", tmp_path / "o")
    assert_bad_input(result, "ghost", "no frames (jpg, png, webp, tif, bmp)")


def test_training_reads_the_frame_types_segment_reads(tmp_path: Path) -> None:
    """Training listed only *.jpg frames, while segment and eval read png/webp/tif/bmp too: a dataset of PNG
    frames was 'no .jpg frames'. Frames of any of those types, in natural order, each with its annotation."""
    from stma_core.training.feature_cache import frame_paths

    folder = tmp_path / "JPEGImages" / "480p" / "seq"
    folder.mkdir(parents=True)
    for i in (0, 1, 2, 10):
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folder / f"{i}.png")
    frames, masks = frame_paths(tmp_path, "seq")
    assert [f.name for f in frames] == ["0.png", "1.png", "2.png", "10.png"]
    assert masks == [tmp_path / "Annotations" / "480p" / "seq" / f"{i}.png" for i in (0, 1, 2, 10)]


@pytest.mark.parametrize("overrides, fragment", [
    ({"learning_rate": 0.1}, "unknown TrainConfig keys ['learning_rate']"),
    ({"model": {**TINY_MODEL, "depth": 3}}, "unknown ModelConfig keys ['depth']"),
    ({"steps": "many"}, "`steps: 'many'`"),
    ({"crop": [64]}, "`crop: [64]`"),
    ({"crop": [60, 128]}, "multiples of 16"),
    ({"frame_size": [48, 176], "crop": [48, 128]}, "frame_size [48, 176] must be at least 64"),
    ({"stage": "warmup"}, "stage 'warmup'"),
    ({"trunk_top_lr": -0.1}, "trunk_top_lr must be >= 0"),
    # these trained silently wrong (a negative grad_clip flips every gradient: the loss climbed) or failed
    # mid-run with a traceback after writing the run folder (ValueError, AssertionError, ZeroDivisionError)
    ({"grad_clip": -1.0}, "grad_clip must be > 0"),
    ({"lr": -0.001}, "lr must be > 0"),
    ({"weight_decay": -1}, "weight_decay must be >= 0"),
    ({"num_refs": 0}, "num_refs must be >= 1"),
    ({"max_gap_low": 0}, "max_gap_low must be >= 1"),
    ({"max_gap_low": 5, "max_gap_high": 3}, "max_gap_high >= max_gap_low"),
    ({"threads": -1}, "threads must be >= 0"),
    ({"bootstrap_warmup": -1}, "bootstrap_warmup must be >= 0"),
    ({"model": {**TINY_MODEL, "lite_variant": "lite9"}}, "model.lite_variant 'lite9' is not one of"),
    ({"model": {**TINY_MODEL, "backbone": "resnet"}}, "model.backbone 'resnet' is not one of"),
    ({"model": {**TINY_MODEL, "embed_dim": 30, "num_heads": 4}}, "model.embed_dim 30 must be divisible by num_heads 4"),
    ({"model": {**TINY_MODEL, "embed_dim": 0}}, "model.embed_dim 0 must be a whole number >= 1"),
    ({"model": {**TINY_MODEL, "decoder_dims": [16, 0, 8]}}, "model.decoder_dims"),
    ({"model": {**TINY_MODEL, "mlp_ratio": -1}}, "model.mlp_ratio -1.0 must be a number > 0"),
])
def test_bad_config(tmp_path: Path, overrides: dict, fragment: str) -> None:
    result = train("--config", write_config(tmp_path / "c.yaml", **overrides), "--data", tmp_path,
                   "--out", tmp_path / "o")
    assert_bad_input(result, "c.yaml", fragment)


def test_bad_yaml_and_missing_config(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("steps: [1,\n")
    assert_bad_input(train("--config", tmp_path / "broken.yaml", "--data", tmp_path, "--out", tmp_path / "o"),
                     "invalid YAML")
    assert_bad_input(train("--config", tmp_path / "absent.yaml", "--data", tmp_path, "--out", tmp_path / "o"),
                     "training config not found")
    png = tmp_path / "mask.png"  # a binary file given as the config
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(png)
    assert_bad_input(train("--config", png, "--data", tmp_path, "--out", tmp_path / "o"),
                     "mask.png: not a text file, so not a YAML training config")


def test_recipe_needs_a_stage(tmp_path: Path) -> None:
    config = REPO / "configs" / "static_then_main_gpu.yaml"
    assert_bad_input(train("--config", config, "--data", tmp_path, "--out", tmp_path / "o"), "--stage", "static")
    assert_bad_input(train("--config", config, "--stage", "finetune", "--data", tmp_path, "--out", tmp_path / "o"),
                     "finetune")


def test_existing_run_and_missing_init(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "state.pt").write_bytes(b"")
    assert_bad_input(train("--config", config, "--data", tmp_path, "--out", tmp_path / "o"), "--resume")
    assert_bad_input(train("--config", config, "--data", tmp_path, "--out", tmp_path / "fresh",
                           "--init-from", tmp_path / "static.safetensors"), "init_from checkpoint not found")


def test_init_from_a_file_that_is_not_this_model_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    """--init-from a PyTorch .pt (another project's weights, or the run's own state.pt) or a text file was a
    SafetensorError traceback (exit 1); a checkpoint of another model config said only 'another model config'
    (not which keys) after writing the run folder (cache, train_config.json, train_data.json); one whose
    tensors do not fit its config was a page of size mismatches. Each is now one line, exit 2, before
    anything is written (no shared data needed: the checks run before the data is read)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from stma_core.checkpoint import DEFAULT_CHECKPOINT, PREVIOUS_CHECKPOINT

    config = write_config(tmp_path / "c.yaml", model={"lite_variant": "lite2"})  # the shipped model's config
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    torch.save({"step": 3}, tmp_path / "state.pt")
    (tmp_path / "notes.safetensors").write_text("not a model\n")
    with safe_open(str(DEFAULT_CHECKPOINT), "pt") as f:
        save_file(load_file(str(PREVIOUS_CHECKPOINT)), str(tmp_path / "mixed.safetensors"), metadata=f.metadata())
    cases = [(tmp_path / "other.pt", "not a safetensors model checkpoint (a .pt file is PyTorch's format"),
             (tmp_path / "state.pt", "not a safetensors model checkpoint"),
             (tmp_path / "notes.safetensors", "not a safetensors checkpoint"),
             (PREVIOUS_CHECKPOINT, "another model config than the training config's `model:` (lite_variant: "
                                   "'lite0' in the checkpoint, 'lite2' in the config"),
             (tmp_path / "mixed.safetensors", "checkpoint does not match its model config")]
    for source, fragment in cases:
        out = tmp_path / f"run-{source.stem}"
        result = train("--config", config, "--data", tmp_path, "--out", out, "--init-from", source,
                       "--device", "cpu")
        assert_bad_input(result, str(source), fragment)
        assert not out.exists(), sorted(p.name for p in out.iterdir())
    result = train("--config", write_config(tmp_path / "tiny.yaml"), "--data", tmp_path, "--out", tmp_path / "r",
                   "--init-from", DEFAULT_CHECKPOINT, "--device", "cpu")
    assert_bad_input(result, "embed_dim: 128 in the checkpoint, 32 in the config", "stma_lite2_duts_davis16.json")


# ---- feature cache at another scale ---------------------------------------------------------------

def test_upscaled_cache_masks_keep_ids_and_follow_the_true_outline() -> None:
    """Training at 480p from 288p DAVIS train masks: the smooth upscale is closer to the true 480p
    outline than nearest-neighbour stairs, keeps every id (void 255 included), and downscaling and
    equal sizes stay exact."""
    from stma_core.training.feature_cache import resize_ids

    truth = np.asarray(Image.open(REPO / "examples" / "car-shadow_mask.png"))  # real 854x480 DAVIS mask
    truth = np.where(truth > 0, 1, 0).astype(np.uint8)
    truth[:8, :8] = 255
    small = cv2.resize(truth, (512, 288), interpolation=cv2.INTER_NEAREST)
    smooth = resize_ids(small, (480, 854))
    stairs = cv2.resize(small, (854, 480), interpolation=cv2.INTER_NEAREST)

    def iou(a: np.ndarray) -> float:
        return float(((a == 1) & (truth == 1)).sum() / ((a == 1) | (truth == 1)).sum())

    assert smooth.shape == (480, 854) and smooth.dtype == np.uint8
    assert set(np.unique(smooth)) == {0, 1, 255}
    assert iou(smooth) > iou(stairs) > 0.9
    assert np.array_equal(resize_ids(small, (288, 512)), small)
    assert np.array_equal(resize_ids(truth, (288, 512)), small)


# ---- what training reads: objects, void, annotations, frame order, cache and resume records ------

SMALL = {**TINY, "frame_size": [64, 160], "crop": [64, 160], "steps": 3, "checkpoint_every": 1}


def write_sequence(root: Path, name: str, masks: list[np.ndarray], names: list[str] | None = None,
                   mode: str = "P") -> None:
    """A DAVIS-layout sequence: noise JPEG frames and the given id masks (palette PNGs by default;
    mode "L" grayscale, "RGB" the DAVIS colours as an RGB image); frames named 00000.. unless `names`."""
    from stma_core.io.palette import DAVIS_PALETTE, DAVIS_PALETTE_FLAT

    rng = np.random.default_rng(len(name))
    images, annotations = root / "JPEGImages" / "480p" / name, root / "Annotations" / "480p" / name
    images.mkdir(parents=True, exist_ok=True)
    annotations.mkdir(parents=True, exist_ok=True)
    for i, ids in enumerate(masks):
        stem = names[i] if names else f"{i:05d}"
        Image.fromarray(rng.integers(0, 255, (*ids.shape, 3), dtype=np.uint8)).save(images / f"{stem}.jpg")
        if mode == "P":
            image = Image.fromarray(ids.astype(np.uint8), "P")
            image.putpalette(DAVIS_PALETTE_FLAT)
        elif mode == "RGB":
            image = Image.fromarray(DAVIS_PALETTE[ids].astype(np.uint8))
        else:
            image = Image.fromarray(ids.astype(np.uint8), "L")
        image.save(annotations / f"{stem}.png")


def write_split(root: Path, *names: str) -> None:
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "2017" / "train.txt").write_text("\n".join(names) + "\n")


def two_objects_with_void(frames: int = 6) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """64x160 id masks: objects 1 and 2 on every frame (1 ringed by void 255, as DAVIS 2017 outlines
    objects), object 3 only from frame 3 on. Returns the masks and each region."""
    regions = {name: np.zeros((64, 160), bool) for name in ("one", "void", "two", "three")}
    regions["void"][8:40, 8:56] = True
    regions["one"][10:38, 10:54] = True
    regions["void"] &= ~regions["one"]
    regions["two"][20:56, 80:120] = True
    regions["three"][44:60, 130:156] = True
    masks = []
    for t in range(frames):
        ids = np.zeros((64, 160), np.uint8)
        ids[regions["void"]], ids[regions["one"]], ids[regions["two"]] = 255, 1, 2
        if t >= 3:
            ids[regions["three"]] = 3
        masks.append(ids)
    return masks, regions


def test_davis16_clips_are_the_ones_sampled_before_objects_were_told_apart(davis16: Path, tmp_path: Path) -> None:
    """DAVIS 2016 (one object, id 1, every frame annotated) draws the same random numbers and gets the same
    clips as before clips followed one object id: documented runs reproduce. The hashes and the next random
    number were computed with the code before that change (main at 5687741) from these inputs."""
    import hashlib
    import random

    from stma_core.training.cached_data import sample_clip
    from stma_core.training.feature_cache import build_cache, load_cache

    root = make_tiny_davis(davis16, tmp_path / "davis")
    build_cache(root, list(SEQUENCES), tmp_path / "cache", size=(96, 176))
    seqs = load_cache(tmp_path / "cache", list(SEQUENCES))
    rng = random.Random(0)
    hashes = []
    for i in range(8):
        clip = sample_clip(seqs, 3, (64, 128), 3, 1 + i % 2, rng)
        hashes.append(hashlib.sha1(clip.masks.to(torch.uint8).numpy().tobytes()).hexdigest()[:12])
    assert hashes == ['5e7833c4c427', '53896ea545e4', '622e42fe34a2', '518b0c4d7aac', '008b9670d8fe',
                      '467f0ebc18aa', '29935c3b0788', 'f9347e8822e3']
    assert rng.random() == 0.3243248433827095


def test_a_clip_follows_one_object_given_on_its_first_frame(tmp_path: Path) -> None:
    """Before, targets were `masks > 0`: void became object, objects 1 and 2 merged into one target, and
    object 3 was a target before it appeared. Now each clip's target is exactly one of the objects present
    on its first frame (both get picked), void is background, and multi-object clips keep working."""
    import random

    from stma_core.training.cached_data import sample_clip
    from stma_core.training.feature_cache import build_cache, load_cache

    masks, regions = two_objects_with_void()
    root = tmp_path / "davis17"
    write_sequence(root, "pair", masks)
    build_cache(root, ["pair"], tmp_path / "cache", size=(64, 160))
    seq = load_cache(tmp_path / "cache", ["pair"])[0]
    assert sorted(torch.unique(seq.masks).tolist()) == [0, 1, 2, 3]  # void read as background
    allowed = {k: torch.from_numpy(regions[k]).float() for k in ("one", "two", "three")}
    allowed |= {f"{k} flipped": v.flip(-1) for k, v in list(allowed.items())}
    rng = random.Random(1)
    followed = []
    for n_obj in (1,) * 12 + (2,) * 6:
        clip = sample_clip([seq], 3, (64, 160), 3, n_obj, rng)
        for i in range(n_obj):
            part = clip.masks[:, i, :, i * 160:(i + 1) * 160]
            assert clip.masks[:, i].sum() == part.sum()  # each object in its own half
            # the first frame's target is one whole object; later frames that object or nothing (3 may leave
            # in a reversed clip), never another object
            match = [k for k, v in allowed.items() if torch.equal(part[0], v)
                     and all(torch.equal(part[t], v) or not part[t].any() for t in range(3))]
            assert len(match) == 1, (n_obj, i, part.sum())
            followed.append(match[0].split()[0])
    assert {"one", "two"} <= set(followed), followed


def test_original_davis16_masks_0_255_are_object_1(tmp_path: Path) -> None:
    """Grayscale 0/255 masks (the original DAVIS 2016 release) have no ids but 255: there, as in the
    evaluator, 255 is the object, not void (which would leave nothing to train on)."""
    from stma_core.training.feature_cache import build_cache, load_cache

    masks, regions = two_objects_with_void(3)
    binary = [np.where(regions["two"], 255, 0).astype(np.uint8) for _ in masks]
    write_sequence(tmp_path / "d16", "gray", binary, mode="L")
    build_cache(tmp_path / "d16", ["gray"], tmp_path / "cache", size=(64, 160))
    seq = load_cache(tmp_path / "cache", ["gray"])[0]
    assert torch.equal(seq.masks, torch.from_numpy(np.stack([regions["two"]] * 3)).to(torch.uint8))


def test_cache_of_another_dataset_or_changed_annotations_is_rebuilt(tmp_path: Path) -> None:
    """The cache folder is named after the data folder: run B (another `davis` folder) used to train on
    run A's cached masks. The cache now records its data root and file fingerprints and rebuilds, with a
    note, what does not match; an unchanged cache is reused silently."""
    masks, regions = two_objects_with_void(3)
    only_two = [np.where(m == 2, 2, 0).astype(np.uint8) for m in masks]
    a, b = tmp_path / "A" / "davis", tmp_path / "B" / "davis"
    write_sequence(a, "seq", masks)
    write_sequence(b, "seq", only_two)
    for root in (a, b):
        write_split(root, "seq")
    config, cache = write_config(tmp_path / "c.yaml", **SMALL), tmp_path / "cache"
    notes: list[str] = []
    first = prepare_trainer(config, a, tmp_path / "runA", cache_dir=cache, log=notes.append)
    assert sorted(torch.unique(first.data[0].masks).tolist()) == [0, 1, 2]
    assert not any("rebuilding" in n for n in notes)
    second = prepare_trainer(config, b, tmp_path / "runB", cache_dir=cache, log=notes.append)
    assert sorted(torch.unique(second.data[0].masks).tolist()) == [0, 2]  # B's masks, not A's
    assert f"note: the feature cache {cache / 'davis_train_64x160'} was made from {a.resolve()}; rebuilding 1 " \
           f"sequence(s) (seq) from {b.resolve()}" in notes
    notes.clear()
    prepare_trainer(config, b, tmp_path / "runB2", cache_dir=cache, log=notes.append)
    assert not any("rebuilding" in n for n in notes)
    edited = only_two[0].copy()
    edited[:4, :4] = 1
    write_sequence(b, "seq", [edited, *only_two[1:]])
    again = prepare_trainer(config, b, tmp_path / "runB3", cache_dir=cache, log=notes.append)
    assert any("made from other files; rebuilding 1 sequence(s) (seq)" in n for n in notes)
    assert int(again.data[0].masks[0, :4, :4].sum()) == 16


def test_resume_refuses_changed_config_or_data(tmp_path: Path) -> None:
    """--resume used to accept another lr, frame_size, split... silently and overwrite train_config.json,
    and to continue on edited annotations. Now both are one line; steps and the operational settings may
    change."""
    masks, _ = two_objects_with_void(3)
    root = tmp_path / "davis"
    write_sequence(root, "seq", masks)
    write_split(root, "seq")
    out = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", **SMALL)
    common = ("--data", root, "--out", out, "--device", "cpu", "--quiet")
    assert train("--config", config, *common, "--until", 1).exit_code == 0
    saved = (out / "train_config.json").read_text()
    changed = write_config(tmp_path / "changed.yaml", **{**SMALL, "lr": 1e-3, "batch_size": 2})
    assert_bad_input(train("--config", changed, *common, "--resume"),
                     f"{out}: --resume with another config", "batch_size (1 -> 2)", "lr (0.0002 -> 0.001)",
                     "start a new --out")
    assert (out / "train_config.json").read_text() == saved
    extended = write_config(tmp_path / "ext.yaml", **{**SMALL, "steps": 4, "log_every": 2, "threads": 0})
    result = train("--config", extended, *common, "--resume", "--until", 2)
    assert result.exit_code == 0, result.output
    assert json.loads((out / "train_config.json").read_text())["steps"] == 4

    edited = masks[1].copy()
    edited[:4, :4] = 2
    write_sequence(root, "seq", [masks[0], edited, masks[2]])
    assert_bad_input(train("--config", extended, *common, "--resume"),
                     "annotations of 1 sequence(s) (seq) changed since the run", "start a new --out")


def test_every_annotation_is_checked_up_front(tmp_path: Path) -> None:
    """A mask missing on a later frame (sparse annotations) was a FileNotFoundError traceback mid-caching:
    now one line naming the first missing file and how many are missing."""
    masks, _ = two_objects_with_void(5)
    root = tmp_path / "davis"
    write_sequence(root, "seq", masks)
    write_split(root, "seq")
    for i in (2, 4):
        (root / "Annotations" / "480p" / "seq" / f"0000{i}.png").unlink()
    result = train("--config", write_config(tmp_path / "c.yaml", **SMALL), "--data", root, "--out", tmp_path / "o")
    assert_bad_input(result, f"{root / 'Annotations' / '480p' / 'seq' / '00002.png'}: missing annotation",
                     "2 frame(s) of the split without a mask")


def test_a_mask_of_another_size_than_its_frame_is_refused_up_front(tmp_path: Path) -> None:
    """Training resized frames and masks to frame_size each on its own, so masks made for another
    resolution (or another crop) of the frames trained without a word, misplaced wherever the aspect
    ratio differed (stma eval refuses such data). Both stages and the still folder now say so, one line,
    before anything is written."""
    masks, _ = two_objects_with_void(4)
    root = tmp_path / "davis"
    write_sequence(root, "seq", masks)
    write_split(root, "seq")
    late = root / "Annotations" / "480p" / "seq" / "00002.png"
    small = Image.open(late)
    small.resize((80, 32), Image.NEAREST).save(late)
    for stage in ("main", "static"):
        out = tmp_path / f"o-{stage}"
        result = train("--config", write_config(tmp_path / "c.yaml", **{**SMALL, "stage": stage}), "--data", root,
                       "--out", out)
        assert_bad_input(result, f"annotation {late} is 80x32 but its frame", "00002.jpg is 160x64")
        assert not out.exists()
    images, still_masks = tmp_path / "img", tmp_path / "mask"
    images.mkdir()
    still_masks.mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.zeros((64, 160, 3), np.uint8)).save(images / f"{name}.jpg")
        Image.fromarray(np.full((64, 160) if name == "a" else (40, 40), 255, np.uint8)).save(still_masks / f"{name}.png")
    result = train("--config", write_config(tmp_path / "s.yaml", **{**SMALL, "stage": "static"}), "--static-images",
                   images, "--static-masks", still_masks, "--out", tmp_path / "o-stills")
    assert_bad_input(result, f"annotation {still_masks / 'b.png'} is 40x40 but its frame {images / 'b.jpg'} is 160x64")
    assert not (tmp_path / "o-stills").exists()


def test_an_interrupted_run_says_where_resume_goes_on(tmp_path: Path) -> None:
    """Ctrl-C (or SIGTERM) during training printed only 'interrupted ...; unfinished outputs were removed,
    finished ones are kept', which leaves a user guessing whether the run is lost. It now also says which
    step the run folder's state holds and to continue with --resume (also with -q, which train now takes
    like the other commands), and --resume goes on from that step."""
    import signal
    import subprocess
    import sys
    import time

    masks, _ = two_objects_with_void(4)
    root = tmp_path / "davis"
    write_sequence(root, "seq", masks)
    write_split(root, "seq")
    config = write_config(tmp_path / "c.yaml", **{**SMALL, "steps": 100000, "checkpoint_every": 2})
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "stma_cli.app", "train", "--config", str(config), "--data",
                             str(root), "--out", str(out), "--device", "cpu", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "state.pt").exists() and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    saved = torch.load(out / "state.pt", weights_only=True)["step"]
    lines = stderr.splitlines()
    assert proc.returncode == 1 and len(lines) == 2 and lines[1].startswith("error: interrupted"), stderr
    assert lines[0].startswith("note: interrupted at step ") and (
        f"{out} holds the training state of step {saved}: continue with the same command and --resume") in lines[0]
    result = train("--config", config, "--data", root, "--out", out, "--device", "cpu", "--resume",
                   "--until", saved + 1)
    assert result.exit_code == 0 and f"resumed at step {saved}" in result.stderr, result.output
    assert log_records(out)[-1]["step"] == saved + 1


def test_fine_tune_the_shipped_model_on_own_videos_as_readme_says(tmp_path: Path) -> None:
    """A user with only their own videos had no config to fine-tune the shipped (Lite2) model with: every
    Lite2 main config mixes in DUTS stills and said only 'static_mix_prob needs static_images'. README's
    command with configs/lite2_finetune_videos_cpu.yaml trains from the shipped model on a DAVIS-layout
    folder of videos, and its run folder segments; the other configs' error says how to do without stills."""
    from stma_core.checkpoint import DEFAULT_CHECKPOINT

    masks, _ = two_objects_with_void(6)
    root = tmp_path / "mine"
    write_sequence(root, "clip", masks)
    write_split(root, "clip")
    readme = (REPO / "README.md").read_text()
    assert ("stma train --config configs/lite2_finetune_videos_cpu.yaml --data MY_DATA \\\n"
            "           --init-from stma_core/weights/stma_lite2_duts_davis16.safetensors") in readme
    out = tmp_path / "runs" / "my_finetune"
    result = train("--config", REPO / "configs" / "lite2_finetune_videos_cpu.yaml", "--data", root,
                   "--init-from", DEFAULT_CHECKPOINT, "--out", out, "--until", 1, "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    assert log_records(out)[-1]["step"] == 1
    result = CliRunner().invoke(app, ["segment", str(root / "JPEGImages" / "480p" / "clip"), "--mask",
                                      str(root / "Annotations" / "480p" / "clip" / "00000.png"), "--checkpoint",
                                      str(out), "--out", str(tmp_path / "seg"), "-q"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "seg" / "clip").glob("*.png"))) == 6
    result = train("--config", REPO / "configs" / "lite2_davis16_main_cpu.yaml", "--data", root, "--out",
                   tmp_path / "o")
    assert_bad_input(result, "set static_mix_prob: 0 to train on the videos alone",
                     "configs/lite2_finetune_videos_cpu.yaml")


def test_masks_without_any_object_are_named(tmp_path: Path) -> None:
    """A split whose masks hold no object at all (blank or inverted exports) trained the network to answer
    'nothing', exit 0, without a word; the static stage on such stills was a ValueError traceback mid-run. Now
    one line (exit 2), and a sequence without any object among others is a note naming it."""
    masks, _ = two_objects_with_void(4)
    blank = [np.zeros_like(m) for m in masks]
    root = tmp_path / "davis"
    write_sequence(root, "blank", blank)
    write_split(root, "blank")
    config = write_config(tmp_path / "c.yaml", **SMALL)
    result = train("--config", config, "--data", root, "--out", tmp_path / "o1", "--device", "cpu", "-q")
    assert_bad_input(result, f"{root / 'ImageSets' / '2017' / 'train.txt'}: no annotation of its 1 sequence(s) "
                             "holds an object")
    result = train("--config", write_config(tmp_path / "s.yaml", **{**SMALL, "stage": "static"}), "--data", root,
                   "--out", tmp_path / "o2", "--device", "cpu", "-q")
    assert_bad_input(result, "no mask with an object in 20 draws")
    write_sequence(root, "objects", masks)
    write_split(root, "blank", "objects")
    result = train("--config", config, "--data", root, "--out", tmp_path / "o3", "--device", "cpu", "--until", 1)
    assert result.exit_code == 0, result.output
    assert "note: 1 sequence(s) have no object in any annotation and give no clips: blank" in result.stderr


def test_resume_from_a_damaged_or_foreign_state_is_one_line(tmp_path: Path) -> None:
    """--resume with a state.pt cut off (copied in part, a full disk), replaced by another file, or of another
    model was a PyTorch traceback (RuntimeError 'failed finding central directory', KeyError 101, size
    mismatches), exit 1. Now one line naming the file and the way on, exit 2."""
    masks, _ = two_objects_with_void(4)
    root = tmp_path / "davis"
    write_sequence(root, "seq", masks)
    write_split(root, "seq")
    config = write_config(tmp_path / "c.yaml", **SMALL)
    run = tmp_path / "run"
    assert train("--config", config, "--data", root, "--out", run, "--device", "cpu", "-q", "--until", 1).exit_code == 0
    good = (run / "state.pt").read_bytes()
    other = torch.load(run / "state.pt", weights_only=True)
    other["model"] = {k: v for k, v in other["model"].items() if not k.startswith("decoder.")}
    torch.save(other, tmp_path / "other.pt")
    for damaged, says in ((good[:1000], "not a readable training state (RuntimeError: "),
                          (b"hello\n", "not a readable training state (KeyError: "),
                          ((tmp_path / "other.pt").read_bytes(), "its model does not fit the run's config")):
        (run / "state.pt").write_bytes(damaged)
        result = train("--config", config, "--data", root, "--out", run, "--device", "cpu", "-q", "--resume")
        assert_bad_input(result, f"{run / 'state.pt'}: {says}",
                         f"start a new --out (with --init-from {run / 'model.safetensors'} to keep its weights)")
    (run / "state.pt").write_bytes(good)
    result = train("--config", config, "--data", root, "--out", run, "--device", "cpu", "-q", "--resume")
    assert result.exit_code == 0 and log_records(run)[-1]["step"] == 3, result.output


def test_a_new_run_does_not_append_to_a_log_without_state(tmp_path: Path) -> None:
    """A run stopped before its first checkpoint leaves log.jsonl but no state.pt, and the way on is to run the
    same command again; that new run appended to the old log, so log.jsonl and curves.png showed steps 1..
    twice. A new run now starts its log afresh; a resumed one still keeps the lines up to its state."""
    masks, _ = two_objects_with_void(4)
    root = tmp_path / "davis"
    write_sequence(root, "seq", masks)
    write_split(root, "seq")
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text("".join(json.dumps({"step": i, "loss": 9.0, "lr": 1.0}) + "\n" for i in (1, 2)))
    config = write_config(tmp_path / "c.yaml", **SMALL)
    assert train("--config", config, "--data", root, "--out", out, "--device", "cpu", "-q", "--until", 2).exit_code == 0
    records = log_records(out)
    assert [r["step"] for r in records] == [1, 2] and all(r["loss"] != 9.0 for r in records), records
    assert train("--config", config, "--data", root, "--out", out, "--device", "cpu", "-q", "--resume").exit_code == 0
    assert [r["step"] for r in log_records(out)] == [1, 2, 3] and log_records(out)[:2] == records


def test_a_run_records_where_it_started_from_as_a_full_path(tmp_path: Path, monkeypatch) -> None:
    """train_config.json recorded --init-from as typed (relative to where the command ran), so the record named
    nothing from elsewhere and reusing the file as --config failed with 'init_from checkpoint not found'. It is
    now the full path; a resume from another directory with the same file still matches it."""
    masks, _ = two_objects_with_void(4)
    root = tmp_path / "davis"
    write_sequence(root, "seq", masks)
    write_split(root, "seq")
    config = write_config(tmp_path / "c.yaml", **SMALL)
    monkeypatch.chdir(tmp_path)
    assert train("--config", config, "--data", root, "--out", "first", "--device", "cpu", "-q", "--until", 1).exit_code == 0
    result = train("--config", config, "--data", root, "--out", "second", "--init-from", "first/model.safetensors",
                   "--device", "cpu", "-q", "--until", 1)
    assert result.exit_code == 0, result.output
    recorded = json.loads((tmp_path / "second" / "train_config.json").read_text())["init_from"]
    assert recorded == str(tmp_path / "first" / "model.safetensors")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = train("--config", tmp_path / "second" / "train_config.json", "--data", root, "--out", "third",
                   "--device", "cpu", "-q", "--until", 1)
    assert result.exit_code == 0, result.output
    result = train("--config", config, "--data", root, "--out", tmp_path / "second", "--resume", "--init-from",
                   tmp_path / "first", "--device", "cpu", "-q")
    assert result.exit_code == 0, result.output
    # the still folders of the static stage, the same way
    monkeypatch.chdir(tmp_path)
    static = write_config(tmp_path / "s.yaml", **{**SMALL, "stage": "static"})
    still = Image.open(root / "JPEGImages" / "480p" / "seq" / "00000.jpg")
    for folder in ("img", "mask"):
        (tmp_path / folder).mkdir()
    still.save(tmp_path / "img" / "a.jpg")
    Image.open(root / "Annotations" / "480p" / "seq" / "00000.png").save(tmp_path / "mask" / "a.png")
    result = train("--config", static, "--static-images", "img", "--static-masks", "mask", "--out", "stills",
                   "--device", "cpu", "-q", "--until", 1)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "stills" / "train_config.json").read_text())
    assert (saved["static_images"], saved["static_masks"]) == (str(tmp_path / "img"), str(tmp_path / "mask"))
    monkeypatch.chdir(elsewhere)
    result = train("--config", tmp_path / "stills" / "train_config.json", "--out", "stills2", "--device", "cpu", "-q",
                   "--until", 1)
    assert result.exit_code == 0, result.output


def test_a_cut_off_or_unreadable_image_is_named(tmp_path: Path) -> None:
    """A frame cut off by a partial copy was 'OSError: image file is truncated' deep in the feature cache, and
    a still image or mask that is cut off or no image at all a traceback mid-run (PIL's OSError or
    UnidentifiedImageError), exit 1. Each is now one line naming the file, exit 2."""
    masks, _ = two_objects_with_void(4)
    root = tmp_path / "davis"
    write_sequence(root, "seq", masks)
    write_split(root, "seq")
    frame = root / "JPEGImages" / "480p" / "seq" / "00002.jpg"
    frame.write_bytes(frame.read_bytes()[:600])
    result = train("--config", write_config(tmp_path / "c.yaml", **SMALL), "--data", root, "--out", tmp_path / "o",
                   "-q")
    assert_bad_input(result, f"{frame}: not a readable image, or truncated (")
    images, still_masks = tmp_path / "img", tmp_path / "mask"
    images.mkdir()
    still_masks.mkdir()
    Image.fromarray(np.full((64, 160, 3), 90, np.uint8)).save(images / "a.jpg")
    Image.fromarray(masks[0]).save(still_masks / "a.png")
    static = write_config(tmp_path / "s.yaml", **{**SMALL, "stage": "static"})
    for bad, says in ((images / "a.jpg", "not a readable image, or truncated (cannot identify image file"),
                      (still_masks / "a.png", "not a readable mask PNG, or truncated (")):
        good = bad.read_bytes()
        bad.write_bytes(b"not an image")
        result = train("--config", static, "--static-images", images, "--static-masks", still_masks, "--out",
                       tmp_path / f"o-{bad.stem}{bad.suffix}", "-q")
        assert_bad_input(result, f"{bad}: {says}")
        bad.write_bytes(good)


def test_colour_still_masks_keep_their_objects(tmp_path: Path) -> None:
    """--static-masks read RGB masks as grey and cut at 128: DAVIS red (128, 0, 0) became 38, so every
    object of a colour-coded mask folder was lost (all of them: 'no still with an object' traceback after
    the run folder was written; some: trained on the rest without a word). Colour masks and cut-outs on
    transparency are now read as `stma segment` reads them; grey ones (DUTS) as before."""
    from stma_core.io.palette import DAVIS_PALETTE
    from stma_core.training.static_data import read_still_mask

    masks, regions = two_objects_with_void(1)
    ids = np.where(masks[0] == 255, 0, masks[0])  # objects 1 and 2
    Image.fromarray(DAVIS_PALETTE[ids].astype(np.uint8)).save(tmp_path / "davis_colours.png")
    assert np.array_equal(read_still_mask(tmp_path / "davis_colours.png"), ids)
    cutout = np.zeros((*ids.shape, 4), np.uint8)
    cutout[..., :3] = np.random.default_rng(0).integers(0, 255, (*ids.shape, 3))  # a picture, opaque where the object is
    cutout[..., 3] = np.where(ids == 1, 255, 0)
    Image.fromarray(cutout, "RGBA").save(tmp_path / "cutout.png")
    assert np.array_equal(read_still_mask(tmp_path / "cutout.png"), (ids == 1).astype(np.uint8))
    soft = np.where(ids > 0, 200, 30).astype(np.uint8)  # grey RGB (a white-on-black mask saved as RGB): cut at 128
    Image.fromarray(np.stack([soft] * 3, -1)).save(tmp_path / "grey_rgb.png")
    assert np.array_equal(read_still_mask(tmp_path / "grey_rgb.png", (32, 80)),
                          cv2.resize((ids > 0).astype(np.uint8), (80, 32), interpolation=cv2.INTER_NEAREST))


@pytest.mark.parametrize("rgb_frame", [0, 2])
def test_rgb_annotations_are_one_line(tmp_path: Path, rgb_frame: int) -> None:
    """RGB annotation PNGs were a 'too many values to unpack' traceback; they are read by the evaluator's
    rule (read_id_mask): palette or grayscale id PNGs, anything else one line, on the first frame before
    any work, on later ones while caching."""
    masks, _ = two_objects_with_void(3)
    root = tmp_path / "davis"
    write_sequence(root, "seq", masks)
    write_sequence(tmp_path / "rgb", "seq", masks, mode="RGB")
    name = f"0000{rgb_frame}.png"
    (tmp_path / "rgb" / "Annotations" / "480p" / "seq" / name).replace(root / "Annotations" / "480p" / "seq" / name)
    write_split(root, "seq")
    result = train("--config", write_config(tmp_path / "c.yaml", **SMALL), "--data", root, "--out", tmp_path / "o",
                   "--device", "cpu")
    assert_bad_input(result, f"training annotation {root / 'Annotations' / '480p' / 'seq' / name} is a RGB image",
                     "palette (P) or grayscale (L) PNG")


def test_frames_are_read_in_natural_order(tmp_path: Path) -> None:
    """Frames 0.jpg..11.jpg were read 0, 1, 10, 11, 2, ... (plain sorted) while `stma segment` reads them
    in natural order; training now does too, frames and masks alike."""
    from stma_core.training.feature_cache import build_cache, frame_paths, load_cache

    masks = [np.zeros((64, 160), np.uint8) for _ in range(12)]
    for i, ids in enumerate(masks):
        ids[:, : 8 * (i + 1)] = 1  # the object grows with the frame number
    names = [str(i) for i in range(12)]
    write_sequence(tmp_path / "d", "seq", masks, names=names)
    frames, mask_files = frame_paths(tmp_path / "d", "seq")
    assert [p.stem for p in frames] == names and [p.stem for p in mask_files] == names
    build_cache(tmp_path / "d", ["seq"], tmp_path / "cache", size=(64, 160))
    areas = load_cache(tmp_path / "cache", ["seq"])[0].masks.sum((1, 2)).tolist()
    assert areas == [64 * 8 * (i + 1) for i in range(12)]


def test_float_settings_accept_exponents_yaml_reads_as_strings(tmp_path: Path) -> None:
    """`lr: 1e-4` is a string to YAML 1.1 and was refused as 'not float'; numbers are accepted, words not."""
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-4\nweight_decay: 5e-2\nsteps: 10\n")
    cfg = load_train_config(path)
    assert cfg.lr == 1e-4 and cfg.weight_decay == 0.05
    path.write_text("lr: fast\n")
    with pytest.raises(Exception, match="`lr: 'fast'` is not float"):
        load_train_config(path)


def test_missing_split_says_how_to_make_one(tmp_path: Path) -> None:
    """Without ImageSets the error said only 'pass --data with a DAVIS-layout root'; now it says which file
    to create and how many sequence folders there are, and `split:` may name such a file."""
    masks, _ = two_objects_with_void(3)
    root = tmp_path / "mine"
    for name in ("a", "b"):
        write_sequence(root, name, masks)
    config = write_config(tmp_path / "c.yaml", **SMALL)
    assert_bad_input(train("--config", config, "--data", root, "--out", tmp_path / "o"),
                     "2 sequence folder(s) found under", "create ImageSets/2017/train.txt listing the sequence "
                     "folders", "`split:` in the config to such a .txt file")
    listing = tmp_path / "mine.txt"
    listing.write_text("b\n")
    trainer = prepare_trainer(write_config(tmp_path / "s.yaml", **SMALL, split=str(listing)), root, tmp_path / "o")
    assert [s.name for s in trainer.data] == ["b"]
    missing = write_config(tmp_path / "m.yaml", **SMALL, split=str(tmp_path / "nope.txt"))
    assert_bad_input(train("--config", missing, "--data", root, "--out", tmp_path / "o2"),
                     "nope.txt: split file not found", f"looked from the current folder and in {root}")
    # `split: ImageSets/2017/mine.txt`, written as a path inside the data root, was 'split file not found'
    # unless the command ran from the data root; it is looked for there too
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "mine.txt").write_text("a\n")
    inside = write_config(tmp_path / "i.yaml", **SMALL, split="ImageSets/2017/mine.txt")
    assert [s.name for s in prepare_trainer(inside, root, tmp_path / "o3").data] == ["a"]


def test_resume_of_a_run_saved_before_a_setting_existed(tmp_path: Path) -> None:
    """A train_config.json without a key added later (its default then) is not a changed config."""
    from stma_core.training.run import check_resumed_config

    cfg = load_train_config(write_config(tmp_path / "c.yaml", **SMALL))
    saved = json.loads(json.dumps(asdict(cfg)))
    del saved["static_region_prob"]
    check_resumed_config(tmp_path, saved, asdict(cfg))
    saved["static_region_prob"] = 0.5
    with pytest.raises(Exception, match=r"static_region_prob \(0.5 -> 0.0\)"):
        check_resumed_config(tmp_path, saved, asdict(cfg))
