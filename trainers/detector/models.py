"""Detectors by name: torchvision's builders with COCO, ImageNet-backbone or no weights, the class-dependent
layers of the heads replaced for the dataset's classes; two small from-scratch R-CNNs for CPU runs."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import detection
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from trainers.base import InputError
from trainers.detector.config import DetectorHParams
from trainers.weights import load_file


@contextmanager
def weights_only_loads() -> Iterator[None]:
    """torchvision's builders call ``torch.load`` without ``weights_only``; force it on for them."""
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


# ------------------------------------------------------------------------------ small from-scratch R-CNNs


def _small_backbone() -> nn.Module:
    """Four stages of two 3x3 convs, each stage halving the resolution (stride 16, 128 channels): enough
    to learn shapes on a CPU in minutes."""
    layers: list[nn.Module] = []
    channels = [3, 32, 64, 96, 128]
    for cin, cout in zip(channels, channels[1:], strict=False):
        for conv in (nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.Conv2d(cout, cout, 3, padding=1)):
            layers += [conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    body = nn.Sequential(*layers)
    body.out_channels = channels[-1]  # type: ignore[assignment]
    return body


def _small_rcnn(num_classes: int, masks: bool, **kwargs: Any) -> nn.Module:
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    common = dict(
        rpn_anchor_generator=AnchorGenerator(((16, 32, 64, 128),), ((0.5, 1.0, 2.0),)),
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
        box_head=TwoMLPHead(128 * 7 * 7, 256),
        box_predictor=FastRCNNPredictor(256, num_classes),
        rpn_pre_nms_top_n_train=400,
        rpn_post_nms_top_n_train=200,
        rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=150,
        box_batch_size_per_image=64,
        **kwargs,
    )
    if masks:
        return detection.MaskRCNN(
            _small_backbone(),
            mask_roi_pool=MultiScaleRoIAlign(["0"], 14, 2),
            mask_head=MaskRCNNHeads(128, (64, 64), 1),
            mask_predictor=MaskRCNNPredictor(64, 64, num_classes),
            **common,
        )
    return detection.FasterRCNN(_small_backbone(), **common)


# ------------------------------------------------------------------------------------- head surgery


def _replace_rcnn(model: nn.Module, num_classes: int) -> None:
    heads: Any = model.roi_heads  # torchvision's heads, as typed attributes of nn.Module
    heads.box_predictor = FastRCNNPredictor(heads.box_predictor.cls_score.in_features, num_classes)
    if getattr(heads, "mask_predictor", None) is not None:
        old = heads.mask_predictor
        heads.mask_predictor = MaskRCNNPredictor(old.conv5_mask.in_channels, old.conv5_mask.out_channels, num_classes)


def _replace_dense(model: nn.Module, num_classes: int) -> None:
    """RetinaNet and FCOS: a new class-logit conv, with the focal-loss prior bias the builders use."""
    head: Any = model.head.classification_head  # type: ignore[union-attr]
    old: nn.Conv2d = head.cls_logits
    anchors = old.out_channels // head.num_classes
    head.cls_logits = nn.Conv2d(old.in_channels, anchors * num_classes, 3, padding=1)
    nn.init.normal_(head.cls_logits.weight, std=0.01)
    nn.init.constant_(head.cls_logits.bias, -math.log((1 - 0.01) / 0.01))
    head.num_classes = num_classes


def _replace_ssd(model: nn.Module, num_classes: int) -> None:
    head: Any = model.head.classification_head  # type: ignore[union-attr]
    for i, block in enumerate(head.module_list):
        conv: Any = block[-1] if isinstance(block, nn.Sequential) else block
        anchors = conv.out_channels // head.num_columns
        new: Any = nn.Conv2d(conv.in_channels, anchors * num_classes, conv.kernel_size, padding=conv.padding)
        nn.init.xavier_uniform_(new.weight)
        nn.init.zeros_(new.bias)
        if isinstance(block, nn.Sequential):
            block[-1] = new
        else:
            head.module_list[i] = new
    head.num_columns = num_classes


def _family(arch: str) -> Callable[[nn.Module, int], None]:
    if arch.startswith(("fasterrcnn", "maskrcnn")):
        return _replace_rcnn
    if arch.startswith(("retinanet", "fcos")):
        return _replace_dense
    return _replace_ssd


# ------------------------------------------------------------------------------------------ builders


def _size_kwargs(arch: str, hp: DetectorHParams) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"detections_per_img": hp.detections_per_img}
    if not arch.startswith("ssd"):  # unset sizes leave the builder's own (320/640 for the *_320 models)
        kwargs |= {k: v for k, v in (("min_size", hp.min_size), ("max_size", hp.max_size)) if v is not None}
    if arch.startswith(("fasterrcnn", "maskrcnn")):
        kwargs["box_score_thresh"] = hp.score_thresh
        kwargs["box_detections_per_img"] = kwargs.pop("detections_per_img")
    else:
        kwargs["score_thresh"] = hp.score_thresh
    return kwargs


def build_detector(arch: str, weights: str, num_classes: int, hp: DetectorHParams) -> tuple[nn.Module, str]:
    """``arch`` for ``num_classes`` object classes (plus background); return it and the weights' identity."""
    n = num_classes + 1
    kwargs = _size_kwargs(arch, hp)
    if arch.endswith("_small"):
        if weights in ("coco", "imagenet"):
            raise InputError(f"model.weights: {arch} is trained from scratch; use none or a file")
        model = _small_rcnn(n, arch.startswith("mask"), **kwargs)
        return (model, "none") if weights == "none" else (model, load_file(model, weights))
    trainable = {} if hp.trainable_layers is None else {"trainable_backbone_layers": hp.trainable_layers}
    if weights == "coco":
        tv_weights = torchvision.models.get_model_weights(arch).DEFAULT  # type: ignore[attr-defined]
        model = _from_hub(lambda: torchvision.models.get_model(arch, weights=tv_weights, **trainable, **kwargs))
        _family(arch)(model, n)
        return model, f"coco:{tv_weights}"
    if weights == "imagenet":
        backbone = _backbone_weights(arch)
        model = _from_hub(
            lambda: torchvision.models.get_model(
                arch, weights=None, weights_backbone=backbone, num_classes=n, **trainable, **kwargs
            )
        )
        return model, f"imagenet:{backbone}"
    model = torchvision.models.get_model(arch, weights=None, weights_backbone=None, num_classes=n, **kwargs)
    return (model, "none") if weights == "none" else (model, load_file(model, weights))


BACKBONE_WEIGHTS = {
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",
    "mobilenet_v3": "MobileNet_V3_Large_Weights.IMAGENET1K_V1",
    "vgg16": "VGG16_Weights.IMAGENET1K_FEATURES",
}
"""The ImageNet backbone each builder takes (``weights: imagenet``), as torchvision's references use."""


def weights_url(arch: str, source: str) -> str:
    """Where the ``coco`` detector or its ``imagenet`` backbone of ``arch`` comes from."""
    if arch.endswith("_small"):
        raise InputError(f"model.weights: {arch} is trained from scratch; use none or a file")
    if source == "coco":
        return str(torchvision.models.get_model_weights(arch).DEFAULT.url)  # type: ignore[attr-defined]
    return str(_backbone_weights(arch).url)


def _backbone_weights(arch: str) -> Any:
    key = next(k for k in BACKBONE_WEIGHTS if k in arch)
    enum, _, member = BACKBONE_WEIGHTS[key].partition(".")
    return getattr(getattr(torchvision.models, enum), member)


def _from_hub(make: Callable[[], nn.Module]) -> nn.Module:
    """Build with weights from the torch hub cache (downloaded there when online); offline and missing
    is one line naming the file and the folder."""
    try:
        with weights_only_loads():
            return make()
    except OSError as e:  # offline (URLError is an OSError) or unwritable cache
        folder = Path(torch.hub.get_dir()) / "checkpoints"
        name = str(getattr(e, "filename", "") or e).split("/")[-1]
        raise InputError(
            f"model.weights: the weights are not in {folder} and could not be downloaded ({name}); "
            "put the file there or use weights: none"
        ) from None


def load_detector(path: Path, hp: DetectorHParams | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a detector from a best-weights file this trainer wrote (``weights_only=True``)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    settings = hp or DetectorHParams.model_validate(blob.get("hparams", {}))
    model, _ = build_detector(blob["arch"], "none", len(blob["classes"]), settings)
    model.load_state_dict(blob["model_state"], strict=False)  # BatchNorm buffers differ from FrozenBatchNorm's
    return model.eval(), blob
