"""One recipe: the training unroll, a session on the torch engine and a session on the exported engine
predict the same frames from the same memory (STMANetwork.predict is the only place it is written)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from stma_core.checkpoint import load_model, save_model
from stma_core.config import InferenceConfig, ModelConfig
from stma_core.export import export_model
from stma_core.inference.engine import TorchEngine
from stma_core.inference.onnx_session import exported_session_factory
from stma_core.inference.session import VideoSession
from stma_core.model.network import STMANetwork
from stma_core.training.unroll import TOP_K, unroll_sequence

TINY = ModelConfig(embed_dim=32, stml_depth=2, num_heads=2, key_dim=16, value_dim=32, decoder_dims=(16, 16, 8))
H, W = 128, 192  # 96 tokens a frame: more than top_k, so the top-k readout really selects
EVERY_FRAME = InferenceConfig(size=H, top_k=TOP_K, spatial_every=1, temporal_every=1)


def _clip(count: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Smooth moving frames (HxWx3 uint8) and a two-object mask of the first one."""
    yy, xx = np.mgrid[0:H, 0:W]
    frames = []
    for t in range(count):
        r = 127 + 100 * np.sin((xx + 6 * t) / 17.0) * np.cos(yy / 23.0)
        g = 127 + 100 * np.cos((xx - 3 * t) / 29.0 + yy / 31.0)
        b = 127 + 80 * np.sin((xx + yy + 5 * t) / 13.0)
        frames.append(np.stack([r, g, b], -1).clip(0, 255).astype(np.uint8))
    mask = np.zeros((H, W), np.uint8)
    mask[20:70, 20:80] = 1
    mask[60:120, 110:180] = 2
    return frames, mask


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[STMANetwork, Path]:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("engines")
    save_model(STMANetwork(TINY, pretrained_trunk=False), TINY, folder / "tiny.safetensors", inference=EVERY_FRAME)
    network, _, _ = load_model(folder / "tiny.safetensors")
    return network, folder


def test_unroll_torch_session_and_exported_engine_predict_the_same_frames(tiny):
    network, folder = tiny
    frames, mask = _clip(3)
    # training: the unroll over the same frames, frame 0's mask given (as one-hot float masks)
    images = [torch.from_numpy(f).permute(2, 0, 1)[None].float() / 255 for f in frames]
    features = [network.encode_frame(image) for image in images]
    onehot = torch.stack([torch.from_numpy(mask == i).float() for i in (1, 2)])[None, None]
    masks = torch.cat([onehot, onehot.new_zeros(1, 2, 2, H, W)], 1)  # only frame 0 is read by the unroll
    _, unrolled = unroll_sequence(network, features, masks, top_fraction=1.0, rng=random.Random(0))

    export_model(folder / "tiny.safetensors", folder / "onnx", "onnx", size=(H, W), objects=2)
    sessions = {"torch": VideoSession(TorchEngine(network), EVERY_FRAME),
                "exported": exported_session_factory(folder / "onnx", threads=1)()}
    assert sessions["exported"].config == EVERY_FRAME  # the export kept the checkpoint's settings
    for name, session in sessions.items():
        for t, frame in enumerate(frames):
            session.step(frame, mask if t == 0 else None)
            if t == 0:
                continue
            want = unrolled[t - 1][0].detach()  # (2, H, W) object probabilities
            got = session.probabilities[1:]
            torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-3, msg=f"{name} session, frame {t}")
            assert float(want.amax() - want.amin()) > 1e-2  # varies over pixels and objects: not a constant


def test_padded_references_and_memory_do_not_change_predict(tiny):
    """predict with validity masks over padding gives what it gives without the padding."""
    from stma_core.model.network import MemoryGroup

    network, _ = tiny
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        frame = network.encode_frame(torch.rand(1, 3, 64, 96, generator=gen))
        n = frame.tokens.shape[1]
        refs = torch.randn(1, 2, n, 32, generator=gen)
        keys = torch.randn(1, 3 * n, 16, generator=gen)
        values = torch.randn(1, 2, 32, 3 * n, generator=gen)
        groups = [MemoryGroup(values[:, :1]), MemoryGroup(values[:, 1:, :, n:])]
        want = network.predict(frame, keys, groups, 7, references=refs)
        pad_refs = torch.cat([refs, torch.randn(1, 1, n, 32, generator=gen)], 1)
        pad_keys = torch.cat([keys, torch.randn(1, n, 16, generator=gen)], 1)
        valid = torch.tensor([[1.0] * 3 * n + [0.0] * n])
        padded_groups = [MemoryGroup(torch.cat([values[:, :1], torch.randn(1, 1, 32, n, generator=gen)], 3), valid),
                         MemoryGroup(torch.cat([values[:, 1:, :, n:], torch.randn(1, 1, 32, n, generator=gen)], 3),
                                     valid[:, n:])]
        got = network.predict(frame, pad_keys, padded_groups, 7, references=pad_refs,
                              reference_valid=torch.tensor([[1.0, 1.0, 0.0]]))
    torch.testing.assert_close(got.probabilities, want.probabilities, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.key, want.key, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(got.usage[:, : 3 * n], want.usage, atol=1e-5, rtol=1e-4)
    assert got.usage[:, 3 * n:].abs().max() == 0
