"""Model builders and each family's stages, the primitive behind unfreeze depth and backbone lr."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from trainers.base import InputError
from trainers.registry import Registry
from trainers.weights import hub_file, load_file

Stages = list[list[str]]
"""A backbone's stages, input to output, each a list of module-name prefixes."""

# Per family: a function that splits a built model into its stages (timm's group_matcher idea,
# derived from the module tree so every variant of a family — vgg11 and vgg16 — gets its own).
STAGES: Registry[Callable[[nn.Module], Stages]] = Registry("model family")


def _children(model: nn.Module, name: str) -> list[str]:
    return [f"{name}.{child}" for child, _ in model.get_submodule(name).named_children()]


def _pre_head(model: nn.Module) -> Stages:
    """Parametrised layers of ``classifier`` before the head (AlexNet/VGG fc6–fc7, ConvNeXt's norm)."""
    head = head_name(model)
    names = [
        n
        for n in _children(model, "classifier")
        if n != head and any(True for _ in model.get_submodule(n).parameters())
    ]
    return [names] if names else []


def _chunks(names: list[str], n: int) -> Stages:
    size = -(-len(names) // n)
    return [names[i : i + size] for i in range(0, len(names), size)]


@STAGES.register("resnet")
def _resnet(model: nn.Module) -> Stages:
    return [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]


def _pooled_blocks(model: nn.Module) -> Stages:
    """``features`` split after each max-pool: VGG's and AlexNet's conv blocks."""
    blocks: Stages = [[]]
    for name in _children(model, "features"):
        blocks[-1].append(name)
        if isinstance(model.get_submodule(name), nn.MaxPool2d):
            blocks.append([])
    return [b for b in blocks if b] + _pre_head(model)


STAGES.add("alexnet", _pooled_blocks)
STAGES.add("vgg", _pooled_blocks)


@STAGES.register("efficientnet")
def _efficientnet(model: nn.Module) -> Stages:
    return [[n] for n in _children(model, "features")]


@STAGES.register("mobilenet")
def _mobilenet(model: nn.Module) -> Stages:
    return _chunks(_children(model, "features"), 5) + _pre_head(model)


@STAGES.register("convnext")
def _convnext(model: nn.Module) -> Stages:
    stages = _chunks(_children(model, "features"), 4)
    stages[-1] += _pre_head(model)[0] if _pre_head(model) else []
    return stages


@STAGES.register("vit")
def _vit(model: nn.Module) -> Stages:
    layers = _children(model, "encoder.layers")
    stages = [["conv_proj", "class_token", "encoder.pos_embedding"], *_chunks(layers, 4)]
    stages[-1].append("encoder.ln")
    return stages


@STAGES.register("small_cnn")
def _small_cnn(model: nn.Module) -> Stages:
    return [[n] for n in _children(model, "features")]


def family(arch: str) -> str:
    """The stage table an architecture uses."""
    for prefix in ("resnet", "alexnet", "vgg", "efficientnet", "mobilenet", "convnext", "vit", "small_cnn"):
        if arch.startswith(prefix):
            return prefix
    raise InputError(f"model.arch: no stage table for '{arch}'; families: {', '.join(STAGES.names())}")


class SmallCNN(nn.Module):
    """Three conv blocks and a linear head: a fast CPU baseline for small images."""

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(3, width), block(width, width * 2), block(width * 2, width * 4))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def head_name(model: nn.Module) -> str:
    """The classification head: the last ``nn.Linear`` of the model."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1]


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    name = head_name(model)
    old = model.get_submodule(name)
    assert isinstance(old, nn.Linear)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.Linear(old.in_features, num_classes))
    return model


def imagenet_url(arch: str) -> str:
    """Where torchvision's default ImageNet weights of ``arch`` come from."""
    if arch == "small_cnn":
        raise InputError("model.weights: small_cnn has no ImageNet weights; use none or a file")
    import torchvision

    return str(torchvision.models.get_model_weights(arch).DEFAULT.url)  # type: ignore[attr-defined]


def build_model(arch: str, weights: str, num_classes: int) -> tuple[nn.Module, str]:
    """Build ``arch`` with a head for ``num_classes``; return it and the weights' identity."""
    if arch == "small_cnn":
        model: nn.Module = SmallCNN(num_classes)
        if weights == "imagenet":
            imagenet_url(arch)
        return (model, "none") if weights == "none" else (model, load_file(model, weights))
    import torchvision

    if weights == "imagenet":
        url = imagenet_url(arch)
        model = torchvision.models.get_model(arch, weights=None)
        model.load_state_dict(torch.load(hub_file(url), map_location="cpu", weights_only=True))
        return replace_head(model, num_classes), f"imagenet:{torchvision.models.get_model_weights(arch).DEFAULT}"
    model = replace_head(torchvision.models.get_model(arch, weights=None), num_classes)
    return (model, "none") if weights == "none" else (model, load_file(model, weights))


def stage_of(name: str, stages: Stages) -> int:
    """The stage a parameter belongs to; anything outside every stage counts as the first."""
    for i, prefixes in enumerate(stages):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return i
    return 0
