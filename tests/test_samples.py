"""The shipped sample models and volumes: loading, accuracy, napari samples, a 3D screenshot."""

from __future__ import annotations

import json

import numpy as np
import pytest

import napari_g3dvit as g3d
from napari_g3dvit.evaluation.metrics import model_predictor
from napari_g3dvit.evaluation.recipes import RECIPES
from napari_g3dvit.evaluation.synthetic import make_cubes
from napari_g3dvit.sample_models import SAMPLE_MODELS, sample_path

from conftest import open_widget

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
    if key == "brain_ventricles":  # the whole-brain mask would hide everything in 3D
        assert not viewer.layers["brain mask"].visible and viewer.layers["ventricles"].visible
    for layer in labels:
        np.testing.assert_allclose(layer.scale, images[0].scale[-3:])  # a 4D run: its spatial axes
        np.testing.assert_allclose(layer.translate, images[0].translate[-3:])


def run_sample(viewer, qtbot, key):
    """Open a sample, pick its volume (which loads its model and its recommended settings), run."""
    viewer.open_sample("napari-g3dvit", key)
    widget = open_widget(viewer)
    image = next(layer for layer in viewer.layers if "g3dvit_model" in layer.metadata)
    widget.volume.value = image  # offers and loads the sample model (in the background)
    widget.wait()
    assert widget.model is not None and widget.loaded.path.name == f"{key}.safetensors"
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
    """Rendered in 3D, the bright heatmap pixels lie where the cube projects.

    This tests the rendering chain (widget, explain, layer transform, 3D MIP, pixels), so it uses a
    map whose true location is known: the cube sample's background is exactly 0, so at the raw
    patch layer GradCAM-ElementWise is non-zero only on tokens holding cube voxels, and with
    nearest upsampling the heat is confined to them. How well the methods localise at deeper
    layers is measured by benchmarks/bench_quality.py, not here.
    """
    viewer = make_napari_viewer(show=True)
    viewer.open_sample("napari-g3dvit", "cube_position")
    widget = open_widget(viewer)
    widget.volume.value = next(layer for layer in viewer.layers if "g3dvit_model" in layer.metadata)
    widget.wait()
    widget.hook_layer.value = "vit.to_patch_embedding.0"
    widget.method.value = "gradcam-elementwise"
    widget.upsample.value = "nearest"
    widget.threshold.value = 100.0
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    assert not widget.last_error
    viewer.dims.ndisplay = 3
    viewer.scene.camera.angles = (15, -25, 60)
    cube = viewer.layers["cube"]
    patch = 5
    g = cube.data.shape[0] // patch
    touched = cube.data.reshape(g, patch, g, patch, g, patch).any(axis=(1, 3, 5))
    token_region = np.kron(touched, np.ones((patch,) * 3, dtype=np.uint8)).astype(np.uint8)
    region = viewer.add_labels(token_region, name="cube tokens", scale=cube.scale, translate=cube.translate)
    whole = viewer.add_labels(np.ones_like(token_region), name="whole volume", scale=cube.scale,
                              translate=cube.translate)

    widget.last_layer.colorbar.visible = False  # the legend's bright colours are not heat on the cube
    viewer.canvas.overlays.text.visible = False

    def shot(visible):
        for layer in viewer.layers:
            layer.visible = layer in visible
        return np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].astype(float)

    brightness = shot([widget.last_layer]).sum(-1)
    footprint = shot([region]).sum(-1) > 30
    volume = shot([whole]).sum(-1) > 30
    bright = brightness >= 0.5 * brightness.max()
    assert brightness.max() > 100 and bright.sum() > 20
    assert footprint.sum() < 0.25 * volume.sum()  # the target is a small part of the view
    assert (bright & footprint).sum() / bright.sum() >= 0.9
