"""Backbones: output shapes for every registered network, and the factory's error."""

from __future__ import annotations

import pytest
import torch

from training.backbones import BACKBONES, IResNet, create_backbone


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_maps_112px_faces_to_512d_embeddings(name: str) -> None:
    backbone = create_backbone(name).eval()
    with torch.no_grad():
        embeddings = backbone(torch.randn(2, 3, 112, 112))
    assert embeddings.shape == (2, 512)
    assert torch.isfinite(embeddings).all()


@pytest.mark.parametrize(
    ("name", "kwargs"), [("r18", {"width": 4}), ("mobilefacenet", {"width": 0.125})]
)
def test_backbones_honour_embedding_size_width_and_input_size(name: str, kwargs: dict) -> None:
    backbone = create_backbone(name, embedding_size=32, input_size=48, **kwargs)
    images = torch.randn(3, 3, 48, 48, requires_grad=True)
    embeddings = backbone(images)
    embeddings.sum().backward()
    assert embeddings.shape == (3, 32)
    assert images.grad is not None and torch.isfinite(images.grad).all()


def test_iresnet_output_block_is_bn_dropout_fc_bn1d_with_frozen_scale() -> None:
    backbone = create_backbone("r18", width=4, dropout=0.2)
    assert isinstance(backbone, IResNet)
    assert backbone.dropout.p == 0.2
    assert backbone.fc.in_features == 8 * 4 * 7 * 7  # last stage channels x 7 x 7
    assert not backbone.features.weight.requires_grad
    assert torch.equal(backbone.features.weight, torch.ones(512))


def test_iresnet_depths_have_the_published_block_counts() -> None:
    for name, blocks in {"r18": 8, "r34": 16, "r50": 24, "r100": 49}.items():
        backbone = create_backbone(name, width=2)
        assert sum(len(stage) for stage in backbone.stages) == blocks, name


def test_factory_rejects_unknown_names_listing_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known backbones: mobilefacenet, r100, r18, r34, r50"):
        create_backbone("resnet50")


@pytest.mark.parametrize(
    ("name", "kwargs", "output_layers"),
    [
        ("r18", {"width": 4}, ("fc", "features")),
        ("mobilefacenet", {"width": 0.125}, ("body.-3", "body.-1")),
    ],
)
def test_output_layers_run_in_float32_under_autocast_like_arcface_torch(
    name: str, kwargs: dict, output_layers: tuple[str, str]
) -> None:
    """The body runs in bfloat16 under autocast; the output FC/conv and BatchNorm in float32
    (arcface_torch: `self.fc(x.float())` outside autocast), so the embedding is float32."""
    backbone = create_backbone(name, embedding_size=16, input_size=32, **kwargs).train()
    modules = dict(backbone.named_modules())
    if name == "mobilefacenet":
        body = backbone.body
        modules["body.-3"], modules["body.-1"] = body[len(body) - 3], body[len(body) - 1]
    seen: dict[str, torch.dtype] = {}
    hooks = [
        modules[layer].register_forward_hook(
            lambda _m, inputs, output, layer=layer: seen.update(
                {f"{layer} in": inputs[0].dtype, f"{layer} out": output.dtype}
            )
        )
        for layer in output_layers
    ]
    first_conv = next(m for m in backbone.modules() if isinstance(m, torch.nn.Conv2d))
    hooks.append(first_conv.register_forward_hook(lambda _m, _i, o: seen.update(body=o.dtype)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embeddings = backbone(torch.randn(2, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    assert seen.pop("body") == torch.bfloat16
    assert set(seen.values()) == {torch.float32}, seen
    assert embeddings.dtype == torch.float32
