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
    assert g3d.METHODS == ("g3dvit", "gradcam", "layercam", "gradcam-elementwise", "hirescam", "attention-rollout",
                           "grad-rollout", "legrad", "cp-lrp", "occlusion", "integrated-gradients", "gradmask")
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


def test_loading_a_model_after_napari_opened_its_canvas(tmp_path):
    """In napari the OpenGL canvas exists before the plugin first imports vit-pytorch (and,
    through torchvision, triton); under Mesa that order used to crash the interpreter."""
    pytest.importorskip("napari")
    code = f"""
import napari, torch
viewer = napari.Viewer(show=True)
import napari_g3dvit as g3d
from napari_g3dvit.models.vit_pytorch3d import import_vit3d
vit = import_vit3d().ViT(image_size=8, image_patch_size=4, frames=8, frame_patch_size=4, num_classes=2,
                         dim=16, depth=1, heads=2, mlp_dim=32, channels=1, dim_head=8)
exp = g3d.explain(vit, torch.randn(8, 8, 8), method="gradcam")
viewer.close()
print("ok", exp.heatmap.shape)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "ok (8, 8, 8)" in out.stdout


def test_readme_methods_table_is_the_registrys():
    from pathlib import Path

    from napari_g3dvit.registry import method_table, readme_table

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    assert method_table() in readme
    assert readme_table(readme) == readme  # nothing else between the markers
