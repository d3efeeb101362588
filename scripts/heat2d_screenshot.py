"""The README's 2D picture: the brain demo's heat over the bright T1, as it was drawn and as it is.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/heat2d_screenshot.py [PNG]

Explains the brain demo, goes to the heat's peak (the first row of the peak table), and takes
canvas screenshots of the axial slice there: the T1 alone, the heat added to it as before
(additive blending, inferno from black), and the heat drawn as a stat-map overlay (what the heat
layer does in 2D now). It prints, for the pixels where the heat is strong (the heat alone at least
half its brightest on black), how many are washed out to near white (every channel >= 240), their
mean colour saturation, and how far each differs from the T1 alone; and writes the three side by
side.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import QApplication


def settle(seconds: float = 0.3) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def main(target: str = "docs/images/heat_2d_overlay.png") -> None:
    import napari

    from napari_g3dvit.heatstyle import style

    viewer = napari.Viewer(title="napari-g3dvit", show=True)
    viewer.window.resize(1300, 900)
    viewer.open_sample("napari-g3dvit", "brain_ventricles")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-g3dvit", "Explain 3D ViT")
    widget.volume.value = next(layer for layer in viewer.layers if layer.metadata.get("g3dvit_model"))
    widget.wait()
    widget.run()
    widget.wait()
    heat = widget.last_layer
    table = widget.inspect.show_peaks()
    widget.inspect.go_to_peak(0)
    dock.hide()
    for layer in viewer.layers:
        layer.visible = layer is heat or layer.name == "brain (enlarged ventricles)"
    heat.colorbar.visible = False
    viewer.canvas.overlays.text.visible = False
    viewer.reset_view()
    settle()

    def shot() -> np.ndarray:
        settle(0.2)
        return np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].astype(float)

    overlay = shot()  # the heat layer as it draws itself in 2D now
    for key, value in style(3).items():
        setattr(heat, key, value)
    added = shot()  # as before: additive, inferno from black
    heat.visible = False
    t1 = shot()
    for layer in viewer.layers:
        layer.visible = layer is heat
    alone = shot()  # the heat alone, additive on black
    strength = alone.max(-1)
    strong = strength >= 0.5 * strength.max()

    def measure(image: np.ndarray) -> tuple[float, float, float]:
        pixels = image[strong]
        white = float(np.mean(pixels.min(-1) >= 240))
        saturation = float(np.mean((pixels.max(-1) - pixels.min(-1)) / np.maximum(pixels.max(-1), 1)))
        change = float(np.mean(np.abs(pixels - t1[strong]).sum(-1)))
        return white, saturation, change

    peak = table[0]
    print(f"slice: axial at z = {peak.peak_mm[2]:g} mm through the peak ({', '.join(f'{v:g}' for v in peak.peak_mm)} mm,"
          f" heat {peak.peak:.3f}); {int(strong.sum())} strong-heat pixels")
    print("| drawn as | washed out (every channel >= 240) | mean saturation | mean change from the T1 alone (RGB sum) |")
    print("|---|---|---|---|")
    for name, image in (("additive, inferno from black (before)", added), ("stat-map overlay (now)", overlay)):
        white, saturation, change = measure(image)
        print(f"| {name} | {white:.2f} | {saturation:.2f} | {change:.0f} |")
    rows = np.flatnonzero(t1.max(-1).max(1) > 10)
    columns = np.flatnonzero(t1.max(-1).max(0) > 10)
    crop = (slice(max(rows.min() - 10, 0), rows.max() + 10), slice(max(columns.min() - 10, 0), columns.max() + 10))
    gap = np.full((crop[0].stop - crop[0].start, 12, 3), 40.0)
    picture = np.concatenate([t1[crop], gap, added[crop], gap, overlay[crop]], axis=1)
    import imageio.v3 as iio

    Path(target).parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(target, picture.clip(0, 255).astype(np.uint8))
    print(f"wrote {target}: the T1 alone | the heat added (before) | the stat-map overlay (now)")
    viewer.close()


if __name__ == "__main__":
    main(*sys.argv[1:2])
