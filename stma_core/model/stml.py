"""Spatial-temporal multi-level (STML) association, eq. 2-4 of the paper.

Three token streams share each block's weights but attend differently:
  objects    -> objects                                   (eq. 2)
  reference i -> reference i + objects, per reference      (eq. 3)
  test       -> test + all references                     (eq. 4)
Nothing attends to the test frame, so the object and reference streams do not depend on it. We
exploit that: `encode_references` runs those two streams once and keeps each layer's reference
keys/values (a cache valid while references and objects are unchanged); `associate_test` then runs
only the test stream against the cache. Running both is exactly the joint computation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ReferenceCache:
    """Per-layer keys and values of all reference tokens: lists of (B, heads, M*N, d)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    refs_out: torch.Tensor  # B, M, N, C reference tokens after the last block
    objs_out: torch.Tensor  # B, n, C object tokens after the last block


class STMLBlock(nn.Module):
    """Wraps a timm ViT Block (norm1, attn.qkv, attn.proj, norm2, mlp) with the split attention."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block
        attn = block.attn
        self.num_heads = attn.num_heads
        self.head_dim = attn.head_dim

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, L, C) -> q, k, v each (B, heads, L, d)."""
        attn = self.block.attn
        b, length, _ = x.shape
        qkv = attn.qkv(self.block.norm1(x)).reshape(b, length, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        return attn.q_norm(q), attn.k_norm(k), v

    def _finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Output projection, residual and MLP for one stream. attended: (B, heads, L, d)."""
        attn = self.block.attn
        b, _, length, _ = attended.shape
        y = attended.transpose(1, 2).reshape(b, length, self.num_heads * self.head_dim)
        y = attn.proj(attn.norm(y))
        x = x + self.block.ls1(y)
        return x + self.block.ls2(self.block.mlp(self.block.norm2(x)))

    def forward_context(self, refs: torch.Tensor, objs: torch.Tensor):
        """refs (B, M, N, C), objs (B, n, C) -> new refs, new objs, and refs' keys/values for the test."""
        b, m, n_tok, c = refs.shape
        n_obj = objs.shape[1]
        q_o, k_o, v_o = self._qkv(objs)
        objs_new = self._finish(objs, F.scaled_dot_product_attention(q_o, k_o, v_o))
        q_r, k_r, v_r = self._qkv(refs.reshape(b, m * n_tok, c))  # B, h, M*N, d
        h, d = self.num_heads, self.head_dim

        def per_ref(t: torch.Tensor) -> torch.Tensor:  # (B, h, M*N, d) -> (B*M, h, N, d)
            return t.reshape(b, h, m, n_tok, d).transpose(1, 2).reshape(b * m, h, n_tok, d)

        k_o_rep = k_o[:, None].expand(b, m, h, n_obj, d).reshape(b * m, h, n_obj, d)
        v_o_rep = v_o[:, None].expand(b, m, h, n_obj, d).reshape(b * m, h, n_obj, d)
        att_r = F.scaled_dot_product_attention(
            per_ref(q_r), torch.cat([per_ref(k_r), k_o_rep], 2), torch.cat([per_ref(v_r), v_o_rep], 2))
        refs_new = self._finish(refs.reshape(b * m, n_tok, c), att_r).reshape(b, m, n_tok, c)
        return refs_new, objs_new, k_r, v_r

    def forward_test(self, test: torch.Tensor, ref_k: torch.Tensor, ref_v: torch.Tensor,
                     reference_bias: torch.Tensor | None = None) -> torch.Tensor:
        """test (B, N, C) attends to itself and every reference token of this layer.

        reference_bias: optional (B, M*N) float added to the attention logits of the reference tokens
        (0 for real ones, a large negative number for padding, which then gets exactly zero weight).
        """
        q_t, k_t, v_t = self._qkv(test)
        mask = None
        if reference_bias is not None:
            mask = torch.cat([reference_bias.new_zeros(reference_bias.shape[0], test.shape[1]), reference_bias],
                             1)[:, None, None, :]
        att = F.scaled_dot_product_attention(q_t, torch.cat([k_t, ref_k], 2), torch.cat([v_t, ref_v], 2),
                                             attn_mask=mask)
        return self._finish(test, att)


class STML(nn.Module):
    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(STMLBlock(b) for b in blocks)

    def encode_references(self, refs: torch.Tensor, objs: torch.Tensor) -> ReferenceCache:
        keys, values = [], []
        for block in self.blocks:
            refs, objs, k_r, v_r = block.forward_context(refs, objs)
            keys.append(k_r)
            values.append(v_r)
        return ReferenceCache(keys, values, refs, objs)

    def associate_test(self, test: torch.Tensor, cache: ReferenceCache,
                       reference_bias: torch.Tensor | None = None) -> torch.Tensor:
        """test (B, N, C) through every block's test stream; reference_bias (B, M*N) as in forward_test."""
        for block, k_r, v_r in zip(self.blocks, cache.keys, cache.values):
            test = block.forward_test(test, k_r, v_r, reference_bias)
        return test

    def forward(self, test: torch.Tensor, refs: torch.Tensor, objs: torch.Tensor):
        """Joint pass: returns (test, refs, objs) after all blocks."""
        cache = self.encode_references(refs, objs)
        return self.associate_test(test, cache), cache.refs_out, cache.objs_out
