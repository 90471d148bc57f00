"""The stateless STMA network: explicit steps, no per-video state (that lives in stma_core.inference).

Per frame t (eq. 1):  M_t = decoder(P_mem(STML(F_t, F_r, F_o), memory), F_t^1/8, F_t^1/4)
  encode_frame      image -> stride-16 tokens (+ sinusoidal position) and stride-8/4 maps
  encode_value      frame features + object masks -> ID values (temporal-memory values)
  object_tokens     max-pool of memorized ID values -> n object tokens (eq. 5)
  encode_references STML object/reference streams (cacheable, independent of the test frame)
  associate         STML test stream -> test features; their key projection is the memory key
  read_memory       affinity of test keys with memory keys -> per-object readout (ID association)
  segment           decoder -> per-object logits -> soft aggregation (background first)
  predict           the whole per-frame recipe above, over memory kept per object group; the one
                    place it is written (inference engines, export graphs and training call it)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from timm.models.vision_transformer import Block
from torch import nn

from stma_core.config import ModelConfig
from stma_core.model.decoder import MaskDecoder, aggregate
from stma_core.model.lite_backbone import LiteTrunk, lite_channels
from stma_core.model.position import sinusoidal_2d
from stma_core.model.stml import STML, ReferenceCache
from stma_core.model.value_encoder import ValueEncoder
from stma_core.model.vit_backbone import VIT_LIGHT_CHANNELS, LightConvPath, create_vit, load_vit_weights


@dataclass
class FrameFeatures:
    tokens: torch.Tensor  # B, N, C  stride-16 tokens with positional embedding (STML input)
    f16: torch.Tensor  # B, C16, h, w  stride-16 map for the value encoder
    f8: torch.Tensor  # B, C8, 2h, 2w
    f4: torch.Tensor  # B, C4, 4h, 4w

    @property
    def grid(self) -> tuple[int, int]:
        return self.f16.shape[-2], self.f16.shape[-1]


PAD_PENALTY = 1e9  # added negatively to padded/invalid entries: exp(-1e9) is exactly 0 in float32


@dataclass
class MemoryGroup:
    """The temporal memory of one group of objects (objects that were first given on the same frame).

    values: (B, n_g, Cv, L_g) float ID values of the group's objects over the group's own entries,
    which are the LAST L_g positions of the memory keys (a group only has the frames memorized since
    it arrived, and memory is kept in time order).
    valid: optional (B, L_g) float, 1 for a real entry and 0 for padding (exported fixed-size graphs).
    """

    values: torch.Tensor
    valid: torch.Tensor | None = None

    @property
    def objects(self) -> int:
        return self.values.shape[1]

    @property
    def length(self) -> int:
        return self.values.shape[-1]

    def penalty(self) -> torch.Tensor | None:
        """(B, L_g) additive penalty: 0 on real entries, -PAD_PENALTY on padding; None without padding."""
        return None if self.valid is None else (self.valid - 1) * PAD_PENALTY


@dataclass
class Prediction:
    """What `STMANetwork.predict` returns for one frame.

    logits: (B, n+1, H, W) aggregated logits, background first (None when there was no memory to read,
    or when an exported graph returned probabilities only).
    key: (B, N, Ck) the frame's memory key.
    usage: (B, L) readout weight each memory position received, summed over queries and objects.
    probs: (B, n+1, H, W) probabilities when given directly (exported graphs); else computed from logits.
    """

    logits: torch.Tensor | None
    key: torch.Tensor
    usage: torch.Tensor
    probs: torch.Tensor | None = None

    @property
    def probabilities(self) -> torch.Tensor:
        """(B, n+1, H, W) float32 softmax of the logits, background first."""
        if self.probs is not None:
            return self.probs
        assert self.logits is not None, "no memory was read, so there is no mask"
        return torch.softmax(self.logits.float(), 1)


class STMANetwork(nn.Module):
    def __init__(self, config: ModelConfig, pretrained_trunk: bool = True) -> None:
        super().__init__()
        self.config = config
        c = config.embed_dim
        if config.backbone == "lite":
            self.trunk = LiteTrunk(config.lite_variant, pretrained=pretrained_trunk)
            ch = lite_channels(config.lite_variant)
            self.token_proj = nn.Linear(ch["f16"], c)
            blocks = [Block(c, config.num_heads, config.mlp_ratio, qkv_bias=True) for _ in range(config.stml_depth)]
        elif config.backbone == "vitb":
            self.vit = create_vit(c, config.stml_depth, config.num_heads, config.mlp_ratio)
            if config.vit_weights:
                load_vit_weights(self.vit, config.vit_weights)
            self.light = LightConvPath()
            ch = {**VIT_LIGHT_CHANNELS, "f16": c}
            blocks = list(self.vit.blocks)
        else:
            raise ValueError(f"unknown backbone {config.backbone!r}; use 'lite' or 'vitb'")
        self.stml = STML(blocks)
        self.object_type = nn.Parameter(torch.zeros(1, 1, c))
        self.object_proj = nn.Linear(config.value_dim, c)
        self.key_proj = nn.Linear(c, config.key_dim)
        self.value_encoder = ValueEncoder(ch["f8"], ch["f16"], config.value_dim)
        self.decoder = MaskDecoder(config.value_dim, c, ch["f8"], ch["f4"], config.decoder_dims)

    # ---- frame encoding -------------------------------------------------------------------
    def encode_trunk(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """image (B,3,H,W) in [0,1], H and W multiples of 16 -> raw multi-scale maps.

        For the lite backbone these are frozen-trunk outputs, which training may cache.
        """
        if self.config.backbone == "lite":
            return self.trunk(image)
        light = self.light(image)
        patches = self.vit.patch_embed.proj(light["normalized"])  # B, 768, h, w
        return {"f4": light["f4"], "f8": light["f8"], "f16": patches}

    def embed(self, trunk: dict[str, torch.Tensor]) -> FrameFeatures:
        f16 = trunk["f16"]
        b, _, h, w = f16.shape
        flat = f16.flatten(2).transpose(1, 2)
        tokens = self.token_proj(flat) if self.config.backbone == "lite" else flat
        tokens = tokens + sinusoidal_2d(h, w, tokens.shape[-1], tokens.device, tokens.dtype)[None]
        return FrameFeatures(tokens, f16, trunk["f8"], trunk["f4"])

    def encode_frame(self, image: torch.Tensor) -> FrameFeatures:
        return self.embed(self.encode_trunk(image))

    # ---- memory-side encoders ---------------------------------------------------------------
    def encode_value(self, frame: FrameFeatures, masks: torch.Tensor) -> torch.Tensor:
        """masks (B,n,H,W) probabilities -> ID values (B,n,Cv,h,w)."""
        return self.value_encoder(frame.f8, frame.f16, masks)

    def object_tokens(self, values: torch.Tensor, penalty: torch.Tensor | None = None) -> torch.Tensor:
        """values (B,n,Cv,L) memorized ID values -> object tokens (B,n,C) by max pooling (eq. 5).

        penalty: optional (B, L) additive mask (-PAD_PENALTY on entries to leave out of the pooling).
        """
        if penalty is not None:
            values = values + penalty[:, None, None, :]
        return self.object_proj(values.amax(dim=-1)) + self.object_type

    def group_tokens(self, groups: Sequence[MemoryGroup]) -> torch.Tensor:
        """Object tokens (B, n, C) of all groups, each pooled over its own entries, in group order."""
        return torch.cat([self.object_tokens(g.values, g.penalty()) for g in groups], 1)

    def key(self, test_features: torch.Tensor) -> torch.Tensor:
        return self.key_proj(test_features)

    # ---- association ------------------------------------------------------------------------
    def encode_references(self, ref_tokens: torch.Tensor, obj_tokens: torch.Tensor) -> ReferenceCache:
        """ref_tokens (B,M,N,C), obj_tokens (B,n,C)."""
        return self.stml.encode_references(ref_tokens, obj_tokens)

    def reference_streams(self, references: torch.Tensor, groups: Sequence[MemoryGroup]) -> ReferenceCache:
        """Object tokens of the groups, then the STML object/reference streams. references (B,M,N,C).

        Independent of the test frame: valid as long as references and memory are unchanged.
        """
        return self.encode_references(references, self.group_tokens(groups))

    def associate(self, frame: FrameFeatures, cache: ReferenceCache,
                  reference_valid: torch.Tensor | None = None) -> torch.Tensor:
        """Test stream of STML -> test features (B,N,C). reference_valid: optional (B,M), 0 = padded reference."""
        bias = None
        if reference_valid is not None:
            tokens = frame.tokens.shape[1]
            b, m = reference_valid.shape
            bias = ((reference_valid - 1) * PAD_PENALTY)[:, :, None].expand(b, m, tokens).reshape(b, m * tokens)
        return self.stml.associate_test(frame.tokens, cache, bias)

    def read_memory(self, query: torch.Tensor, mem_keys: torch.Tensor, groups: Sequence[MemoryGroup],
                    top_k: int, kernel_sigma: int = 0, grid: tuple[int, int] | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ID association, each group over its own entries. query (B,N,Ck), mem_keys (B,L,Ck).

        Returns readout (B,n,Cv,N) in group order and usage (B,L): readout weight per memory position,
        summed over queries and over the objects of the groups that read it.
        Affinity is the negative squared L2 distance, scaled (the query norm cancels in softmax).
        kernel_sigma > 0 weights the matches by the memory-to-query Gaussian kernel (see `ReadoutKernel`)
        on the (h, w) `grid` of the query; 0 reads without it (as training does).
        """
        sim = affinity(query, mem_keys)
        kernel = None
        if kernel_sigma > 0:
            assert grid is not None, "the readout kernel needs the query grid"
            kernel = ReadoutKernel.from_affinity(sim, grid, kernel_sigma)
        length = mem_keys.shape[1]
        readouts, usage = [], sim.new_zeros(sim.shape[0], length)
        for group in groups:
            start = length - group.length
            sim_g = sim if start == 0 else sim[:, :, start:]
            penalty = group.penalty()
            if penalty is not None:
                sim_g = sim_g + penalty[:, None, :]
            kernel_g = None if kernel is None else kernel.tail(group.length)
            readout, used = topk_readout(sim_g, group.values, top_k, kernel_g)
            readouts.append(readout)
            used = used * group.objects  # each object read with these weights
            usage = usage + (used if start == 0 else torch.cat([used.new_zeros(used.shape[0], start), used], 1))
        return torch.cat(readouts, 1), usage

    def predict(self, frame: FrameFeatures, mem_keys: torch.Tensor | None, groups: Sequence[MemoryGroup],
                top_k: int, references: torch.Tensor | None = None, cache: ReferenceCache | None = None,
                reference_valid: torch.Tensor | None = None, kernel_sigma: int = 0) -> Prediction:
        """The per-frame recipe (eq. 1): object tokens -> reference streams -> associate -> key -> read
        memory -> decode -> aggregate.

        frame: the test frame's features. mem_keys (B,L,Ck) memory keys, or None when there is nothing
        to read yet (then only the key is computed). groups: the memory of each object group, in object
        order (see MemoryGroup). references (B,M,N,C) reference-frame tokens, or `cache` already made
        from them by `reference_streams` (engines cache it while memory is unchanged).
        reference_valid: optional (B,M), 0 marks padded references (exported fixed-size graphs).
        kernel_sigma: the readout kernel's sigma in stride-16 cells (InferenceConfig.kernel_sigma; 0 = none).
        """
        if cache is None:
            assert references is not None, "predict needs references or their cache"
            cache = self.reference_streams(references, groups)
        test = self.associate(frame, cache, reference_valid)
        key = self.key(test)
        if mem_keys is None:
            return Prediction(None, key, key.new_zeros(key.shape[0], 0))
        readout, usage = self.read_memory(key, mem_keys, groups, top_k, kernel_sigma, frame.grid)
        return Prediction(self.aggregate(self.segment(frame, test, readout)), key, usage)

    def segment(self, frame: FrameFeatures, test_features: torch.Tensor, readout: torch.Tensor) -> torch.Tensor:
        """-> per-object logits (B,n,H,W) at the input resolution."""
        h, w = frame.grid
        b, n, cv, _ = readout.shape
        test_map = test_features.transpose(1, 2).reshape(b, -1, h, w)
        return self.decoder(readout.reshape(b, n, cv, h, w), test_map, frame.f8, frame.f4)

    @staticmethod
    def aggregate(logits: torch.Tensor) -> torch.Tensor:
        return aggregate(logits)

    def trainable_parameters(self, train_trunk: bool = False):
        for name, p in self.named_parameters():
            if not train_trunk and name.startswith("trunk."):
                continue
            yield p


def affinity(query: torch.Tensor, mem_keys: torch.Tensor) -> torch.Tensor:
    """(B,N,Ck), (B,L,Ck) -> (B,N,L) scaled 2 q.k - |k|^2: one fused matmul-add, no extra full-size passes."""
    scale = query.shape[-1] ** -0.5
    key_sq = mem_keys.pow(2).sum(-1)[:, None, :] * -scale  # B,1,L
    return torch.baddbmm(key_sq, query, mem_keys.transpose(1, 2), alpha=2 * scale)


@dataclass
class ReadoutKernel:
    """Memory-to-query Gaussian kernel of KMN (Seong et al., "Kernelized Memory Network for Video Object
    Segmentation", ECCV 2020, eq. 4-6), in log form: a match of query position q with memory entry l gets
    the additive bias -d^2 / (2 sigma^2), d the distance in grid cells from q to the query position that
    entry l matches best.

    Why: memory matching alone is non-local, so a look-alike elsewhere in the frame (a second camel, a
    twin) reads the target's values. Each memory entry's best match marks where its object now is;
    queries far from it get a smaller weight from that entry. Inference only, as in KMN.
    The bias is evaluated only on the matches the readout keeps (`bias(indices)`), so with top-k it
    costs one arg-max over the affinities, not another full (N, L) pass.
    """

    best_y: torch.Tensor  # (B, L) row of each memory entry's best-matching query position
    best_x: torch.Tensor  # (B, L) its column
    grid: tuple[int, int]  # (h, w) of the query, N = h * w
    sigma: float

    @classmethod
    def from_affinity(cls, sim: torch.Tensor, grid: tuple[int, int], sigma: float) -> "ReadoutKernel":
        """sim (B, N, L) affinities of the query positions to the memory entries."""
        w = grid[1]
        best = sim.argmax(1)  # B, L
        best_y = torch.div(best, w, rounding_mode="floor")
        return cls(best_y.to(sim.dtype), (best - best_y * w).to(sim.dtype), grid, sigma)

    def tail(self, length: int) -> "ReadoutKernel":
        """The kernel of the last `length` memory entries (a group's own entries)."""
        return ReadoutKernel(self.best_y[:, -length:], self.best_x[:, -length:], self.grid, self.sigma)

    def bias(self, indices: torch.Tensor | None = None) -> torch.Tensor:
        """-> (B, N, L) bias for every match, or (B, N, k) for the memory entries `indices` (B, N, k)."""
        h, w = self.grid
        dtype, device = self.best_y.dtype, self.best_y.device
        qy = torch.arange(h, device=device, dtype=dtype).repeat_interleave(w)[None, :, None]  # 1, N, 1
        qx = torch.arange(w, device=device, dtype=dtype).repeat(h)[None, :, None]
        if indices is None:
            by, bx = self.best_y[:, None, :], self.best_x[:, None, :]
        else:
            b, n, k = indices.shape
            flat = indices.reshape(b, n * k)
            by = self.best_y.gather(1, flat).reshape(b, n, k)
            bx = self.best_x.gather(1, flat).reshape(b, n, k)
        d2 = (qy - by).square() + (qx - bx).square()
        return d2 * (-0.5 / self.sigma ** 2)


def topk_readout(sim: torch.Tensor, mem_values: torch.Tensor, top_k: int, kernel: ReadoutKernel | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over each query's top_k affinities (all when top_k is 0 or >= L) -> readout (B,n,Cv,N), usage (B,L).

    kernel: optional readout kernel whose bias is added to the kept affinities before the softmax.

    Without autograd the k chosen values are gathered instead of multiplying a dense (N, L) weight
    matrix that is zero outside them: the same sums (up to float rounding) at about k/L of the cost.
    Training keeps the dense form.
    """
    b, n, cv, length = mem_values.shape
    if length == 0:
        return mem_values.new_zeros(b, n, cv, sim.shape[1]), sim.new_zeros(b, 0)
    if not top_k or top_k >= length:
        weights = (sim if kernel is None else sim + kernel.bias()).softmax(-1)
    else:
        top, indices = sim.topk(top_k, dim=-1)  # B,N,k
        top = (top if kernel is None else top + kernel.bias(indices)).softmax(-1)
        if not (torch.is_grad_enabled() and (sim.requires_grad or mem_values.requires_grad)):
            return _sparse_readout(top, indices, mem_values)
        weights = torch.zeros_like(sim, dtype=top.dtype).scatter_(-1, indices, top)  # autocast: sim bf16, top fp32
    readout = (mem_values.reshape(b, n * cv, length) @ weights.transpose(1, 2)).reshape(b, n, cv, -1)
    return readout, weights.sum(1)


def _sparse_readout(weights: torch.Tensor, indices: torch.Tensor, mem_values: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """weights, indices (B,N,k) -> readout (B,n,Cv,N) and usage (B,L) from the k picked memory entries."""
    b, n, cv, length = mem_values.shape
    queries, k = indices.shape[1:]
    rows = mem_values.reshape(b, n * cv, length).transpose(1, 2).reshape(b * length, n * cv)
    flat = indices + (torch.arange(b, device=indices.device) * length)[:, None, None]
    picked = rows.index_select(0, flat.reshape(-1)).reshape(b * queries, k, n * cv)
    readout = torch.bmm(weights.reshape(b * queries, 1, k), picked).reshape(b, queries, n * cv)
    usage = weights.new_zeros(b, length).scatter_add_(1, indices.reshape(b, -1), weights.reshape(b, -1))
    return readout.transpose(1, 2).reshape(b, n, cv, queries), usage
