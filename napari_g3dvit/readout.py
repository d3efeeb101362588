"""What the cursor is over, said plainly in napari's status bar.

napari's status bar shows the active layer's value and the cursor's world coordinates without
units. ``install(viewer)`` replaces that coordinates text, whenever napari sets it for the cursor,
with ``describe_point``: the position in scanner millimetres (named "MNI152 mm" when the file's
sform code says so), the time in seconds for a series, the label under the cursor in each visible
Labels layer (by name when the layer has names) and the heat of each visible heat layer.
This module imports neither Qt nor napari.
"""

from __future__ import annotations

import weakref

import numpy as np

from .labelnames import names_of_layer
from .navigate import reference_layer, world_to_mm
from .runner import RESULT_KEY
from .volumes import space_name

_installed: weakref.WeakSet = weakref.WeakSet()


def _value(layer, point) -> float | int | None:
    try:
        value = layer.get_value(np.asarray(point, dtype=float), world=True)
    except Exception:  # noqa: BLE001 - a point napari cannot look up is just not shown
        return None
    if isinstance(value, tuple):  # multiscale: (level, value)
        value = value[-1]
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return None
    return value


def describe_point(viewer, point) -> str:
    """One line about a world point of ``viewer``: mm, time, labels and heat there."""
    point = np.asarray(point, dtype=float)
    if point.size < 3:
        return ""
    reference = reference_layer(viewer)
    space = space_name((reference.metadata.get("nifti") if reference is not None else None) or {})
    x, y, z = world_to_mm(reference, point[-3:])
    parts = [f"x {x:.1f}, y {y:.1f}, z {z:.1f} {space + ' ' if reference is not None else ''}mm"]
    if point.size >= 4 and reference is not None and reference.ndim == 4:
        parts.append(f"time {point[-4]:g} s")
    from napari.layers import Labels  # only called with a napari viewer: napari is loaded

    heat = []
    for layer in list(viewer.layers)[::-1]:
        if not layer.visible:
            continue
        if isinstance(layer, Labels):
            value = _value(layer, point)
            if value:
                name = names_of_layer(layer).get(int(value))
                parts.append(f"{layer.name}: {name} ({int(value)})" if name else f"{layer.name}: {int(value)}")
        elif RESULT_KEY in layer.metadata:
            value = _value(layer, point)
            if value is not None:
                heat.append((layer.name, float(value)))
    if len(heat) == 1:
        parts.append(f"heat {heat[0][1]:.3f}")
    elif heat:
        parts.append("heat: " + ", ".join(f"{name.split(' — ')[0]} {value:.3f}" for name, value in heat))
    return " · ".join(parts)


def install(viewer) -> None:
    """Show ``describe_point`` for the cursor in ``viewer``'s status bar (once per viewer)."""
    if viewer in _installed:
        return
    _installed.add(viewer)
    ref = weakref.ref(viewer)
    busy = []

    def on_status(event) -> None:
        target = ref()
        if target is None or busy or not target.mouse_over_canvas or not len(target.layers):
            return
        text = describe_point(target, target.cursor.position)
        if not text:
            return
        status = event.value
        busy.append(True)
        try:
            if isinstance(status, dict):
                target.status = {**status, "coordinates": text}
            elif isinstance(status, str) and status != text:
                target.status = text
        finally:
            busy.clear()

    viewer.events.status.connect(on_status)
