"""Defaults from one place: the widget, the command line and Python make the same map, and the
widget's controls follow the method registry."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

import napari_g3dvit as g3d
from napari_g3dvit.cli import main
from napari_g3dvit.defaults import run_defaults
from napari_g3dvit.models.loading import ViTClassifier
from napari_g3dvit.registry import METHODS, SPECS

from conftest import TINY, TINY_SHAPE, make_vit, open_widget

CONFIG = {"vit": {**TINY, "image_size": [8, 16], "image_patch_size": [4, 4], "pool": "cls"},
          "class_names": ["rest", "task", "other"], "input_orientation": "RAS",
          "recommended_explanation": {"layer": "vit.transformer.layers.0.0.norm", "method": "hirescam",
                                      "target": "task"}}


@pytest.fixture
def recommending_model(tmp_path):
    path = tmp_path / "m.safetensors"
    g3d.save_model(ViTClassifier(make_vit(), None, CONFIG), path, CONFIG)
    return path


def test_defaults_are_auto_with_the_recommended_target_and_layer(make_napari_viewer, recommending_model):
    widget = open_widget(make_napari_viewer())
    assert widget.load_model(recommending_model)
    assert widget.method.value == "auto"  # faithful by default; the recommended method is a candidate
    assert widget.target.value == "task"
    assert widget.hook_layer.value == "vit.transformer.layers.0.0.norm"
    assert "vit.transformer.layers.1.0.norm" in widget.hook_layer.choices  # the default stays offered
    defaults = run_defaults(CONFIG)
    assert (defaults["method"], defaults["target"], defaults["target_name"]) == ("auto", 1, "task")


def test_the_widget_the_command_line_and_python_make_the_same_map(make_napari_viewer, qtbot, recommending_model,
                                                                 tmp_path):
    volume = np.random.default_rng(3).normal(size=TINY_SHAPE).astype(np.float32)
    source = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(volume, np.eye(4)), source)  # RAS, the model's orientation
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(source), plugin="napari-g3dvit")
    widget = open_widget(viewer)
    assert widget.load_model(recommending_model)
    widget.volume.value = layer
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    assert not widget.last_error, widget.last_error
    from_widget = np.asarray(widget.last_layer.data)

    model = g3d.load_model(recommending_model)
    defaults = run_defaults(model.g3dvit_config)
    from_python = g3d.explain(model, np.asarray(nib.load(source).dataobj, dtype=np.float32),
                              target=defaults["target"]).heatmap

    out = tmp_path / "out"
    assert main(["batch", str(source), "--out", str(out), "--model", str(recommending_model), "--workers", "0",
                 "--quiet"]) == 0
    [written] = [p for p in out.rglob("*_heatmap.nii.gz") if "group" not in p.parts]
    from_cli = np.asarray(nib.load(written).dataobj)
    sidecar = json.loads(written.with_name(written.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["settings"]["method"] == "auto" and sidecar["settings"]["target"] == 1
    np.testing.assert_allclose(from_widget, from_python, atol=1e-5)
    np.testing.assert_allclose(from_cli, from_python, atol=1e-5)


def test_controls_follow_the_registry(make_napari_viewer, recommending_model):
    widget = open_widget(make_napari_viewer())
    assert widget.load_model(recommending_model)
    assert list(widget.method.choices) == ['auto', *METHODS]
    for method in METHODS:
        widget.method.value = method
        spec = SPECS[method]
        for setting in ("pooling", "baseline", "steps", "occlusion", "relevance_block"):
            assert getattr(widget, setting).enabled == (setting in spec.settings), (method, setting)
        assert widget.hook_layer.enabled == spec.uses_layer
        offered = [value for value in widget.baseline.choices if value is not None]
        assert offered == (list(spec.baselines) if "baseline" in spec.settings else [])
        assert spec.summary in widget.method.tooltip
    widget.method.value = "gradmask"  # it reads a baseline: the widget offers one
    assert widget.baseline.enabled and "mean" in widget.baseline.choices
    widget.method.value = "cp-lrp"
    assert widget.relevance_block.max == 1  # a two-block model
    widget.relevance_block.value = 1
    widget.steps.value = 8
    assert widget.settings()["relevance_block"] == 1 and widget.settings()["steps"] == 8
