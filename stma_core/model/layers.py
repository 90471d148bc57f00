"""Small conv building blocks shared by the value encoder and the mask decoder."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(F.relu(x))))
        return self.skip(x) + y


class UpsampleBlock(nn.Module):
    """Upsamples by 2 and fuses a skip feature map of the finer stride (residual upsampling block)."""

    def __init__(self, cin: int, skip_ch: int, cout: int) -> None:
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_ch, cout, 3, padding=1)
        self.in_conv = nn.Conv2d(cin, cout, 1)
        self.out = ResBlock(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.in_conv(x), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(x + self.skip_conv(skip))
