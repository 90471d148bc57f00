"""The STMA network: STML stream isolation (eq. 2-4), equivalence with one dense masked attention,
object tokens by max pooling (eq. 5), readout, shapes, and the ViT-B configuration."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stma_core.config import ModelConfig
from stma_core.model.network import MemoryGroup, STMANetwork

SMALL = ModelConfig(embed_dim=32, stml_depth=2, num_heads=2, mlp_ratio=2.0, key_dim=16, value_dim=32,
                    decoder_dims=(16, 16, 8))


@pytest.fixture(scope="module")
def net() -> STMANetwork:
    torch.manual_seed(0)
    network = STMANetwork(SMALL, pretrained_trunk=False).eval()
    # Random non-zero layer outputs so every stream really mixes information.
    return network


def _streams(seed: int, b=1, m=2, n_tok=12, n_obj=3, c=32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, n_tok, c, generator=g), torch.randn(b, m, n_tok, c, generator=g),
            torch.randn(b, n_obj, c, generator=g))


def test_test_frame_does_not_change_references_or_objects(net):
    test, refs, objs = _streams(0)
    other_test = torch.randn_like(test)
    with torch.no_grad():
        t1, r1, o1 = net.stml(test, refs, objs)
        t2, r2, o2 = net.stml(other_test, refs, objs)
    assert torch.equal(r1, r2) and torch.equal(o1, o2)
    assert not torch.allclose(t1, t2)


def test_reference_two_does_not_change_reference_one(net):
    test, refs, objs = _streams(1)
    refs2 = refs.clone()
    refs2[:, 1] = torch.randn_like(refs2[:, 1])
    with torch.no_grad():
        t1, r1, _ = net.stml(test, refs, objs)
        t2, r2, _ = net.stml(test, refs2, objs)
    assert torch.allclose(r1[:, 0], r2[:, 0], atol=1e-6)
    assert not torch.allclose(r1[:, 1], r2[:, 1])
    assert not torch.allclose(t1, t2), "the test frame must see every reference"


def test_objects_see_only_objects_and_references_see_objects(net):
    test, refs, objs = _streams(2)
    with torch.no_grad():
        _, r1, o1 = net.stml(test, refs, objs)
        _, r2, o2 = net.stml(test, torch.randn_like(refs), objs)
        _, r3, _ = net.stml(test, refs, torch.randn_like(objs))
    assert torch.allclose(o1, o2, atol=1e-6), "object tokens must not attend to references"
    assert not torch.allclose(r1, r3), "references attend to the object tokens"


def test_split_attention_equals_one_dense_masked_attention(net):
    """The split streams compute exactly what a joint sequence with the paper's attention mask would."""
    test, refs, objs = _streams(3)
    b, m, n_tok, c = refs.shape
    n_obj = objs.shape[1]
    block = net.stml.blocks[0]
    with torch.no_grad():
        t_split = block.forward_test(test, *block.forward_context(refs, objs)[2:])
        refs_split, objs_split, _, _ = block.forward_context(refs, objs)
        # Dense reference: one sequence [test | ref1 | ref2 | objs] with a boolean "may attend" mask.
        x = torch.cat([test, refs.reshape(b, m * n_tok, c), objs], 1)
        length = x.shape[1]
        seg = torch.cat([torch.zeros(n_tok), torch.arange(1, m + 1).repeat_interleave(n_tok),
                         torch.full((n_obj,), m + 1)]).long()
        allow = torch.zeros(length, length, dtype=torch.bool)
        for i in range(length):
            si = seg[i]
            if si == 0:
                allow[i] = seg <= m  # test: itself + all references
            elif si <= m:
                allow[i] = (seg == si) | (seg == m + 1)  # reference i: itself + objects
            else:
                allow[i] = seg == m + 1  # objects: objects
        q, k, v = block._qkv(x)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=allow)
        dense = block._finish(x, att)
    assert torch.allclose(dense[:, :n_tok], t_split, atol=1e-5)
    assert torch.allclose(dense[:, n_tok:n_tok + m * n_tok].reshape(b, m, n_tok, c), refs_split, atol=1e-5)
    assert torch.allclose(dense[:, -n_obj:], objs_split, atol=1e-5)


def test_object_tokens_are_max_pooled_memory_values(net):
    values = torch.randn(1, 2, SMALL.value_dim, 50)
    tokens = net.object_tokens(values)
    expected = net.object_proj(values.amax(-1)) + net.object_type
    assert torch.allclose(tokens, expected)
    permuted = values[..., torch.randperm(50)]
    assert torch.allclose(net.object_tokens(permuted), tokens, atol=1e-6)


def test_readout_returns_the_matching_memory_value(net):
    keys = torch.eye(16)[None, :5] * 10  # 5 well-separated memory keys
    values = torch.arange(5.0).view(1, 1, 1, 5).repeat(1, 2, SMALL.value_dim, 1)
    query = keys[:, [3, 1]]
    readout, usage = net.read_memory(query, keys, [MemoryGroup(values)], top_k=2)
    assert torch.allclose(readout[0, 0, 0], torch.tensor([3.0, 1.0]), atol=1e-4)
    usage = usage / 2  # summed over the 2 objects
    assert usage.shape == (1, 5) and usage[0, 3] > 0.99 and usage[0, 0] < 0.01


def test_readout_kernel_keeps_a_far_look_alike_from_reading_the_object(net):
    """KMN's kernel (eq. 4-6): a memory entry's best match marks where its object is; a look-alike far
    from there reads the background instead of the object. Grid 1x10: the object's memory entry
    matches position 1 best, the background's position 8; position 9 looks more like the object."""
    obj, bg = torch.zeros(16), torch.zeros(16)
    obj[0], bg[1] = 2.0, 2.0
    keys = torch.stack([obj, bg])[None]  # 1, 2, 16
    values = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2).repeat(1, 1, SMALL.value_dim, 1)
    query = torch.stack([bg * 0.5 + obj * 0.5] * 10)[None]  # ambiguous positions
    query[0, 1], query[0, 8] = obj, bg
    query[0, 9] = obj * 0.6 + bg * 0.4  # a look-alike, 8 cells from the object
    plain, _ = net.read_memory(query, keys, [MemoryGroup(values)], top_k=0)
    kernel, _ = net.read_memory(query, keys, [MemoryGroup(values)], top_k=0, kernel_sigma=2, grid=(1, 10))
    assert plain[0, 0, 0, 1] > 0.85 and kernel[0, 0, 0, 1] > 0.99  # the object reads itself
    assert plain[0, 0, 0, 9] > 0.55  # without the kernel the look-alike reads mostly the object
    assert kernel[0, 0, 0, 9] < 0.01  # with it, the background next to it


def test_readout_kernel_bias_is_the_gaussian_of_the_distance_to_each_entrys_best_match():
    from stma_core.model.network import ReadoutKernel

    gen = torch.Generator().manual_seed(1)
    sim = torch.randn(2, 12, 7, generator=gen)  # grid 3x4, 7 memory entries
    kernel = ReadoutKernel.from_affinity(sim, (3, 4), 1.5)
    best = sim.argmax(1)  # 2, 7
    ys, xs = torch.meshgrid(torch.arange(3.0), torch.arange(4.0), indexing="ij")
    qy, qx = ys.flatten(), xs.flatten()
    want = -((qy[None, :, None] - qy[best][:, None, :]) ** 2 + (qx[None, :, None] - qx[best][:, None, :]) ** 2) / 4.5
    torch.testing.assert_close(kernel.bias(), want)
    assert torch.all(kernel.bias().gather(1, best[:, None, :]) == 0)  # no penalty at the best match itself
    indices = sim.topk(3, dim=-1).indices
    torch.testing.assert_close(kernel.bias(indices), want.gather(2, indices))
    torch.testing.assert_close(kernel.tail(4).bias(), want[..., 3:])


def test_full_pipeline_shapes_all_objects_in_one_pass(net):
    image = torch.rand(1, 3, 64, 96)
    frame = net.encode_frame(image)
    assert frame.tokens.shape == (1, 4 * 6, SMALL.embed_dim) and frame.grid == (4, 6)
    masks = torch.zeros(1, 3, 64, 96)
    masks[0, 0, :20, :20] = 1
    masks[0, 1, 30:, 40:] = 1
    values = net.encode_value(frame, masks)
    assert values.shape == (1, 3, SMALL.value_dim, 4, 6)
    groups = [MemoryGroup(values.flatten(3))]
    key = net.predict(frame, None, groups, 30, references=frame.tokens[:, None]).key
    logits = net.predict(frame, key, groups, 30, references=frame.tokens[:, None]).logits
    assert logits.shape == (1, 4, 64, 96)
    assert torch.isfinite(logits).all()


def test_vitb_configuration_runs_and_loads_a_user_weight_file(tmp_path):
    from safetensors.torch import save_file

    cfg = ModelConfig.vitb()
    cfg.stml_depth = 2  # two of the twelve blocks keep the test fast; the code path is the same
    torch.manual_seed(0)
    donor = STMANetwork(cfg, pretrained_trunk=False).eval()
    weights = {k.removeprefix("vit."): v for k, v in donor.state_dict().items()
               if k.startswith(("vit.blocks.", "vit.patch_embed."))}
    path = tmp_path / "vit_b16.safetensors"
    save_file(weights, str(path))
    cfg.vit_weights = str(path)
    net = STMANetwork(cfg, pretrained_trunk=False).eval()
    assert torch.equal(net.vit.blocks[1].attn.qkv.weight, donor.vit.blocks[1].attn.qkv.weight)
    assert net.stml.blocks[0].block is net.vit.blocks[0], "ViT blocks are the STML blocks"
    with torch.no_grad():
        frame = net.encode_frame(torch.rand(1, 3, 64, 64))
        values = net.encode_value(frame, torch.ones(1, 1, 64, 64))
        groups = [MemoryGroup(values.flatten(3))]
        key = net.predict(frame, None, groups, 30, references=frame.tokens[:, None]).key
        logits = net.predict(frame, key, groups, 30, references=frame.tokens[:, None]).logits
    assert logits.shape == (1, 2, 64, 64)


def test_vitb_rejects_a_file_that_is_not_vit_weights(tmp_path):
    from safetensors.torch import save_file

    from stma_core.errors import StmaInputError

    path = tmp_path / "other.safetensors"
    save_file({"foo": torch.zeros(2)}, str(path))
    with pytest.raises(StmaInputError, match="other.safetensors"):
        STMANetwork(ModelConfig.vitb(str(path)), pretrained_trunk=False)
