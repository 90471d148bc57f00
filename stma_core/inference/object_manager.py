"""Maps the user's object ids (1..254, any order, appearing on any frame) to contiguous indices."""

from __future__ import annotations

import numpy as np

MAX_OBJECTS = 254


class ObjectManager:
    def __init__(self) -> None:
        self.user_ids: list[int] = []  # internal index i (0-based) -> user id

    @property
    def count(self) -> int:
        return len(self.user_ids)

    def add(self, ids: list[int]) -> list[int]:
        """Registers ids not seen before; returns the new ones."""
        bad = [int(i) for i in ids if not 1 <= int(i) <= MAX_OBJECTS]
        if bad:
            raise ValueError(f"object ids must be 1..{MAX_OBJECTS}; got {bad[:5]}")
        new = [int(i) for i in ids if int(i) not in self.user_ids]
        if self.count + len(new) > MAX_OBJECTS:
            raise ValueError(f"at most {MAX_OBJECTS} objects per video; got {self.count + len(new)}")
        self.user_ids.extend(new)
        return new

    def index_of(self, user_id: int) -> int:
        return self.user_ids.index(int(user_id))

    def to_user_mask(self, labels: np.ndarray) -> np.ndarray:
        """labels: 0 = background, i+1 = internal object i -> user-id mask (uint8)."""
        lut = np.zeros(self.count + 1, np.uint8)
        lut[1:] = self.user_ids
        return lut[labels]
