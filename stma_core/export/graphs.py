"""The three stateless graphs `stma export` writes, as torch modules around one STMANetwork.

Memory management stays in host code (stma_core.inference.onnx_session), so every graph has fixed
shapes. The step graph takes its memories padded to a fixed length: `reference_valid` (1, M) and
`memory_valid` (1, T) say which reference frames / memory frames are real (1) or padding (0).
Padding is removed exactly: padded references are masked out of the test stream's attention (each
reference stream attends only to itself and the objects, so they cannot disturb real ones), padded
memory frames get an affinity far below any real one (never in the top-k, or with zero weight) and
are excluded from the max-pooled object tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stma_core.model.network import FrameFeatures, STMANetwork, affinity, topk_readout
from stma_core.model.stml import ReferenceCache

PAD_PENALTY = 1e9  # subtracted from padded entries: exp(-1e9) is exactly 0 in float32


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
    """One frame's association, readout and decoding against fixed-length padded memories.

    Inputs: tokens (1,N,C), f8, f4 of the frame; references (1,M,N,C) and reference_valid (1,M);
    memory_keys (1,T*N,Ck), memory_values (1,n,Cv,T*N) and memory_valid (1,T).
    Outputs: probabilities (n+1,H,W) after soft aggregation (background first), the frame's memory
    key (1,N,Ck) and readout usage (1,T*N) per memory position (zero on padding).
    """

    input_names = ("tokens", "f8", "f4", "references", "reference_valid", "memory_keys", "memory_values",
                   "memory_valid")
    output_names = ("probabilities", "key", "usage")

    def __init__(self, network: STMANetwork, grid: tuple[int, int]) -> None:
        super().__init__()
        self.network = network
        self.grid = grid

    def forward(self, tokens: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor, references: torch.Tensor,
                reference_valid: torch.Tensor, memory_keys: torch.Tensor, memory_values: torch.Tensor,
                memory_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        net = self.network
        memory_pad = per_token_penalty(memory_valid, tokens.shape[1])  # 1, T*N
        obj_tokens = net.object_tokens(memory_values + memory_pad[:, None, None, :])
        cache = net.encode_references(references, obj_tokens)
        test = masked_associate(net, tokens, cache, per_token_penalty(reference_valid, tokens.shape[1]))
        key = net.key(test)
        readout, usage = topk_readout(affinity(key, memory_keys) + memory_pad[:, None, :], memory_values,
                                      net.config.top_k)
        frame = FrameFeatures(tokens, tokens.new_zeros(1, 0, *self.grid), f8, f4)
        logits = net.segment(frame, test, readout)
        return torch.softmax(net.aggregate(logits)[0], 0), key, usage


def per_token_penalty(valid: torch.Tensor, tokens: int) -> torch.Tensor:
    """(1,F) frame validity -> (1,F*tokens) additive penalty: 0 on real frames' tokens, -PAD_PENALTY on padding."""
    frames = valid.shape[1]
    return ((valid - 1) * PAD_PENALTY)[:, :, None].expand(1, frames, tokens).reshape(1, frames * tokens)


def masked_associate(network: STMANetwork, test: torch.Tensor, cache: ReferenceCache,
                     reference_pad: torch.Tensor) -> torch.Tensor:
    """STML test stream (as STMLBlock.forward_test) with an additive penalty on padded reference tokens."""
    bias = torch.cat([reference_pad.new_zeros(1, test.shape[1]), reference_pad], 1)[:, None, None, :]
    for block, ref_k, ref_v in zip(network.stml.blocks, cache.keys, cache.values):
        q, k, v = block._qkv(test)
        attended = F.scaled_dot_product_attention(q, torch.cat([k, ref_k], 2), torch.cat([v, ref_v], 2),
                                                  attn_mask=bias)
        test = block._finish(test, attended)
    return test
