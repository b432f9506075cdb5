"""Settings of ``trainer: mmdet``: any mmdetection 3.x config, run in its own Python environment.

Importing this module is cheap (no torch), so specs validate in milliseconds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from trainers.base import UserPath

DEFAULT_ENV = Path("~/.cache/sweep/mmdet-env").expanduser()


def default_python() -> str:
    """``$SWEEP_MMDET_PYTHON``, else the interpreter scripts/mmdet-env.sh builds."""
    return os.environ.get("SWEEP_MMDET_PYTHON") or str(DEFAULT_ENV / "bin" / "python")


class MmdetModel(BaseModel):
    """The ``model`` block of an mmdet spec."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: UserPath
    """An mmdetection config file, or ``mmdet::DIR/FILE.py`` for one shipped inside the mmdet package."""
    python: UserPath | None = None
    """The interpreter of the mmdet environment; default ``$SWEEP_MMDET_PYTHON`` or the one
    ``scripts/mmdet-env.sh`` builds in ~/.cache/sweep/mmdet-env."""
    weights: UserPath = "config"
    """``config`` (what the config says: usually an ImageNet backbone through ``init_cfg``), ``none``
    (from scratch), or a checkpoint file to start from (``load_from``)."""


class MmdetHParams(BaseModel):
    """Trainer parameters; each overrides the config's value and may be fixed or searched."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(12, ge=1)
    batch_size: int = Field(2, ge=1)
    lr: float = Field(0.02, gt=0)
    optimizer: Literal["sgd", "adamw", "adam"] | None = None
    """None keeps the config's optimizer type (and sets its lr and weight decay)."""
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(1e-4, ge=0)
    frozen_stages: int | None = Field(None, ge=-1, le=4)
    """The backbone's frozen stages (-1: none); None keeps the config's."""
    schedule: Literal["config", "step", "cosine"] = "cosine"
    """``config`` keeps the config's ``param_scheduler`` (written for its own epoch count)."""
    warmup_iters: int = Field(100, ge=0)
    input_size: int | None = Field(None, ge=32, le=2048)
    """Every Resize in the pipelines becomes this square scale (keeping the aspect ratio); None keeps them."""
    grad_clip: float = Field(0.0, ge=0)
    num_workers: int = Field(0, ge=0)
    repeat: int | None = Field(None, ge=1)
    """Passes over the training images per epoch: the ``times`` of the config's ``RepeatDataset`` (YOLOv3's
    configs repeat theirs 10 times), or one wrapped around the training set; None keeps the config's."""
