"""Mask decoder: per-object readout + test features at stride 16, fused with stride-8 and stride-4 maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stma_core.model.layers import ResBlock, UpsampleBlock


class MaskDecoder(nn.Module):
    def __init__(self, value_dim: int, embed_dim: int, f8_ch: int, f4_ch: int,
                 dims: tuple[int, int, int]) -> None:
        super().__init__()
        d16, d8, d4 = dims
        self.test_proj = nn.Conv2d(embed_dim, d16, 1)
        self.readout_proj = nn.Conv2d(value_dim, d16, 1)
        self.res16 = ResBlock(d16, d16)
        self.up8 = UpsampleBlock(d16, f8_ch, d8)
        self.up4 = UpsampleBlock(d8, f4_ch, d4)
        self.pred = nn.Conv2d(d4, 1, 3, padding=1)

    def forward(self, readout: torch.Tensor, test_map: torch.Tensor, f8: torch.Tensor,
                f4: torch.Tensor) -> torch.Tensor:
        """readout (B,n,Cv,h,w), test_map (B,C,h,w) -> logits (B,n,4h',4w') at stride 4 upsampled x4."""
        b, n = readout.shape[:2]
        x = self.readout_proj(readout.flatten(0, 1)) + self.test_proj(test_map).repeat_interleave(n, 0)
        x = self.res16(x)
        x = self.up8(x, f8.repeat_interleave(n, 0))
        x = self.up4(x, f4.repeat_interleave(n, 0))
        logits = self.pred(F.relu(x))
        logits = F.interpolate(logits, scale_factor=4, mode="bilinear", align_corners=False)
        return logits.reshape(b, n, *logits.shape[-2:])


def aggregate(logits: torch.Tensor) -> torch.Tensor:
    """Soft aggregation of per-object logits (B,n,H,W) into (B,n+1,H,W) logits with background first."""
    prob = torch.sigmoid(logits)
    bg = torch.prod(1 - prob, dim=1, keepdim=True)
    new_prob = torch.cat([bg, prob], 1).clamp(1e-7, 1 - 1e-7)
    return torch.log(new_prob / (1 - new_prob))
