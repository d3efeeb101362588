"""The fMRI demo: a synthetic block-design task run on the MNI152 anatomy at 3 mm.

A subject taps the fingers of the right hand in blocks (20 s task, 20 s rest, TR 2 s); the left
primary motor cortex (the "hand knob" of the precentral gyrus, centre MNI (-38, -22, 56) mm)
responds. Each timepoint is one 3D volume (56, 72, 56) on the grid of ``brain.mni_anatomy()``.

What a run holds, for a seed:

- Baseline: an EPI-like contrast from the MNI152 tissue templates (white matter 800, grey matter
  1000, CSF 1200, mixed by the tissue probabilities), a smooth receive-coil bias field and a
  session gain; 0 outside the brain mask.
- Activation: the boxcar of the task blocks convolved with a canonical double-gamma HRF (peak
  5 s, undershoot 15 s, ratio 1/6) and normalised to peak 1, times ``signal_change`` (3 %) of
  the baseline, in the activation region only: the brain voxels within ``radius_mm`` (14 mm) of
  the centre whose grey-matter probability is at least ``grey_matter`` (0.4): 210 voxels,
  5.7 cm^3, the same for every seed.
- Slow drift: a global multiplicative cubic (Legendre) polynomial over the run, coefficients up
  to ``drift`` (0.5 %).
- Physiological-like noise: a respiratory (0.25-0.35 Hz) and a cardiac (1.0-1.2 Hz) sinusoid,
  aliased by the TR, 0.4 % of the baseline in tissue and three times that in CSF; and AR(1)
  temporal noise per voxel (coefficient 0.3, 1 % of the baseline: a temporal SNR near 100).
- Motion: rigid translations per timepoint, a random walk of 0.1 mm steps clipped to 0.9 mm
  (under a third of a voxel), applied with linear interpolation before the thermal noise.

Labels per timepoint: 1 ("task") where the HRF-convolved regressor is at least 0.5, else 0
("rest"); they follow the haemodynamic response, which lags the stimulus by a few seconds.
Everything is deterministic for a seed; the design and the region do not depend on it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from .brain import Anatomy, VOXEL_MM, _block_mean, mni_anatomy

#: Left primary motor cortex, hand area (precentral "hand knob"), MNI mm.
LEFT_M1_HAND = (-38.0, -22.0, 56.0)
#: Tissue intensities of the EPI-like baseline (T2*-weighted: CSF brightest, white matter darkest).
TISSUE_INTENSITY = {"white": 800.0, "grey": 1000.0, "csf": 1200.0}
#: The regressor level at and above which a timepoint is labelled "task".
TASK_LEVEL = 0.5


@dataclass(frozen=True)
class BlockDesign:
    """Settings of one synthetic task run (stored with the trained model)."""

    tr: float = 2.0
    task_s: float = 20.0
    rest_s: float = 20.0
    n_timepoints: int = 50
    signal_change: float = 0.03  # fraction of the baseline at the regressor's peak
    centre_mm: tuple[float, float, float] = LEFT_M1_HAND
    radius_mm: float = 14.0
    grey_matter: float = 0.4  # minimum grey-matter probability of a region voxel
    noise: float = 0.01  # AR(1) noise, standard deviation as a fraction of the baseline
    ar: float = 0.3  # AR(1) coefficient per TR
    physio: float = 0.004  # sinusoid amplitude in tissue (3x in CSF), fraction of the baseline
    drift: float = 0.005  # largest drift coefficient, fraction of the baseline
    motion_mm: float = 0.1  # random-walk step of the translations (each axis), mm
    max_motion_mm: float = 0.9  # translations are clipped to this (under a third of a voxel)

    def __post_init__(self):
        if self.tr <= 0 or self.task_s <= 0 or self.rest_s <= 0:
            raise ValueError("tr, task_s and rest_s are durations in seconds, above 0")
        if self.n_timepoints < 2:
            raise ValueError("a run needs at least 2 timepoints")
        if self.n_timepoints * self.tr <= self.rest_s:
            raise ValueError(f"a run of {self.n_timepoints} x {self.tr:g} s ends before the first task block "
                             f"(at {self.rest_s:g} s)")
        if not 0 <= self.ar < 1:
            raise ValueError("the AR(1) coefficient must be in [0, 1)")

    @property
    def duration_s(self) -> float:
        return self.n_timepoints * self.tr

    def as_dict(self) -> dict:
        out = asdict(self)
        out["centre_mm"] = list(self.centre_mm)
        return out


@dataclass
class TaskRun:
    """One run: data float32 (T, D, H, W), affine (4, 4) to MNI mm, tr in seconds, mask bool
    (D, H, W) of the activation, boxcar / regressor (T,) float, labels (T,) int64 (0 rest,
    1 task), events [(onset s, duration s, trial_type)], brain bool (D, H, W), seed."""

    data: np.ndarray
    affine: np.ndarray
    tr: float
    mask: np.ndarray
    boxcar: np.ndarray
    regressor: np.ndarray
    labels: np.ndarray
    events: list[tuple[float, float, str]]
    brain: np.ndarray = field(repr=False)
    seed: int = 0


def double_gamma_hrf(t: np.ndarray) -> np.ndarray:
    """Canonical HRF at times ``t`` (s): gamma(6, 1) minus gamma(16, 1) / 6; peak 5 s, undershoot 15 s."""
    t = np.asarray(t, dtype=np.float64)

    def gamma_pdf(shape: float) -> np.ndarray:
        out = np.zeros_like(t)
        pos = t > 0
        out[pos] = np.exp((shape - 1) * np.log(t[pos]) - t[pos] - math.lgamma(shape))
        return out

    return gamma_pdf(6.0) - gamma_pdf(16.0) / 6.0


def block_design(design: BlockDesign) -> tuple[np.ndarray, np.ndarray, list[tuple[float, float, str]]]:
    """(boxcar (T,), regressor (T,) peak 1, events): rest first, then task and rest alternate.

    Each volume is taken at the start of its TR (time k * TR). The regressor is the boxcar
    convolved with ``double_gamma_hrf`` on a 0.1 s grid, divided by that response's peak and
    sampled at those times.
    """
    period = design.task_s + design.rest_s
    events = []
    onset = design.rest_s
    while onset < design.duration_s:
        events.append((round(onset, 6), round(min(design.task_s, design.duration_s - onset), 6), "task"))
        onset += period
    dt = 0.1
    fine_t = np.arange(0.0, design.duration_s, dt)
    fine = np.zeros_like(fine_t)
    for start, duration, _ in events:
        fine[(fine_t >= start - 1e-9) & (fine_t < start + duration - 1e-9)] = 1.0
    kernel = double_gamma_hrf(np.arange(0.0, 32.0, dt))
    response = np.convolve(fine, kernel)[: len(fine)]
    idx = np.round(np.arange(design.n_timepoints) * design.tr / dt).astype(int)
    return fine[idx], response[idx] / response.max(), events


@dataclass
class FmriAnatomy:
    """anatomy (``brain.Anatomy``); grey, white, csf float32 (D, H, W) tissue fractions."""

    anatomy: Anatomy
    grey: np.ndarray
    white: np.ndarray
    csf: np.ndarray


@lru_cache(maxsize=1)
def fmri_anatomy() -> FmriAnatomy:
    """``mni_anatomy()`` with the MNI152 grey/white-matter templates on the same grid (cached)."""
    from nilearn import datasets

    anatomy = mni_anatomy()
    t1_img = datasets.load_mni152_template(resolution=1)
    f = VOXEL_MM
    block = t1_img.affine @ np.array([[f, 0, 0, (f - 1) / 2], [0, f, 0, (f - 1) / 2],
                                      [0, 0, f, (f - 1) / 2], [0, 0, 0, 1]], dtype=np.float64)
    start = np.round((np.linalg.inv(block) @ anatomy.affine)[:3, 3]).astype(int)  # the crop's corner
    shape = anatomy.t1.shape

    def on_grid(img) -> np.ndarray:
        data = _block_mean(np.asarray(img.dataobj, dtype=np.float32), f)
        out = np.zeros(shape, dtype=np.float32)
        src = [slice(max(s, 0), min(s + n, dim)) for s, n, dim in zip(start, shape, data.shape)]
        dst = [slice(sl.start - s, sl.stop - s) for sl, s in zip(src, start)]
        out[tuple(dst)] = data[tuple(src)]
        return out

    grey = on_grid(datasets.load_mni152_gm_template(resolution=1)) * anatomy.brain
    white = on_grid(datasets.load_mni152_wm_template(resolution=1)) * anatomy.brain
    total = np.maximum(grey + white, 1.0)
    grey, white = grey / total, white / total
    csf = (1.0 - grey - white) * anatomy.brain
    return FmriAnatomy(anatomy, grey.astype(np.float32), white.astype(np.float32), csf.astype(np.float32))


def activation_region(tissue: FmriAnatomy, design: BlockDesign) -> np.ndarray:
    """bool (D, H, W): brain voxels within ``radius_mm`` of the centre, mostly grey matter."""
    affine = tissue.anatomy.affine
    ijk = np.indices(tissue.grey.shape).reshape(3, -1)
    xyz = affine[:3, :3] @ ijk + affine[:3, 3:4]
    near = np.linalg.norm(xyz - np.asarray(design.centre_mm)[:, None], axis=0) <= design.radius_mm
    near = near.reshape(tissue.grey.shape)
    return near & tissue.anatomy.brain & (tissue.grey >= design.grey_matter)


def make_run(design: BlockDesign = BlockDesign(), seed: int = 0, tissue: FmriAnatomy | None = None) -> TaskRun:
    """One synthetic task run, deterministic for ``seed`` (see the module docstring)."""
    from scipy import ndimage

    tissue = tissue or fmri_anatomy()
    anatomy = tissue.anatomy
    rng = np.random.default_rng(seed)
    brain = anatomy.brain
    shape, n = brain.shape, design.n_timepoints
    boxcar, regressor, events = block_design(design)
    mask = activation_region(tissue, design)

    # baseline: tissue contrast, a little blur, a smooth bias field and a session gain (the
    # gain is a global scale that a per-volume z-score removes)
    tissue_mix = (TISSUE_INTENSITY["grey"] * tissue.grey + TISSUE_INTENSITY["white"] * tissue.white
                  + TISSUE_INTENSITY["csf"] * tissue.csf)
    baseline = ndimage.gaussian_filter(tissue_mix, 0.5) * brain
    coords = [np.linspace(-1, 1, s, dtype=np.float32) for s in shape]
    grid = np.meshgrid(*coords, indexing="ij")
    bias = 1.0 - 0.05 * (grid[0] ** 2 + grid[1] ** 2)  # a head coil: brighter at the centre
    baseline = (baseline * bias * rng.uniform(0.9, 1.1)).astype(np.float32)

    # slow drift: one global cubic over the run (Legendre polynomials 1-3)
    u = np.linspace(-1, 1, n)
    legendre = np.stack([u, 0.5 * (3 * u**2 - 1), 0.5 * (5 * u**3 - 3 * u)])
    drift = 1.0 + rng.uniform(-design.drift, design.drift, size=3) @ legendre

    # physiological-like fluctuations: respiration and heartbeat, aliased by the TR
    times = np.arange(n) * design.tr
    resp_hz, card_hz = rng.uniform(0.25, 0.35), rng.uniform(1.0, 1.2)
    physio_t = (np.sin(2 * np.pi * resp_hz * times + rng.uniform(0, 2 * np.pi))
                + 0.5 * np.sin(2 * np.pi * card_hz * times + rng.uniform(0, 2 * np.pi)))
    physio_map = design.physio * baseline * (tissue.grey + tissue.white + 3.0 * tissue.csf)

    # motion: a clipped random walk of translations (voxels)
    steps = rng.normal(0.0, design.motion_mm / VOXEL_MM, size=(n, 3))
    motion = np.clip(np.cumsum(steps, axis=0), -design.max_motion_mm / VOXEL_MM, design.max_motion_mm / VOXEL_MM)

    effect = (design.signal_change * baseline * mask).astype(np.float32)
    sigma = (design.noise * baseline).astype(np.float32)
    innovation = np.sqrt(1.0 - design.ar**2)
    data = np.empty((n, *shape), dtype=np.float32)
    previous = rng.standard_normal(shape, dtype=np.float32)
    for t in range(n):
        clean = baseline * drift[t] + effect * regressor[t] + physio_map * physio_t[t]
        moved = ndimage.shift(clean, motion[t], order=1, mode="constant")
        previous = design.ar * previous + innovation * rng.standard_normal(shape, dtype=np.float32)
        data[t] = (moved + sigma * previous) * brain
    labels = (regressor >= TASK_LEVEL).astype(np.int64)
    return TaskRun(data=data, affine=anatomy.affine.copy(), tr=float(design.tr), mask=mask, boxcar=boxcar,
                   regressor=regressor, labels=labels, events=events, brain=brain.copy(), seed=seed)


def events_path(nifti_path: str | Path) -> Path:
    """The BIDS events file beside a run: ``sub-01_task-x_bold.nii.gz`` -> ``sub-01_task-x_events.tsv``
    (a name without ``_bold`` keeps its stem: ``run.nii.gz`` -> ``run_events.tsv``)."""
    path = Path(nifti_path)
    stem = path.name
    for suffix in (".nii.gz", ".nii"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    stem = stem[: -len("_bold")] if stem.endswith("_bold") else stem
    return path.with_name(f"{stem}_events.tsv")


def write_events(events: list[tuple[float, float, str]], path: str | Path) -> Path:
    """A BIDS ``events.tsv``: tab-separated columns onset, duration (s), trial_type."""
    lines = ["onset\tduration\ttrial_type"]
    lines += [f"{onset:g}\t{duration:g}\t{trial}" for onset, duration, trial in events]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_run(run: TaskRun, path: str | Path, step: float = 4.0) -> tuple[Path, Path]:
    """Write ``run`` as a 4D NIfTI (x, y, z, t) and its events.tsv; returns both paths.

    The data are stored as int16 with ``scl_slope = step`` (a quantisation step well below the
    noise: 4 against a noise of about 10), zero outside the brain; pixdim[4] is the TR, xyzt
    units mm and s. A ``.nii.gz`` is compressed at level 9 with no time stamp (same run, same bytes).
    """
    import gzip

    import nibabel as nib

    path = Path(path)
    values = np.round(np.moveaxis(run.data, 0, -1) / step)
    if np.abs(values).max() > np.iinfo(np.int16).max:
        raise ValueError(f"the run's values do not fit int16 at a step of {step:g}; use a larger step")
    image = nib.Nifti1Image(values.astype(np.int16), run.affine)
    header = image.header
    header.set_xyzt_units("mm", "sec")
    header.set_zooms((*np.linalg.norm(run.affine[:3, :3], axis=0), run.tr))
    header.set_slope_inter(step, 0.0)
    header["descrip"] = f"g3dvit synthetic task run, seed {run.seed}"[:79].encode()
    image.set_sform(run.affine, code="mni")
    image.set_qform(run.affine, code="mni")
    raw = image.to_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw, compresslevel=9, mtime=0) if path.name.lower().endswith(".gz") else raw)
    return path, write_events(run.events, events_path(path))
