"""The fMRI demo: the synthetic block-design run, its BIDS-style files, the shipped model and sample."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import napari_g3dvit as g3d
from napari_g3dvit.evaluation import fmri
from napari_g3dvit.timecourse import read_events
from napari_g3dvit.evaluation.metrics import model_predictor
from napari_g3dvit.sample_models import sample_path
from napari_g3dvit.volumes import read_nifti

SMALL = fmri.BlockDesign(n_timepoints=30)  # rest, one task block, rest: fast to generate


@pytest.fixture(scope="module")
def tissue():
    return fmri.fmri_anatomy()


@pytest.fixture(scope="module")
def run(tissue):
    return fmri.make_run(SMALL, seed=3, tissue=tissue)


def event_tuples(path) -> list[tuple[float, float, str]]:
    """(onset, duration, trial_type) rows, read as the Time course dock reads them."""
    return [(row["onset"], row["duration"], row["trial_type"]) for row in read_events(path)]


def _detrended(series: np.ndarray, order: int = 3) -> np.ndarray:
    """series [T, ...] minus its least-squares polynomial of ``order`` over time."""
    t = np.linspace(-1, 1, len(series))
    basis = np.stack([t**k for k in range(order + 1)], axis=1)
    flat = series.reshape(len(series), -1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(basis, flat, rcond=None)
    return (flat - basis @ coef).reshape(series.shape)


def _correlations(series: np.ndarray, design: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of series [T, V] with design [T]."""
    x = series - series.mean(0)
    y = design - design.mean()
    return (x * y[:, None]).sum(0) / np.sqrt((x**2).sum(0) * (y**2).sum() + 1e-12)


def test_hrf_peaks_at_5_s_and_undershoots_at_15_s():
    t = np.arange(0, 32, 0.1)
    h = fmri.double_gamma_hrf(t)
    assert t[np.argmax(h)] == pytest.approx(5.0, abs=0.2)
    assert t[np.argmin(h)] == pytest.approx(15.5, abs=1.0)
    assert h.min() < 0 and h[0] == 0


def test_block_design_events_and_labels():
    boxcar, regressor, events = fmri.block_design(fmri.BlockDesign())
    assert events == [(20.0, 20.0, "task"), (60.0, 20.0, "task")]
    assert boxcar.shape == regressor.shape == (50,)
    np.testing.assert_array_equal(np.flatnonzero(boxcar), np.r_[10:20, 30:40])
    assert regressor.max() == pytest.approx(1.0)
    # the haemodynamic response lags the stimulus: task labels start 3 TRs after each onset
    labels = regressor >= fmri.TASK_LEVEL
    assert np.flatnonzero(labels)[0] == 13 and not labels[:10].any()


def test_run_shapes_geometry_and_region(run, tissue):
    n = SMALL.n_timepoints
    assert run.data.shape == (n, 56, 72, 56) and run.data.dtype == np.float32
    assert run.tr == 2.0
    np.testing.assert_array_equal(run.affine, tissue.anatomy.affine)
    assert run.mask.dtype == bool and run.mask.shape == (56, 72, 56)
    assert run.boxcar.shape == run.regressor.shape == run.labels.shape == (n,)
    np.testing.assert_array_equal(run.labels, (run.regressor >= 0.5).astype(int))
    # a few cm^3 of grey matter in the brain, around the documented centre (left M1)
    assert 80 <= run.mask.sum() <= 250
    assert (run.mask <= tissue.anatomy.brain).all() and tissue.grey[run.mask].min() >= SMALL.grey_matter
    centre = run.affine[:3, :3] @ np.argwhere(run.mask).mean(0) + run.affine[:3, 3]
    assert np.linalg.norm(centre - np.array(fmri.LEFT_M1_HAND)) < 8
    assert centre[0] < 0  # left hemisphere
    # BOLD-like baseline inside the brain, nothing outside
    assert (run.data[:, ~tissue.anatomy.brain] == 0).all()
    assert 800 < run.data[:, tissue.anatomy.brain].mean() < 1200


def test_run_is_deterministic_per_seed(run, tissue):
    again = fmri.make_run(SMALL, seed=3, tissue=tissue)
    np.testing.assert_array_equal(again.data, run.data)
    other = fmri.make_run(SMALL, seed=4, tissue=tissue)
    assert np.abs(other.data - run.data).mean() > 1.0
    np.testing.assert_array_equal(other.mask, run.mask)  # the same region for every seed
    np.testing.assert_array_equal(other.regressor, run.regressor)


def test_activation_follows_the_design_inside_the_region_only(run, tissue):
    from scipy import ndimage

    control = tissue.anatomy.brain & ~ndimage.binary_dilation(run.mask, iterations=2)
    contrast = run.data[:, run.mask].mean(1) - run.data[:, control].mean(1)
    assert np.corrcoef(contrast, run.regressor)[0, 1] > 0.9
    # per voxel (drift removed as a GLM would): the region follows the design, the rest does not
    r = _correlations(_detrended(run.data[:, tissue.anatomy.brain]), _detrended(run.regressor))
    inside = run.mask[tissue.anatomy.brain]
    outside = ~ndimage.binary_dilation(run.mask, iterations=1)[tissue.anatomy.brain]
    assert np.median(r[inside]) > 0.4 and (r[inside] > 0.5).mean() > 0.4
    assert abs(r[outside].mean()) < 0.1 and (r[outside] > 0.5).mean() < 0.03
    # without a designed effect the region does not follow the design either
    quiet = fmri.make_run(dataclasses.replace(SMALL, signal_change=0.0), seed=3, tissue=tissue)
    contrast = quiet.data[:, run.mask].mean(1) - quiet.data[:, control].mean(1)
    assert abs(np.corrcoef(contrast, run.regressor)[0, 1]) < 0.5


def test_written_run_reads_back_with_tr_and_affine(run, tmp_path):
    import nibabel as nib

    nifti, events = fmri.write_run(run, tmp_path / "sub-01_task-motor_bold.nii.gz")
    assert events.name == "sub-01_task-motor_events.tsv"
    on_disk = nib.load(str(nifti))
    assert on_disk.shape == (56, 72, 56, SMALL.n_timepoints)
    assert on_disk.get_data_dtype() == np.int16 and on_disk.dataobj.slope == 4.0
    assert on_disk.header.get_xyzt_units() == ("mm", "sec")
    assert on_disk.header.get_zooms()[3] == pytest.approx(2.0)
    data, kwargs, kind = read_nifti(nifti)
    assert kind == "image" and data.shape == run.data.shape
    assert kwargs["scale"] == [2.0, 3.0, 3.0, 3.0]
    np.testing.assert_allclose(kwargs["translate"][1:], run.affine[:3, 3])
    np.testing.assert_allclose(kwargs["metadata"]["nifti"]["affine"], run.affine)
    assert kwargs["metadata"]["nifti"]["tr"] == 2.0
    assert np.abs(np.asarray(data) - run.data).max() <= 2.0 + 1e-3  # half the int16 step
    assert event_tuples(events) == run.events
    header, *rows = events.read_text().splitlines()
    assert header.split("\t") == ["onset", "duration", "trial_type"]
    assert rows == ["20\t20\ttask"]


def test_shipped_model_predicts_the_shipped_run():
    config = json.loads(sample_path("fmri_task.json").read_text())
    assert config["validation_accuracy"] >= 0.9
    assert config["preprocessing"]["normalize"] == "zscore" and config["class_names"] == ["rest", "task"]
    dataset = config["dataset"]
    fields = {f.name for f in dataclasses.fields(fmri.BlockDesign)}
    design = fmri.BlockDesign(**{k: tuple(v) if isinstance(v, list) else v for k, v in dataset.items() if k in fields})
    _, regressor, events = fmri.block_design(design)
    labels = (regressor >= 0.5).astype(int)

    data, kwargs, _ = read_nifti(sample_path("fmri_task_run.nii.gz"))
    assert kwargs["scale"][0] == design.tr == 2.0 and len(data) == design.n_timepoints
    assert event_tuples(sample_path("fmri_task_run_events.tsv")) == events
    model = g3d.load_model(sample_path("fmri_task.safetensors"))
    predicted = model_predictor(model)(np.asarray(data, dtype=np.float32)).argmax(1)
    assert (predicted == labels).mean() >= 0.9
    # the shipped files are the run of the recorded seed, with its region
    regenerated = fmri.make_run(design, seed=dataset["validation_seed"])
    assert np.abs(np.asarray(data) - regenerated.data).max() <= 2.0 + 1e-3
    mask, _, kind = read_nifti(sample_path("fmri_task_activation_mask.nii.gz"))
    assert kind == "labels"
    np.testing.assert_array_equal(mask > 0, regenerated.mask)


def test_fmri_sample_opens_through_napari(make_napari_viewer):
    viewer = make_napari_viewer()
    layers = viewer.open_sample("napari-g3dvit", "fmri_task")
    images = [layer for layer in layers if type(layer).__name__ == "Image"]
    labels = [layer for layer in layers if type(layer).__name__ == "Labels"]
    assert len(images) == 1 and len(labels) == 1
    image = images[0]
    assert image.data.ndim == 4 and image.scale[0] == 2.0
    assert image.metadata["g3dvit_model"].endswith("fmri_task.safetensors")
    assert labels[0].name == "activation (ground truth)" and labels[0].data.ndim == 3
    np.testing.assert_allclose(labels[0].scale, image.scale[1:])
    np.testing.assert_allclose(labels[0].translate, image.translate[1:])
