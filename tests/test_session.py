"""Per-video inference state: id mapping, objects appearing later, bounded memories, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stma_core.checkpoint import load_model, read_config, save_model
from stma_core.config import InferenceConfig, ModelConfig
from stma_core.errors import StmaInputError
from stma_core.inference.object_manager import ObjectManager
from stma_core.inference.session import VideoSession, processing_size
from stma_core.inference.temporal_memory import TemporalMemory
from stma_core.model.network import STMANetwork

SMALL = ModelConfig(embed_dim=32, stml_depth=1, num_heads=2, key_dim=16, value_dim=32, decoder_dims=(16, 16, 8))


def _frames(n: int, h: int = 96, w: int = 128) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return [np.roll(base, i * 2, axis=1) for i in range(n)]


def test_object_manager_maps_sparse_user_ids_to_contiguous_indices():
    om = ObjectManager()
    assert om.add([7, 200]) == [7, 200]
    assert om.add([200, 3]) == [3]
    labels = np.array([[0, 1, 2, 3]], np.uint8)
    assert om.to_user_mask(labels).tolist() == [[0, 7, 200, 3]]
    assert len(om.add(list(range(1, 255)))) == 251 and om.count == 254
    with pytest.raises(ValueError):
        om.add([255])


def test_session_keeps_user_ids_and_accepts_objects_on_later_frames():
    torch.manual_seed(0)
    net = STMANetwork(SMALL, pretrained_trunk=False)
    session = VideoSession(net, InferenceConfig(size=96, spatial_capacity=1, temporal_capacity=2))
    frames = _frames(6, 120, 160)
    first = np.zeros((120, 160), np.uint8)
    first[10:50, 10:60] = 42
    later = np.zeros((120, 160), np.uint8)
    later[70:110, 90:150] = 9
    out0 = session.step(frames[0], first)
    assert out0.shape == (120, 160) and out0.dtype == np.uint8
    assert set(np.unique(out0)) <= {0, 42} and (out0 == 42).sum() > 0.8 * (first == 42).sum()
    session.add_mask(3, later)
    outs = [session.step(f) for f in frames[1:]]
    assert session.objects.user_ids == [42, 9]
    assert set(np.unique(outs[2])) <= {0, 42, 9} and (outs[2] == 9).any()
    assert len(session.spatial.pinned) == 2  # the frames where 42 and 9 first appeared


def test_memories_stay_bounded():
    torch.manual_seed(0)
    net = STMANetwork(SMALL, pretrained_trunk=False)
    cfg = InferenceConfig(size=64, spatial_capacity=2, spatial_every=1, temporal_capacity=3, temporal_every=1)
    session = VideoSession(net, cfg)
    mask = np.zeros((64, 96), np.uint8)
    mask[10:30, 10:40] = 1
    for i, frame in enumerate(_frames(12, 64, 96)):
        session.step(frame, mask if i == 0 else None)
    assert len(session.spatial) == 1 + 2
    assert len(session.temporal) == 1 + 3
    assert session.temporal.entries[0].pinned


def test_lfu_eviction_drops_the_least_used_entry():
    mem = TemporalMemory(capacity=2)
    key = torch.zeros(1, 4, 2)
    value = torch.zeros(1, 1, 3, 4)
    mem.add(key, value, pin=True)
    mem.add(key + 1, value)
    mem.add(key + 2, value)
    # entry 1 used a lot, entry 2 little
    mem.record_usage(torch.tensor([[0, 0, 0, 0, 5, 5, 5, 5, 0.1, 0.1, 0.1, 0.1]]))
    mem.add(key + 3, value)
    assert [float(e.key[0, 0, 0]) for e in mem.entries] == [0.0, 1.0, 3.0]


def test_processing_size_scales_short_side_and_never_upscales():
    assert processing_size(480, 854, 240) == (240, 427)
    assert processing_size(100, 200, 480) == (100, 200)


def test_checkpoint_roundtrip_and_bad_files(tmp_path):
    net = STMANetwork(SMALL, pretrained_trunk=False)
    path = tmp_path / "m.safetensors"
    save_model(net, SMALL, path)
    assert (tmp_path / "m.json").exists()
    cfg, _ = read_config(path)
    assert cfg == SMALL
    loaded, _, _ = load_model(path)
    for (k, a), (_, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    bad = tmp_path / "bad.safetensors"
    bad.write_text("not a checkpoint")
    with pytest.raises(StmaInputError, match="bad.safetensors"):
        load_model(bad)
    with pytest.raises(StmaInputError, match="missing.safetensors"):
        load_model(tmp_path / "missing.safetensors")
