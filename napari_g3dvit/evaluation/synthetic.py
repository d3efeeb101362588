"""The "mock" datasets of the G3D-ViT validation: one cube in a grid, with its ground truth.

Tasks:
- ``position``: the cube (value 1) sits at a corner on multiples of the cube size (aligned);
  the label is the index of that cell in C order, ``(grid // cube) ** 3`` classes. With
  ``aligned=False`` the corner is anywhere and the label is the cell holding the cube's centre.
- ``value``: the cube holds -1 or +1 at any position; the label is its sign (0: -1, 1: +1).

The background is 0 plus Gaussian noise of standard deviation ``noise``. Everything is
deterministic for a seed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

TASKS = ("position", "value")


@dataclass(frozen=True)
class CubeTask:
    """Settings of one synthetic dataset (stored with trained models)."""

    task: str = "position"
    grid: int = 40
    cube: int = 8
    aligned: bool = True
    noise: float = 0.0

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        if not 0 < self.cube <= self.grid:
            raise ValueError(f"the cube ({self.cube}) must fit in the grid ({self.grid})")
        if self.task == "position" and self.grid % self.cube:
            raise ValueError(f"the position task needs the grid ({self.grid}) to be a multiple of the cube ({self.cube})")
        if self.noise < 0:
            raise ValueError("noise is a standard deviation, 0 or more")

    @property
    def num_classes(self) -> int:
        return (self.grid // self.cube) ** 3 if self.task == "position" else 2

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class CubeSamples:
    """volumes [n, G, G, G] float32, labels [n] int64, masks [n, G, G, G] bool (the cube)."""

    volumes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    corners: np.ndarray  # [n, 3] the cube's first voxel


def make_cubes(spec: CubeTask, n: int, seed: int = 0) -> CubeSamples:
    """``n`` samples of ``spec``, the same for the same seed."""
    rng = np.random.default_rng(seed)
    g, c = spec.grid, spec.cube
    cells = g // c
    if spec.task == "position" and spec.aligned:
        labels = rng.integers(0, spec.num_classes, size=n)
        corners = np.stack(np.unravel_index(labels, (cells,) * 3), axis=1) * c
    else:
        corners = rng.integers(0, g - c + 1, size=(n, 3))
        centres = corners + c // 2
        if spec.task == "position":
            labels = np.ravel_multi_index(tuple((centres // c).T), (cells,) * 3)
        else:
            labels = rng.integers(0, 2, size=n)
    volumes = rng.normal(0.0, spec.noise, size=(n, g, g, g)).astype(np.float32) if spec.noise else np.zeros((n, g, g, g), np.float32)
    masks = np.zeros((n, g, g, g), dtype=bool)
    for i, (z, y, x) in enumerate(corners):
        masks[i, z : z + c, y : y + c, x : x + c] = True
    value = np.where(labels == 1, 1.0, -1.0) if spec.task == "value" else np.ones(n)
    volumes[masks] = np.repeat(value, c**3).astype(np.float32)
    return CubeSamples(volumes=volumes, labels=labels.astype(np.int64), masks=masks, corners=corners.astype(np.int64))
