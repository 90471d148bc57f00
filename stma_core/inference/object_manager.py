"""Maps the user's object ids (1..254, any order, appearing on any frame) to contiguous indices.

Objects first given on the same frame form a group; groups keep their own memory (see VideoSession).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stma_core.ids import MAX_OBJECTS


@dataclass
class ObjectGroup:
    """Objects that arrived together: internal indices start..start+count-1, first given on `frame`."""

    start: int
    count: int
    frame: int


class ObjectManager:
    def __init__(self) -> None:
        self.user_ids: list[int] = []  # internal index i (0-based) -> user id
        self.groups: list[ObjectGroup] = []

    @property
    def count(self) -> int:
        return len(self.user_ids)

    def add(self, ids: list[int], frame: int = 0) -> list[int]:
        """Registers ids not seen before as one new group first given on `frame`; returns the new ones.

        Raises ValueError when an id is outside 1..MAX_OBJECTS or the video would exceed MAX_OBJECTS.
        """
        bad = [int(i) for i in ids if not 1 <= int(i) <= MAX_OBJECTS]
        if bad:
            raise ValueError(f"object ids must be 1..{MAX_OBJECTS}; got {bad[:5]} (0 is background, "
                             f"255 is void): relabel the mask")
        new = list(dict.fromkeys(int(i) for i in ids if int(i) not in self.user_ids))
        if self.count + len(new) > MAX_OBJECTS:
            raise ValueError(f"at most {MAX_OBJECTS} objects per video; got {self.count + len(new)}: "
                             "remove objects first (remove_objects)")
        if new:
            self.groups.append(ObjectGroup(self.count, len(new), frame))
            self.user_ids.extend(new)
        return new

    def remove(self, ids: list[int]) -> list[int]:
        """Forgets these user ids; -> their former internal indices (sorted). Unknown ids raise ValueError."""
        unknown = [int(i) for i in ids if int(i) not in self.user_ids]
        if unknown:
            raise ValueError(f"object ids {unknown[:5]} are not in this video; known ids: {self.user_ids}")
        gone = sorted(self.user_ids.index(int(i)) for i in ids)
        groups, start = [], 0
        for group in self.groups:
            count = sum(1 for i in range(group.start, group.start + group.count) if i not in gone)
            if count:
                groups.append(ObjectGroup(start, count, group.frame))
                start += count
        self.groups = groups
        self.user_ids = [u for i, u in enumerate(self.user_ids) if i not in gone]
        return gone

    def index_of(self, user_id: int) -> int:
        return self.user_ids.index(int(user_id))

    def to_user_mask(self, labels: np.ndarray) -> np.ndarray:
        """labels: 0 = background, i+1 = internal object i -> user-id mask (uint8)."""
        lut = np.zeros(self.count + 1, np.uint8)
        lut[1:] = self.user_ids
        return lut[labels]
