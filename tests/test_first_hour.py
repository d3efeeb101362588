"""A new user's first hour, through napari's own routes: Plugins menu, File > Open, real files.

Every test opens the widget as the Plugins menu does and files through the reader.
"""

from __future__ import annotations


import nibabel as nib
import numpy as np
import pytest
import torch

import napari_g3dvit as g3d
from napari_g3dvit.models.loading import ViTClassifier
from napari_g3dvit.outputs import read_rows
from napari_g3dvit.runner import RESULT_KEY
from napari_g3dvit.sample_models import sample_path

from conftest import TINY, TINY_SHAPE, make_vit, open_widget

CONFIG = {"vit": {**TINY, "image_size": [8, 16], "image_patch_size": [4, 4], "pool": "cls"},
          "class_names": ["left", "middle", "right"]}
BRAIN = sample_path("brain_ventricles_example.nii.gz")


def save_tiny(tmp_path, name="tiny", **config):
    path = tmp_path / f"{name}.safetensors"
    cfg = {**CONFIG, **config}
    g3d.save_model(ViTClassifier(make_vit(), None, cfg), path, cfg)
    return path


def write_as(source: nib.Nifti1Image, codes: str, path) -> str:
    """``source`` stored in another orientation (same voxels in world space)."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    image = source.as_reoriented(ornt_transform(io_orientation(source.affine), axcodes2ornt(tuple(codes))))
    assert "".join(nib.aff2axcodes(image.affine)) == codes
    nib.save(image, path)
    return str(path)


def explain_in_widget(qtbot, viewer, widget, layer):
    widget.volume.value = layer
    widget.wait()
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    assert not widget.last_error, widget.last_error
    return widget.last_layer


# -- 1. the Plugins menu -------------------------------------------------------------------------------

def test_plugins_menu_builds_the_widget_with_the_viewer(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros(TINY_SHAPE, dtype=np.float32), name="first")
    widget = open_widget(viewer)  # raises if napari cannot pass the viewer
    assert [name for name, _ in widget._image_layers()] == ["first"]
    assert widget.volume.value is not None and widget.volume.value.name == "first"


# -- 2 and 3. files in any orientation; the orientation a model was trained in --------------------------

def test_flipped_arrays_are_explained(vit, volume):
    flipped = volume.numpy()[::-1]  # a negative-stride view, as a reoriented NIfTI gives
    exp = g3d.explain(vit, flipped, method="hirescam", device="cpu")
    direct = g3d.explain(vit, np.ascontiguousarray(flipped), method="hirescam", device="cpu")
    np.testing.assert_array_equal(exp.heatmap, direct.heatmap)
    big_endian = volume.numpy().astype(">f4")
    assert g3d.explain(vit, big_endian, device="cpu").heatmap.shape == TINY_SHAPE


@pytest.mark.parametrize("codes", ["LAS", "LPS", "PSR"])
def test_brain_stored_in_any_orientation_gives_the_same_map(make_napari_viewer, qtbot, tmp_path, codes):
    viewer = make_napari_viewer()
    (ras,) = viewer.open(str(BRAIN), plugin="napari-g3dvit")
    (other,) = viewer.open(write_as(nib.load(BRAIN), codes, tmp_path / f"brain_{codes}.nii.gz"),
                           plugin="napari-g3dvit")
    widget = open_widget(viewer)
    assert widget.load_model(sample_path("brain_ventricles.safetensors"))
    reference = explain_in_widget(qtbot, viewer, widget, ras)
    reference_data = np.array(reference.data)
    heat = explain_in_widget(qtbot, viewer, widget, other)
    assert heat is not reference
    np.testing.assert_array_equal(np.asarray(heat.data), reference_data)
    np.testing.assert_allclose(heat.scale, reference.scale, atol=1e-5)
    np.testing.assert_allclose(heat.translate, reference.translate, atol=1e-4)
    assert heat.metadata[RESULT_KEY]["input_orientation"] == "RAS"
    assert "model gets RAS" in widget.model_orientation.value
    saved = tmp_path / "heat.nii.gz"
    viewer.layers.selection = {heat}
    import napari

    napari.save_layers(str(saved), [heat], plugin="napari-g3dvit")
    written = nib.load(saved)  # back in the file's own orientation and affine
    assert "".join(nib.aff2axcodes(written.affine)) == codes
    np.testing.assert_allclose(written.affine, nib.load(tmp_path / f"brain_{codes}.nii.gz").affine)


def record_inputs(model):
    seen = []
    model.register_forward_pre_hook(lambda _module, args: seen.append(args[0].detach().clone()))
    return seen


@pytest.mark.parametrize("wanted, codes", [("LAS", "LAS"), ("stored", "LPS"), ("LAS", "RAS")])
def test_model_gets_exactly_the_array_its_config_names(make_napari_viewer, qtbot, tmp_path, wanted, codes):
    """A config that says LAS gets the LAS array, whatever orientation the file is stored in."""
    rng = np.random.default_rng(0)
    las = rng.normal(size=TINY_SHAPE).astype(np.float32)  # what training code loaded, LAS
    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [20, -10, -12]
    source = nib.Nifti1Image(las, affine)
    path = write_as(source, codes, tmp_path / "volume.nii.gz")
    stored = np.asarray(nib.load(path).get_fdata(), dtype=np.float32)
    expected = las if wanted == "LAS" else stored

    viewer = make_napari_viewer()
    (layer,) = viewer.open(path, plugin="napari-g3dvit")
    widget = open_widget(viewer)
    assert widget.load_model(save_tiny(tmp_path, input_orientation=wanted))
    widget.method.value = "g3dvit"  # one forward: the input recorded is the model's input
    seen = record_inputs(widget.model)
    heat = explain_in_widget(qtbot, viewer, widget, layer)
    np.testing.assert_array_equal(seen[-1][0, 0].numpy(), expected)
    assert f"model gets {codes if wanted == 'stored' else 'LAS'}" in widget.model_orientation.value
    # the map comes back on the layer's (RAS) voxels: the same as explaining the expected array
    direct = g3d.explain(widget.model, expected, method="g3dvit", device="cpu")
    from napari_g3dvit.orientation import reorientation_for

    back = reorientation_for("RAS", None, "LAS" if wanted == "LAS" else codes).to_volume(direct.heatmap)
    np.testing.assert_allclose(np.asarray(heat.data), back, atol=1e-6)


def test_config_without_orientation_warns_once_and_says_so(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.random.default_rng(1).normal(size=TINY_SHAPE).astype(np.float32), name="v")
    widget = open_widget(viewer)
    assert widget.load_model(save_tiny(tmp_path, name="unsaid"))
    assert "does not say" in widget.model_orientation.value
    with pytest.warns(UserWarning, match="input_orientation"):
        explain_in_widget(qtbot, viewer, widget, layer)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per model: a second run stays quiet
        explain_in_widget(qtbot, viewer, widget, layer)


def test_bad_input_orientation_is_a_config_error(tmp_path):
    with pytest.raises(g3d.ModelError, match="input_orientation"):
        save_tiny(tmp_path, input_orientation="RRS")


# -- 4, 5, 6. errors end the run, the model shown is the model used ----------------------------------------

@pytest.mark.parametrize("error", [RuntimeError("cuDNN error: CUDNN_STATUS_INTERNAL_ERROR"),
                                   torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")])
def test_runtime_errors_end_the_run_and_free_the_widget(make_napari_viewer, qtbot, tmp_path, error):
    from napari.utils.notifications import notification_manager

    viewer = make_napari_viewer()
    layer = viewer.add_image(np.random.default_rng(1).normal(size=TINY_SHAPE).astype(np.float32), name="v")
    widget = open_widget(viewer)
    assert widget.load_model(save_tiny(tmp_path, input_orientation="RAS"))

    def fail(*_args):
        raise error

    hook = widget.model.register_forward_hook(fail)
    before = len(notification_manager.records)
    widget.volume.value = layer
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget._worker is None, timeout=20_000)
    assert widget.run_button.enabled and not widget.cancel_button.enabled
    assert widget.last_error and widget.result.value.startswith("error:")
    if isinstance(error, torch.OutOfMemoryError):
        assert "memory" in widget.last_error and "cpu" in widget.last_error and "batch" in widget.last_error
    else:
        assert "CUDNN_STATUS_INTERNAL_ERROR" in widget.last_error
    assert len(notification_manager.records) == before  # said once, in the widget: no traceback pop-up
    assert len(viewer.layers) == 1
    hook.remove()
    explain_in_widget(qtbot, viewer, widget, layer)  # usable again
    assert len(viewer.layers) == 2


def test_a_failed_load_never_leaves_the_previous_model_in_use(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros(TINY_SHAPE, dtype=np.float32), name="v")
    widget = open_widget(viewer)
    assert widget.load_model(save_tiny(tmp_path, input_orientation="RAS"))
    text = tmp_path / "notes.pt"
    text.write_text("these are my notes, not weights\n")
    widget.checkpoint.value = text  # as a user picks it
    widget.wait()
    assert "notes.pt" in widget.last_error and "not a checkpoint" in widget.last_error
    assert widget.model is None and not widget.run_button.enabled and "notes.pt" in widget.summary.value
    assert widget.run() is None and "load a model" in widget.last_error


def test_loading_runs_in_the_background(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros(TINY_SHAPE, dtype=np.float32), name="v")
    widget = open_widget(viewer)
    path = save_tiny(tmp_path, input_orientation="RAS")
    assert not widget.load_model(path, block=False)  # returns at once, not loaded yet
    assert widget._loader is not None and "loading tiny.safetensors" in widget.summary.value
    assert widget.run() is None and "wait for the model" in widget.last_error
    qtbot.waitUntil(lambda: widget.model is not None, timeout=20_000)
    widget.wait()
    assert widget.run_button.enabled and "vit-pytorch-3d" in widget.summary.value


# -- 7. a colleague's labels on another grid --------------------------------------------------------------

def test_region_table_with_labels_on_a_finer_grid(make_napari_viewer, qtbot, tmp_path):
    from nibabel.processing import resample_from_to

    from napari_g3dvit.regions import region_table

    rng = np.random.default_rng(3)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = [-18.0, -12.0, -24.0]
    nib.save(nib.Nifti1Image(rng.normal(size=TINY_SHAPE).astype(np.float32), affine), tmp_path / "t1.nii.gz")
    fine = np.diag([1.5, 1.5, 1.5, 1.0])
    fine[:3, 3] = affine[:3, 3] - [0.4, 0.9, 0.2]  # another origin too: no voxel centre coincides
    labels = np.zeros((26, 18, 34), dtype=np.int16)
    labels[2:12, 1:9, 3:20] = 1
    labels[12:25, 5:17, 15:33] = 2
    labels[5:9, 10:15, 1:6] = 7
    nib.save(nib.Nifti1Image(labels, fine), tmp_path / "colleague_atlas.nii.gz")

    viewer = make_napari_viewer()
    (anatomy,) = viewer.open(str(tmp_path / "t1.nii.gz"), plugin="napari-g3dvit")
    (atlas,) = viewer.open(str(tmp_path / "colleague_atlas.nii.gz"), plugin="napari-g3dvit")
    assert type(atlas).__name__ == "Labels" and atlas.data.shape != anatomy.data.shape
    widget = open_widget(viewer)
    assert widget.load_model(save_tiny(tmp_path, input_orientation="RAS"))
    widget.threshold.value = 100.0
    widget.method.value = "hirescam"
    heat = explain_in_widget(qtbot, viewer, widget, anatomy)
    widget.regions.value = atlas
    rows = widget.show_regions()

    on_grid = resample_from_to(nib.load(tmp_path / "colleague_atlas.nii.gz"),
                               nib.load(tmp_path / "t1.nii.gz"), order=0).get_fdata().astype(int)
    expected = region_table(np.asarray(heat.data), on_grid)
    assert [r["label"] for r in rows] == [r["label"] for r in expected] and len(rows) == 3
    for got, want in zip(rows, expected):
        assert got["voxels"] == want["voxels"]
        assert got["share of heat"] == pytest.approx(want["share of heat"])
    path = widget.export_regions()
    assert path is not None and str(tmp_path) in path and str(path) in widget.result.value
    about, written = read_rows(path)  # a header says which heatmap and labels it came from
    assert len(written) == 3 and about["labels"] == "colleague_atlas" and about["method"] == "hirescam"

    # labels elsewhere in the world: an error, and the old table can no longer be exported
    viewer.add_labels(labels, name="far away", translate=(500.0, 500.0, 500.0))
    widget.regions.value = viewer.layers["far away"]
    assert widget.show_regions() == [] and "do not overlap" in widget.last_error
    assert not widget.export_button.enabled and widget.region_table.native.isHidden()
    assert widget.export_regions() is None


# -- 8 and 9. how files open --------------------------------------------------------------------------------

@pytest.mark.parametrize("name, values, kind", [
    ("lesion_mask", [0.0, 1.0], "Labels"),          # fslmaths writes masks as float32
    ("regions", [0.0, 1.0, 2.0, 5.0], "Labels"),    # few whole values
    ("sub-01_probseg", [0.0, 0.25, 0.5, 1.0], "Image"),  # a probability map stays an image
])
def test_float_masks_open_as_labels(make_napari_viewer, tmp_path, name, values, kind):
    rng = np.random.default_rng(4)
    data = rng.choice(np.array(values, dtype=np.float32), size=(10, 12, 8))
    nib.save(nib.Nifti1Image(data, np.diag([-2.0, 2.0, 2.0, 1.0])), tmp_path / f"{name}.nii.gz")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / f"{name}.nii.gz"), plugin="napari-g3dvit")
    assert type(layer).__name__ == kind
    if kind == "Labels":
        assert layer.data.dtype.kind in "iu"
        np.testing.assert_array_equal(layer.data, data[::-1])  # LAS -> RAS


def test_anatomy_opens_readable_in_3d(make_napari_viewer):
    viewer = make_napari_viewer()
    (t1,) = viewer.open(str(sample_path("mni152_t1_3mm.nii.gz")), plugin="napari-g3dvit")
    assert t1.rendering == "attenuated_mip" and t1.colormap.name == "gray"
    low, high = t1.contrast_limits
    data = np.asarray(t1.data)
    assert low > 0 and high < data.max() or high <= np.percentile(data[data > 0], 99.6)


# -- 11. the widget for a newcomer ------------------------------------------------------------------------

def test_every_control_explains_itself(make_napari_viewer):
    widget = open_widget(make_napari_viewer())
    untitled = [w.name or w.label for w in widget if not w.tooltip]
    assert untitled == []
    assert widget.result.native.wordWrap() and widget.summary.native.wordWrap()


def test_volume_choices_follow_the_viewer(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    assert widget.volume.value is None
    layer = viewer.add_image(np.random.default_rng(1).normal(size=TINY_SHAPE).astype(np.float32), name="late")
    assert widget.volume.value is not None and widget.volume.value.name == "late"  # added after the widget
    viewer.add_image(np.zeros((8, 8, 3), dtype=np.uint8), name="photo", rgb=True)
    assert "photo" not in [name for name, _ in widget._image_layers()]
    assert widget.load_model(save_tiny(tmp_path, input_orientation="RAS"))
    heat = explain_in_widget(qtbot, viewer, widget, layer)
    assert heat.name not in [name for name, _ in widget._image_layers()]  # a heatmap is no volume
    before = widget.summary.value
    widget.device.choices = ["cpu", "cuda:7"]  # as on a GPU machine
    widget.device.value = "cuda:7"
    assert widget.summary.value != before and widget.summary.value.endswith("cuda:7")


def test_current_timepoint_heatmap_says_which(make_napari_viewer, qtbot, tmp_path):
    series = np.random.default_rng(5).normal(size=(5, *TINY_SHAPE)).astype(np.float32)
    image = nib.Nifti1Image(np.moveaxis(series, 0, -1), np.diag([2.0, 2.0, 2.0, 1.0]))
    image.header.set_xyzt_units("mm", "sec")
    image.header["pixdim"][4] = 2.5
    nib.save(image, tmp_path / "run.nii.gz")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "run.nii.gz"), plugin="napari-g3dvit")
    assert layer.scale[0] == pytest.approx(2.5)  # time in seconds
    widget = open_widget(viewer)
    assert widget.load_model(save_tiny(tmp_path, input_orientation="RAS"))
    viewer.dims.set_point(0, 7.5)  # 7.5 s is timepoint 3
    heat = explain_in_widget(qtbot, viewer, widget, layer)
    assert heat.name.endswith("t=3") and "timepoint 3 (7.5 s)" in widget.result.value
    assert heat.metadata[RESULT_KEY]["timepoint"] == 3
