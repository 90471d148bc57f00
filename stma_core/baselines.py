"""Simple baselines shown beside every model score: first-frame copy and DIS optical-flow propagation."""

from __future__ import annotations

import cv2
import numpy as np


def _merge(previous: np.ndarray | None, given: np.ndarray | None) -> np.ndarray | None:
    """Objects in a given mask replace what was there; other objects keep their previous pixels."""
    if given is None:
        return previous
    if previous is None:
        return given.copy()
    out = previous.copy()
    ids = np.unique(given)
    ids = ids[ids != 0]
    out[np.isin(out, ids)] = 0
    out[given != 0] = given[given != 0]
    return out


class CopyPropagator:
    """Repeats the last given mask on every later frame (no motion at all)."""

    def __init__(self) -> None:
        self._mask: np.ndarray | None = None

    def step(self, frame: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        self._mask = _merge(self._mask, mask)
        if self._mask is None:
            return np.zeros(frame.shape[:2], np.uint8)
        return self._mask.copy()


class FlowPropagator:
    """Warps the previous mask to the current frame with OpenCV DIS optical flow (nearest sampling)."""

    def __init__(self, preset: int = cv2.DISOPTICAL_FLOW_PRESET_MEDIUM) -> None:
        self._dis = cv2.DISOpticalFlow_create(preset)
        self._prev_gray: np.ndarray | None = None
        self._mask: np.ndarray | None = None

    def step(self, frame: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if self._mask is not None and self._prev_gray is not None:
            # Backward flow: for each pixel of the current frame, where it was in the previous one.
            flow = self._dis.calc(gray, self._prev_gray, None)
            h, w = gray.shape
            grid_x, grid_y = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
            self._mask = cv2.remap(
                self._mask, grid_x + flow[..., 0], grid_y + flow[..., 1],
                interpolation=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0,
            )
        self._mask = _merge(self._mask, mask)
        self._prev_gray = gray
        if self._mask is None:
            return np.zeros(gray.shape, np.uint8)
        return self._mask.copy()
