"""The shipped model follows the *annotated* region, not the most salient object in view.

A memory-based tracker given a patch of background, or one of two identical objects, must keep that
region: on a clip made of the first frame repeated it has nothing else to go on, so it should hold
it (nearly) perfectly. The model shipped before DUTS static training lost a background patch at
once (IoU 0 on the repeated frame) and spilled a look-alike twin onto 50 % of its area; on DAVIS
`camel` it absorbed the second camel that walks in. Frames come from the bundled example clip, so
the first tests run everywhere; the camel test needs the shared DAVIS data. A patch of plain asphalt
has no texture to match: on the real clip it shrinks away at the default size 480 (it holds at 288),
so the real-clip test uses a patch of building facade.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import EXAMPLES
from stma_core.checkpoint import DEFAULT_CHECKPOINT
from stma_core.inference.session import session_factory
from stma_core.io.frames import open_frames

pytestmark = pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_file(),
                                reason=f"the shipped model {DEFAULT_CHECKPOINT.name} is not in stma_core/weights")


@pytest.fixture(scope="module")
def make_session():
    return session_factory(None, "cpu")


@pytest.fixture(scope="module")
def example() -> tuple[list[np.ndarray], np.ndarray]:
    """The first 16 frames of the bundled car-shadow clip and its car mask (bool)."""
    frames = [frame for _, frame in zip(range(16), (f for _, f in open_frames(EXAMPLES / "car-shadow.mp4")))]
    return frames, np.array(Image.open(EXAMPLES / "car-shadow_mask.png")) == 1


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_a_background_patch_on_a_repeated_frame_stays_put(make_session, example) -> None:
    frames, car = example
    patch = np.zeros(car.shape, np.uint8)
    patch[300:400, 80:230] = 1  # asphalt below-left of the car: nothing salient about it
    assert not (patch.astype(bool) & car).any()
    session = make_session()
    for index in range(8):
        pred = session.step(frames[0], patch if index == 0 else None) == 1
        assert _iou(pred, patch == 1) > 0.7, index
        assert pred[car].mean() < 0.01, index  # never drawn to the car


def test_one_of_two_identical_objects_keeps_its_own_side(make_session, example) -> None:
    frames, car = example
    twin = np.concatenate([frames[0], frames[0]], 1)  # the same car twice, side by side
    left = np.concatenate([car, np.zeros_like(car)], 1).astype(np.uint8)
    width = car.shape[1]
    session = make_session()
    for index in range(8):
        pred = session.step(twin, left if index == 0 else None) == 1
        assert pred[:, width:].sum() < 0.02 * car.sum(), index  # the unannotated twin stays background
        assert _iou(pred[:, :width], car) > 0.85, index


def test_a_background_patch_on_the_real_clip_follows_the_pan_and_never_jumps_onto_the_car(make_session,
                                                                                        example) -> None:
    """A patch of building facade above the car: as the camera pans, it moves right, keeps its size,
    and never spreads onto the car that drives through the frame below it."""
    frames, car = example
    patch = np.zeros(car.shape, np.uint8)
    patch[10:80, 380:560] = 1
    assert not (patch.astype(bool) & car).any()
    session = make_session()
    previous, centre_x = None, []
    for index, frame in enumerate(frames):
        pred = session.step(frame, patch if index == 0 else None) == 1
        assert 0.6 < pred.sum() / patch.sum() < 1.6, index  # neither lost nor grown onto something else
        ys, xs = np.nonzero(pred)
        assert ys.max() < 120, index  # stays up on the facade; the car's roof starts at row 88, left of it
        centre_x.append(xs.mean())
        if previous is not None:
            assert _iou(pred, previous) > 0.6, index  # moves smoothly with the camera
        previous = pred
    assert centre_x[-1] > centre_x[0] + 60  # the pan carries it right (about 180 px over 16 frames)


def test_a_second_camel_walking_in_is_not_absorbed(make_session, davis16: Path) -> None:
    """DAVIS 2016 `camel`: only the front camel is annotated; a second one appears behind it."""
    frames = sorted((davis16 / "JPEGImages" / "480p" / "camel").glob("*.jpg"))
    masks = sorted((davis16 / "Annotations" / "480p" / "camel").glob("*.png"))
    session = make_session()
    late = []
    for index, (image, mask) in enumerate(zip(frames, masks)):
        gt = np.array(Image.open(mask)) == 1
        pred = session.step(np.asarray(Image.open(image).convert("RGB")), gt.astype(np.uint8) if index == 0 else None)
        if index >= 60:  # the second camel is in view and next to the first
            late.append(_iou(pred == 1, gt))
    # the first shipped model scored 0.67 here (size 288), the Lite0 stage-1-only model 0.50; the Lite0
    # default 0.72 and the shipped Lite2 model 0.72: the second camel is still absorbed (docs/MODEL.md)
    assert np.mean(late) > 0.7, np.round(late, 2)
