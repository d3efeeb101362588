"""What ``explain`` does before its body runs.

- A NIfTI path or nibabel image goes into the model's space and its maps come back on the
  image's own voxels (``models.space.explain_image``).
- An array that cannot fit the model is refused in a neuroscientist's words (what grid, voxel
  size, orientation and template the model takes, and how to get there), before any work.
- On Apple's GPU (``mps``), an operation torch has no MPS kernel for reruns the call on the CPU
  with a warning that says so.

``explain`` calls ``front(explain, locals())`` first; ``None`` means "go on with the body".
"""

from __future__ import annotations

import contextvars
import warnings

_inside_mps_call = contextvars.ContextVar("g3dvit_inside_mps_call", default=False)


def front(explain, arguments: dict):
    """The finished result for inputs handled here, or None to let ``explain``'s body run."""
    from .models.space import explain_image, is_image

    model, volume = arguments["model"], arguments["volume"]
    if is_image(volume):
        return explain_image(explain, model, volume, arguments)
    check_fits(model, volume, arguments.get("preprocessing"))
    if not _inside_mps_call.get() and _is_mps(arguments.get("device")):
        return _on_mps_or_cpu(explain, arguments)
    return None


def _is_mps(device) -> bool:
    return device is not None and str(device).split(":")[0] == "mps"


def _on_mps_or_cpu(explain, arguments: dict):
    from .devices import fallback_note, missing_on_mps

    token = _inside_mps_call.set(True)
    try:
        return explain(**arguments)
    except Exception as err:
        if not missing_on_mps(err):
            raise
        warnings.warn(fallback_note(err), UserWarning, stacklevel=3)
        return explain(**{**arguments, "device": "cpu"})
    finally:
        _inside_mps_call.reset(token)


def check_fits(model, volume, preprocessing) -> None:
    """VolumeError naming what the model expects when ``volume``'s spatial shape cannot become its input.

    Anything this cannot judge (not an array, an unknown input size, a bad spec) is left to the
    body, which raises its own errors.
    """
    from .errors import G3DViTError, VolumeError
    from .models import find_adapter
    from .models.preprocessing import Preprocessing
    from .models.space import expected_input

    shape = getattr(volume, "shape", None)
    if shape is None or len(shape) not in (3, 4):
        return
    try:
        wanted = find_adapter(model).geometry.input_shape
        config = getattr(model, "g3dvit_config", None) or {}
        prep = Preprocessing.from_config(preprocessing if preprocessing is not None else config.get("preprocessing"))
    except (G3DViTError, AttributeError, TypeError):
        return
    if wanted is None or prep.resample:
        return
    spatial = tuple(int(s) for s in shape[-3:])
    cropped = tuple(s - a - b for s, (a, b) in zip(spatial, prep.crop))
    if min(cropped) >= 1 and tuple(cropped[a] for a in prep.axes) == tuple(wanted):
        return
    raise VolumeError(expected_input(model, spatial, wanted))


__all__ = ["front", "check_fits"]
