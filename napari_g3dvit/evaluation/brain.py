"""The brain demo: real anatomy (nilearn's MNI152 T1), two classes, ventricles as ground truth.

Class 1 has enlarged lateral ventricles (a known marker of ageing): the ventricle mask is
dilated by 1 or 2 voxels (3-6 mm) within the brain and those voxels take the ventricles' dark
T1 intensity. Class 0 keeps the template's ventricles. Every sample gets its own intensity
scale and noise. A model that learns the task should look at the ventricles, inside the brain.

The ventricle mask is derived from the MNI152 grey- and white-matter probability templates:
voxels inside the brain with little of either, within a central box, in connected pieces of
at least 2 cm^3 (the lateral ventricles; the sulci are thin and break into small pieces).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Voxel size of the demo grid in mm, and the model's input size on it (frames, height, width).
VOXEL_MM = 3
INPUT_SHAPE = (56, 72, 56)


@dataclass
class Anatomy:
    """t1 float32 (D, H, W) scaled to [0, 1]; masks bool; affine 4x4 to MNI mm."""

    t1: np.ndarray
    brain: np.ndarray
    ventricles: np.ndarray
    affine: np.ndarray


def _block_mean(data: np.ndarray, factor: int) -> np.ndarray:
    shape = tuple(s // factor for s in data.shape)
    data = data[: shape[0] * factor, : shape[1] * factor, : shape[2] * factor]
    return data.reshape(shape[0], factor, shape[1], factor, shape[2], factor).mean(axis=(1, 3, 5))


def mni_anatomy() -> Anatomy:
    """The MNI152 (2009) T1 at 3 mm, cropped around the brain to ``INPUT_SHAPE``."""
    from nilearn import datasets
    from scipy import ndimage

    t1_img = datasets.load_mni152_template(resolution=1)
    t1 = np.asarray(t1_img.dataobj, dtype=np.float32)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).dataobj, dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0

    csf = brain & (gm + wm < 0.2)
    box = np.zeros_like(csf)
    sx, sy, sz = csf.shape
    box[int(sx * 0.3) : int(sx * 0.7), int(sy * 0.3) : int(sy * 0.75), int(sz * 0.35) : int(sz * 0.75)] = True
    labels, count = ndimage.label(csf & box)
    sizes = ndimage.sum(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    ventricles = np.isin(labels, 1 + np.flatnonzero(sizes >= 2000))

    f = VOXEL_MM
    t1_3 = _block_mean(t1, f)
    brain_3 = _block_mean(brain.astype(np.float32), f) > 0.5
    vent_3 = _block_mean(ventricles.astype(np.float32), f) > 0.5
    affine = t1_img.affine @ np.array([[f, 0, 0, (f - 1) / 2], [0, f, 0, (f - 1) / 2],
                                       [0, 0, f, (f - 1) / 2], [0, 0, 0, 1]], dtype=np.float64)
    # crop (or pad) around the brain's bounding box to the model's input size
    lo = np.array([np.flatnonzero(brain_3.any(axis=tuple(a for a in range(3) if a != ax))).min() for ax in range(3)])
    hi = np.array([np.flatnonzero(brain_3.any(axis=tuple(a for a in range(3) if a != ax))).max() for ax in range(3)])
    centre = (lo + hi + 1) // 2
    start = centre - np.array(INPUT_SHAPE) // 2

    def window(a: np.ndarray) -> np.ndarray:
        out = np.zeros(INPUT_SHAPE, dtype=a.dtype)
        src = [slice(max(s, 0), min(s + n, dim)) for s, n, dim in zip(start, INPUT_SHAPE, a.shape)]
        dst = [slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start)]
        out[tuple(dst)] = a[tuple(src)]
        return out

    t1_c = window(t1_3)
    t1_c = (t1_c - t1_c.min()) / (t1_c.max() - t1_c.min())
    shift = np.eye(4)
    shift[:3, 3] = start
    return Anatomy(t1=t1_c.astype(np.float32), brain=window(brain_3), ventricles=window(vent_3) & window(brain_3),
                   affine=affine @ shift)


@dataclass
class BrainSamples:
    """volumes [n, D, H, W] float32, labels [n], ventricles [n, D, H, W] bool (per sample)."""

    volumes: np.ndarray
    labels: np.ndarray
    ventricles: np.ndarray


def make_brains(anatomy: Anatomy, n: int, seed: int = 0, noise: float = 0.03) -> BrainSamples:
    """``n`` samples, half of each class, deterministic for a seed."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 2)
    dark = float(anatomy.t1[anatomy.ventricles].mean())
    dilated = {r: ndimage.binary_dilation(anatomy.ventricles, iterations=r) & anatomy.brain for r in (1, 2)}
    volumes = np.empty((n, *anatomy.t1.shape), dtype=np.float32)
    masks = np.empty((n, *anatomy.t1.shape), dtype=bool)
    for i, label in enumerate(labels):
        volume = anatomy.t1.copy()
        mask = anatomy.ventricles
        if label == 1:
            mask = dilated[int(rng.integers(1, 3))]
            volume[mask] = dark
        volume = volume * rng.uniform(0.9, 1.1) + rng.normal(0, noise, size=volume.shape).astype(np.float32)
        volumes[i], masks[i] = volume, mask
    return BrainSamples(volumes=volumes, labels=labels.astype(np.int64), ventricles=masks)
