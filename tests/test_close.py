"""Closing napari, or a dock, while a model loads or an explanation runs: quiet, nothing called late.

Before the fix the load's ``finished`` slot set a button on a deleted widget and PyQt aborted the
process (SIGABRT). pytest-qt turns an exception in a Qt slot into a test failure, so these tests
run in-process through napari's own close (``viewer.close()`` and the dock's close route).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from qtpy.QtCore import QThreadPool

import napari_g3dvit as g3d
from napari_g3dvit._widget import ALL
from napari_g3dvit.models.loading import ViTClassifier

from conftest import TINY, TINY_SHAPE, make_vit, open_widget

CONFIG = {"vit": {**TINY, "image_size": [8, 16], "image_patch_size": [4, 4], "pool": "cls"},
          "class_names": ["left", "middle", "right"], "input_orientation": "RAS"}


def wait_for_threads(qtbot, timeout=30_000):
    """Until every background thread has ended, with the event loop running (late signals arrive)."""
    qtbot.waitUntil(lambda: QThreadPool.globalInstance().activeThreadCount() == 0, timeout=timeout)
    qtbot.wait(50)


def tiny_model(tmp_path):
    path = tmp_path / "tiny.safetensors"
    g3d.save_model(ViTClassifier(make_vit(), None, CONFIG), path, CONFIG)
    return path


def slowed(model, seconds):
    """Every forward pass of ``model`` takes at least ``seconds`` (a run that is still busy)."""
    return model.register_forward_pre_hook(lambda *_: time.sleep(seconds))


def test_closing_the_viewer_while_the_brain_model_loads(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-g3dvit", "brain_ventricles")
    widget = open_widget(viewer)
    assert widget._loader is not None  # the sample's model is loading
    viewer.close()
    wait_for_threads(qtbot)
    assert widget.loaded is None and widget._loader is None  # the late result was not taken


def test_closing_the_viewer_while_explaining_with_the_time_course_docked(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    torch.manual_seed(0)
    series = viewer.add_image(torch.randn(4, *TINY_SHAPE).numpy(), name="series", scale=(2.0, 1, 1, 1))
    widget = open_widget(viewer)
    _, course = viewer.window.add_plugin_dock_widget("napari-g3dvit", "Time course")
    assert widget.load_model(tiny_model(tmp_path))
    hook = slowed(widget.model, 0.2)
    widget.volume.value = series
    widget.method.value = "g3dvit"  # one forward a timepoint
    widget.timepoints.value = ALL
    widget.batch_size.value = 1
    worker = widget.run()
    qtbot.wait(100)
    viewer.close()
    assert worker.abort_requested and course._closed
    wait_for_threads(qtbot)
    hook.remove()
    assert widget.last_layer is None  # the run stopped; no result reached the closed widget


def test_closing_the_dock_while_explaining_stops_the_run(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    anatomy = viewer.add_image(np.random.default_rng(0).normal(size=(5, *TINY_SHAPE)).astype(np.float32),
                               name="anatomy")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-g3dvit", "Explain 3D ViT")
    assert widget.load_model(tiny_model(tmp_path))
    hook = slowed(widget.model, 0.2)
    widget.volume.value = anatomy
    widget.method.value = "g3dvit"
    widget.timepoints.value = ALL
    widget.batch_size.value = 1
    worker = widget.run()
    qtbot.wait(100)
    viewer.window.remove_dock_widget(dock)  # what the dock's close button does
    assert worker.abort_requested
    wait_for_threads(qtbot)
    hook.remove()
    assert [layer.name for layer in viewer.layers] == ["anatomy"]
    calls = []
    widget.reset_choices = lambda *args: calls.append(args)  # napari calls connected methods by name
    viewer.add_image(np.zeros(TINY_SHAPE), name="later")
    assert calls == []  # layer events no longer reach the closed widget


def test_closing_the_time_course_dock_disconnects_it(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    dock, course = viewer.window.add_plugin_dock_widget("napari-g3dvit", "Time course")
    viewer.window.remove_dock_widget(dock)
    assert course._closed
    calls = []
    course.reset_choices = course._on_step = lambda *args: calls.append(args)  # called by name if connected
    viewer.add_image(np.zeros((3, *TINY_SHAPE)), name="more")
    viewer.dims.set_point(0, 1.0)
    assert calls == []
