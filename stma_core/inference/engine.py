"""Engines run the network's per-frame steps for a VideoSession; the session keeps only policy.

An engine answers four things (the `Engine` protocol): `device`, `encode_frame`, `encode_value` and
`predict`. `TorchEngine` runs an STMANetwork and caches the STML reference streams while the memory is
unchanged; `stma_core.inference.exported.ExportedEngine` runs `stma export` graphs (ONNX Runtime or
TorchScript) and pads memories to the graphs' fixed sizes. Both call the same recipe,
`STMANetwork.predict` (the exported step graph is that method, traced).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Protocol

import torch

from stma_core.model.network import FrameFeatures, MemoryGroup, Prediction, STMANetwork
from stma_core.model.stml import ReferenceCache


@dataclass
class MemoryState:
    """What a frame is predicted from: a session's memories at one moment.

    references: (1, M, N, C) float tokens of the reference frames (spatial memory).
    keys: (1, L, Ck) float temporal-memory keys in time order, or None when nothing is memorized yet.
    groups: the temporal memory of each object group, in object order (see MemoryGroup).
    version: equal versions mean equal references and groups, so engines may reuse work; None = never.
    """

    references: torch.Tensor
    keys: torch.Tensor | None
    groups: list[MemoryGroup]
    version: Hashable | None = None


class Engine(Protocol):
    """The network steps a VideoSession needs, whatever runs them."""

    @property
    def device(self) -> torch.device:
        """Where the session must put the image and mask tensors it passes in."""
        ...

    @property
    def frame_size(self) -> tuple[int, int] | None:
        """(H, W) an exported graph was made for (frames must pad to the same multiples of 16), or None."""
        ...

    def encode_frame(self, image: torch.Tensor) -> FrameFeatures:
        """image (1, 3, H, W) float in [0, 1], H and W multiples of 16 -> the frame's features."""
        ...

    def encode_value(self, frame: FrameFeatures, masks: torch.Tensor) -> torch.Tensor:
        """masks (1, n, H, W) float object probabilities -> ID values (1, n, Cv, H/16, W/16)."""
        ...

    def predict(self, frame: FrameFeatures, memory: MemoryState, top_k: int, kernel_sigma: int = 0) -> Prediction:
        """The per-frame recipe (STMANetwork.predict) for one frame from `memory`."""
        ...


class TorchEngine:
    """Runs an STMANetwork in PyTorch; keeps the reference streams while memory is unchanged."""

    def __init__(self, network: STMANetwork) -> None:
        self.network = network.eval()
        self._device = next(network.parameters()).device
        self._cache: ReferenceCache | None = None
        self._cache_version: Hashable | None = None

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def frame_size(self) -> tuple[int, int] | None:
        return None  # PyTorch runs any size

    def encode_frame(self, image: torch.Tensor) -> FrameFeatures:
        return self.network.encode_frame(image)

    def encode_value(self, frame: FrameFeatures, masks: torch.Tensor) -> torch.Tensor:
        return self.network.encode_value(frame, masks)

    def predict(self, frame: FrameFeatures, memory: MemoryState, top_k: int, kernel_sigma: int = 0) -> Prediction:
        if memory.version is None or self._cache is None or memory.version != self._cache_version:
            self._cache = self.network.reference_streams(memory.references, memory.groups)
            self._cache_version = memory.version
        return self.network.predict(frame, memory.keys, memory.groups, top_k, cache=self._cache,
                                    kernel_sigma=kernel_sigma)
