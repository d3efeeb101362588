"""Names of the basic choices the engine offers, kept free of torch so napari starts fast.

The methods themselves are declared in ``registry.py``.
"""

from __future__ import annotations

#: What replaces removed voxels in occlusion, and where integrated gradients start.
BASELINES: tuple[str, ...] = ("mean", "zero", "blur")
#: How occlusion and auto's criterion remove a token: paint a baseline over its voxels, or
#: ``drop``: leave it out of the transformer's sequence (nothing painted, nothing invented).
REMOVALS: tuple[str, ...] = ("drop", *BASELINES)
#: ``fast``: every token estimated from one backward, the strongest measured; ``full``: every
#: token removed on its own; ``estimate``: the first-order estimate alone.
OCCLUSION_MODES: tuple[str, ...] = ("fast", "full", "estimate")

#: How ``g3dvit`` pools a token's gradient over the feature axis into one weight.
POOLINGS: tuple[str, ...] = ("mean", "max", "absmean", "relu")

#: How the token map is brought to voxel resolution.
UPSAMPLE_MODES: tuple[str, ...] = ("trilinear", "nearest")

#: Percentage of the highest token values kept, as published for G3D-ViT.
DEFAULT_THRESHOLD: float = 5.0

#: How a scan on another grid is resampled into a model's grid (its config's input_space) and its
#: map back: name -> spline order (scipy / nibabel).
INTERPOLATIONS: dict[str, int] = {"trilinear": 1, "nearest": 0}
DEFAULT_INTERPOLATION: str = "trilinear"
