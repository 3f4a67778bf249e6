"""Face-recognition backbones and the one factory that builds them by name.

Every backbone maps (N, 3, 112, 112) RGB images normalised to [-1, 1] to (N, embedding_size)
un-normalised embeddings. Add one by writing its module and one line in `BACKBONES`; the
tests are parametrised over `BACKBONES`, so a new entry is tested for free.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import nn

from training.backbones.iresnet import IResNet, iresnet
from training.backbones.mobilefacenet import MobileFaceNet

BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "r18": partial(iresnet, 18),
    "r34": partial(iresnet, 34),
    "r50": partial(iresnet, 50),
    "r100": partial(iresnet, 100),
    "mobilefacenet": MobileFaceNet,
}


def create_backbone(name: str, embedding_size: int = 512, **kwargs: object) -> nn.Module:
    """Build backbone `name` (a key of `BACKBONES`); `kwargs` go to its constructor (e.g.
    `width`, `dropout`, `input_size`)."""
    try:
        builder = BACKBONES[name]
    except KeyError:
        known = ", ".join(sorted(BACKBONES))
        raise ValueError(f"unknown backbone {name!r}; known backbones: {known}") from None
    return builder(embedding_size=embedding_size, **kwargs)


__all__ = ["BACKBONES", "IResNet", "MobileFaceNet", "create_backbone"]
