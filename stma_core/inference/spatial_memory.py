"""Spatial memory: the reference frames the STML block attends to.

A first-in-first-out queue of frame tokens with a fixed capacity; frames on which an object first
appeared are pinned and never evicted (section 3.3, "Spatial Memory Update"). The latest user
correction has a slot of its own (a newer correction replaces it), so memory stays bounded.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SpatialMemory:
    capacity: int = 2  # FIFO slots besides the pinned frames
    pinned: list[torch.Tensor] = field(default_factory=list)
    queue: list[torch.Tensor] = field(default_factory=list)
    correction: list[torch.Tensor] = field(default_factory=list)  # at most one: the latest corrected frame
    version: int = 0  # bumped on every change, so cached reference streams know when to refresh
    pinned_frames: list[int] = field(default_factory=list)  # the video frame of each pinned entry

    def add(self, tokens: torch.Tensor, pin: bool = False, correction: bool = False, frame: int = 0) -> None:
        """tokens: (1, N, C) stride-16 tokens of video frame `frame`; `correction` replaces the previous
        correction; `pin` keeps it for good (a frame where objects first appeared)."""
        if correction:
            self.correction = [tokens]
        elif pin:
            self.pinned.append(tokens)
            self.pinned_frames.append(frame)
        else:
            self.queue.append(tokens)
            self._trim()
        self.version += 1

    def unpin(self, keep: set[int]) -> None:
        """Pinned frames whose frame is not in `keep` (the arrival frames of the objects still tracked)
        become the oldest FIFO entries, evicted as any other: removed objects free their pins."""
        freed = [t for t, f in zip(self.pinned, self.pinned_frames) if f not in keep]
        if not freed:
            return
        kept = [(t, f) for t, f in zip(self.pinned, self.pinned_frames) if f in keep]
        self.pinned, self.pinned_frames = [t for t, _ in kept], [f for _, f in kept]
        self.queue = freed + self.queue
        self._trim()
        self.version += 1

    def _trim(self) -> None:
        while len(self.queue) > self.capacity:
            self.queue.pop(0)

    def __len__(self) -> int:
        return len(self.pinned) + len(self.correction) + len(self.queue)

    def tokens(self) -> torch.Tensor:
        """(1, M, N, C) all reference frames: pinned, the latest correction, then the FIFO queue."""
        return torch.stack(self.pinned + self.correction + self.queue, dim=1)
