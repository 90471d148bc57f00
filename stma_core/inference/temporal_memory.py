"""Temporal memory: keys (STML test features) and ID values of memorized frames, with usage counts.

Readout affinities add to each entry's usage; over capacity, the entry used least per read since it
was added goes (least-frequently-used, as in XMem). Entries of frames where an object first
appeared are pinned. Each object group reads only the entries memorized since it arrived (`read`):
objects given later have no values in older entries, and are not diluted by them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from stma_core.inference.object_manager import ObjectGroup
from stma_core.model.network import MemoryGroup


@dataclass(eq=False)  # entries compare by identity (they hold tensors)
class _Entry:
    key: torch.Tensor  # (1, N, Ck)
    value: torch.Tensor  # (1, n_at_write, Cv, N)
    pinned: bool
    frame: int = 0  # video frame it was memorized from
    correction: bool = False  # written from a user correction (kept while it is the latest one)
    usage: float = 0.0
    reads: int = 0

    @property
    def frequency(self) -> float:
        return self.usage / max(self.reads, 1)


@dataclass
class TemporalMemory:
    capacity: int = 8  # unpinned entries kept
    entries: list[_Entry] = field(default_factory=list)
    version: int = 0
    _cache: tuple[object, torch.Tensor, list[MemoryGroup]] | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, key: torch.Tensor, value: torch.Tensor, pin: bool = False, frame: int = 0,
            correction: bool = False) -> None:
        """key (1, N, Ck), value (1, n, Cv, N) of frame `frame` (memorized in time order).

        pin: kept for good (frames where objects first appeared). correction: kept while it is the
        latest correction; the one before becomes an ordinary entry (so memory stays bounded).
        """
        if correction:
            for entry in self.entries:
                if entry.correction:
                    entry.correction = entry.pinned = False
        self.entries.append(_Entry(key, value, pin or correction, frame, correction))
        self._evict()
        self.version += 1

    def _evict(self) -> None:
        """Over capacity, the unpinned entry used least per read goes (least-frequently-used)."""
        unpinned = [e for e in self.entries if not e.pinned]
        while len(unpinned) > self.capacity:
            # the newest entry stays, unless the capacity is 0 (first-appearance frames only)
            victim = min(unpinned[:-1] or unpinned, key=lambda e: e.frequency)
            self.entries.remove(victim)
            unpinned.remove(victim)

    def release(self, groups: list[ObjectGroup]) -> None:
        """After objects were removed: entries memorized before the earliest remaining group arrived are
        read by no group (each reads from its own arrival on) and go; pins of frames where no remaining
        group arrived are released (the entry stays, evicted as any other). No groups: memory empties."""
        arrivals = {g.frame for g in groups}
        earliest = min(arrivals, default=None)
        kept = [e for e in self.entries if earliest is not None and e.frame >= earliest]
        for entry in kept:
            if entry.pinned and not entry.correction and entry.frame not in arrivals:
                entry.pinned = False
        self.entries = kept
        self._evict()
        self.version += 1

    def read(self, groups: list[ObjectGroup]) -> tuple[torch.Tensor, list[MemoryGroup]]:
        """-> keys (1, L, Ck) of all entries and each group's MemoryGroup over its own entries.

        A group's entries are those memorized on or after the frame it arrived on: a suffix of the
        entries, which are in time order. Cached until the memory or the groups change.
        """
        signature = (self.version, tuple((g.start, g.count, g.frame) for g in groups))
        if self._cache is not None and self._cache[0] == signature:
            return self._cache[1], self._cache[2]
        keys = torch.cat([e.key for e in self.entries], 1)
        out = []
        for group in groups:
            own = [e for e in self.entries if e.frame >= group.frame]
            end = group.start + group.count
            out.append(MemoryGroup(torch.cat([e.value[:, group.start:end] for e in own], -1)))
        self._cache = (signature, keys, out)
        return keys, out

    def remove_objects(self, indices: list[int]) -> None:
        """Drops the values of these internal object indices from every entry."""
        for entry in self.entries:
            keep = [i for i in range(entry.value.shape[1]) if i not in indices]
            entry.value = entry.value[:, keep]
        self.version += 1

    def record_usage(self, usage: torch.Tensor) -> None:
        """usage (1, L): summed readout weights per memory position, in entry order."""
        sizes = [e.key.shape[1] for e in self.entries]
        for entry, chunk in zip(self.entries, usage[0].float().split(sizes)):
            entry.usage += float(chunk.sum())
            entry.reads += 1
