"""The paper's ViT-B/16 configuration: timm ViT-B blocks become the STML blocks.

No ViT weights ship with stma; `load_vit_weights` takes a timm-format state dict (safetensors or a
plain tensor .pth/.bin, loaded without unpickling code) that the user supplies.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from stma_core.errors import StmaInputError

VIT_LIGHT_CHANNELS = {"f4": 48, "f8": 64}


def create_vit(embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0) -> nn.Module:
    return timm.models.vision_transformer.VisionTransformer(
        img_size=224, patch_size=16, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
        mlp_ratio=mlp_ratio, qkv_bias=True, num_classes=0, class_token=True, dynamic_img_size=True,
    )


def load_vit_weights(vit: nn.Module, path: str | Path) -> None:
    path = Path(path)
    if not path.is_file():
        raise StmaInputError(f"{path}: ViT weight file not found; pass a timm ViT-B/16 state dict file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("model", "state_dict"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    wanted = {k: v for k, v in state.items() if k.startswith(("blocks.", "patch_embed."))}
    if not wanted:
        raise StmaInputError(f"{path}: no 'blocks.*' / 'patch_embed.*' tensors; expected a timm ViT-B/16 state dict")
    missing, _ = vit.load_state_dict(wanted, strict=False)
    missing = [k for k in missing if k.startswith(("blocks.", "patch_embed."))]
    if missing:
        raise StmaInputError(f"{path}: ViT weights lack {len(missing)} tensors (e.g. {missing[0]}); "
                             "expected timm ViT-B/16 layout")


class LightConvPath(nn.Module):
    """Stride-4 and stride-8 maps for the decoder, since a plain ViT has only stride 16."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 32, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(32, VIT_LIGHT_CHANNELS["f4"], 3, stride=2, padding=1)
        self.c3 = nn.Conv2d(VIT_LIGHT_CHANNELS["f4"], VIT_LIGHT_CHANNELS["f8"], 3, stride=2, padding=1)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (image - self.mean) / self.std
        f4 = F.relu(self.c2(F.relu(self.c1(x))))
        f8 = F.relu(self.c3(f4))
        return {"f4": f4, "f8": f8, "normalized": x}
