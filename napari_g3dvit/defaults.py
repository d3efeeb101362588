"""What a run uses where the user chose nothing: one place for the widget, the CLI and cohorts.

The method is ``auto`` (the most faithful candidate on the volume itself; the config's
recommended method and layer join its candidates). The target is the class the model's config
recommends explaining (``recommended_explanation.target``, a class name: the fMRI sample's
"task"), else each volume's predicted class; the hook layer, for a CAM method picked by hand, is
the recommended one. No torch here: the command line reads it before any worker starts.
"""

from __future__ import annotations

from .registry import AUTO, SETTINGS


def run_defaults(config: dict | None) -> dict:
    """Default ``explain`` settings for a model with this config.

    Returns ``{"method", "layer", "target", "target_name", **every registry setting's default}``:
    ``target`` is a class index or None (predicted class), ``target_name`` its name or None.
    """
    config = config or {}
    recommended = config.get("recommended_explanation") or {}
    names = list(config.get("class_names") or [])
    out = {name: setting.default for name, setting in SETTINGS.items()}
    out.update(method=AUTO, layer=recommended.get("layer"), target=None, target_name=None)
    if recommended.get("target") in names:
        out["target"] = names.index(recommended["target"])
        out["target_name"] = recommended["target"]
    return out
