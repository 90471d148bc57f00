"""Fixed 2-D sinusoidal positional embedding (any grid size, no learned table to resize)."""

from __future__ import annotations

import math

import torch


def sinusoidal_2d(height: int, width: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Returns (height*width, dim): half the channels encode y, half encode x."""
    if dim % 4:
        raise ValueError(f"embedding dim {dim} must be divisible by 4")
    quarter = dim // 4
    freq = torch.exp(torch.arange(quarter, device=device, dtype=torch.float32) * (-math.log(10000.0) / quarter))
    ys = torch.arange(height, device=device, dtype=torch.float32)[:, None] * freq[None]
    xs = torch.arange(width, device=device, dtype=torch.float32)[:, None] * freq[None]
    emb_y = torch.cat([ys.sin(), ys.cos()], dim=1)  # H, dim/2
    emb_x = torch.cat([xs.sin(), xs.cos()], dim=1)  # W, dim/2
    grid = torch.cat([
        emb_y[:, None, :].expand(height, width, dim // 2),
        emb_x[None, :, :].expand(height, width, dim // 2),
    ], dim=2)
    return grid.reshape(height * width, dim).to(dtype)
