"""Names of the choices the engine offers, kept free of torch so napari starts fast."""

from __future__ import annotations

#: CAM methods computed from one forward and one stopped backward (see ``cam/methods.py``).
METHODS: tuple[str, ...] = ("g3dvit", "gradcam", "layercam", "gradcam-elementwise", "hirescam")

#: How ``g3dvit`` pools a token's gradient over the feature axis into one weight.
POOLINGS: tuple[str, ...] = ("mean", "max", "absmean", "relu")

#: How the token map is brought to voxel resolution.
UPSAMPLE_MODES: tuple[str, ...] = ("trilinear", "nearest")

#: Percentage of the highest token values kept, as published for G3D-ViT.
DEFAULT_THRESHOLD: float = 5.0
