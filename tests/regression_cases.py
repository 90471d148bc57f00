"""Real inputs whose masks were saved before the issue-10 refactor (tests/fixtures/regression/).

All objects of each case start on frame 0, so the refactor must leave their masks unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from stma_core.config import InferenceConfig
from stma_core.io.frames import open_frames

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures" / "regression"

# small memories so that 16 frames already evict (LFU) and refresh the reference streams
SMALL_MEMORY = dict(spatial_capacity=1, spatial_every=2, temporal_capacity=2, temporal_every=2)
CASES = {
    "car_shadow": "examples/car-shadow.mp4, 16 frames, the previous shipped model, size 288, small memories",
    "pair": "DAVIS 2016 parkour | camel side by side at half size (2 objects), 12 frames, default memories",
}


def case_inputs(name: str, data: Path) -> tuple[list[np.ndarray], np.ndarray, InferenceConfig]:
    """-> (RGB frames, id mask of frame 0, inference settings) of a case."""
    if name == "car_shadow":
        source = open_frames(REPO / "examples" / "car-shadow.mp4")
        frames = [frame for _, frame in zip(range(16), (f for _, f in source))]
        mask = (np.array(Image.open(REPO / "examples" / "car-shadow_mask.png")) > 0).astype(np.uint8)
        return frames, mask, InferenceConfig(size=288, **SMALL_MEMORY)
    if name == "pair":
        root = data / "davis2016"
        frames, masks = [], []
        for i in range(12):
            row, mask_row = [], []
            for obj, seq in enumerate(("parkour", "camel"), start=1):
                image = Image.open(root / "JPEGImages" / "480p" / seq / f"{i:05d}.jpg").convert("RGB")
                row.append(np.asarray(image.resize((427, 240), Image.BILINEAR)))
                if i == 0:
                    m = Image.open(root / "Annotations" / "480p" / seq / f"{i:05d}.png").resize((427, 240), Image.NEAREST)
                    mask_row.append((np.asarray(m) > 0).astype(np.uint8) * obj)
            frames.append(np.concatenate(row, 1))
            if mask_row:
                masks.append(np.concatenate(mask_row, 1))
        return frames, masks[0], InferenceConfig(size=288)
    raise KeyError(name)


def run_case(name: str, data: Path) -> list[np.ndarray]:
    """Segments a case with the model the fixtures were made with, on CPU; -> one HxW uint8 id mask per frame."""
    from stma_core.checkpoint import PREVIOUS_CHECKPOINT
    from stma_core.inference.session import session_factory

    frames, mask, config = case_inputs(name, data)
    session = session_factory(PREVIOUS_CHECKPOINT, "cpu", config=config)()
    return [session.step(frame, mask if i == 0 else None) for i, frame in enumerate(frames)]
