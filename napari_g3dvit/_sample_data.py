"""npe2 sample data: each shipped sample volume with its model (and masks as Labels)."""

from __future__ import annotations

import numpy as np

from .display import watch_current_viewer
from .runner import MODEL_KEY
from .sample_models import sample_path
from .volumes import read_nifti


def _labels(filename: str, name: str, visible: bool = True):
    data, kwargs, _ = read_nifti(sample_path(filename), kind="labels")
    kwargs.update(name=name, opacity=0.5, visible=visible)
    return data, kwargs, "labels"


def _volume(model: str, name: str, filename: str | None = None):
    """A sample volume (``NAME_example.nii.gz`` unless named) as an image layer offering its model."""
    watch_current_viewer()  # neuroimaging display conventions once the volume is in the viewer
    data, kwargs, _ = read_nifti(sample_path(filename or f"{model}_example.nii.gz"), kind="image")
    kwargs["name"] = name
    kwargs["metadata"][MODEL_KEY] = str(sample_path(f"{model}.safetensors"))
    return data, kwargs, "image"


def brain_ventricles():
    """An MNI152 T1 (3 mm) with enlarged ventricles, its brain mask and ventricle mask."""
    return [
        _volume("brain_ventricles", "brain (enlarged ventricles)"),
        # hidden at first: in 3D the whole-brain mask would cover the anatomy and the heatmap
        _labels("mni152_brain_mask_3mm.nii.gz", "brain mask", visible=False),
        _labels("brain_ventricles_example_mask.nii.gz", "ventricles"),
    ]


def cube_position():
    """A 40^3 volume with an 8^3 cube at one of 125 positions, and the cube as Labels."""
    return [_volume("cube_position", "cube (position task)"),
            _labels("cube_position_example_mask.nii.gz", "cube")]


def cube_value():
    """A 40^3 volume with an 8^3 cube of +1 or -1, and the cube as Labels."""
    return [_volume("cube_value", "cube (value task)"), _labels("cube_value_example_mask.nii.gz", "cube")]


def fmri_task():
    """A 4D block-design task run (MNI152, 3 mm, TR 2 s; time on axis 0 in seconds) and its
    activation region (left primary motor cortex) as Labels."""
    data, kwargs, kind = _volume("fmri_task", "fMRI task run", "fmri_task_run.nii.gz")
    kwargs["opacity"] = 0.35  # a bright BOLD volume would outshine its heatmap in 3D
    image = (np.asarray(data, dtype=np.float32), kwargs, kind)  # the scaled int16 reads as float64
    return [image, _labels("fmri_task_activation_mask.nii.gz", "activation (ground truth)")]
