"""MiniFASNet V2 and V1SE: the two small anti-spoofing classifiers published with
minivision-ai/Silent-Face-Anti-Spoofing (Apache-2.0), rebuilt so their state_dicts load with
`strict=True`.

The network is a pruned MobileFaceNet for 80x80 crops: a stride-2 stem, four stages of
inverted-residual blocks (1x1 expand, 3x3 depthwise, linear 1x1 project), three of them
downsampling 2x (80 → 40 → 20 → 10 → 5), a global depthwise 5x5 convolution instead of
pooling, a 512 → 128 linear embedding with batch norm, and a bias-free 128 → 3 classifier.
Pruning left every block its own hidden width: the tables below list them per stage. The SE
variant puts a squeeze-excitation gate (global average, 1x1 conv down by 4, BN, ReLU, 1x1 conv
up, BN, sigmoid) on the projected output of the last block of each residual stage, before the
shortcut is added.

Attribute names follow the published checkpoints (`conv_23`, `conv_6_dw`, `se_module`, ...),
since `load_state_dict` matches by name. Input: BGR, raw 0-255 values, no normalisation.
Output: 3 logits; softmax class 1 = live, 0 and 2 = two kinds of attack.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

INPUT_SIZE = 80
NUM_CLASSES = 3
LIVE_CLASS = 1
EMBEDDING_SIZE = 128
HEAD_CHANNELS = 512
# Squeeze-excitation reduction of the SE variant (source default for its residual stages).
SE_REDUCTION = 4
# The four stride-2 steps (stem, conv_23, conv_34, conv_45) take 80x80 to 5x5, which the
# global depthwise kernel covers: (80 + 15) // 16 in the source's kernel rule.
TOTAL_STRIDE = 16


@dataclass(frozen=True)
class MiniFASNetWidths:
    """Channel widths left by pruning: the stem, each downsampling block's hidden width, and
    the hidden width of each residual block of the three residual stages."""

    stem: int
    down1_hidden: int  # conv_23: stem → stage1_out
    stage1_out: int
    stage1_hidden: tuple[int, ...]  # conv_3
    down2_hidden: int  # conv_34: stage1_out → stage2_out
    stage2_out: int
    stage2_hidden: tuple[int, ...]  # conv_4
    down3_hidden: int  # conv_45: stage2_out → stage3_out
    stage3_out: int
    stage3_hidden: tuple[int, ...]  # conv_5


# The widths of the published checkpoints ("1.8M" for V1/V1SE, "1.8M_" for V2 in the source).
V1_WIDTHS = MiniFASNetWidths(
    stem=32,
    down1_hidden=103,
    stage1_out=64,
    stage1_hidden=(13, 26, 13, 52),
    down2_hidden=231,
    stage2_out=128,
    stage2_hidden=(154, 52, 26, 52, 26, 26),
    down3_hidden=308,
    stage3_out=128,
    stage3_hidden=(26, 26),
)
V2_WIDTHS = MiniFASNetWidths(
    stem=32,
    down1_hidden=103,
    stage1_out=64,
    stage1_hidden=(13, 13, 13, 13),
    down2_hidden=231,
    stage2_out=128,
    stage2_hidden=(231, 52, 26, 77, 26, 26),
    down3_hidden=308,
    stage3_out=128,
    stage3_hidden=(26, 26),
)


class ConvBNPReLU(nn.Module):
    """Conv (no bias) → BN → PReLU; without `activation`, Conv → BN."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = 1,
        stride: int = 1,
        groups: int = 1,
        activation: bool = True,
    ) -> None:
        super().__init__()
        padding = kernel // 2 if kernel == 3 else 0
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.prelu = nn.PReLU(out_channels) if activation else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.prelu(x) if self.prelu is not None else x


class SqueezeExcitation(nn.Module):
    """x * sigmoid(BN(W2 relu(BN(W1 avgpool(x))))), W1/W2 1x1 convolutions without bias."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION) -> None:
        super().__init__()
        squeezed = channels // reduction
        self.fc1 = nn.Conv2d(channels, squeezed, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(squeezed)
        self.fc2 = nn.Conv2d(squeezed, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.mean(x, dim=(2, 3), keepdim=True)
        gate = torch.relu(self.bn1(self.fc1(gate)))
        return x * torch.sigmoid(self.bn2(self.fc2(gate)))


class InvertedBlock(nn.Module):
    """1x1 expand (PReLU) → 3x3 depthwise (PReLU, `stride`) → 1x1 linear project; with
    `residual`, the input is added back (after the optional SE gate on the projection)."""

    def __init__(
        self,
        in_channels: int,
        hidden: int,
        out_channels: int,
        stride: int,
        residual: bool,
        squeeze_excitation: bool = False,
    ) -> None:
        super().__init__()
        self.conv = ConvBNPReLU(in_channels, hidden)
        self.conv_dw = ConvBNPReLU(hidden, hidden, kernel=3, stride=stride, groups=hidden)
        self.project = ConvBNPReLU(hidden, out_channels, activation=False)
        self.residual = residual
        if squeeze_excitation:
            self.se_module = SqueezeExcitation(out_channels)
        else:
            self.se_module = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.conv_dw(self.conv(x)))
        if not self.residual:
            return out
        if self.se_module is not None:
            out = self.se_module(out)
        return x + out


class ResidualStage(nn.Module):
    """Residual blocks at constant width; with SE, the last block carries the gate."""

    def __init__(self, channels: int, hidden: Sequence[int], squeeze_excitation: bool) -> None:
        super().__init__()
        last = len(hidden) - 1
        self.model = nn.Sequential(
            *(
                InvertedBlock(channels, width, channels, 1, True, squeeze_excitation and i == last)
                for i, width in enumerate(hidden)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class MiniFASNet(nn.Module):
    """80x80 BGR 0-255 crop → 3 logits (class 1 = live)."""

    def __init__(
        self,
        widths: MiniFASNetWidths,
        squeeze_excitation: bool = False,
        input_size: int = INPUT_SIZE,
        num_classes: int = NUM_CLASSES,
    ) -> None:
        super().__init__()
        if input_size % TOTAL_STRIDE:
            raise ValueError(f"input_size must be a multiple of {TOTAL_STRIDE}, got {input_size}")
        self.input_size = input_size
        w, se = widths, squeeze_excitation
        self.conv1 = ConvBNPReLU(3, w.stem, kernel=3, stride=2)
        self.conv2_dw = ConvBNPReLU(w.stem, w.stem, kernel=3, groups=w.stem)
        self.conv_23 = InvertedBlock(w.stem, w.down1_hidden, w.stage1_out, 2, False)
        self.conv_3 = ResidualStage(w.stage1_out, w.stage1_hidden, se)
        self.conv_34 = InvertedBlock(w.stage1_out, w.down2_hidden, w.stage2_out, 2, False)
        self.conv_4 = ResidualStage(w.stage2_out, w.stage2_hidden, se)
        self.conv_45 = InvertedBlock(w.stage2_out, w.down3_hidden, w.stage3_out, 2, False)
        self.conv_5 = ResidualStage(w.stage3_out, w.stage3_hidden, se)
        self.conv_6_sep = ConvBNPReLU(w.stage3_out, HEAD_CHANNELS)
        # Global depthwise convolution over the whole final map (5x5 at 80x80 input).
        spatial = input_size // TOTAL_STRIDE
        self.conv_6_dw = nn.Module()
        self.conv_6_dw.conv = nn.Conv2d(
            HEAD_CHANNELS, HEAD_CHANNELS, spatial, groups=HEAD_CHANNELS, bias=False
        )
        self.conv_6_dw.bn = nn.BatchNorm2d(HEAD_CHANNELS)
        self.linear = nn.Linear(HEAD_CHANNELS, EMBEDDING_SIZE, bias=False)
        self.bn = nn.BatchNorm1d(EMBEDDING_SIZE)
        self.prob = nn.Linear(EMBEDDING_SIZE, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in (
            self.conv1,
            self.conv2_dw,
            self.conv_23,
            self.conv_3,
            self.conv_34,
            self.conv_4,
            self.conv_45,
            self.conv_5,
            self.conv_6_sep,
        ):
            x = stage(x)
        x = self.conv_6_dw.bn(self.conv_6_dw.conv(x))
        x = self.bn(self.linear(torch.flatten(x, 1)))
        return self.prob(x)


# Published variants: their widths and whether they carry squeeze-excitation gates.
VARIANTS: dict[str, tuple[MiniFASNetWidths, bool]] = {
    "MiniFASNetV2": (V2_WIDTHS, False),  # 2.7_80x80_MiniFASNetV2.pth
    "MiniFASNetV1SE": (V1_WIDTHS, True),  # 4_0_0_80x80_MiniFASNetV1SE.pth
}


def build_minifasnet(variant: str, input_size: int = INPUT_SIZE) -> MiniFASNet:
    """An untrained network of a published variant (a key of `VARIANTS`)."""
    try:
        widths, squeeze_excitation = VARIANTS[variant]
    except KeyError:
        known = ", ".join(VARIANTS)
        raise ValueError(f"unknown MiniFASNet variant {variant!r}; known: {known}") from None
    return MiniFASNet(widths, squeeze_excitation, input_size)


@dataclass(frozen=True)
class CheckpointName:
    """What a checkpoint's file name says, e.g. `2.7_80x80_MiniFASNetV2.pth`: crop scale 2.7,
    80x80 input, variant MiniFASNetV2 (`4_0_0_...` reads as scale 4.0)."""

    scale: float
    input_size: int
    variant: str

    @classmethod
    def parse(cls, path: Path) -> CheckpointName:
        stem = Path(path).name.removesuffix(".pth")
        parts = stem.split("_")
        if len(parts) < 3 or parts[-1] not in VARIANTS or "x" not in parts[-2]:
            raise ValueError(
                f"{Path(path).name} is not named like a MiniFASNet checkpoint "
                f"(<scale>_<H>x<W>_<variant>.pth, variant one of {', '.join(VARIANTS)})"
            )
        height, width = (int(side) for side in parts[-2].split("x"))
        if height != width:
            raise ValueError(f"{Path(path).name}: only square inputs are supported")
        # "2.7" → 2.7; "4_0_0" → 4.0 (the source reads the part before the first "_").
        return cls(float(parts[0]), height, parts[-1])


def strip_data_parallel(state_dict: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """The state_dict without the `module.` prefix `nn.DataParallel` checkpoints carry."""
    prefix = "module."
    return OrderedDict(
        (key.removeprefix(prefix) if key.startswith(prefix) else key, value)
        for key, value in state_dict.items()
    )


def load_minifasnet(path: Path) -> tuple[MiniFASNet, CheckpointName]:
    """The network of a published checkpoint, weights loaded with `strict=True`, in eval mode."""
    name = CheckpointName.parse(path)
    model = build_minifasnet(name.variant, name.input_size)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(strip_data_parallel(state), strict=True)
    return model.eval(), name
