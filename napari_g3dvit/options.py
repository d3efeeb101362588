"""Names of the choices the engine offers, kept free of torch so napari starts fast."""

from __future__ import annotations

#: CAM methods computed from one forward and one stopped backward (see ``cam/methods.py``).
CAM_METHODS: tuple[str, ...] = ("g3dvit", "gradcam", "layercam", "gradcam-elementwise", "hirescam")
#: Methods reading every block's attention probabilities (see ``cam/attention.py``).
ATTENTION_METHODS: tuple[str, ...] = ("attention-rollout", "grad-rollout", "legrad")
#: Methods that perturb the input and call the model many times (see ``cam/perturbation.py``).
PERTURBATION_METHODS: tuple[str, ...] = ("occlusion", "integrated-gradients", "gradmask")
#: Every method ``explain`` computes.
METHODS: tuple[str, ...] = CAM_METHODS + ATTENTION_METHODS + PERTURBATION_METHODS
#: ``explain(method=AUTO)`` picks the most faithful candidate on the volume itself.
AUTO = "auto"
#: The "layer" a method that uses no single hooked layer reports.
METHOD_LAYERS: dict[str, str] = {
    **{m: "attention (all blocks)" for m in ATTENTION_METHODS},
    "occlusion": "input (occluded tokens)",
    "integrated-gradients": "input (voxels)",
    "gradmask": "Q/K/V gradients (all blocks)",
}
#: What replaces removed voxels in occlusion, and where integrated gradients start.
BASELINES: tuple[str, ...] = ("mean", "zero", "blur")
#: ``fast``: coarse windows refined where the drop is large; ``full``: every token on its own.
OCCLUSION_MODES: tuple[str, ...] = ("fast", "full")

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
