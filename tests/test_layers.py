"""No module imports from a layer above its own (the package's dependency direction)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# lower number = lower layer; a module may import its own layer or lower ones
LAYERS = {
    "stma_core.errors": 0, "stma_core.ids": 0, "stma_core.config": 0, "stma_core.device": 0,
    "stma_core.io": 1,
    "stma_core.model": 2,
    "stma_core.checkpoint": 3,
    "stma_core.export": 4,
    "stma_core.inference": 5, "stma_core.baselines": 5,
    "stma_core.eval": 6, "stma_core.training": 6,
    "stma_cli": 7,
}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in LAYERS:
            return LAYERS[".".join(parts[:end])]
    return None


def test_no_module_imports_from_a_layer_above_it():
    upward = []
    for path in sorted([*(REPO / "stma_core").rglob("*.py"), *(REPO / "stma_cli").rglob("*.py")]):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        if module == "stma_core":
            continue  # the package facade re-exports the public API from every layer
        own = _layer(module)
        assert own is not None, f"{module}: add it to LAYERS"
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                target = _layer(name)
                if target is not None and target > own:
                    upward.append(f"{module} imports {name}")
    assert not upward, upward


def test_public_api_names():
    import stma_core

    from stma_core.inference.session import VideoSession

    assert stma_core.VideoSession is VideoSession
    assert callable(stma_core.load_model) and stma_core.InferenceConfig().top_k > 0


def test_topk_readout_with_mixed_precision() -> None:
    """Under CUDA bf16 autocast the affinities are bf16 and the softmax float32; the dense top-k form
    scattered one into the other and failed on the first GPU run. The same mix on a CPU: bf16
    affinities with a float32 kernel bias (which makes the kept affinities float32)."""
    import torch

    from stma_core.model.network import ReadoutKernel, topk_readout

    torch.manual_seed(0)
    sim = torch.randn(2, 50, 40)  # B, N queries (a 5 x 10 grid), L memory entries
    values = torch.randn(2, 1, 8, 40, requires_grad=True)  # B, n objects, Cv, L
    kernel = ReadoutKernel.from_affinity(sim, (5, 10), sigma=3.0)  # float32 bias
    reference, _ = topk_readout(sim, values, top_k=10, kernel=kernel)
    low = sim.to(torch.bfloat16).requires_grad_()
    readout, _ = topk_readout(low, values, top_k=10, kernel=kernel)
    assert readout.shape == reference.shape == (2, 1, 8, 50)
    torch.testing.assert_close(readout, reference, atol=0.1, rtol=0.05)
    readout.sum().backward()
    assert low.grad is not None and torch.isfinite(low.grad.float()).all()
