"""How long napari's event loop stalls while the widget works (goal: a fraction of a second).

    xvfb-run -a .venv/bin/python benchmarks/bench_widget.py

A QTimer ticks every 10 ms in the main thread; the largest gap between ticks while the widget
loads the published fMRI-size ViT (random weights; file read plus probe forward) and explains a
90^3 volume with it (CPU) is the longest freeze a user would feel. The widget is opened as the
Plugins menu opens it. Last, the fMRI sample as `g3dvit napari --sample fmri_task` opens it:
one click explains every timepoint and the Time course dock draws the curves.
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
    _, widget = viewer.window.add_plugin_dock_widget("napari-g3dvit", "Explain 3D ViT")
    widget.volume.value = layer

    outcome_windows: list[tuple[float, float]] = []  # when the result was put into the viewer
    show_result = widget._on_outcome

    def timed_outcome(outcome):
        started = time.perf_counter()
        show_result(outcome)
        outcome_windows.append((started, time.perf_counter()))

    widget._on_outcome = timed_outcome  # the run connects to the instance attribute

    def measured(action) -> tuple[float, float, float, float, int]:
        """Wall time; longest gap (ms) outside and inside the result handler; median gap; ticks."""
        ticks: list[float] = []
        outcome_windows.clear()
        timer = QTimer()
        timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
        timer.start(10)
        started = time.perf_counter()
        action()
        widget.wait(poll=0.002)
        wall = time.perf_counter() - started
        timer.stop()
        gaps = np.diff(ticks) * 1000
        inside = np.array([any(a <= end and start <= b for a, b in outcome_windows)
                           for start, end in zip(ticks[:-1], ticks[1:])], dtype=bool)
        worst_result = float(gaps[inside].max()) if inside.any() else 0.0
        return wall, float(gaps[~inside].max()), worst_result, statistics.median(gaps), len(gaps)

    def settle(seconds: float = 1.5) -> None:
        """Let napari finish its own first draws, so they are not counted against the widget."""
        from qtpy.QtWidgets import QApplication

        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            QApplication.processEvents()
            time.sleep(0.005)

    settle()
    rows = [("idle viewer (baseline, 1 s)", *measured(lambda: settle(1.0)))]
    rows.append(("load the model", *measured(lambda: widget.load_model(folder / "fmri.safetensors", block=False))))
    assert widget.model is not None, widget.last_error
    for method in ("g3dvit", "hirescam", "hirescam"):  # the second hirescam run updates its layer
        widget.method.value = method
        rows.append((f"explain ({method})", *measured(widget.run)))
    layer_ms = []
    for _ in range(3):  # napari's own cost of adding a heatmap-like layer of this size
        started = time.perf_counter()
        extra = viewer.add_image(np.random.default_rng(1).random((90, 90, 90), dtype=np.float32),
                                 blending="additive", rendering="mip", contrast_limits=(0.5, 1.0))
        layer_ms.append((time.perf_counter() - started) * 1000)
        settle(0.3)
        viewer.layers.remove(extra)
    viewer.close()
    print(f"\nwidget on a 90^3 volume, fMRI-size ViT, CPU, torch {torch.__version__}\n")
    print("| step | wall time (s) | longest event-loop gap (ms) | longest gap while the result layer is added (ms) "
          "| median gap (ms) | ticks |")
    print("|---|---:|---:|---:|---:|---:|")
    for step, wall, worst, worst_result, median, count in rows:
        print(f"| {step} | {wall:.2f} | {worst:.0f} | {worst_result:.0f} | {median:.1f} | {count} |")
    print(f"\nnapari alone, viewer.add_image of a 90^3 float32 layer: {statistics.median(layer_ms):.0f} ms "
          f"(median of {len(layer_ms)})")
    fmri_run()


def fmri_run() -> None:
    """One click on the fMRI sample: every timepoint explained, the Time course dock updated."""
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_g3dvit.cli import open_sample_viewer

    viewer, widget = open_sample_viewer("fmri_task", show=True)
    course = next(w for name, w in viewer.window.dock_widgets.items() if "Time course" in name)
    end = time.perf_counter() + 1.5
    while time.perf_counter() < end:  # napari's first draws
        QApplication.processEvents()
        time.sleep(0.005)
    ticks: list[float] = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start(10)
    started = time.perf_counter()
    widget.run()
    widget.wait(poll=0.002)
    while course.courses is None and time.perf_counter() - started < 60:  # the plot follows the new layer
        QApplication.processEvents()
        time.sleep(0.002)
    wall = time.perf_counter() - started
    timer.stop()
    gaps = np.diff(ticks) * 1000
    frames = viewer.layers[0].data.shape[0]
    print(f"\nfMRI sample, one click (method {widget.last_layer.metadata['g3dvit']['method_used']}, "
          f"{frames} timepoints, CPU): wall time to curves {wall:.2f} s, longest event-loop gap "
          f"{gaps.max():.0f} ms, median {statistics.median(gaps):.1f} ms, {len(gaps)} ticks; {widget.result.value}")
    viewer.close()

if __name__ == "__main__":
    main()
