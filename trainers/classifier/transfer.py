"""Transfer-learning logic as pure functions: which parameters train, at which learning rate."""

from __future__ import annotations

from typing import Any

from torch import nn

from trainers.classifier.models import STAGES, family, head_name, stage_of


def trainable_stages(unfreeze: str, n_stages: int) -> range:
    """Indices of the backbone stages that train: ``head`` → none, ``lastN`` → the last N, ``all``."""
    if unfreeze == "head":
        return range(n_stages, n_stages)
    if unfreeze == "all":
        return range(0, n_stages)
    n = int(unfreeze.removeprefix("last"))
    return range(max(0, n_stages - n), n_stages)


def apply_unfreeze(model: nn.Module, arch: str, unfreeze: str) -> dict[str, bool]:
    """Set ``requires_grad`` per the unfreeze level; return it by parameter name."""
    stages = STAGES.get(family(arch))(model)
    head = head_name(model) + "."
    train = trainable_stages(unfreeze, len(stages))
    flags = {}
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith(head) or stage_of(name, stages) in train
        flags[name] = p.requires_grad
    return flags


def param_groups(
    model: nn.Module, arch: str, lr: float, backbone_lr_mult: float, unfreeze: str
) -> list[dict[str, Any]]:
    """Optimizer groups: the head at ``lr``, the unfrozen backbone at ``lr * backbone_lr_mult``."""
    apply_unfreeze(model, arch, unfreeze)
    head = head_name(model) + "."
    groups: dict[str, list[nn.Parameter]] = {"head": [], "backbone": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups["head" if name.startswith(head) else "backbone"].append(p)
    out = [{"name": "head", "params": groups["head"], "lr": lr}]
    if groups["backbone"]:
        out.append({"name": "backbone", "params": groups["backbone"], "lr": lr * backbone_lr_mult})
    return out


def train_mode(model: nn.Module) -> None:
    """``model.train()``, except BatchNorm layers whose parameters are frozen keep their running
    statistics (eval mode), as a frozen pretrained backbone must."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()
