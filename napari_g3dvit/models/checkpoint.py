"""Reading weights from checkpoint files without running code from them.

``.safetensors`` holds tensors only. ``.pt/.pth/.ckpt/.bin`` go through
``torch.load(weights_only=True)``, which refuses any pickled object other than tensors and
plain containers; a whole pickled model is only unpickled when the caller trusts the file.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")
#: Keys under which training code commonly nests the state dict.
NESTING_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "network", "weights")


class CheckpointError(ModelError):
    """The checkpoint file cannot be read, or holds no usable weights."""


def _is_safetensors(path: Path) -> bool:
    if path.suffix == ".safetensors":
        return True
    with path.open("rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        tensors, metadata = {}, {}
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            metadata = fh.metadata() or {}
            for key in fh.keys():
                tensors[key] = fh.get_tensor(key)
        return tensors, metadata
    except Exception as err:  # safetensors raises its own error types for broken files
        raise CheckpointError(
            f"{path} is not a checkpoint (truncated, corrupt, or another format); safetensors could "
            f"not read it ({err})"
        ) from err


def _refusal(path: Path, err: Exception) -> CheckpointError:
    found = next((line.strip() for line in str(err).splitlines() if "GLOBAL" in line), "")
    return CheckpointError(
        f"{path} holds pickled Python objects, not only tensors (for example a whole model saved "
        "with torch.save(model)); unpickling them could run code, so it was refused. Convert it "
        "once where you trust the file: torch.save(torch.load(path, weights_only=False)"
        ".state_dict(), 'weights.pth'), or pass trust_pickle=True if you trust its source. "
        f"(torch: {found[:200]})"
    )


def _unreadable(path: Path, err: Exception) -> CheckpointError:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = next((line for line in lines if "Unsupported operand" in line), lines[0] if lines else "")
    detail = f"{type(err).__name__}: {detail}" if detail else type(err).__name__
    return CheckpointError(
        f"{path} is not a checkpoint (truncated, corrupt, or another format); PyTorch could not "
        f"read it ({detail[:200]})"
    )


def _read_torch(path: Path, trust_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" not in str(err):  # not an object the safe unpickler refused: broken bytes
            raise _unreadable(path, err) from err
        if not trust_pickle:
            raise _refusal(path, err) from err
    except Exception as err:  # torch's legacy unpickler fails on foreign bytes with any error type
        raise _unreadable(path, err) from err
    warnings.warn(
        f"unpickling {path} with trust_pickle=True: this runs any code the file holds",
        UserWarning,
        stacklevel=4,
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(f"{path} could not be unpickled even when trusted ({err})") from err


def _only_tensors(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())


def _tensors_inside(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``obj``: itself, or nested under a common key (Lightning and others)."""
    if _only_tensors(obj):
        return dict(obj)
    if isinstance(obj, dict):
        for key in NESTING_KEYS:
            if key in obj:
                inner = obj[key]
                if isinstance(inner, nn.Module):
                    return dict(inner.state_dict())
                if isinstance(inner, dict):
                    found = {k: v for k, v in inner.items() if torch.is_tensor(v)}
                    if found:
                        return found
        found = {k: v for k, v in obj.items() if torch.is_tensor(v)}
        if found:
            return found
        keys = ", ".join(map(str, list(obj)[:8]))
        raise CheckpointError(f"{path} holds no weight tensors (its top-level keys: {keys})")
    raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state dict of weight tensors")


def read_checkpoint(path: str | Path, trust_pickle: bool = False) -> tuple[dict[str, torch.Tensor] | nn.Module, dict[str, str]]:
    """The weights in ``path`` as ``{name: tensor}`` (or a whole module, when trusted), and metadata."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint file; pick the .safetensors or .pt file inside it")
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    if _is_safetensors(path):
        return _read_safetensors(path)
    obj = _read_torch(path, trust_pickle)
    if isinstance(obj, nn.Module):
        return obj, {}
    return _tensors_inside(obj, path), {}
