"""The geometry of linked orthogonal views, without Qt: which plane each view shows, and the crosshair.

The main viewer shows one plane of the last three (spatial) axes; the Orthogonal views dock shows
the other two. When the main viewer is in the neuroimaging layout ``display.neuro_view`` sets
(RAS+ axes: axial, coronal or sagittal, superior or anterior up), the two views show the other two
of those planes the same way; otherwise each view slices one of the other two axes and keeps the
main viewer's order for the two it displays. Leading axes (time) stay first and are shared.

The crosshair is a Vectors layer in world coordinates: one line along each spatial axis through
the current point, spanning the other layers' extent. A 2D view shows the two lines lying in its
plane (the third starts at the extent's edge, off the slice).
"""

from __future__ import annotations

import numpy as np

from .display import LAYOUT, PLANES

#: metadata marking the crosshair layer (a tool's layer: views are not saved with it)
CROSSHAIR_KEY = "g3dvit_tool"
CROSSHAIR_NAME = "crosshair"


def main_plane(order, ndim: int) -> str | None:
    """The neuro plane ("axial", "coronal", "sagittal") the main viewer shows, else None."""
    if ndim < 3:
        return None
    lead = ndim - 3
    last = tuple(int(a) - lead for a in tuple(order)[-3:])
    return next((plane for plane in PLANES if LAYOUT[plane][0] == last), None)


def other_planes(order, ndim: int) -> list[tuple[str, tuple[int, ...]]]:
    """The two views' (plane name, ``dims.order``), given the main viewer's ``dims.order``.

    Plane names are the neuro planes in the neuroimaging layout, else "axis N" (the sliced axis).
    """
    order = tuple(int(a) for a in order)
    if ndim < 3 or len(order) != ndim:
        return []
    lead = ndim - 3
    head = order[:-3]
    shown = main_plane(order, ndim)
    if shown is not None:
        return [(plane, head + tuple(lead + a for a in LAYOUT[plane][0])) for plane in PLANES if plane != shown]
    sliced, rows, columns = order[-3:]
    return [(f"axis {rows}", head + (rows, sliced, columns)), (f"axis {columns}", head + (columns, rows, sliced))]


def crosshair_vectors(point, lower, upper) -> np.ndarray:
    """Vectors data (3, 2, D): for each of the last three axes, a line through ``point`` from the
    extent's lower to its upper edge. point, lower, upper: world coordinates of every axis (D,)."""
    point = np.asarray(point, dtype=float)
    lower = np.asarray(lower, dtype=float)
    upper = np.asarray(upper, dtype=float)
    ndim = point.size
    out = np.zeros((3, 2, ndim))
    for row, axis in enumerate(range(ndim - 3, ndim)):
        out[row, 0] = point
        out[row, 0, axis] = lower[axis]
        out[row, 1, axis] = max(float(upper[axis] - lower[axis]), 1e-6)
    return out


def clicked_point(point, position, displayed) -> tuple[float, ...]:
    """The new slice position after a click at world ``position`` in a view displaying ``displayed``
    axes: the clicked coordinates on those axes, the current ``point`` on the others."""
    out = [float(v) for v in point]
    for axis in displayed:
        out[int(axis)] = float(position[int(axis)])
    return tuple(out)
