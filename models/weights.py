"""Loading weights: ImageNet weights through the torch hub cache, and local state-dict files.

Pretrained files live where torch itself keeps them (`torch.hub.get_dir()/checkpoints/<file from the URL>`,
i.e. `$TORCH_HOME/hub/checkpoints`), so weights another tool already fetched are reused and a user on an
offline machine knows exactly where to drop the file.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
import torch.nn as nn

from engine.errors import UserInputError, WeightsUnavailableError, first_sentence
from engine.results import CONFIG, read_json

log = logging.getLogger("engine")

# Prefixes that wrappers add to parameter names: torch.compile (`_orig_mod.`) and DistributedDataParallel.
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def hub_cache_path(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])


def load_pretrained_state(url: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict from the hub cache, downloading it first when it is missing. A download is checked
    against the SHA-256 prefix in its file name (torchvision's `<name>-<sha256 prefix>.pth`, as torchvision itself
    checks), so a file cut short or altered on the way is refused, not cached."""
    cached = hub_cache_path(url)
    try:
        obj = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, weights_only=True,
                                                 check_hash=True)
    except Exception as err:  # noqa: BLE001 - a failed download or an unreadable file (torch.load's many kinds)
        if cached.exists():
            raise WeightsUnavailableError(f"cached weights {cached} are unreadable ({first_sentence(err)}); delete "
                                          f"the file and retry, or train with --no-pretrained") from err
        raise WeightsUnavailableError(
            f"pretrained weights not in the cache and not downloadable ({type(err).__name__}: "
            f"{first_sentence(err)}); download {url} to {cached}, or train with --no-pretrained") from err
    return unwrap_state_dict(obj, cached)


def read_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a file: a bare one, or one inside a checkpoint under 'model' or 'state_dict'."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"weights file {path} does not exist")
    if path.stat().st_size == 0:
        raise UserInputError(f"weights file {path} is empty")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise UserInputError(f"weights file {path} is not a readable torch state dict "
                             f"({type(err).__name__}: {first_sentence(err)})") from err
    return unwrap_state_dict(obj, path)


def unwrap_state_dict(obj, source) -> dict[str, torch.Tensor]:
    """The state dict in a loaded file: bare, or inside a checkpoint under 'model' or 'state_dict', with the
    prefixes of compiled or DDP-wrapped models removed."""
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserInputError(f"weights file {source} holds no state dict of tensors")
    return {_strip_wrapper_prefix(k): v for k, v in obj.items()}


def _strip_wrapper_prefix(key: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key


def load_weights_file(model: nn.Module, path: str | Path, head_attr: str, backbone: str) -> bool:
    """Load a local state dict into `model` (already built for the run's classes).

    Either a full model of the same shape, or a backbone whose classifier has another number of classes:
    then every layer but the head is loaded strictly and the head keeps its fresh initialisation.
    Returns True when the head was re-initialised.
    """
    state = read_state_dict_file(path)
    own = model.state_dict()
    head_keys = {k for k in own if k.startswith(head_attr + ".")}
    mismatched_head = any(k in state and state[k].shape != own[k].shape for k in head_keys)
    if mismatched_head:
        state = {k: v for k, v in state.items() if k not in head_keys}
    misfit = _misfit(own, state, head_keys if mismatched_head else set())
    if misfit:
        raise UserInputError(f"weights file {path} does not fit {backbone}: {misfit}{_saved_from(path)}")
    model.load_state_dict(state, strict=not mismatched_head)
    if mismatched_head:
        log.info("weights %s: classifier '%s' has another number of classes there; it was re-initialised",
                 path, head_attr)
    return mismatched_head


def _misfit(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], left_out: set[str]) -> str:
    """What keeps `state` from loading into a model whose state dict is `own`, counted with three examples of
    each kind (torch's own message lists every key: thousands of characters for a whole other backbone)."""
    kinds = {"missing": sorted(own.keys() - state.keys() - left_out),
             "unexpected": sorted(state.keys() - own.keys()),
             "of another shape": sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)}
    return ", ".join(f"{len(keys)} key{'s' * (len(keys) > 1)} {kind} ({', '.join(keys[:3])}"
                     f"{', ...' if len(keys) > 3 else ''})" for kind, keys in kinds.items() if keys)


def _saved_from(path: str | Path) -> str:
    """Which backbone a run's best.pt was trained as, from the config.json beside it, when there is one (a file of
    that name that is not a run's says nothing)."""
    try:
        backbone = (read_json(Path(path).with_name(CONFIG)) or {}).get("backbone")
    except (OSError, ValueError, AttributeError):
        return ""
    return f"; the config.json beside it says {backbone}" if backbone else ""
