"""ID value encoder: frame features + each object's mask -> that object's memorized ID value."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stma_core.model.layers import ResBlock


class ValueEncoder(nn.Module):
    def __init__(self, f8_ch: int, f16_ch: int, value_dim: int) -> None:
        super().__init__()
        self.mask_conv = nn.Conv2d(2, 16, 3, stride=2, padding=1)  # stride 4 -> 8
        self.fuse8 = nn.Conv2d(16 + f8_ch, 64, 3, stride=2, padding=1)  # stride 8 -> 16
        self.fuse16 = nn.Conv2d(64 + f16_ch, value_dim, 1)
        self.res1 = ResBlock(value_dim, value_dim)
        self.res2 = ResBlock(value_dim, value_dim)

    def forward(self, f8: torch.Tensor, f16: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """f8 (B,C8,H/8,W/8), f16 (B,C16,H/16,W/16), masks (B,n,H,W) probabilities -> (B,n,Cv,H/16,W/16)."""
        b, n, h, w = masks.shape
        others = masks.sum(1, keepdim=True) - masks  # every other object, per object
        m = torch.stack([masks, others], 2).reshape(b * n, 2, h, w)
        m = F.avg_pool2d(m, 4)
        x = F.relu(self.mask_conv(m))
        x = torch.cat([x, f8.repeat_interleave(n, 0)], 1)
        x = F.relu(self.fuse8(x))
        x = torch.cat([x, f16.repeat_interleave(n, 0)], 1)
        x = self.res2(self.res1(self.fuse16(x)))
        return x.reshape(b, n, *x.shape[1:])
