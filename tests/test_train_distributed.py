"""`stma train` under torchrun: 2 CPU processes (gloo) keep identical replicas; rank 0 alone writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from stma_core.training.run import prepare_trainer
from test_train import make_tiny_davis, write_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="torch.distributed gloo missing")
def test_two_process_training_keeps_replicas_identical(davis16: Path, tmp_path: Path) -> None:
    data = make_tiny_davis(davis16, tmp_path / "davis")
    # two STML blocks: every trainable weight gets a gradient (the shipped models' case)
    config = write_config(tmp_path / "tiny.yaml", steps=3, checkpoint_every=3,
                          model={"embed_dim": 32, "stml_depth": 2, "num_heads": 2, "key_dim": 16,
                                 "value_dim": 32, "decoder_dims": [16, 16, 8]})
    out, cache = tmp_path / "run", tmp_path / "cache"
    single = prepare_trainer(config, data, tmp_path / "single", cache_dir=cache)  # also builds the cache
    single_first_loss = single.train_step()

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "stma_cli.app", "train", "--config", str(config), "--data", str(data), "--out", str(out),
               "--cache-dir", str(cache), "--device", "cpu", "--quiet"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [str(out / "model.safetensors")]  # printed by rank 0 only

    replicas = json.loads((out / "replicas.json").read_text())
    assert replicas["step"] == 3 and len(replicas["parameter_sha1"]) == 2
    assert len(set(replicas["parameter_sha1"])) == 1, replicas
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]  # one log, not one per rank
    # rank 0 draws the single process's clips (seed + 0); the logged loss is the mean over both ranks,
    # so it differs unless rank 1 drew other clips; identical replicas then prove the all-reduce
    assert abs(records[0]["loss"] - single_first_loss) > 1e-4
