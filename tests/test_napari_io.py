"""Reader and writer through a real napari viewer, on nibabel's real fMRI run."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel.testing import data_path

from napari_g3dvit._reader import napari_get_reader
from napari_g3dvit.volumes import NiftiError, read_nifti

EXAMPLE4D = Path(data_path) / "example4d.nii.gz"


def test_reader_on_example4d(make_napari_viewer, caplog):
    viewer = make_napari_viewer()
    with caplog.at_level("WARNING", logger="napari_g3dvit"):
        layers = viewer.open(str(EXAMPLE4D), plugin="napari-g3dvit")
    layer = layers[0]
    assert layer.data.shape == (2, 128, 96, 24)  # time first, then canonical x, y, z
    np.testing.assert_allclose(layer.scale, [2.0, 2, 2, 2.2], atol=1e-3)  # time in seconds (TR 2 s)
    facts = layer.metadata["nifti"]
    np.testing.assert_allclose(facts["affine"], nib.load(EXAMPLE4D).affine)
    assert facts["orientation"] == "LAS" and facts["tr"] == 2.0 and facts["oblique_degrees"] > 5
    source = np.asanyarray(nib.load(EXAMPLE4D).dataobj)
    np.testing.assert_array_equal(layer.data[1], source[::-1, :, :, 1])  # L -> R flips x
    assert "oblique" in caplog.text


def test_integer_atlas_opens_as_labels(tmp_path, make_napari_viewer):
    atlas = np.zeros((10, 12, 8), dtype=np.int16)
    atlas[2:5, 3:6, 1:4] = 3
    atlas[6:9, 6:10, 4:7] = 7
    nib.save(nib.Nifti1Image(atlas, np.diag([-2.0, 2.0, 2.0, 1.0])), tmp_path / "atlas.nii.gz")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "atlas.nii.gz"), plugin="napari-g3dvit")
    assert type(layer).__name__ == "Labels"
    np.testing.assert_array_equal(np.unique(layer.data), [0, 3, 7])


@pytest.mark.parametrize("source", ["example4d", "oblique3d", "las_labels"])
def test_read_write_round_trip(tmp_path, make_napari_viewer, source):
    if source == "example4d":
        path = EXAMPLE4D
    else:
        rng = np.random.default_rng(0)
        angle = np.radians(12)
        affine = np.array([[-1.5, 0, 0, 90], [0, 1.5 * np.cos(angle), -2 * np.sin(angle), -100],
                           [0, 1.5 * np.sin(angle), 2 * np.cos(angle), -60], [0, 0, 0, 1]])
        data = (rng.random((9, 11, 7)) * 100).astype(np.float32) if source == "oblique3d" \
            else rng.integers(0, 4, size=(9, 11, 7)).astype(np.uint8)
        path = tmp_path / f"{source}.nii.gz"
        nib.save(nib.Nifti1Image(data, affine), path)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="napari-g3dvit")
    out = tmp_path / "written.nii.gz"
    written = layer.save(str(out), plugin="napari-g3dvit")
    assert written == [str(out)]
    before, after = nib.load(path), nib.load(out)
    np.testing.assert_array_equal(np.asanyarray(after.dataobj), np.asanyarray(before.dataobj))
    np.testing.assert_allclose(after.affine, before.affine, atol=1e-6)


def test_reader_refuses_what_it_cannot_read(tmp_path):
    assert napari_get_reader("volume.tif") is None
    assert napari_get_reader(str(EXAMPLE4D)) is not None
    (tmp_path / "broken.nii.gz").write_bytes(b"\x1f\x8b this is not gzip")
    with pytest.raises(NiftiError, match="broken.nii.gz is not a readable NIfTI"):
        read_nifti(tmp_path / "broken.nii.gz")


def test_reader_translate_is_the_canonical_origin():
    data, kwargs, kind = read_nifti(EXAMPLE4D)
    canonical = np.asarray(kwargs["metadata"]["nifti"]["canonical_affine"])
    np.testing.assert_allclose(kwargs["translate"][1:], canonical[:3, 3])
    assert kind == "image" and kwargs["translate"][0] == 0


def test_8bit_mri_opens_as_image_and_a_named_atlas_as_labels(tmp_path):
    rng = np.random.default_rng(3)
    mri = rng.integers(0, 256, size=(12, 10, 8)).astype(np.uint8)
    nib.save(nib.Nifti1Image(mri, np.eye(4)), tmp_path / "t1_8bit.nii.gz")
    assert read_nifti(tmp_path / "t1_8bit.nii.gz")[2] == "image"
    atlas = rng.integers(0, 120, size=(12, 10, 8)).astype(np.int16)
    nib.save(nib.Nifti1Image(atlas, np.eye(4)), tmp_path / "AAL_atlas.nii.gz")
    assert read_nifti(tmp_path / "AAL_atlas.nii.gz")[2] == "labels"
