"""The built wheel carries what the napari hub needs: manifest, sample models, classifier."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
                   check=True, capture_output=True, text=True)
    (path,) = out.glob("napari_g3dvit-*.whl")
    return path


def test_wheel_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "napari_g3dvit/napari.yaml" in names
    shipped = {n.split("/")[-1] for n in names if n.startswith("napari_g3dvit/sample_models/")}
    for model in ("brain_ventricles", "cube_position", "cube_value"):
        assert {f"{model}.safetensors", f"{model}.json", f"{model}_example.nii.gz"} <= shipped, model
    assert {"mni152_t1_3mm.nii.gz", "mni152_brain_mask_3mm.nii.gz", "mni152_ventricles_3mm.nii.gz"} <= shipped
    notice = zipfile.ZipFile(wheel).read("napari_g3dvit/sample_models/NOTICE_MNI152.txt").decode()
    assert "McConnell Brain Imaging Centre" in notice and "Fonov" in notice  # the data's notice travels with it
    assert not any("/tests/" in n or n.startswith("tests/") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "napari_g3dvit:napari.yaml" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_wheel_metadata(wheel):
    meta_name = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith("METADATA"))
    meta = Parser().parsestr(zipfile.ZipFile(wheel).read(meta_name).decode())
    assert "Framework :: napari" in meta.get_all("Classifier")
    assert meta["Name"] == "napari-g3dvit" and "napari-g3dvit" in meta.get_payload()
    requires = " ".join(meta.get_all("Requires-Dist"))
    for dep in ("napari", "magicgui", "torch", "vit-pytorch", "qtpy", "numpy", "nibabel"):
        assert dep in requires
    urls = " ".join(meta.get_all("Project-URL"))
    for kind in ("Source Code", "Bug Tracker", "Documentation", "User Support"):
        assert kind in urls
    assert meta["Summary"] and meta["Version"]
    core = [r for r in meta.get_all("Requires-Dist") if "extra ==" not in r]
    assert not any(q in r for r in core for q in ("PyQt", "PySide", "pyqt", "pyside"))


def test_version_is_the_installed_metadatas():
    import re
    from importlib.metadata import version

    import napari_g3dvit

    assert napari_g3dvit.__version__ == version("napari-g3dvit")
    cff = (ROOT / "CITATION.cff").read_text()
    assert re.search(r"^version: (.+)$", cff, re.M).group(1).strip() == version("napari-g3dvit")
