"""The classifier's settings: what a spec's ``dataset``, ``model``, ``fixed`` and ``search`` may hold.

Importing this module is cheap (no torch), so specs validate in milliseconds.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trainers.base import UserPath
from trainers.registry import did_you_mean

ARCHS = (
    "small_cnn",
    "alexnet",
    "vgg11",
    "vgg16",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "efficientnet_b0",
    "efficientnet_b1",
    "efficientnet_b2",
    "efficientnet_b3",
    "efficientnet_b4",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "convnext_tiny",
    "vit_b_16",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Caltech101Protocol(_Strict):
    """How Caltech-101 is split into train and test (the field uses both)."""

    train_per_class: int | None = Field(None, gt=0)
    """The benchmark protocol: this many training images per class, the rest is test."""
    train_fraction: float | None = Field(None, gt=0, lt=1)
    """Stratified split: this fraction of each class for training, the rest is test."""

    @model_validator(mode="after")
    def _one_of(self) -> Caltech101Protocol:
        if (self.train_per_class is None) == (self.train_fraction is None):
            raise ValueError("give exactly one of train_per_class or train_fraction")
        return self


class ClassifierData(_Strict):
    """The ``dataset`` block of a classifier spec."""

    name: Literal["digits", "imagefolder", "caltech101", "cub200"]
    """Dataset kind: scikit-learn's digits, any ImageFolder tree, Caltech-101, CUB-200-2011."""
    root: UserPath | None = None
    """Where the data lies (not used by digits)."""
    image_size: int = Field(224, ge=8, le=1024)
    """Side of the square images the model sees."""
    val_fraction: float = Field(0.2, gt=0, lt=1)
    """Part of the training data held out, stratified, to score trials."""
    seed: int = 0
    """Seed of every split: the same seed gives the same split."""
    protocol: Caltech101Protocol = Caltech101Protocol(train_per_class=30)
    """Caltech-101 only: the train/test protocol."""
    keep_background: bool = False
    """Caltech-101 only: keep BACKGROUND_Google as a 102nd class."""
    download: bool = False
    """Download the dataset into ``root`` when it is not there (needs internet)."""
    cache: bool = True
    """Decode and resize every image once per sweep into a shared uint8 cache."""

    @model_validator(mode="after")
    def _root_needed(self) -> ClassifierData:
        if self.name != "digits" and not self.root:
            raise ValueError(f"dataset '{self.name}' needs a root folder")
        return self


class ClassifierModel(_Strict):
    """The ``model`` block of a classifier spec."""

    arch: str = "resnet18"
    """A name from the model registry (torchvision architectures and ``small_cnn``)."""
    weights: UserPath = "none"
    """``imagenet`` (torchvision's default weights), ``none`` (scratch) or a path to a weights file."""

    @field_validator("arch")
    @classmethod
    def _known(cls, arch: str) -> str:
        if arch not in ARCHS:
            raise ValueError(
                f"unknown architecture '{arch}'{did_you_mean(arch, list(ARCHS))}; choose one of: {', '.join(ARCHS)}"
            )
        return arch


class ClassifierHParams(_Strict):
    """Trainer parameters: each may be fixed or searched."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.01, gt=0)
    """Learning rate of the new head (and of everything when backbone_lr_mult is 1)."""
    backbone_lr_mult: float = Field(1.0, gt=0)
    """The backbone's learning rate as a multiple of the head's."""
    unfreeze: Literal["head", "last1", "last2", "last3", "last4", "all"] = "all"
    """How much of the backbone trains: head only, the last N stages, or all."""
    head_only_epochs: int = Field(0, ge=0)
    """Train only the head for this many epochs first, then unfreeze as ``unfreeze`` says."""
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    step_size: int = Field(10, ge=1)
    """Epochs between decays of the step schedule."""
    gamma: float = Field(0.1, gt=0, le=1)
    """Decay factor of the step schedule."""
    warmup_epochs: int = Field(0, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip: float = Field(0.0, ge=0)
    """Clip the gradient norm to this value; 0 turns clipping off."""
    amp: bool = True
    """Mixed precision on CUDA (bf16 where supported, else fp16); ignored on CPU."""
    early_stop_patience: int = Field(0, ge=0)
    """Stop after this many epochs without improvement of the sweep's metric; 0 turns it off."""
    random_resized_crop: bool = False
    hflip: bool = False
    color_jitter: float = Field(0.0, ge=0, le=1)
    rotation: float = Field(0.0, ge=0, le=180)
    """Degrees of random rotation."""
    min_micro_batch: int = Field(4, ge=1)
    """After out-of-memory errors the batch is split into micro-batches down to this size, then it fails."""
    log_histograms: bool = False
    """Write weight and gradient histograms to TensorBoard each epoch (the trial's ``tb/`` folder)."""
    num_workers: int = Field(0, ge=0)
    """DataLoader worker processes for the uncached path."""
    weights: Literal["imagenet", "none"] | None = None
    """Overrides ``model.weights`` when set, so pretrained-vs-scratch can be searched as a categorical."""
