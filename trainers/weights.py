"""Weights files a user names in a spec: loaded safely, matched by name and shape, identified by hash."""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlparse

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


def hub_file(url: str) -> Path:
    """The torch hub cache's copy of ``url`` (where torchvision looks), downloaded there when missing;
    :class:`InputError` naming the file and folder when it can be neither found nor fetched."""
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
    if cached.is_file():
        return cached
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(cached), progress=False)
    except Exception as e:  # offline (URLError), refused, unwritable cache
        raise InputError(
            f"model.weights: {cached.name} is not in {cached.parent} and could not be downloaded "
            f"({str(e).splitlines()[0][:120]}); put the file there or use weights: none"
        ) from None
    return cached


def check_file(path: str | Path) -> None:
    """Load a weights file once, safely, so a missing, corrupt or non-weights file is refused in the
    driver before any trial starts rather than in every trial."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise InputError(f"model.weights: file not found: {file}")
    try:
        blob = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise InputError(f"model.weights: cannot load {file}: {str(e).splitlines()[0][:160]}") from None
    if not isinstance(blob, dict):
        raise InputError(f"model.weights: {file} holds no state dict")
