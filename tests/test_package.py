"""The package as users meet it: import cost, manifest, command line."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import napari_g3dvit as g3d


def test_import_does_not_load_torch():
    code = "import sys, napari_g3dvit as g; print(g.METHODS); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[1] == "False"


def test_public_api_names():
    assert g3d.METHODS == ("g3dvit", "gradcam", "layercam", "gradcam-elementwise", "hirescam")
    for name in ("explain", "token_layers", "Explanation", "load_model", "save_model"):
        assert callable(getattr(g3d, name))
    assert issubclass(g3d.VolumeError, ValueError)


def test_manifest_is_valid():
    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_distribution("napari-g3dvit")
    assert manifest.name == "napari-g3dvit"


def test_demo_command_writes_nifti(tmp_path):
    nib = pytest.importorskip("nibabel")
    from napari_g3dvit.cli import main

    assert main(["demo", "--out", str(tmp_path)]) == 0
    volume = nib.load(tmp_path / "volume.nii.gz")
    heat = nib.load(tmp_path / "heatmap.nii.gz")
    assert volume.shape == heat.shape == (32, 32, 32)
    np.testing.assert_array_equal(volume.affine, heat.affine)
    data = np.asarray(heat.dataobj)
    assert 0 < data.max() <= 1 and data.min() >= 0
