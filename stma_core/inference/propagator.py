"""The one interface every segmentation method exposes to the CLI, eval and benchmarks.

A propagator is per-video state: feed it frames in order; give it a mask on any frame where
objects are annotated (new ids may appear later); it returns the id mask of every frame.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Propagator(Protocol):
    def step(self, frame: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        """Segment one frame.

        frame: HxWx3 uint8 RGB. mask: optional HxW uint8 id mask (0 = background, 1..254 = objects)
        given for this frame; ids present in it are taken as ground truth on this frame.
        Returns an HxW uint8 id mask at the frame's resolution, using the user's ids.
        """
        ...
