"""The detector's settings: what a ``trainer: detector`` (or ``mmdet``) spec's blocks may hold.

Importing this module is cheap (no torch), so specs validate in milliseconds.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trainers.base import UserPath
from trainers.registry import did_you_mean

ARCHS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "maskrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn_v2",
    "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
    "ssd300_vgg16",
    "ssdlite320_mobilenet_v3_large",
    "fasterrcnn_small",
    "maskrcnn_small",
)
"""torchvision's detectors, plus two small from-scratch R-CNNs (a 4-layer backbone) for CPU tests and demos."""

DETECTOR_METRICS = (
    "val_map50",
    "val_map50_11pt",
    "val_map",
    "val_map75",
    "val_coco_map50",
    "val_mask_map",
    "train_loss",
    "infer_img_per_s",
)
"""Reported every epoch: VOC AP@0.5 (area method; ``_11pt`` the VOC2007 11-point one), COCO mAP@[.5:.95]
and @.75 and @.5 (pycocotools), mask mAP (Mask R-CNN only), the training loss and the inference speed."""


def has_masks(arch: str) -> bool:
    return arch.startswith("maskrcnn")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CocoPart(_Strict):
    """One part of a COCO-format dataset: an annotation file and the folder its ``file_name``s are in."""

    annotations: UserPath
    """The JSON file (relative to the dataset root, or absolute)."""
    images: UserPath = ""
    """The image folder (relative to the dataset root, or absolute); default: the root."""


class DetectorData(_Strict):
    """The ``dataset`` block of a detector spec."""

    name: Literal["voc", "coco"]
    """``voc``: a VOCdevkit (or one VOC-layout folder of your own classes); ``coco``: COCO-format JSON."""
    root: UserPath
    """VOC: the VOCdevkit folder (holding VOC2007, VOC2012), or a folder with Annotations/ and JPEGImages/."""
    train: list[str | CocoPart] = ["2007-trainval", "2012-trainval"]
    """VOC: ``YEAR-SET`` (VOC{YEAR}/ImageSets/Main/SET.txt), ``SET`` (ImageSets/Main/SET.txt under the root)
    or ``all`` (every annotation under the root). COCO: parts with ``annotations`` and ``images``."""
    test: str | CocoPart | None = "2007-test"
    """The part ``sweep evaluate`` scores the best trial on; never seen by the search."""
    classes: list[str] | None = None
    """Class names in label order; default: every name in the training annotations, sorted."""
    val_fraction: float = Field(0.1, gt=0, lt=1)
    """Part of the training images held out, seeded, to score trials (the test part is not used)."""
    seed: int = 0
    """Seed of the validation split."""
    train_difficult: bool = False
    """VOC: train on objects marked ``difficult`` too (the VOC protocol ignores them in evaluation either way)."""
    download: bool = False
    """VOC: download VOC2007 / VOC2012 into the root when missing (needs internet)."""

    @field_validator("train")
    @classmethod
    def _not_empty(cls, parts: list[str | CocoPart]) -> list[str | CocoPart]:
        if not parts:
            raise ValueError("give at least one training part")
        return parts

    @model_validator(mode="after")
    def _kinds(self) -> DetectorData:
        parts = [*self.train, *([self.test] if self.test is not None else [])]
        want = CocoPart if self.name == "coco" else str
        wrong = [p for p in parts if not isinstance(p, want)]
        if wrong:
            form = "{annotations: FILE.json, images: DIR}" if self.name == "coco" else "a name such as 2007-trainval"
            raise ValueError(f"a {self.name} part must be {form}, got {wrong[0]!r}")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError("classes: names repeat")
        return self


class DetectorModel(_Strict):
    """The ``model`` block of a torchvision detector spec."""

    arch: str = "fasterrcnn_resnet50_fpn_v2"
    """A torchvision detector (see ``ARCHS``)."""
    weights: UserPath = "coco"
    """``coco`` (the COCO-trained detector, heads replaced), ``imagenet`` (backbone only), ``none``,
    or a path to a weights file (a state dict or a checkpoint this trainer wrote)."""

    @field_validator("arch")
    @classmethod
    def _known(cls, arch: str) -> str:
        if arch not in ARCHS:
            raise ValueError(
                f"unknown detector '{arch}'{did_you_mean(arch, list(ARCHS))}; choose one of: {', '.join(ARCHS)}"
            )
        return arch


class DetectorHParams(_Strict):
    """Trainer parameters: each may be fixed or searched."""

    epochs: int = Field(12, ge=1)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(0.01, gt=0)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    trainable_layers: int | None = Field(None, ge=0, le=5)
    """Backbone stages that train, counted from the top (torchvision's ``trainable_backbone_layers``: the
    detector's unfreeze depth); default: torchvision's per-model default. Pretrained weights only."""
    warmup_iters: int = Field(100, ge=0)
    """Linear learning-rate warm-up over the first iterations."""
    schedule: Literal["cosine", "step", "constant"] = "step"
    milestones: list[int] = [8, 11]
    """Epochs after which the step schedule multiplies the learning rate by ``gamma``."""
    gamma: float = Field(0.1, gt=0, le=1)
    min_size: int | None = Field(None, ge=32, le=2048)
    """Input size: the shorter image side the model resizes to (R-CNN, RetinaNet, FCOS; SSDs have their own);
    unset: the architecture's own (800 for the ResNet-50 FPN models, 320 for ``*_320_fpn``)."""
    max_size: int | None = Field(None, ge=32, le=4096)
    """Cap on the longer side after resizing; unset: the architecture's own (1333, 640 for ``*_320_fpn``)."""
    hflip: bool = True
    """Random horizontal flips in training."""
    grad_clip: float = Field(0.0, ge=0)
    """Clip the gradient norm to this value; 0 turns clipping off."""
    amp: bool = True
    """Mixed precision on CUDA; ignored on CPU."""
    early_stop_patience: int = Field(0, ge=0)
    """Stop after this many epochs without improvement of the sweep's metric; 0 turns it off."""
    score_thresh: float = Field(0.001, ge=0, lt=1)
    """Detections scoring below this are dropped before evaluation (low, as mAP needs the whole ranking)."""
    detections_per_img: int = Field(100, ge=1)
    log_histograms: bool = False
    """Write weight and gradient histograms to TensorBoard each epoch (the trial's ``tb/`` folder)."""
    num_workers: int = Field(0, ge=0)
    """DataLoader worker processes that decode images."""
    weights: Literal["coco", "imagenet", "none"] | None = None
    """Overrides ``model.weights`` when set, so the starting point can be searched as a categorical."""

    @model_validator(mode="after")
    def _sizes(self) -> DetectorHParams:
        if self.max_size is not None and self.min_size is not None and self.max_size < self.min_size:
            raise ValueError(f"max_size must be >= min_size, got max_size={self.max_size}, min_size={self.min_size}")
        return self
