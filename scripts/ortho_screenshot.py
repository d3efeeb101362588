"""The README's orthogonal-views pictures: the brain demo explained, its peak table, three planes.

    xvfb-run -a -s "-screen 0 1920x1200x24" .venv/bin/python scripts/ortho_screenshot.py [FOLDER]

Writes FOLDER/ortho_landmark.png (the crosshair on a known landmark: the centre of the left lateral
ventricle of the sample's ventricle mask) and FOLDER/ortho_peak.png (the Explain dock's peak table,
its first row clicked: every plane at the heat's peak), and prints what it measured: the peak table,
the label under the crosshair in each picture, and where the crosshair's lines meet in each canvas.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QApplication


def settle(seconds: float = 0.5) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def crosshair_centre(image: np.ndarray) -> tuple[int, int] | None:
    """(row, column) where the crosshair's cyan lines meet, or None."""
    rgb = image[..., :3].astype(int)
    cyan = (rgb[..., 2] > 150) & (rgb[..., 1] > 130) & (rgb[..., 0] < rgb[..., 2] - 40)
    rows = np.flatnonzero(cyan.sum(axis=1) > 0.3 * cyan.shape[1])
    columns = np.flatnonzero(cyan.sum(axis=0) > 0.3 * cyan.shape[0])
    return (int(rows.mean()), int(columns.mean())) if rows.size and columns.size else None


def main(folder: str = "docs/images") -> None:
    import napari

    from napari_g3dvit.navigate import go_to_world
    from napari_g3dvit.readout import describe_point

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari-g3dvit", show=True)
    viewer.window.resize(1850, 1150)
    viewer.open_sample("napari-g3dvit", "brain_ventricles")
    explain_dock, widget = viewer.window.add_plugin_dock_widget("napari-g3dvit", "Explain 3D ViT")
    image = next(layer for layer in viewer.layers if layer.metadata.get("g3dvit_model"))
    widget.volume.value = image
    widget.wait()
    widget.run()
    widget.wait()
    _, ortho = viewer.window.add_plugin_dock_widget("napari-g3dvit", "Orthogonal views")
    ventricles = viewer.layers["ventricles"]
    widget.regions.value = ventricles
    viewer.layers.selection.active = widget.last_layer  # its controls, not the crosshair's

    # 1. a known landmark: the centre of the left lateral ventricle (x < 0) of the ventricle mask
    mask = np.asarray(ventricles.data) > 0
    voxels = np.argwhere(mask)
    world = np.array([ventricles.data_to_world(v) for v in voxels])
    left = voxels[world[:, 0] < 0]  # RAS+: x < 0 is the subject's left
    target = left[np.argmin(np.linalg.norm(left - left.mean(0), axis=1))]  # inside, nearest its centre
    landmark = np.asarray(ventricles.data_to_world(target), dtype=float)
    explain_dock.hide()
    go_to_world(viewer, landmark)
    viewer.reset_view()
    ortho.reset_views()
    settle(1.0)
    path = out / "ortho_landmark.png"
    viewer.window.screenshot(str(path), canvas_only=False, flash=False)
    print(f"landmark: voxel {tuple(int(v) for v in target)} of 'ventricles', world {tuple(round(float(v), 1) for v in landmark)}"
          f" mm; under the crosshair: {describe_point(viewer, viewer.dims.point)}")
    shots = {"axial": np.asarray(viewer.screenshot(canvas_only=True, flash=False))}
    for name, qt_viewer in zip([t.text() for t in ortho.titles], ortho.qt_viewers):
        shots[name] = np.asarray(qt_viewer.screenshot(flash=False))
    for name, shot in shots.items():
        print(f"  {name}: crosshair lines meet at pixel {crosshair_centre(shot)} of {shot.shape[1]}x{shot.shape[0]}")
    print(f"wrote {path}")

    # 2. the peak table: its first row moves every plane to the heat's peak
    explain_dock.show()
    table = widget.inspect.show_peaks()
    print("peak table (threshold: half the map's maximum, "
          f"{table.threshold:.3f}; labels: 'ventricles'):")
    for row in table.rows():
        print("  " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    widget.inspect.go_to_peak(0)
    viewer.reset_view()
    ortho.reset_views()
    settle(1.0)
    path = out / "ortho_peak.png"
    viewer.window.screenshot(str(path), canvas_only=False, flash=False)
    heat = np.asarray(widget.last_layer.data)
    inside = heat[mask]
    print(f"under the crosshair: {describe_point(viewer, viewer.dims.point)}")
    print(f"share of the heat inside the ventricle mask: {inside.sum() / heat.sum():.3f} "
          f"({mask.sum()} of {mask.size} voxels, {mask.mean():.3f} of the volume); mean heat inside "
          f"{inside.mean():.4f}, outside {heat[~mask].mean():.4f}")
    print(f"wrote {path}")
    viewer.close()


if __name__ == "__main__":
    main(*sys.argv[1:2])
