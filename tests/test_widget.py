"""The dock widget end to end in a real viewer, on a small saved model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_g3dvit as g3d
from napari_g3dvit._widget import ALL, RESULT_KEY
from napari_g3dvit.models.loading import ViTClassifier

from conftest import TINY, TINY_SHAPE, make_vit, open_widget

CONFIG = {"vit": {**TINY, "image_size": [8, 16], "image_patch_size": [4, 4], "pool": "cls"},
          "class_names": ["left", "middle", "right"], "input_orientation": "RAS"}


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "tiny.safetensors"
    g3d.save_model(ViTClassifier(make_vit(), None, CONFIG), path, CONFIG)
    return path


@pytest.fixture
def scene(make_napari_viewer, checkpoint):
    viewer = make_napari_viewer()
    torch.manual_seed(0)
    anatomy = viewer.add_image(torch.randn(TINY_SHAPE).numpy(), name="anatomy", scale=(2.0, 1.5, 1.0),
                               translate=(-10.0, 5.0, 3.0))
    widget = open_widget(viewer)
    widget.volume.value = anatomy
    assert widget.load_model(checkpoint)
    return viewer, widget, anatomy


def run_and_wait(qtbot, widget):
    worker = widget.run()
    assert worker is not None
    qtbot.waitUntil(lambda: widget._worker is None, timeout=30_000)
    return worker


def test_model_summary_and_choices(scene):
    _, widget, _ = scene
    assert "vit-pytorch-3d" in widget.summary.value and "3 classes" in widget.summary.value
    assert widget.hook_layer.value == "vit.transformer.layers.1.0.norm"
    assert list(widget.target.choices)[1:] == ["left", "middle", "right"]
    assert "cpu" in widget.device.choices


def test_run_adds_a_heatmap_in_the_anatomys_space(qtbot, scene):
    viewer, widget, anatomy = scene
    widget.method.value = "hirescam"
    run_and_wait(qtbot, widget)
    heat = widget.last_layer
    assert heat is not None and heat in viewer.layers and not widget.last_error
    assert heat.data.shape == TINY_SHAPE
    np.testing.assert_array_equal(heat.scale, anatomy.scale)
    np.testing.assert_array_equal(heat.translate, anatomy.translate)
    np.testing.assert_array_equal(heat.affine.affine_matrix, anatomy.affine.affine_matrix)
    # 2D: a stat-map overlay (transparent where there is no heat); 3D: additive MIP starting at black
    assert heat.blending == "translucent" and heat.colormap.name == "g3dvit heat 2D"
    assert heat.colormap.colors[0][3] == 0
    viewer.dims.ndisplay = 3
    assert heat.blending == "additive" and heat.rendering == "mip" and heat.colormap.name == "g3dvit heat"
    assert heat.colormap.colors[0][:3].tolist() == [0, 0, 0]  # starts at black
    record = heat.metadata[RESULT_KEY]
    for key in ("volume", "model", "method", "layer", "pooling", "target", "threshold", "upsample",
                "device", "explained_class", "probabilities"):
        assert key in record, key
    assert record["method"] == "hirescam" and record["threshold"] == 5.0
    kept = heat.data[heat.data > 0]
    assert heat.contrast_limits[0] > 0 and heat.contrast_limits[1] == 1.0 and kept.max() <= 1.0
    assert "p = " in widget.result.value and heat.name in widget.result.tooltip


def test_layer_events_keep_the_model_choices(scene):
    viewer, widget, _ = scene
    viewer.add_image(np.zeros(TINY_SHAPE), name="another")
    viewer.layers.move(0, 1)
    assert widget.hook_layer.value == "vit.transformer.layers.1.0.norm"
    assert list(widget.target.choices)[1:] == ["left", "middle", "right"]
    assert "another" in [name for name, _ in widget._image_layers()]
    assert widget.volume.value is viewer.layers["anatomy"]


def test_same_settings_update_the_layer(qtbot, scene):
    viewer, widget, _ = scene
    run_and_wait(qtbot, widget)
    count = len(viewer.layers)
    first = widget.last_layer
    run_and_wait(qtbot, widget)
    assert len(viewer.layers) == count and widget.last_layer is first
    widget.method.value = "layercam"
    run_and_wait(qtbot, widget)
    assert len(viewer.layers) == count + 1


def test_target_by_class_name(qtbot, scene):
    _, widget, _ = scene
    widget.target.value = "right"
    widget.method.value = "gradcam"
    run_and_wait(qtbot, widget)
    record = widget.last_layer.metadata[RESULT_KEY]
    assert record["target"] == 2 and record["explained_class_name"] == ["right"]


def test_cancel_leaves_no_layer(qtbot, scene):
    viewer, widget, _ = scene
    count = len(viewer.layers)
    widget.run()
    widget.cancel()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=30_000)
    assert len(viewer.layers) == count and "cancelled" in widget.result.value


def test_series_current_and_all_timepoints(qtbot, scene):
    viewer, widget, _ = scene
    torch.manual_seed(1)
    series = viewer.add_image(torch.randn(6, *TINY_SHAPE).numpy(), name="series", scale=(2.5, 2, 1.5, 1),
                              translate=(10, 0, 0, 0))  # time in seconds from 10 s, TR 2.5 s
    widget.volume.value = series
    widget.method.value = "g3dvit"
    assert not widget.timepoints.native.isHidden()  # shown for a 4D layer
    viewer.dims.set_point(0, 20.0)  # 20 s is timepoint 4
    run_and_wait(qtbot, widget)
    current = widget.last_layer
    assert current.data.shape == TINY_SHAPE and current.metadata[RESULT_KEY]["timepoint"] == 4
    np.testing.assert_array_equal(current.scale, series.scale[1:])
    widget.timepoints.value = ALL
    run_and_wait(qtbot, widget)
    assert widget.last_layer.data.shape == (6, *TINY_SHAPE)
    np.testing.assert_array_equal(widget.last_layer.scale, series.scale)
    direct = g3d.explain(widget.model, series.data[4], method="g3dvit")
    np.testing.assert_allclose(widget.last_layer.data[4], direct.heatmap, atol=1e-5)


def test_error_paths_show_in_the_widget(qtbot, scene, tmp_path):
    viewer, widget, _ = scene
    flat = viewer.add_image(np.zeros((12, 8)), name="slice")
    widget.volume.value = flat
    assert widget.run() is None and "2D" in widget.last_error
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    assert not widget.load_model(tmp_path / "notes.pth")
    assert "corrupt" in widget.last_error and widget.model is None  # never the previous model
    assert "notes.pth" in widget.summary.value and widget.run() is None
    torch.save(torch.nn.Conv3d(1, 2, 3).state_dict(), tmp_path / "conv.pth")
    assert not widget.load_model(tmp_path / "conv.pth")
    assert "pos_embedding" in widget.last_error or "config" in widget.last_error


def test_config_picker_appears_when_no_config_is_found(scene, tmp_path):
    _, widget, _ = scene
    assert widget.config.native.isHidden()
    torch.save(make_vit().state_dict(), tmp_path / "bare.pth")
    assert not widget.load_model(tmp_path / "bare.pth")
    assert not widget.config.native.isHidden() and "needs a config" in widget.last_error
    (tmp_path / "cfg.json").write_text(__import__("json").dumps(CONFIG))
    assert widget.load_model(tmp_path / "bare.pth", tmp_path / "cfg.json")


def test_region_table_and_csv(qtbot, scene, tmp_path):
    viewer, widget, anatomy = scene
    widget.method.value = "hirescam"
    widget.threshold.value = 100.0
    run_and_wait(qtbot, widget)
    labels = np.zeros(TINY_SHAPE, dtype=np.uint8)
    labels[:6] = 1
    labels[6:] = 2
    viewer.add_labels(labels, name="halves", scale=anatomy.scale, translate=anatomy.translate)
    widget.regions.value = viewer.layers["halves"]
    rows = widget.show_regions()
    heat = widget.last_layer.data
    assert [r["voxels"] for r in sorted(rows, key=lambda r: r["label"])] == [6 * 8 * 16, 6 * 8 * 16]
    assert sum(r["share of heat"] for r in rows) == pytest.approx(1.0)
    assert rows[0]["share of heat"] >= rows[1]["share of heat"]
    first = heat[:6] if rows[0]["label"] == "1" else heat[6:]
    assert rows[0]["peak heat"] == pytest.approx(first.max()) and rows[0]["mean heat"] == pytest.approx(first.mean())
    table = widget.region_table
    assert tuple(table.column_headers) == ("index", "label", "voxels", "mean heat", "peak heat", "share of heat")
    assert table.data[0][1] == rows[0]["label"] and table.data[0][2] == rows[0]["voxels"]
    widget.csv_path.value = tmp_path / "regions.csv"
    path = widget.export_regions()
    lines = open(path).read().splitlines()
    header = [line for line in lines if line.startswith("# ")]
    assert any(line.startswith("# method: hirescam") for line in header)  # what the table came from
    assert lines[len(header)] == "index,label,voxels,mean heat,peak heat,share of heat" and len(lines) == len(header) + 3
