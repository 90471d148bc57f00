"""Training loss of the paper: 0.5 bootstrapped cross-entropy + 0.5 Dice."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bootstrapped_ce(logits: torch.Tensor, labels: torch.Tensor, top_fraction: float) -> torch.Tensor:
    """Cross-entropy over the hardest `top_fraction` of pixels (all pixels when it is 1).

    logits (B, n+1, H, W), labels (B, H, W) int64.
    """
    raw = F.cross_entropy(logits, labels, reduction="none").flatten()
    if top_fraction >= 1:
        return raw.mean()
    k = max(1, int(raw.numel() * top_fraction))
    return raw.topk(k, sorted=False).values.mean()


def dice_loss(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """probs/targets (B, n, H, W): 1 - soft Dice per object, averaged."""
    p = probs.flatten(2)
    t = targets.flatten(2)
    numerator = 2 * (p * t).sum(-1) + 1
    denominator = p.sum(-1) + t.sum(-1) + 1
    return (1 - numerator / denominator).mean()


def bootstrap_fraction(step: int, warmup: int, ramp: int, final: float = 0.15) -> float:
    """1.0 during warm-up, then linearly down to `final` over `ramp` steps."""
    if step < warmup:
        return 1.0
    return max(final, 1.0 - (1.0 - final) * (step - warmup) / max(ramp, 1))


def stma_loss(logits: torch.Tensor, targets: torch.Tensor, top_fraction: float) -> torch.Tensor:
    """logits (B, n+1, H, W) aggregated; targets (B, n, H, W) in {0,1}."""
    ids = torch.arange(1, targets.shape[1] + 1, device=targets.device, dtype=targets.dtype).view(1, -1, 1, 1)
    labels = (targets * ids).amax(1).long()  # objects never overlap in the targets
    probs = torch.softmax(logits, 1)[:, 1:]
    return 0.5 * bootstrapped_ce(logits, labels, top_fraction) + 0.5 * dice_loss(probs, targets)
