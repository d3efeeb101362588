"""How a heatmap is drawn: a stat-map overlay in 2D, an additive MIP glow in 3D, and its legend.

In 2D an additive heat over a bright T1 adds to colours that are already near white, so the map
turns pale where it is strongest. In 2D the heat is therefore drawn as neuroimaging viewers draw a
statistical map: ``translucent`` blending and a colormap whose bottom (the lower contrast limit,
where the kept heat starts) is fully transparent and whose colours run from red through orange to
yellow, partly see-through at the low end. In 3D it stays what it was: ``additive`` blending, MIP,
and inferno starting at black (no heat adds nothing). ``follow_ndisplay`` switches every heat
layer that still has one of these two looks when the viewer changes between 2D and 3D.

``show_legend`` turns on napari's own colorbar on a heat layer and writes what it shows (method,
layer, class, threshold; ``records.caption``) in the canvas' text overlay.
This module imports neither Qt nor napari at import time.
"""

from __future__ import annotations

import weakref

import numpy as np

from .records import caption
from .runner import RESULT_KEY

NAME_3D = "g3dvit heat"
NAME_2D = "g3dvit heat 2D"
#: the part of inferno used in 2D (its dark start would read as a shadow over anatomy)
INFERNO_FROM = 0.35
#: opacity of the weakest and the strongest kept heat in 2D
ALPHA_RANGE = (0.35, 1.0)
_following: weakref.WeakSet = weakref.WeakSet()


def colormap_3d():
    """inferno with its first colour exact black: with additive blending, no heat adds nothing."""
    from napari.utils.colormaps import AVAILABLE_COLORMAPS, Colormap

    colors = np.array(AVAILABLE_COLORMAPS["inferno"].colors, copy=True)
    colors[0, :3] = 0.0
    return Colormap(colors, name=NAME_3D)


def colormap_2d():
    """Transparent at the bottom, then inferno from red to yellow, opacity rising with the heat."""
    from napari.utils.colormaps import AVAILABLE_COLORMAPS, Colormap

    inferno = AVAILABLE_COLORMAPS["inferno"]
    steps = 64
    values = np.linspace(INFERNO_FROM, 1.0, steps)
    colors = np.asarray(inferno.map(values), dtype=float)
    colors[:, 3] = np.linspace(*ALPHA_RANGE, steps)
    colors = np.vstack([[0.0, 0.0, 0.0, 0.0], colors])
    controls = np.concatenate([[0.0], np.linspace(1e-3, 1.0, steps)])
    return Colormap(colors, controls=controls, name=NAME_2D)


def style(ndisplay: int) -> dict:
    """Layer settings of a heatmap in a 2D or 3D view."""
    if int(ndisplay) == 3:
        return {"colormap": colormap_3d(), "blending": "additive", "rendering": "mip"}
    return {"colormap": colormap_2d(), "blending": "translucent", "rendering": "mip"}


def has_our_look(layer) -> bool:
    """Whether a layer is a heatmap still drawn with one of the two looks (not restyled by a user)."""
    return RESULT_KEY in layer.metadata and getattr(layer.colormap, "name", "") in (NAME_2D, NAME_3D)


def restyle(layer, ndisplay: int) -> None:
    """Give a heat layer the look for ``ndisplay`` (unless the user chose another look)."""
    if not has_our_look(layer):
        return
    for key, value in style(ndisplay).items():
        setattr(layer, key, value)


def follow_ndisplay(viewer) -> None:
    """Restyle the heat layers whenever ``viewer`` changes between 2D and 3D (once per viewer)."""
    if viewer in _following:
        return
    _following.add(viewer)
    ref = weakref.ref(viewer)

    def on_ndisplay(_event=None) -> None:
        target = ref()
        if target is not None:
            for layer in list(target.layers):
                restyle(layer, target.dims.ndisplay)

    viewer.dims.events.ndisplay.connect(on_ndisplay)


def _text_overlay(viewer):
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    return getattr(overlays, "text", None) if overlays is not None else viewer.text_overlay


def show_legend(viewer, layer) -> str:
    """napari's colorbar on ``layer`` (hidden on older heat layers) and a caption saying what it
    shows in the canvas' text overlay; returns the caption."""
    text = caption(layer.metadata.get(RESULT_KEY) or {})
    for other in viewer.layers:
        if RESULT_KEY in other.metadata and hasattr(other, "colorbar"):
            other.colorbar.visible = other is layer or getattr(other, "__wrapped__", other) is layer
    overlay = _text_overlay(viewer)
    if overlay is not None:  # top left: the colorbar keeps the top right corner to itself
        overlay.text = "heat: " + text.replace(" · class", "\nclass", 1)
        overlay.position = "top_left"
        overlay.font_size = 10
        overlay.visible = True
    return text
