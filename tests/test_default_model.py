"""The shipped model on real DAVIS 2016 val frames it never trained on: it must clearly beat the
optical-flow baseline, on one object and on two objects side by side (each keeping its id)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stma_core.checkpoint import DEFAULT_CHECKPOINT
from stma_core.eval.metrics import frame_scores
from stma_core.inference.factory import make_propagator_factory
from conftest import read_davis_frames, read_davis_mask

pytestmark = pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(),
                                reason=f"the shipped model {DEFAULT_CHECKPOINT.name} is not in stma_core/weights")
FRAMES = 24


def _score(method: str, frames: list[np.ndarray], masks: list[np.ndarray], n_objects: int) -> float:
    """Mean J&F over frames 1..n-2 (the official protocol skips the first and the last)."""
    propagator = make_propagator_factory(method)()
    scores = []
    for i, frame in enumerate(frames):
        pred = propagator.step(frame, masks[0] if i == 0 else None)
        if 0 < i < len(frames) - 1:
            j, f = frame_scores(masks[i], pred, n_objects)
            scores.append((j.mean() + f.mean()) / 2)
    return float(np.mean(scores))


def _sequence(davis16: Path, name: str, count: int = FRAMES) -> tuple[list[np.ndarray], list[np.ndarray]]:
    frames = read_davis_frames(davis16, name, count)
    masks = [(read_davis_mask(davis16, name, i) == 1).astype(np.uint8) for i in range(len(frames))]
    return frames, masks


def test_single_object_beats_flow_clearly_on_a_whole_sequence(davis16: Path) -> None:
    """parkour (100 frames): a fast, deforming runner; flow drifts off him, memory keeps him."""
    frames, masks = _sequence(davis16, "parkour", 100)
    model, flow = _score("stma", frames, masks, 1), _score("flow", frames, masks, 1)
    assert model > 0.75 and model > flow + 0.3, (model, flow)


def test_two_objects_side_by_side_keep_their_ids(davis16: Path) -> None:
    left_frames, left_masks = _sequence(davis16, "goat")
    right_frames, right_masks = _sequence(davis16, "dog")
    frames = [np.concatenate(pair, 1) for pair in zip(left_frames, right_frames)]
    masks = [np.concatenate([a, b * 2], 1) for a, b in zip(left_masks, right_masks)]
    model, flow = _score("stma", frames, masks, 2), _score("flow", frames, masks, 2)
    assert model > 0.7 and model > flow + 0.05, (model, flow)
