"""napari-g3dvit: where did my 3D Vision Transformer look?

Public API::

    import napari_g3dvit as g3d
    g3d.METHODS
    g3d.token_layers(model)
    model = g3d.load_model("model.safetensors")      # config from model.json beside it
    exp = g3d.explain(model, volume)                 # method "auto"; "g3dvit" is the published one
    exp = g3d.explain(model, "sub-01_space-MNI152NLin2009cAsym_res-2_bold.nii.gz")  # any grid in its space
    g3d.save_model(module, "model.safetensors", config, space="train_001.nii.gz")
    g3d.peaks(heat_layer, labels=labels_layer)       # clusters, peak_mm, label at the peak
    g3d.attach_label_names(labels_layer, "dseg.tsv")  # or a FreeSurfer LUT, an FSL atlas XML
    g3d.save_view(viewer, "view.json"); g3d.open_view(viewer, "view.json")

Names that need torch are imported on first use, so importing the package (as napari does to
read the plugin manifest) stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

from .errors import G3DViTError, LayerError, ModelError, NiftiError, SettingsError, VolumeError
from .options import DEFAULT_THRESHOLD, POOLINGS, UPSAMPLE_MODES
from .registry import METHODS

try:
    from importlib.metadata import version as _version

    __version__ = _version("napari-g3dvit")
except Exception:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0.0.0+unknown"

_LAZY = {
    "explain": ".api",
    "token_layers": ".api",
    "describe_model": ".api",
    "run_defaults": ".defaults",
    "Explanation": ".explanation",
    "load_model": ".models.loading",
    "save_model": ".models.loading",
    "ConfigError": ".models.config",
    "CheckpointError": ".models.checkpoint",
    "peaks": ".peaktable",
    "attach_label_names": ".labelnames",
    "read_label_names": ".labelnames",
    "save_view": ".views",
    "open_view": ".views",
    "set_input_space": ".models.loading",
    "ModelSpace": ".models.space",
    "explain_in_space": ".models.space",
    "available_devices": ".devices",
    "resolve_device": ".devices",
}

if TYPE_CHECKING:  # pragma: no cover
    from .api import describe_model, explain, token_layers
    from .defaults import run_defaults
    from .explanation import Explanation
    from .models.checkpoint import CheckpointError
    from .models.config import ConfigError
    from .devices import available_devices, resolve_device
    from .labelnames import attach_label_names, read_label_names
    from .models.loading import load_model, save_model, set_input_space
    from .models.space import ModelSpace, explain_in_space
    from .peaktable import peaks
    from .views import open_view, save_view

__all__ = [
    "METHODS",
    "POOLINGS",
    "UPSAMPLE_MODES",
    "DEFAULT_THRESHOLD",
    "G3DViTError",
    "VolumeError",
    "ModelError",
    "NiftiError",
    "ConfigError",
    "CheckpointError",
    "LayerError",
    "SettingsError",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'napari_g3dvit' has no attribute {name!r}")
