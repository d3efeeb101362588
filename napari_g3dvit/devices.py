"""Which device a run uses: CUDA when there is one, else the CPU; names checked to exist."""

from __future__ import annotations

import torch

from .errors import SettingsError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """CUDA when available for ``None``; otherwise the named device, checked to exist."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise SettingsError(f"{device!r} is not a device name; use 'cpu', 'cuda' or 'cuda:N'") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SettingsError("device 'cuda' was asked for, but this machine has no usable CUDA GPU")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise SettingsError(f"device {str(dev)!r} does not exist: this machine has {count} CUDA GPU(s)")
    elif dev.type != "cpu":
        raise SettingsError(f"device {str(dev)!r} is not supported; use 'cpu', 'cuda' or 'cuda:N'")
    return dev


def available_devices() -> list[str]:
    """Devices that exist on this machine, the default first."""
    devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return devices + ["cpu"]
