"""One training sequence pass: the inference recipe unrolled over T frames with gradients.

Frame 0 carries the ground-truth mask; each later frame is predicted from the temporal memory of
all earlier frames (their predicted masks become memory values) and from references sampled from
the earlier frames (frame 0 plus one random other, as the paper samples two references).
"""

from __future__ import annotations

import random

import torch

from stma_core.config import InferenceConfig
from stma_core.model.network import FrameFeatures, MemoryGroup, STMANetwork
from stma_core.training.losses import stma_loss

TOP_K = InferenceConfig.top_k  # the memory readout is trained as it is run


def unroll_sequence(network: STMANetwork, frames: list[FrameFeatures], masks: torch.Tensor,
                    top_fraction: float, rng: random.Random, num_refs: int = 2) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """frames: T FrameFeatures of a batch; masks (B, T, n, H, W) float. -> (mean loss, predicted probs).

    Every frame goes through STMANetwork.predict, the recipe inference runs (one object group: all
    objects are given on frame 0).
    """
    first = frames[0]
    value = network.encode_value(first, masks[:, 0]).flatten(3)
    keys = [network.predict(first, None, [MemoryGroup(value)], TOP_K, references=first.tokens[:, None]).key]
    values = [value]
    losses, predictions = [], []
    for t in range(1, len(frames)):
        frame = frames[t]
        ref_ids = [0] + rng.sample(range(1, t), min(t - 1, num_refs - 1))
        refs = torch.stack([frames[i].tokens for i in ref_ids], 1)
        out = network.predict(frame, torch.cat(keys, 1), [MemoryGroup(torch.cat(values, -1))], TOP_K, references=refs)
        logits, query = out.logits, out.key
        losses.append(stma_loss(logits, masks[:, t], top_fraction))
        prob = torch.softmax(logits, 1)[:, 1:]
        predictions.append(prob)
        if t < len(frames) - 1:
            values.append(network.encode_value(frame, prob).flatten(3))
            keys.append(query)
    return torch.stack(losses).mean(), predictions
