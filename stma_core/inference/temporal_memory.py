"""Temporal memory: keys (STML test features) and ID values of memorized frames, with usage counts.

Readout affinities add to each entry's usage; over capacity, the entry used least per read since it
was added goes (least-frequently-used, as in XMem). Entries of frames where an object first
appeared are pinned. Objects added later get zero values in older entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(eq=False)  # entries compare by identity (they hold tensors)
class _Entry:
    key: torch.Tensor  # (1, N, Ck)
    value: torch.Tensor  # (1, n_at_write, Cv, N)
    pinned: bool
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
    _cache: tuple[int, int, torch.Tensor, torch.Tensor] | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, key: torch.Tensor, value: torch.Tensor, pin: bool = False) -> None:
        self.entries.append(_Entry(key, value, pin))
        unpinned = [e for e in self.entries if not e.pinned]
        while len(unpinned) > self.capacity:
            victim = min(unpinned[:-1], key=lambda e: e.frequency)  # the newest entry always stays
            self.entries.remove(victim)
            unpinned.remove(victim)
        self.version += 1

    def keys_values(self, num_objects: int) -> tuple[torch.Tensor, torch.Tensor]:
        """-> keys (1, L, Ck), values (1, n, Cv, L) over all entries (cached until memory changes)."""
        if self._cache is not None and self._cache[:2] == (self.version, num_objects):
            return self._cache[2], self._cache[3]
        keys = torch.cat([e.key for e in self.entries], 1)
        values = []
        for e in self.entries:
            v = e.value
            if v.shape[1] < num_objects:
                pad = v.new_zeros(1, num_objects - v.shape[1], *v.shape[2:])
                v = torch.cat([v, pad], 1)
            values.append(v)
        vals = torch.cat(values, -1)
        self._cache = (self.version, num_objects, keys, vals)
        return keys, vals

    def record_usage(self, usage: torch.Tensor) -> None:
        """usage (1, L): summed readout weights per memory position, in entry order."""
        sizes = [e.key.shape[1] for e in self.entries]
        for entry, chunk in zip(self.entries, usage[0].float().split(sizes)):
            entry.usage += float(chunk.sum())
            entry.reads += 1
