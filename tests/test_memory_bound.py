"""Long videos: once the memories are full, what a VideoSession holds stops growing (no per-frame leak)."""

from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest
import torch

from stma_core.config import InferenceConfig, ModelConfig
from stma_core.inference.session import VideoSession
from stma_core.model.network import STMANetwork

TINY = ModelConfig(embed_dim=32, stml_depth=1, num_heads=2, key_dim=16, value_dim=32, decoder_dims=(16, 16, 8))


def _held_tensors(session: VideoSession) -> tuple[int, int]:
    """(count, bytes) of the tensors the session's memories and caches keep between frames."""
    tensors: list[torch.Tensor] = list(session.spatial.pinned) + list(session.spatial.queue)
    for entry in session.temporal.entries:
        tensors += [entry.key, entry.value]
    if session.temporal._cache is not None:
        tensors += [session.temporal._cache[1]] + [g.values for g in session.temporal._cache[2]]
    if session.engine._cache is not None:
        cache = session.engine._cache
        tensors += list(cache.keys) + list(cache.values) + [cache.refs_out, cache.objs_out]
    return len(tensors), sum(t.numel() * t.element_size() for t in tensors)


def _live_tensor_count() -> int:
    gc.collect()
    with warnings.catch_warnings():  # isinstance() on some torch module proxies warns of deprecations
        warnings.simplefilter("ignore")
        return sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))


@pytest.mark.parametrize("capacity", [(2, 3), (0, 0)])  # (0, 0): first-appearance frames only
def test_memories_and_held_tensors_stop_growing_once_full(capacity: tuple[int, int]):
    torch.manual_seed(0)
    net = STMANetwork(TINY, pretrained_trunk=False)
    cfg = InferenceConfig(size=64, spatial_capacity=capacity[0], spatial_every=2, temporal_capacity=capacity[1],
                          temporal_every=2)
    session = VideoSession(net, cfg)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)
    first = np.zeros((64, 96), np.uint8)
    first[10:30, 10:40] = 1
    later = np.zeros((64, 96), np.uint8)
    later[40:60, 50:90] = 2  # a second object first given on frame 5 pins one more frame
    held, live = [], []
    for t in range(40):
        mask = first if t == 0 else later if t == 5 else None
        session.step(np.roll(base, 2 * t, axis=1), mask)
        pinned_s, pinned_t = len(session.spatial.pinned), sum(e.pinned for e in session.temporal.entries)
        assert len(session.spatial) <= cfg.spatial_capacity + pinned_s
        assert len(session.temporal) <= cfg.temporal_capacity + pinned_t
        held.append(_held_tensors(session))
        if t >= 20:
            live.append(_live_tensor_count())
    assert len(session.spatial) == cfg.spatial_capacity + 2 and len(session.temporal) == cfg.temporal_capacity + 2
    full = 5 + cfg.temporal_every * cfg.temporal_capacity + 1  # both memories are full from here on
    assert len(set(held[full:])) == 1, held[full:]  # same tensors count and bytes every frame
    assert max(live) == min(live), live  # nothing else accumulates either


def test_reference_streams_are_recomputed_only_when_memories_change():
    """STML object/reference streams are cached: run once per memory update, not once per frame."""
    torch.manual_seed(0)
    net = STMANetwork(TINY, pretrained_trunk=False)
    calls = []
    encode = net.encode_references
    net.encode_references = lambda refs, objs: calls.append(refs.shape[1]) or encode(refs, objs)  # type: ignore
    cfg = InferenceConfig(size=64, spatial_every=3, temporal_every=3)
    session = VideoSession(net, cfg)
    base = np.random.default_rng(1).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    mask = np.zeros((64, 96), np.uint8)
    mask[10:30, 10:40] = 1
    for t in range(30):
        session.step(np.roll(base, t, axis=1), mask if t == 0 else None)
    # frame 0: its first key (1 call); then one refresh after each of the 10 memory updates (frames 0, 3, ..., 27)
    assert len(calls) == 1 + 10, calls
