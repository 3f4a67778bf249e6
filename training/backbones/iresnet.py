"""IResNet, the "improved residual network" of InsightFace (ArcFace, Deng et al. 2019, sec. 4.1).

Input 112x112 RGB. A 3x3 stride-1 stem, four stages of pre-activation basic blocks
(BN → conv3x3 → BN → PReLU → conv3x3(stride) → BN, plus a 1x1-conv shortcut where the shape
changes), each stage halving the resolution: 112 → 7. The "E" output block: BN → dropout →
flatten → FC-512 → BN1d, whose scale is frozen at 1 so the embedding's norm stays free.
Under autocast the FC and BN1d run in float32, as in arcface_torch (`run_in_float32`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from training.backbones.precision import run_in_float32

# Batch-norm epsilon of InsightFace's IResNet (arcface_torch backbones/iresnet.py: eps=1e-05).
BN_EPS = 1e-5
# Blocks per stage (ArcFace paper, table 1; arcface_torch backbones/iresnet.py).
IRESNET_LAYERS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 14, 3),
    100: (3, 13, 30, 3),
}
# Stages downsample 2x each: 112 → 56 → 28 → 14 → 7.
TOTAL_STRIDE = 16


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """BN → conv3x3 → BN → PReLU → conv3x3(stride) → BN, plus the (projected) input."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.conv1 = _conv3x3(in_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.prelu = nn.PReLU(out_channels)
        self.conv2 = _conv3x3(out_channels, out_channels, stride)
        self.bn3 = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels, eps=BN_EPS),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.bn1(x))
        out = self.conv2(self.prelu(self.bn2(out)))
        return self.bn3(out) + self.shortcut(x)


class IResNet(nn.Module):
    """IResNet with `layers` blocks per stage; `width` is the first stage's channel count
    (64 in the paper; smaller values give tiny networks for tests)."""

    def __init__(
        self,
        layers: Sequence[int],
        embedding_size: int = 512,
        width: int = 64,
        dropout: float = 0.0,
        input_size: int = 112,
    ) -> None:
        super().__init__()
        if input_size % TOTAL_STRIDE:
            raise ValueError(f"input_size must be a multiple of {TOTAL_STRIDE}, got {input_size}")
        self.embedding_size, self.input_size = embedding_size, input_size
        self.stem = nn.Sequential(
            _conv3x3(3, width), nn.BatchNorm2d(width, eps=BN_EPS), nn.PReLU(width)
        )
        stages: list[nn.Module] = []
        in_channels = width
        for index, blocks in enumerate(layers):
            out_channels = width * 2**index
            stage = [IBasicBlock(in_channels, out_channels, stride=2)]
            stage += [IBasicBlock(out_channels, out_channels, stride=1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            in_channels = out_channels
        self.stages = nn.Sequential(*stages)
        spatial = input_size // 2 ** len(layers)
        self.bn2 = nn.BatchNorm2d(in_channels, eps=BN_EPS)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(in_channels * spatial * spatial, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=BN_EPS)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.features.weight.requires_grad_(False)  # frozen scale: the norm carries quality

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        x = torch.flatten(self.dropout(self.bn2(x)), 1)
        return run_in_float32(self._embed, x)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.fc(x))


def iresnet(depth: int, embedding_size: int = 512, **kwargs: object) -> IResNet:
    """IResNet-`depth` (18, 34, 50 or 100)."""
    if depth not in IRESNET_LAYERS:
        raise ValueError(f"IResNet depth {depth} unknown; known: {sorted(IRESNET_LAYERS)}")
    return IResNet(IRESNET_LAYERS[depth], embedding_size=embedding_size, **kwargs)  # type: ignore[arg-type]
