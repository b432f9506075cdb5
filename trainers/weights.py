"""Weights files a user names in a spec: loaded safely, matched by name and shape, identified by hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from trainers.base import InputError


def load_file(model: nn.Module, path: str) -> str:
    """Load a weights file (a state dict, or a checkpoint a trainer wrote) into ``model`` where names and
    shapes fit, so a model trained on other classes gives everything but its class layers. Returns the
    file's identity (path and sha256) for the trial's tags."""
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
