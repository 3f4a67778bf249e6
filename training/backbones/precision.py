"""Where a backbone leaves mixed precision: its output layers run in float32.

arcface_torch runs the convolutional body under autocast and the output layers outside it,
on a float32 copy of their input (iresnet.py: `x = self.fc(x.float() if self.fp16 else x)`
then `self.features(x)`; mobilefacenet.py likewise for `conv_sep` and the GDC block). The
embedding, its norm (a quality signal AdaFace and the service use) and their gradients then
keep float32 resolution. Without autocast this is a plain call, so eval and ONNX export see
no autocast region at all.
"""

from __future__ import annotations

import torch
from torch import nn


def run_in_float32(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` in float32 with autocast off when autocast is on, else `module(x)`."""
    if not torch.is_autocast_enabled(x.device.type):
        return module(x)
    with torch.autocast(x.device.type, enabled=False):
        return module(x.float())
