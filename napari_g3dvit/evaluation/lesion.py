"""A lesion-detection task on real anatomy: small, known evidence at a random place in the brain.

Class 1 volumes hold one lesion-like blob: an ellipsoid of 4-8 mm radius (1.3-2.7 voxels at
3 mm), placed at random inside the white matter of the MNI152 T1 (3 mm grid of the brain demo),
whose voxels are brighter than the white matter around them (the look of a white-matter lesion
on FLAIR, or of an enhancing one after contrast), with a soft edge of one voxel. Class 0 volumes have none. Every sample gets its own intensity scale
and noise, as the brain demo does. The ground truth is the blob itself, a few dozen voxels: a
map cannot score well by pointing at the ventricles or the brain's outline, which is what
makes this task a test of localisation (the cube and ventricle tasks let a model use context).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .brain import Anatomy


@dataclass(frozen=True)
class LesionTask:
    """Settings of the lesion dataset (stored with trained models).

    radius_mm: the blob's semi-axes are drawn from this range, each on its own.
    contrast:  the blob's intensity is the white matter's times ``1 + contrast``.
    """

    radius_mm: tuple[float, float] = (4.0, 8.0)
    contrast: float = 0.4
    noise: float = 0.03
    voxel_mm: float = 3.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class LesionSamples:
    """volumes [n, D, H, W] float32, labels [n] int64, masks [n, D, H, W] bool (the lesion; empty for class 0)."""

    volumes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray


def white_matter(anatomy: Anatomy) -> np.ndarray:
    """Brain voxels brighter than the 60th percentile of the brain's T1: the white matter at 3 mm,
    eroded by one voxel so a blob centred there stays inside the brain. [D, H, W] bool."""
    from scipy import ndimage

    cut = np.percentile(anatomy.t1[anatomy.brain], 60)
    wm = anatomy.brain & (anatomy.t1 >= cut)
    return ndimage.binary_erosion(wm, iterations=1)


def make_lesions(anatomy: Anatomy, task: LesionTask, n: int, seed: int = 0) -> LesionSamples:
    """``n`` samples, half of each class, deterministic for a seed."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 2)
    centres = np.argwhere(white_matter(anatomy))
    wm_level = float(np.median(anatomy.t1[white_matter(anatomy)]))
    grid = np.stack(np.meshgrid(*(np.arange(s) for s in anatomy.t1.shape), indexing="ij"), axis=-1)
    volumes = np.empty((n, *anatomy.t1.shape), dtype=np.float32)
    masks = np.zeros((n, *anatomy.t1.shape), dtype=bool)
    for i, label in enumerate(labels):
        volume = anatomy.t1.copy()
        if label == 1:
            centre = centres[rng.integers(len(centres))] + rng.uniform(-0.5, 0.5, size=3)
            radii = rng.uniform(*task.radius_mm, size=3) / task.voxel_mm
            distance = np.sqrt((((grid - centre) / radii) ** 2).sum(axis=-1))  # 1 on the ellipsoid's surface
            # weight 1 inside, falling linearly to 0 over one voxel outside; only in the brain
            weight = np.clip(1.0 - (distance - 1.0) * radii.min(), 0.0, 1.0) * anatomy.brain
            lesion = wm_level * (1.0 + task.contrast)
            volume = volume * (1 - weight) + lesion * weight
            masks[i] = (distance <= 1.0) & anatomy.brain
        volume = volume * rng.uniform(0.9, 1.1) + rng.normal(0, task.noise, size=volume.shape).astype(np.float32)
        volumes[i] = volume
    return LesionSamples(volumes=volumes, labels=labels.astype(np.int64), masks=masks)
