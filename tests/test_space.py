"""A model's space: scans on other grids in it are resampled in, explained, and mapped back.

The shipped fMRI model was trained at 3 mm on the MNI152 (2009c asym); its shipped run is
resampled with nibabel to 2 mm MNI (what fMRIPrep's res-2 output looks like) and to an LAS copy
with another field of view, and explained through the library, the widget (Plugins menu) and
``g3dvit batch``: every map lies on the scan's own voxels and on the activation region.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.processing import resample_from_to

import napari_g3dvit as g3d
from napari_g3dvit.cli import main
from napari_g3dvit.models.space import Grid, ModelSpace, SpaceError, plan_for
from napari_g3dvit.sample_models import SAMPLE_MODELS, sample_path

from conftest import TINY, make_vit, open_widget

TASK = slice(14, 17)  # timepoints well inside the first task block (28-32 s)
RECOMMENDED = dict(method="hirescam", layer="vit.transformer.layers.0.0.norm", target=1)  # "task"
TWO_MM = np.array([[2.0, 0, 0, -82], [0, 2, 0, -124], [0, 0, 2, -77], [0, 0, 0, 1]])
TWO_MM_SHAPE = (84, 108, 84)
# LAS at 2.5 mm, a tighter field of view than the model's (its x axis runs right to left)
LAS = np.array([[-2.5, 0, 0, 75], [0, 2.5, 0, -110], [0, 0, 2.5, -60], [0, 0, 0, 1]])
LAS_SHAPE = (61, 77, 57)


@pytest.fixture(scope="module")
def fmri_model():
    return g3d.load_model(sample_path("fmri_task.safetensors"))


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    """The shipped run's task timepoints at 2 mm MNI and as an LAS copy, and the mask on each grid."""
    folder = tmp_path_factory.mktemp("scans")
    run = nib.load(sample_path("fmri_task_run.nii.gz"))
    mask = nib.load(sample_path("fmri_task_activation_mask.nii.gz"))
    part = nib.Nifti1Image(np.asarray(run.dataobj[..., TASK], dtype=np.float32), run.affine)
    out = {}
    for name, affine, shape in (("mni2mm", TWO_MM, TWO_MM_SHAPE), ("las", LAS, LAS_SHAPE)):
        image = resample_from_to(part, ((*shape, part.shape[3]), affine), order=1)
        image.header.set_xyzt_units("mm", "sec")
        image.header["pixdim"][4] = 2.0
        path = folder / f"sub-01_task-motor_space-MNI152NLin2009cAsym_desc-{name}_bold.nii.gz"
        nib.save(image, path)
        region = resample_from_to(mask, (shape, affine), order=0).get_fdata() > 0
        out[name] = (path, region)
    return out


def mass_in(heat: np.ndarray, region: np.ndarray) -> float:
    """Share of a map's heat inside ``region``, mean over timepoints; heat (T, X, Y, Z)."""
    return float(np.mean([h[region].sum() / h.sum() for h in heat]))


# -- the grid itself ----------------------------------------------------------------------------------------

def test_shipped_configs_carry_the_grid_of_their_own_files():
    examples = {"brain_ventricles": "brain_ventricles_example.nii.gz", "fmri_task": "fmri_task_run.nii.gz",
                "cube_value": "cube_value_example.nii.gz", "cube_position": "cube_position_example.nii.gz"}
    assert set(examples) == set(SAMPLE_MODELS)
    for name, example in examples.items():
        space = ModelSpace.of_model(g3d.load_model(sample_path(f"{name}.safetensors")))
        image = nib.load(sample_path(example))
        np.testing.assert_allclose(space.grid.affine, image.affine)
        assert space.grid.shape == image.shape[:3]
        assert space.template == ("MNI152NLin2009cAsym" if name in ("brain_ventricles", "fmri_task") else None)
    fmri = ModelSpace.of_model(g3d.load_model(sample_path("fmri_task.safetensors")))
    assert fmri.describe() == "MNI152NLin2009cAsym at 3 mm: 56x72x56 voxels, RAS"


def test_training_recipes_write_the_same_grid():
    from napari_g3dvit.evaluation.brain import mni_anatomy
    from napari_g3dvit.evaluation.recipes import RECIPES, training_space

    shipped = ModelSpace.of_model(g3d.load_model(sample_path("brain_ventricles.safetensors")))
    made = training_space(RECIPES["brain_ventricles"], {"anatomy": mni_anatomy()})
    np.testing.assert_allclose(made.grid.affine, shipped.grid.affine)
    assert made.to_config() == shipped.to_config()
    cube = training_space(RECIPES["cube_value"], {})
    assert cube.to_config() == ModelSpace.of_model(g3d.load_model(sample_path("cube_value.safetensors"))).to_config()


def test_resampling_is_nibabels_and_same_voxels_are_left_alone():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(20, 24, 18)).astype(np.float32)
    source = Grid.of(TWO_MM, data.shape)
    model = ModelSpace(Grid.of(np.array([[3.0, 0, 0, -80.5], [0, 3, 0, -120.5], [0, 0, 3, -75.5], [0, 0, 0, 1]]), (12, 14, 10)))
    plan = plan_for(model, source.affine, source.shape)
    assert plan.resample and plan.note() == "resampled from 2 mm to the model's 3 mm grid"
    expected = resample_from_to(nib.Nifti1Image(data, TWO_MM), (model.grid.shape, model.grid.affine), order=1)
    np.testing.assert_allclose(plan.to_model(data), expected.get_fdata(), atol=1e-5)
    back = resample_from_to(nib.Nifti1Image(np.clip(expected.get_fdata(), 0, 1).astype(np.float32),
                                            model.grid.affine), (data.shape, TWO_MM), order=1)
    np.testing.assert_allclose(plan.to_scan(np.clip(expected.get_fdata(), 0, 1)), back.get_fdata(), atol=1e-5)
    # the model's own voxels, flipped to LAS: no interpolation (the orientation step flips them)
    flipped = model.grid.affine @ np.array([[-1.0, 0, 0, 11], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    assert not plan_for(model, flipped, model.grid.shape).resample
    with pytest.raises(SpaceError, match="does not lie in the model's space"):
        plan_for(model, TWO_MM @ np.array([[1.0, 0, 0, 500], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), data.shape)


# -- the library ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mni2mm", "las"])
def test_explain_takes_a_nifti_on_another_grid_and_answers_on_its_voxels(fmri_model, scans, name):
    path, region = scans[name]
    image = nib.load(path)
    exp = g3d.explain(fmri_model, path, **RECOMMENDED)
    assert exp.heatmap.shape == (3, *image.shape[:3])  # time first, the scan's own voxels
    assert exp.extra["space"]["resampled"] and exp.extra["space"]["scan"]["orientation"] == image_codes(image)
    assert (exp.probabilities[:, 1] > 0.9).all()  # still "task" after 3 -> 2 (or 2.5) -> 3 mm
    chance = region.mean()
    assert mass_in(exp.heatmap, region) > 40 * chance, (mass_in(exp.heatmap, region), chance)
    same = g3d.explain(fmri_model, image, **RECOMMENDED)  # a nibabel image: the same maps
    np.testing.assert_allclose(same.heatmap, exp.heatmap, atol=1e-6)


def image_codes(image) -> str:
    return "".join(nib.aff2axcodes(image.affine))


def test_a_scan_outside_the_models_space_is_refused_with_what_to_do(fmri_model):
    from nibabel.testing import data_path

    native = Path(data_path) / "example4d.nii.gz"  # a real run in its scanner's space, oblique LAS
    with pytest.raises(SpaceError) as refused:
        g3d.explain(fmri_model, native)
    message = str(refused.value)
    for words in ("does not lie in the model's space", "MNI152NLin2009cAsym at 3 mm", "56x72x56",
                  "128x96x24 voxels", "native (scanner) space", "Register it to MNI152NLin2009cAsym",
                  "fMRIPrep's space-MNI152NLin2009cAsym output"):
        assert words in message, words


def test_a_wrong_sized_array_is_named_in_a_neuroscientists_terms(fmri_model, tmp_path):
    with pytest.raises(g3d.VolumeError) as refused:
        g3d.explain(fmri_model, np.zeros((128, 96, 24), np.float32))
    message = str(refused.value)
    assert "128x96x24 voxels" in message and "MNI152NLin2009cAsym at 3 mm: 56x72x56 voxels, RAS" in message
    assert "Pass the NIfTI file or nibabel image" in message
    from napari_g3dvit.models.loading import ViTClassifier

    config = {"vit": {**TINY, "image_size": [8, 16], "image_patch_size": [4, 4], "pool": "cls"},
              "input_orientation": "RAS"}
    g3d.save_model(ViTClassifier(make_vit(), None, config), tmp_path / "tiny.safetensors", config)
    unknown = g3d.load_model(tmp_path / "tiny.safetensors")  # no input_space in its config
    with pytest.raises(g3d.VolumeError, match="does not record the grid it was trained on") as refused:
        g3d.explain(unknown, np.zeros((20, 20, 20), np.float32))
    assert "g3dvit model set-space" in str(refused.value) and "12x8x16 voxels in RAS" in str(refused.value)


# -- writing the space --------------------------------------------------------------------------------------

def test_set_space_records_the_grid_in_the_config_and_the_checkpoint_together(tmp_path):
    from safetensors import safe_open

    from napari_g3dvit.models.loading import ViTClassifier

    config = {"vit": {**TINY, "image_size": [8, 16], "image_patch_size": [4, 4], "pool": "cls"},
              "input_orientation": "RAS"}
    path = tmp_path / "tiny.safetensors"
    g3d.save_model(ViTClassifier(make_vit(), None, config), path, config)
    weights = path.read_bytes()
    reference = tmp_path / "train_001.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((12, 8, 16), np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), reference)
    assert main(["model", "set-space", str(path), "--like", str(reference), "--template", "MyTemplate"]) == 0
    space = ModelSpace.of_model(g3d.load_model(path))
    assert space.template == "MyTemplate" and space.grid.shape == (12, 8, 16) and space.grid.voxel_mm == (2, 2, 2)
    beside = json.loads(path.with_suffix(".json").read_text())
    with safe_open(str(path), "pt") as fh:
        inside = json.loads(fh.metadata()["g3dvit_config"])
    assert beside["input_space"] == inside["input_space"] == space.to_config()
    path.with_suffix(".json").unlink()  # the checkpoint alone carries it too, with its weights unchanged
    assert ModelSpace.of_model(g3d.load_model(path)).to_config() == space.to_config()
    from safetensors.torch import load as load_bytes

    old, new = load_bytes(weights), load_bytes(path.read_bytes())
    assert all((old[k] == new[k]).all() for k in old)
    # a grid that cannot be the model's input changes nothing
    wrong = tmp_path / "wrong.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.float32), np.eye(4)), wrong)
    before = path.read_bytes()
    assert main(["model", "set-space", str(path), "--like", str(wrong)]) == 2
    assert path.read_bytes() == before


def test_save_model_records_the_space_of_a_training_image(tmp_path):
    from napari_g3dvit.models.loading import ViTClassifier

    config = {"vit": {**TINY, "image_size": [8, 16], "image_patch_size": [4, 4], "pool": "cls"}}
    reference = tmp_path / "train.nii.gz"
    affine = np.array([[-2.0, 0, 0, 10], [0, 2, 0, -5], [0, 0, 2, 3], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(np.zeros((12, 8, 16), np.float32), affine), reference)
    g3d.save_model(ViTClassifier(make_vit(), None, config), tmp_path / "m.safetensors", config, space=reference)
    recorded = json.loads((tmp_path / "m.json").read_text())["input_space"]
    np.testing.assert_allclose(recorded["affine"], affine)
    assert recorded["shape"] == [12, 8, 16] and "template" not in recorded


# -- the widget and the command line -----------------------------------------------------------------------

def test_widget_resamples_a_2mm_layer_and_maps_it_back_onto_its_voxels(make_napari_viewer, scans, fmri_model):
    path, region = scans["las"]
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin="napari-g3dvit")  # the reader: RAS, scale 2.5 mm
    widget = open_widget(viewer)
    assert widget.load_model(sample_path("fmri_task.safetensors"))
    widget.volume.value = layer
    assert "resampled from 2.5 mm to the model's 3 mm grid" in widget.model_space.value
    widget.method.value, widget.hook_layer.value, widget.target.value = "hirescam", RECOMMENDED["layer"], "task"
    widget.timepoints.value = "all timepoints"
    widget.run()
    widget.wait()
    assert not widget.last_error, widget.last_error
    heat = widget.last_layer
    assert heat.data.shape == layer.data.shape  # (T, X, Y, Z) on the layer's own voxels
    np.testing.assert_allclose(heat.scale, layer.scale)
    np.testing.assert_allclose(heat.translate, layer.translate)
    assert "resampled from 2.5 mm to the model's 3 mm grid" in widget.result.value
    assert heat.metadata["g3dvit"]["space"]["resampled"]
    # the library's map of the file, brought to the reader's RAS orientation, is the widget's map
    library = g3d.explain(fmri_model, path, **RECOMMENDED).heatmap
    np.testing.assert_allclose(np.asarray(heat.data), library[:, ::-1], atol=1e-4)
    assert mass_in(np.asarray(heat.data)[:, ::-1], region) > 40 * region.mean()
    assert widget.result.native.styleSheet() == ""


def test_widget_shows_a_scan_outside_the_space_as_an_error(make_napari_viewer, tmp_path):
    import shutil

    from nibabel.testing import data_path

    native = shutil.copy(Path(data_path) / "example4d.nii.gz", tmp_path)  # a copy: the reader warns once per path
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(native), plugin="napari-g3dvit")
    widget = open_widget(viewer)
    assert widget.load_model(sample_path("fmri_task.safetensors"))
    widget.volume.value = layer
    assert "outside the model's space" in widget.model_space.value
    widget.run()
    widget.wait()
    assert "does not lie in the model's space" in widget.last_error and "fMRIPrep" in widget.last_error
    assert widget.result.value.startswith("error: ")
    assert "color: #ff5c5c" in widget.result.native.styleSheet()  # styled as an error, not grey


def test_batch_resamples_and_writes_maps_on_each_scans_grid(tmp_path, scans, fmri_model):
    path, region = scans["mni2mm"]
    out = tmp_path / "out"
    assert main(["batch", str(path), "--out", str(out), "--model", str(sample_path("fmri_task.safetensors")),
                 "--workers", "0", "--method", "hirescam", "--layer", RECOMMENDED["layer"], "--target", "1",
                 "--quiet"]) == 0
    stem = "sub-01_task-motor_space-MNI152NLin2009cAsym_desc-hirescamMni2mm"
    written = nib.load(out / f"{stem}_heatmap.nii.gz")
    assert written.shape == (*TWO_MM_SHAPE, 3)
    np.testing.assert_allclose(written.affine, TWO_MM)
    sidecar = json.loads((out / f"{stem}_heatmap.json").read_text())
    assert sidecar["space"]["resampled"] and sidecar["space"]["interpolation"] == "trilinear"
    assert sidecar["space"]["model"]["template"] == "MNI152NLin2009cAsym"
    heat = np.moveaxis(written.get_fdata(dtype=np.float32), -1, 0)
    np.testing.assert_allclose(heat, g3d.explain(fmri_model, path, **RECOMMENDED).heatmap, atol=1e-5)
    assert mass_in(heat, region) > 40 * region.mean()


def test_cli_refuses_a_device_this_machine_lacks(tmp_path, capsys, scans):
    import torch

    if torch.backends.mps.is_available():  # pragma: no cover - a Mac: mps exists
        pytest.skip("this machine has Apple's GPU")
    path, _ = scans["mni2mm"]
    code = main(["batch", str(path), "--out", str(tmp_path / "o"), "--model",
                 str(sample_path("fmri_task.safetensors")), "--device", "mps", "--quiet"])
    assert code == 2 and "device 'mps' was asked for" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

