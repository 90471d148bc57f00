"""The DAVIS colour palette, so our PNGs open with the same colours as every DAVIS tool.

It is the PASCAL VOC colour map: id i gets the colour built from the bits of i, so ids 1, 2, 3 are
dark red, dark green, olive, and 255 (void) is (224, 224, 192).
"""

from __future__ import annotations

import numpy as np


def _davis_palette() -> np.ndarray:
    palette = np.zeros((256, 3), np.uint8)
    for index in range(256):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= (c & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette[index] = (r, g, b)
    return palette


DAVIS_PALETTE: np.ndarray = _davis_palette()
"""(256, 3) uint8: row i is the RGB colour of id i."""

DAVIS_PALETTE_FLAT: list[int] = DAVIS_PALETTE.reshape(-1).tolist()
"""The palette as PIL's `putpalette` wants it (768 ints)."""

_COLOR_TO_ID: dict[tuple[int, int, int], int] = {tuple(int(v) for v in c): i for i, c in enumerate(DAVIS_PALETTE)}


def davis_id_of(color: tuple[int, int, int]) -> int | None:
    """Id whose DAVIS colour is exactly `color`, or None (lets RGB masks drawn in DAVIS colours keep their ids)."""
    return _COLOR_TO_ID.get(tuple(int(v) for v in color))


def colorize(mask: np.ndarray) -> np.ndarray:
    """HxW id mask -> HxWx3 uint8 RGB image in DAVIS colours."""
    return DAVIS_PALETTE[mask]
