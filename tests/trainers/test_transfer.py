import pytest
import torch
from torch import nn

from trainers.classifier.models import STAGES, build_model, family, head_name
from trainers.classifier.transfer import apply_unfreeze, param_groups, train_mode, trainable_stages

ARCHS = [
    "small_cnn",
    "resnet18",
    "alexnet",
    "vgg11",
    "efficientnet_b0",
    "mobilenet_v3_small",
    "convnext_tiny",
    "vit_b_16",
]


@pytest.fixture(scope="module", params=ARCHS)
def model(request) -> tuple[str, nn.Module]:
    return request.param, build_model(request.param, "none", 7)[0]


def trained(model: nn.Module, arch: str, level: str) -> set[str]:
    return {n for n, on in apply_unfreeze(model, arch, level).items() if on}


def test_head_is_replaced_for_the_classes(model) -> None:
    arch, m = model
    head = m.get_submodule(head_name(m))
    assert isinstance(head, nn.Linear) and head.out_features == 7


def test_unfreeze_levels_add_one_stage_each(model) -> None:
    arch, m = model
    head = head_name(m) + "."
    every = {n for n, _ in m.named_parameters()}
    levels = ["head", "last1", "last2", "last3", "all"]
    sets = [trained(m, arch, level) for level in levels]
    assert sets[0] == {n for n in every if n.startswith(head)}
    assert sets[-1] == every
    for smaller, larger in zip(sets, sets[1:], strict=False):
        assert smaller <= larger
    assert sets[0] < sets[1] < sets[2]  # each level really adds a stage


def test_last1_is_the_stage_just_below_the_head() -> None:
    m = build_model("resnet18", "none", 3)[0]
    extra = trained(m, "resnet18", "last1") - trained(m, "resnet18", "head")
    assert extra and all(n.startswith("layer4.") for n in extra)
    extra2 = trained(m, "resnet18", "last2") - trained(m, "resnet18", "last1")
    assert extra2 and all(n.startswith("layer3.") for n in extra2)


def test_every_family_has_at_least_three_stages(model) -> None:
    arch, m = model
    stages = STAGES.get(family(arch))(m)
    assert len(stages) >= 3
    named = {n for n, _ in m.named_modules()}
    assert all(p in named or p in dict(m.named_parameters()) for stage in stages for p in stage)


def test_families() -> None:
    assert family("resnet101") == "resnet" and family("efficientnet_b4") == "efficientnet"


def test_param_groups_give_the_backbone_its_multiplier() -> None:
    m = build_model("resnet18", "none", 3)[0]
    groups = param_groups(m, "resnet18", lr=0.1, backbone_lr_mult=0.01, unfreeze="last2")
    by_name = {g["name"]: g for g in groups}
    assert by_name["head"]["lr"] == 0.1 and by_name["backbone"]["lr"] == pytest.approx(0.001)
    head_ids = {id(p) for p in m.fc.parameters()}
    assert {id(p) for p in by_name["head"]["params"]} == head_ids
    assert all(p.requires_grad for g in groups for p in g["params"])
    frozen = [p for p in m.layer1.parameters()]
    assert not any(p.requires_grad for p in frozen)
    assert len(param_groups(m, "resnet18", 0.1, 0.5, "head")) == 1


def test_frozen_batchnorm_stays_in_eval_mode() -> None:
    m = build_model("resnet18", "none", 3)[0]
    apply_unfreeze(m, "resnet18", "last1")
    train_mode(m)
    assert not m.bn1.training and not m.layer1[0].bn1.training
    assert m.layer4[0].bn1.training
    before = m.bn1.running_mean.clone()
    m(torch.randn(2, 3, 32, 32))
    assert torch.equal(before, m.bn1.running_mean)


def test_trainable_stages() -> None:
    assert list(trainable_stages("head", 5)) == []
    assert list(trainable_stages("last2", 5)) == [3, 4]
    assert list(trainable_stages("last4", 3)) == [0, 1, 2]
    assert list(trainable_stages("all", 5)) == [0, 1, 2, 3, 4]


def test_every_family_gets_head_and_backbone_learning_rates(model) -> None:
    arch, m = model
    groups = {g["name"]: g for g in param_groups(m, arch, lr=0.2, backbone_lr_mult=0.1, unfreeze="last2")}
    head = m.get_submodule(head_name(m))
    assert {id(p) for p in groups["head"]["params"]} == {id(p) for p in head.parameters()}
    assert groups["head"]["lr"] == 0.2 and groups["backbone"]["lr"] == pytest.approx(0.02)
    trainable = {id(p) for p in m.parameters() if p.requires_grad}
    assert trainable == {id(p) for g in groups.values() for p in g["params"]}
