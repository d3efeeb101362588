"""How long napari's event loop stalls while the widget works (goal: a fraction of a second).

    xvfb-run -a .venv/bin/python benchmarks/bench_widget.py

A QTimer ticks every 10 ms in the main thread; the largest gap between ticks while the widget
explains a 90^3 volume with the published fMRI-size ViT (random weights, CPU) is the longest
freeze a user would feel. Loading the model happens in the main thread and is timed separately.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def main() -> None:
    warnings.simplefilter("ignore")
    import napari
    import torch
    from qtpy.QtCore import QTimer

    import napari_g3dvit as g3d
    from napari_g3dvit._widget import ExplainWidget
    from napari_g3dvit.models.loading import ViTClassifier
    from napari_g3dvit.models.vit_pytorch3d import import_vit3d

    viewer = napari.Viewer(show=True)
    vit_cfg = dict(image_size=90, image_patch_size=9, frames=90, frame_patch_size=9, num_classes=2, dim=1024,
                   depth=6, heads=8, mlp_dim=2048, channels=1, dim_head=64, pool="cls")
    torch.manual_seed(0)
    config = {"vit": vit_cfg}
    folder = Path(tempfile.mkdtemp())
    g3d.save_model(ViTClassifier(import_vit3d().ViT(**vit_cfg), None, config), folder / "fmri.safetensors", config)
    layer = viewer.add_image(np.random.default_rng(0).normal(size=(90, 90, 90)).astype(np.float32), name="volume")
    widget = ExplainWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.volume.value = layer
    started = time.perf_counter()
    widget.load_model(folder / "fmri.safetensors")
    load_seconds = time.perf_counter() - started

    rows = []
    for method in ("g3dvit", "hirescam"):
        widget.method.value = method
        ticks: list[float] = []
        timer = QTimer()
        timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
        timer.start(10)
        started = time.perf_counter()
        widget.run()
        widget.wait(poll=0.002)
        wall = time.perf_counter() - started
        timer.stop()
        gaps = np.diff(ticks) * 1000
        rows.append((method, wall, float(gaps.max()), statistics.median(gaps), len(gaps)))
    viewer.close()
    print(f"\nwidget on a 90^3 volume, fMRI-size ViT, CPU, torch {torch.__version__}; "
          f"model load + probe in the main thread: {load_seconds:.2f} s\n")
    print("| method | explain wall time (s) | longest event-loop gap (ms) | median gap (ms) | ticks |")
    print("|---|---:|---:|---:|---:|")
    for method, wall, worst, median, count in rows:
        print(f"| {method} | {wall:.2f} | {worst:.0f} | {median:.1f} | {count} |")


if __name__ == "__main__":
    main()
