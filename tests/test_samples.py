"""The shipped sample models and volumes: loading, accuracy, napari samples, a 3D screenshot."""

from __future__ import annotations

import json

import numpy as np
import pytest

import napari_g3dvit as g3d
from napari_g3dvit._widget import ExplainWidget
from napari_g3dvit.evaluation.metrics import model_predictor
from napari_g3dvit.evaluation.recipes import RECIPES
from napari_g3dvit.evaluation.synthetic import make_cubes
from napari_g3dvit.sample_models import SAMPLE_MODELS, sample_path

HELD_OUT = 30_000  # a seed neither training (1..epochs) nor validation (10 000) used


@pytest.mark.parametrize("name", SAMPLE_MODELS)
def test_sample_model_loads_and_records_its_training(name):
    model = g3d.load_model(sample_path(f"{name}.safetensors"))
    config = json.loads(sample_path(f"{name}.json").read_text())
    assert config["validation_accuracy"] >= 0.9
    assert config["training"]["command"].startswith(f"g3dvit train {name}")
    assert sample_path(f"{name}.safetensors").stat().st_size < 4 * 2**20
    assert g3d.describe_model(model).class_names == tuple(config["class_names"])


@pytest.mark.parametrize("name", ["cube_position", "cube_value"])
def test_cube_models_predict_held_out_samples(name):
    model = g3d.load_model(sample_path(f"{name}.safetensors"))
    samples = make_cubes(RECIPES[name].task, 40, seed=HELD_OUT)
    accuracy = (model_predictor(model)(samples.volumes).argmax(1) == samples.labels).mean()
    assert accuracy >= 0.85


def test_brain_model_predicts_held_out_samples():
    from napari_g3dvit.evaluation.brain import make_brains, mni_anatomy

    model = g3d.load_model(sample_path("brain_ventricles.safetensors"))
    samples = make_brains(mni_anatomy(), 20, seed=HELD_OUT)
    accuracy = (model_predictor(model)(samples.volumes).argmax(1) == samples.labels).mean()
    assert accuracy >= 0.85


@pytest.mark.parametrize("key", SAMPLE_MODELS)
def test_open_sample_menu_entries(make_napari_viewer, key):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-g3dvit", key)
    images = [layer for layer in layers if type(layer).__name__ == "Image"]
    labels = [layer for layer in layers if type(layer).__name__ == "Labels"]
    assert len(images) == 1 and labels
    assert images[0].metadata["g3dvit_model"].endswith(f"{key}.safetensors")
    for layer in labels:
        np.testing.assert_allclose(layer.scale, images[0].scale)
        np.testing.assert_allclose(layer.translate, images[0].translate)


def run_sample(viewer, qtbot, key, method="g3dvit"):
    viewer.open_sample("napari-g3dvit", key)
    widget = ExplainWidget(viewer)
    viewer.window.add_dock_widget(widget)
    image = next(layer for layer in viewer.layers if "g3dvit_model" in layer.metadata)
    widget.volume.value = image  # offers and loads the sample model
    assert widget.model is not None and widget.model_path.name == f"{key}.safetensors"
    widget.method.value = method
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    assert not widget.last_error
    return widget, image


def test_widget_on_the_brain_sample_with_region_table(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    widget, image = run_sample(viewer, qtbot, "brain_ventricles")
    heat = widget.last_layer
    np.testing.assert_allclose(heat.scale, image.scale)
    np.testing.assert_allclose(heat.translate, image.translate)
    assert "enlarged" in widget.result.value
    widget.regions.value = viewer.layers["ventricles"]
    (row,) = widget.show_regions()
    fraction = (viewer.layers["ventricles"].data > 0).mean()
    assert row["share of heat"] > 5 * fraction  # far more heat in the ventricles than chance


def test_3d_screenshot_heat_falls_on_the_cube(make_napari_viewer, qtbot):
    """Rendered in 3D, the bright heatmap pixels lie where the cube itself projects."""
    viewer = make_napari_viewer(show=True)
    widget, image = run_sample(viewer, qtbot, "cube_position")
    viewer.dims.ndisplay = 3
    viewer.camera.angles = (15, -25, 60)
    cube = viewer.layers["cube"]

    def shot(visible):
        for layer in viewer.layers:
            layer.visible = layer in visible
        return np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].astype(float)

    heat_rgb = shot([widget.last_layer])
    cube_rgb = shot([cube])
    footprint = cube_rgb.sum(-1) > 30
    brightness = heat_rgb.sum(-1)
    bright = brightness >= 0.5 * brightness.max()
    assert brightness.max() > 100 and footprint.mean() > 0.001
    assert (bright & footprint).sum() / bright.sum() >= 0.8
