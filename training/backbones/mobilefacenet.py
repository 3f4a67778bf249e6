"""MobileFaceNet (Chen et al. 2018, table 1): a MobileNetV2-style network for 112x112 faces.

Its key idea is the global depthwise convolution (GDConv) in place of global average pooling:
a 7x7 depthwise kernel learns how much each position of the final feature map matters (the
centre of a face more than its corners). PReLU throughout, BN after every convolution.
"""

from __future__ import annotations

import torch
from torch import nn

from training.backbones.precision import run_in_float32

# (expansion t, output channels c, repeats n, first stride s) of the bottleneck stages
# (MobileFaceNet paper, table 1).
BOTTLENECK_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (2, 64, 5, 2),
    (4, 128, 1, 2),
    (2, 128, 6, 1),
    (4, 128, 1, 2),
    (2, 128, 2, 1),
)
STEM_CHANNELS = 64  # conv3x3 and depthwise conv3x3 (table 1, first two rows)
HEAD_CHANNELS = 512  # conv1x1 before GDConv (table 1)
# The stem and three bottleneck stages downsample 2x each: 112 → 7.
TOTAL_STRIDE = 16


class ConvBlock(nn.Sequential):
    """Conv → BN (→ PReLU unless `linear`)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        linear: bool = False,
        padding: int | None = None,
    ) -> None:
        padding = kernel // 2 if padding is None else padding
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False
            ),
            nn.BatchNorm2d(out_channels),
        ]
        if not linear:
            layers.append(nn.PReLU(out_channels))
        super().__init__(*layers)


class Bottleneck(nn.Module):
    """Inverted residual: expand 1x1 → depthwise 3x3 (stride) → linear project 1x1."""

    def __init__(self, in_channels: int, out_channels: int, expansion: int, stride: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.residual = stride == 1 and in_channels == out_channels
        self.block = nn.Sequential(
            ConvBlock(in_channels, hidden),
            ConvBlock(hidden, hidden, kernel=3, stride=stride, groups=hidden),
            ConvBlock(hidden, out_channels, linear=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class MobileFaceNet(nn.Module):
    """MobileFaceNet; `width` multiplies every channel count (1.0 = the paper)."""

    def __init__(self, embedding_size: int = 512, width: float = 1.0, input_size: int = 112):
        super().__init__()
        if input_size % TOTAL_STRIDE:
            raise ValueError(f"input_size must be a multiple of {TOTAL_STRIDE}, got {input_size}")
        self.embedding_size, self.input_size = embedding_size, input_size

        def channels(count: int) -> int:
            return max(8, round(count * width))

        stem = channels(STEM_CHANNELS)
        layers: list[nn.Module] = [
            ConvBlock(3, stem, kernel=3, stride=2),
            ConvBlock(stem, stem, kernel=3, groups=stem),
        ]
        in_channels = stem
        for expansion, out, repeats, stride in BOTTLENECK_STAGES:
            for index in range(repeats):
                layers.append(
                    Bottleneck(in_channels, channels(out), expansion, stride if index == 0 else 1)
                )
                in_channels = channels(out)
        head = channels(HEAD_CHANNELS)
        spatial = input_size // TOTAL_STRIDE
        layers += [
            ConvBlock(in_channels, head),
            # GDConv: a depthwise kernel as large as the 7x7 map, reducing it to 1x1.
            ConvBlock(head, head, kernel=spatial, groups=head, linear=True, padding=0),
            ConvBlock(head, embedding_size, linear=True),  # linear conv1x1
        ]
        self.body = nn.Sequential(*layers)
        # The 1x1 conv to `head` channels, GDConv and the linear 1x1 conv run in float32 under
        # autocast (arcface_torch mobilefacenet.py: conv_sep and the GDC features block).
        self.output_start = len(layers) - 3
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body[: self.output_start](x)
        return torch.flatten(run_in_float32(self.body[self.output_start :], x), 1)
