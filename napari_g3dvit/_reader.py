"""npe2 reader: NIfTI (.nii, .nii.gz), 3D or 4D, in the scanner's world coordinates."""

from __future__ import annotations

from .display import watch_current_viewer
from .volumes import is_nifti_path, read_nifti


def napari_get_reader(path):
    """The reader for a NIfTI path (or a list of them), else None."""
    paths = path if isinstance(path, list) else [path]
    if not paths or not all(is_nifti_path(p) for p in paths):
        return None
    return read_nifti_layers


def read_nifti_layers(path):
    paths = path if isinstance(path, list) else [path]
    layers = [read_nifti(p) for p in paths]
    watch_current_viewer()  # neuroimaging display conventions once the volume is in the viewer
    return layers
