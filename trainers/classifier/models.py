"""Model builders and each family's stages, the primitive behind unfreeze depth and backbone lr."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
from torch import nn

from trainers.base import InputError
from trainers.registry import Registry

# Per family: regexes of the backbone's stages, input to output. A parameter matching none of them
# (and not the head) belongs to the first stage.
STAGES: Registry[tuple[str, ...]] = Registry("model family")
STAGES.add("resnet", (r"^(conv1|bn1)\.", r"^layer1\.", r"^layer2\.", r"^layer3\.", r"^layer4\."))
STAGES.add("alexnet", (r"^features\.[0-5]\.", r"^features\.([6-9]|1[0-2])\.", r"^classifier\.[0-5]\."))
STAGES.add(
    "vgg",
    (r"^features\.[0-9]\.", r"^features\.(1[0-6])\.", r"^features\.(1[7-9]|2[0-3])\.", r"^features\.(2[4-9]|30)\.",
     r"^classifier\.[0-5]\."),
)
STAGES.add(
    "efficientnet",
    (r"^features\.[0-2]\.", r"^features\.3\.", r"^features\.4\.", r"^features\.5\.", r"^features\.6\.",
     r"^features\.[78]\."),
)
STAGES.add(
    "mobilenet",
    (r"^features\.[0-3]\.", r"^features\.[4-6]\.", r"^features\.([7-9]|1[0-2])\.", r"^features\.1[3-6]\.",
     r"^classifier\.[0-2]\."),
)
STAGES.add("convnext", (r"^features\.[01]\.", r"^features\.[23]\.", r"^features\.[45]\.", r"^(features\.[67]|classifier\.[01])\."))
STAGES.add(
    "vit",
    (r"^(conv_proj|class_token|encoder\.pos_embedding)", r"^encoder\.layers\.encoder_layer_[0-2]\.",
     r"^encoder\.layers\.encoder_layer_[3-5]\.", r"^encoder\.layers\.encoder_layer_[6-8]\.",
     r"^encoder\.(layers\.encoder_layer_(9|1[01])\.|ln\.)"),
)
STAGES.add("small_cnn", (r"^features\.0\.", r"^features\.1\.", r"^features\.2\."))


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
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
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


def build_model(arch: str, weights: str, num_classes: int) -> tuple[nn.Module, str]:
    """Build ``arch`` with a head for ``num_classes``; return it and the weights' identity."""
    if arch == "small_cnn":
        model: nn.Module = SmallCNN(num_classes)
        if weights == "imagenet":
            raise InputError("model.weights: small_cnn has no ImageNet weights; use none or a file")
        return (model, "none") if weights == "none" else (model, _load_file(model, weights))
    import torchvision

    if weights == "imagenet":
        model_weights = torchvision.models.get_model_weights(arch).DEFAULT  # type: ignore[attr-defined]
        model = torchvision.models.get_model(arch, weights=None)
        model.load_state_dict(_hub_state_dict(model_weights))
        return replace_head(model, num_classes), f"imagenet:{model_weights}"
    model = replace_head(torchvision.models.get_model(arch, weights=None), num_classes)
    return (model, "none") if weights == "none" else (model, _load_file(model, weights))


def _hub_state_dict(model_weights: object) -> dict[str, torch.Tensor]:
    """torchvision's weights from the torch hub cache, downloaded there when online."""
    url: str = model_weights.url  # type: ignore[attr-defined]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    try:
        state: dict[str, torch.Tensor] = torch.hub.load_state_dict_from_url(url, progress=False, weights_only=True)
    except OSError as e:  # offline (URLError is an OSError) or unwritable cache
        raise InputError(
            f"model.weights: ImageNet weights {cached.name} are not in {cached.parent} and could not be "
            f"downloaded ({e}); put the file there or use weights: none"
        ) from None
    return state


def _load_file(model: nn.Module, path: str) -> str:
    """Load a weights file (a state dict, or a checkpoint this trainer wrote); the head is kept
    only where its shape matches."""
    file = Path(path).expanduser()
    try:
        blob = torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"model.weights: file not found: {file}") from None
    except Exception as e:  # a corrupt, truncated or non-weights file
        raise InputError(f"model.weights: cannot load {file}: {str(e).splitlines()[0]}") from None
    state = blob.get("model_state", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise InputError(f"model.weights: {file} holds no state dict")
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise InputError(f"model.weights: no tensor in {file} fits this architecture")
    model.load_state_dict(usable, strict=False)
    digest = hashlib.sha256(file.read_bytes()).hexdigest()[:16]
    return f"file:{file.resolve()}#sha256={digest}"


def stage_of(name: str, stages: tuple[str, ...]) -> int:
    for i, pattern in enumerate(stages):
        if re.match(pattern, name):
            return i
    return 0
