"""The three stateless graphs `stma export` writes, as torch modules around one STMANetwork.

Memory management stays in host code (VideoSession with stma_core.inference.exported.ExportedEngine),
so every graph has fixed shapes. The step graph is STMANetwork.predict with its memories padded to a
fixed length: `reference_valid` (1, M) and `memory_valid` (1, n, T) say which reference frames /
memory frames are real (1) or padding (0). Padding is removed exactly (by predict's validity masks):
padded references are masked out of the test stream's attention (each reference stream attends only
to itself and the objects, so they cannot disturb real ones), padded memory frames get an affinity
far below any real one (never in the top-k, or with zero weight) and are excluded from the
max-pooled object tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from stma_core.model.network import FrameFeatures, MemoryGroup, STMANetwork


class FrameGraph(nn.Module):
    """image (1,3,H,W) in [0,1] -> tokens (1,N,C), f16, f8, f4."""

    input_names = ("image",)
    output_names = ("tokens", "f16", "f8", "f4")

    def __init__(self, network: STMANetwork) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        frame = self.network.encode_frame(image)
        return frame.tokens, frame.f16, frame.f8, frame.f4


class ValueGraph(nn.Module):
    """f8, f16, masks (1,n,H,W) object probabilities -> ID values (1,n,Cv,h,w)."""

    input_names = ("f8", "f16", "masks")
    output_names = ("values",)

    def __init__(self, network: STMANetwork) -> None:
        super().__init__()
        self.network = network

    def forward(self, f8: torch.Tensor, f16: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        return self.network.value_encoder(f8, f16, masks)


class StepGraph(nn.Module):
    """One frame's prediction (STMANetwork.predict) against fixed-length padded memories.

    Inputs: tokens (1,N,C), f8, f4 of the frame; references (1,M,N,C) and reference_valid (1,M);
    memory_keys (1,T*N,Ck), memory_values (1,n,Cv,T*N) and memory_valid (1,n,T): per object, which
    memory frames are its own (1) or padding / older than its group (0).
    Outputs: probabilities (n+1,H,W) after soft aggregation (background first), the frame's memory
    key (1,N,Ck) and readout usage (1,T*N) per memory position (zero on padding).
    Each object is its own memory group here (its validity row says which entries it reads), which
    gives the same readout as the groups of a session.
    """

    input_names = ("tokens", "f8", "f4", "references", "reference_valid", "memory_keys", "memory_values",
                   "memory_valid")
    output_names = ("probabilities", "key", "usage")

    def __init__(self, network: STMANetwork, grid: tuple[int, int], top_k: int, kernel_sigma: int = 0) -> None:
        super().__init__()
        self.network = network
        self.grid = grid
        self.top_k = top_k
        self.kernel_sigma = kernel_sigma

    def forward(self, tokens: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor, references: torch.Tensor,
                reference_valid: torch.Tensor, memory_keys: torch.Tensor, memory_values: torch.Tensor,
                memory_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n_tok = tokens.shape[1]
        valid = memory_valid[:, :, :, None].expand(*memory_valid.shape, n_tok).flatten(2)  # 1, n, T*N
        groups = [MemoryGroup(memory_values[:, i:i + 1], valid[:, i]) for i in range(memory_values.shape[1])]
        frame = FrameFeatures(tokens, tokens.new_zeros(1, 0, *self.grid), f8, f4)
        out = self.network.predict(frame, memory_keys, groups, self.top_k, references=references,
                                   reference_valid=reference_valid, kernel_sigma=self.kernel_sigma)
        return out.probabilities[0], out.key, out.usage
