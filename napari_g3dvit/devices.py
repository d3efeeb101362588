"""Where a model runs: a CUDA GPU, Apple's GPU (``mps``), or the CPU.

``available_devices`` lists what torch reports usable here, the default first (CUDA, then MPS,
then the CPU); ``resolve_device`` checks a name against it with a message that says what exists.
Some operations have no MPS kernel in some torch versions (torch raises NotImplementedError
naming the operator); ``missing_on_mps`` recognises that, and callers run the work again on the
CPU and say so (``fallback_note``). torch is imported only when a function needs it.
"""

from __future__ import annotations

from .errors import SettingsError

NAMES_IN_WORDS = "'cpu', 'cuda', 'cuda:N' or 'mps'"


def device_choices(cuda_count: int, mps_available: bool) -> list[str]:
    """The device names to offer, the default first: every CUDA GPU, Apple's GPU, the CPU."""
    return [f"cuda:{i}" for i in range(cuda_count)] + (["mps"] if mps_available else []) + ["cpu"]


def mps_state() -> tuple[bool, bool]:
    """(built, available) as torch reports Apple's Metal (MPS) backend."""
    import torch

    backend = getattr(torch.backends, "mps", None)
    if backend is None:
        return False, False
    return bool(backend.is_built()), bool(backend.is_available())


def available_devices() -> list[str]:
    """Devices that exist on this machine, the default first."""
    import torch

    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return device_choices(cuda, mps_state()[1])


def default_device() -> str:
    """What runs a model when no device is named: a CUDA GPU, else Apple's GPU, else the CPU."""
    return available_devices()[0]


def device_label(name: str) -> str:
    """How a list shows a device: "cuda:0 (NVIDIA H200)", "mps (Apple GPU)", "cpu"."""
    if name == "mps":
        return "mps (Apple GPU)"
    if name.startswith("cuda"):
        import torch

        try:
            return f"{name} ({torch.cuda.get_device_name(int(name.partition(':')[2] or 0))})"
        except Exception:  # a driver that answers oddly: the name alone
            return name
    return name


def resolve_device(device):
    """A ``torch.device``: the default for ``None``, else the named device, checked to exist here."""
    import torch

    if device is None:
        default = default_device()
        return torch.device("cuda" if default.startswith("cuda") else default)  # "cuda": the current GPU
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise SettingsError(f"{device!r} is not a device name; use {NAMES_IN_WORDS}") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise SettingsError("device 'cuda' was asked for, but this machine has no usable CUDA GPU; "
                                f"available here: {', '.join(available_devices())}")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise SettingsError(f"device {str(dev)!r} does not exist: this machine has {count} CUDA GPU(s)")
    elif dev.type == "mps":
        built, available = mps_state()
        if not available:
            why = ("this torch was built without MPS support" if not built else
                   "torch reports Apple's GPU (MPS) unavailable: it needs macOS 12.3 or later on a Mac with "
                   "Apple silicon or an AMD GPU")
            raise SettingsError(f"device 'mps' was asked for, but {why}; available here: "
                                f"{', '.join(available_devices())}")
    elif dev.type != "cpu":
        raise SettingsError(f"device {str(dev)!r} is not supported; use {NAMES_IN_WORDS}")
    return dev


#: said when a run asked for Apple's GPU and the library had to run it on the CPU
MPS_FALLBACK_NOTE = "ran on the CPU: an operation this model needs is not available on Apple's GPU (mps)"


def missing_on_mps(err: BaseException) -> bool:
    """True for torch's error for an operation that has no kernel on Apple's GPU (MPS)."""
    text = str(err)
    if not isinstance(err, (NotImplementedError, RuntimeError)) or "MPS" not in text:
        return False
    lowered = text.lower()
    return "not implemented" in lowered or "not currently implemented" in lowered or "not supported" in lowered


def fallback_note(err: BaseException) -> str:
    """What a user is told when a run moved from Apple's GPU to the CPU."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (f"an operation this model needs is not available on Apple's GPU (mps) in this torch ({first}); "
            "it ran on the CPU instead")


def empty_cache(device) -> None:
    """Hand cached GPU memory back after a run (CUDA or MPS; nothing for the CPU)."""
    import torch

    kind = torch.device(device or "cpu").type
    if kind == "cuda":
        torch.cuda.empty_cache()
    elif kind == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()
