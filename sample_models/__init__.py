"""Small trained sample models and their volumes, installed as ``napari_g3dvit.sample_models``.

Each model ``NAME`` has ``NAME.safetensors`` (weights, config inside), ``NAME.json`` (config
with its dataset, training settings and validation accuracy) and ``NAME_example.nii.gz`` (a
held-out volume) with ``NAME_example_mask.nii.gz`` (its ground truth). The brain demo also has
the anatomy it was trained on: ``mni152_t1_3mm.nii.gz``, ``mni152_brain_mask_3mm.nii.gz`` and
``mni152_ventricles_3mm.nii.gz``. The fMRI task model ``fmri_task`` has a held-out 4D run
instead of an example volume: ``fmri_task_run.nii.gz`` (x, y, z, t; TR 2 s in the header),
``fmri_task_run_events.tsv`` (its BIDS events: onset, duration, trial_type) and
``fmri_task_activation_mask.nii.gz`` (the region that responds to the task). Re-make any model
with ``g3dvit train NAME``.

The brain files derive from the MNI ICBM 2009a template: ``NOTICE_MNI152.txt`` carries its
copyright and permission notice and how to cite it, and ships with them.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

#: The shipped models, in the order the napari sample menu lists them.
SAMPLE_MODELS = ("brain_ventricles", "cube_position", "cube_value", "fmri_task")


def sample_path(filename: str) -> Path:
    """Path of a file shipped in this folder; FileNotFoundError names what exists."""
    path = Path(str(files(__name__).joinpath(filename)))
    if not path.is_file():
        present = sorted(p.name for p in path.parent.iterdir() if not p.name.startswith("_"))
        raise FileNotFoundError(f"no sample file {filename!r}; shipped: {', '.join(present)}")
    return path
