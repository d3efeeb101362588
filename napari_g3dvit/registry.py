"""Every explanation method, declared once: what it is, the pass it shares, what it reads, its cost.

This module is the one place a method is described. ``explain`` runs the requested methods by
family (methods of one family share one pass over the model), ``auto`` takes its candidates
from here, and the widget's controls, the command line's options, the cohort settings and the
README's method table are all built from these specs. It imports no torch, so napari can read
it at start-up.

Adding a method: write its computation in the family's module (``napari_g3dvit/cam/``) and add
a ``MethodSpec`` below; a new family also names its pass in ``FAMILY_PASSES``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .options import BASELINES, OCCLUSION_MODES, POOLINGS, REMOVALS

#: the method name that picks the most faithful method on the volume itself (``choice.py``)
AUTO = "auto"


@dataclass(frozen=True)
class Setting:
    """A setting some methods read: its name in ``explain``, its default and allowed values."""

    name: str
    help: str
    default: Any
    choices: tuple | None = None  # None: any value of ``kind``
    kind: type = str
    minimum: int | None = None

    @property
    def flag(self) -> str:
        """The command-line option, e.g. ``--relevance-block``."""
        return "--" + self.name.replace("_", "-")


#: Settings read by one method family or another (``layer`` and ``target`` are everyone's).
SETTINGS: dict[str, Setting] = {s.name: s for s in (
    Setting("layer", "CAM methods: the layer whose activations and gradients make the map (default: the "
            "last block's attention-input LayerNorm, as published)", None),
    Setting("pooling", "g3dvit: how each token's gradient is pooled over channels into one weight",
            "mean", POOLINGS),
    Setting("baseline", "how removed voxels are replaced: occlusion and auto's criterion also accept 'drop' "
            "(the token is left out of the sequence); integrated gradients start from it; GradMask masks with it. "
            "None: each method's default", None, REMOVALS),
    Setting("occlusion", "occlusion: 'fast' (every token estimated from one backward, the strongest measured) or "
            "'full' (every token removed on its own: one forward each)", "fast", OCCLUSION_MODES),
    Setting("steps", "integrated gradients: points on the path from the baseline", 32, None, int, 1),
    Setting("relevance_block", "cp-lrp: read the relevance at the input of this block (0: the transformer's "
            "input, as published)", 0, None, int, 0),
)}


@dataclass(frozen=True)
class MethodSpec:
    """One method.

    family:    its kind of computation; methods of one family (and of families listed together
               in ``SHARED_PASSES``) asked for together run in one pass.
    settings:  names from ``SETTINGS`` it reads (a widget greys out the others).
    baselines: for a method reading ``baseline``: the values it accepts.
    cost:      what one volume costs, in words; ``forwards(tokens)`` the same as forward-pass
               equivalents (a backward counted as one forward), used by ``auto``'s budget.
    auto:      whether ``auto`` may choose it; ``auto_rank`` orders the families it tries (the
               cheapest first: a tie goes to the first), ``auto_settings`` are the settings its
               candidate uses, ``auto_forwards`` that candidate's cost (default: ``forwards``).
    default_baseline: for a method reading ``baseline``, the one it uses when none is named:
               (for a ViT whose patch embedding normalises raw patches, for any other).
    layer:     the layer it reports when it uses no single hooked layer.
    output:    "tokens" (one score per patch token) or "voxels" (one per input voxel).
    """

    name: str
    family: str
    title: str
    summary: str
    reference: str
    settings: tuple[str, ...] = ()
    baselines: tuple[str, ...] = ()
    cost: str = ""
    forward_cost: tuple[float, float] = (2.0, 0.0)  # forwards = a + b * tokens
    auto: bool = False
    auto_rank: int = 9
    auto_settings: tuple[tuple[str, object], ...] = ()
    auto_forwards: float | None = None
    default_baseline: tuple[str, str] | None = None
    layer: str | None = None
    output: str = "tokens"

    def forwards(self, tokens: int) -> float:
        """Forward-pass equivalents for one volume of ``tokens`` patch tokens (a backward = 1)."""
        fixed, per_token = self.forward_cost
        return fixed + per_token * tokens

    def baseline_for(self, given: str | None, normalises_raw_patches: bool) -> str | None:
        """The baseline this method uses: ``given``, else its own default (None: it reads none)."""
        if "baseline" not in self.settings:
            return None
        return given if given is not None else self.default_baseline[0 if normalises_raw_patches else 1]

    @property
    def uses_layer(self) -> bool:
        return "layer" in self.settings


_CAM = ("layer",)
METHOD_SPECS: tuple[MethodSpec, ...] = (
    MethodSpec("g3dvit", "cam", "G3D-ViT",
               "the published 3D GradCAM for ViTs: each token's pooled gradient times its summed activation",
               "G3D-ViT (Gillet), github.com/gillet-thomas/G3D-ViT", ("layer", "pooling"),
               cost="1 forward + 1 backward to the layer", auto=False),
    MethodSpec("gradcam", "cam", "GradCAM", "channel weights = mean gradient over tokens; map = weighted sum of channels",
               "Selvaraju et al., ICCV 2017", _CAM, cost="1 forward + 1 backward to the layer", auto=True, auto_rank=3),
    MethodSpec("layercam", "cam", "LayerCAM", "sum over channels of positive gradient x activation",
               "Jiang et al., IEEE TIP 2021", _CAM, cost="1 forward + 1 backward to the layer", auto=True, auto_rank=3),
    MethodSpec("gradcam-elementwise", "cam", "GradCAM element-wise", "sum over channels of the positive part of "
               "gradient x activation", "pytorch-grad-cam (Gildenblat et al.)", _CAM,
               cost="1 forward + 1 backward to the layer", auto=True, auto_rank=3),
    MethodSpec("hirescam", "cam", "HiResCAM", "sum over channels of gradient x activation",
               "Draelos & Carin, arXiv:2011.08891", _CAM, cost="1 forward + 1 backward to the layer", auto=True, auto_rank=3),
    MethodSpec("attention-rollout", "attention", "attention rollout",
               "every block's head-averaged attention (plus identity) chained through the depth; class-agnostic",
               "Abnar & Zuidema, ACL 2020", cost="1 forward", forward_cost=(1.0, 0.0), auto=True, auto_rank=2,
               layer="attention (all blocks)"),
    MethodSpec("grad-rollout", "attention", "gradient-weighted rollout",
               "attention weighted by its gradient (positive part), rolled out through the depth",
               "Chefer et al., ICCV 2021", cost="1 forward + 1 backward", auto=True, auto_rank=2,
               layer="attention (all blocks)"),
    MethodSpec("legrad", "attention", "LeGrad", "positive gradient of every block's attention, averaged and summed",
               "Bousselham et al., 2024", cost="1 forward + 1 backward", auto=True, auto_rank=2,
               layer="attention (all blocks)"),
    MethodSpec("cp-lrp", "cp-lrp", "conservative propagation (CP-LRP)",
               "gradient x input at the transformer's input tokens, with attention probabilities and the "
               "LayerNorm scale held constant and GELU passing Phi(x): a relevance that sums to the logit",
               "Ali et al., ICML 2022; the same rules as LibraGrad (Mehri et al., CVPR 2025)", ("relevance_block",),
               cost="1 forward + 1 backward", auto=True, auto_rank=0, layer="transformer input (conservative)"),
    MethodSpec("occlusion", "occlusion", "occlusion",
               "how far the target logit falls when a token is removed; 'fast' estimates every token from one "
               "backward and measures the strongest", "Zeiler & Fergus, ECCV 2014; token removal: Jain et al., ICLR 2022",
               ("baseline", "occlusion"), baselines=REMOVALS,
               cost="fast: 1 forward + 1 backward + about 24 forwards; full: 1 forward per token",
               forward_cost=(26.0, 0.0), auto=True, auto_rank=1, auto_settings=(("occlusion", "estimate"),),
               auto_forwards=2.0, default_baseline=("drop", "drop"), layer="input (occluded tokens)"),
    MethodSpec("integrated-gradients", "integrated-gradients", "integrated gradients",
               "gradient x (input - baseline) averaged along the straight path from the baseline",
               "Sundararajan et al., ICML 2017", ("baseline", "steps"), baselines=BASELINES,
               cost="steps x (1 forward + 1 backward)", forward_cost=(64.0, 0.0), auto=False,
               default_baseline=("blur", "zero"), layer="input (voxels)", output="voxels"),
    MethodSpec("gradmask", "gradmask", "GradMask",
               "binary token masks from the gradients of every block's queries, keys and values, weighted by "
               "the target's probability on the masked input", "Traini et al., IJCNN 2025", ("baseline",),
               baselines=BASELINES, cost="1 forward + 1 backward + 3 x (blocks - 1) x heads masked forwards",
               forward_cost=(50.0, 0.0), auto=False, default_baseline=("mean", "mean"),
               layer="Q/K/V gradients (all blocks)"),
)

SPECS: dict[str, MethodSpec] = {spec.name: spec for spec in METHOD_SPECS}
#: every method ``explain`` computes, in the order the widget and the README list them
METHODS: tuple[str, ...] = tuple(SPECS)
#: methods computed from one hooked layer's activations and gradients (they read ``layer``)
CAM_METHODS: tuple[str, ...] = tuple(s.name for s in METHOD_SPECS if s.family == "cam")
#: methods reading every block's attention probabilities
ATTENTION_METHODS: tuple[str, ...] = tuple(s.name for s in METHOD_SPECS if s.family == "attention")
#: the "layer" a method that uses no single hooked layer reports
METHOD_LAYERS: dict[str, str] = {s.name: s.layer for s in METHOD_SPECS if s.layer}

#: families whose methods share one pass when asked for together (their arithmetic allows it: the
#: CAM methods' layer gradients and the attention methods' map gradients come from one backward)
SHARED_PASSES: dict[str, str] = {"cam": "gradient", "attention": "gradient"}

#: where each pass is: "module:function", imported on first use (torch is needed there)
FAMILY_PASSES: dict[str, str] = {
    "gradient": "napari_g3dvit.cam.methods:gradient_pass",
    "cp-lrp": "napari_g3dvit.cam.conservative:conservative_pass",
    "occlusion": "napari_g3dvit.cam.perturbation:occlusion_pass",
    "integrated-gradients": "napari_g3dvit.cam.perturbation:integrated_gradients_pass",
    "gradmask": "napari_g3dvit.cam.gradmask:gradmask_pass",
}


def spec(name: str) -> MethodSpec:
    """The spec of ``name``; SettingsError naming the choices for an unknown method."""
    try:
        return SPECS[name]
    except KeyError:
        from .errors import SettingsError

        raise SettingsError(f"unknown method {name!r}; choose one of: {AUTO}, {', '.join(METHODS)}") from None


def families(methods) -> dict[str, list[str]]:
    """Requested method names grouped by the pass they share, in request order: {pass: [method, ...]}."""
    grouped: dict[str, list[str]] = {}
    for name in methods:
        family = spec(name).family
        grouped.setdefault(SHARED_PASSES.get(family, family), []).append(name)
    return grouped


def reads(method: str, setting: str) -> bool:
    """Whether ``method`` (or ``auto``, which may run any candidate) reads ``setting``."""
    if method == AUTO:
        return setting in ("baseline", "pooling")
    return setting in spec(method).settings


def baseline_choices(method: str) -> tuple[str, ...]:
    """The baselines ``method`` accepts (``auto``: the removals of its criterion)."""
    return REMOVALS if method == AUTO else spec(method).baselines


def method_table() -> str:
    """The README's method table (markdown), made from the specs."""
    lines = ["| method | what the map is | settings it reads | cost per volume | in `auto` | reference |",
             "|---|---|---|---|---|---|"]
    for s in METHOD_SPECS:
        settings = ", ".join(f"`{name}`" for name in s.settings) or "-"
        lines.append(f"| `{s.name}` | {s.summary} | {settings} | {s.cost} | {'yes' if s.auto else 'no'} | "
                     f"{s.reference} |")
    return "\n".join(lines)




def readme_table(readme: str) -> str:
    """README text with the methods table between its markers made anew from the specs."""
    start, end = "<!-- methods table: made by python -m napari_g3dvit.registry -->", "<!-- end of methods table -->"
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{method_table()}\n{end}{tail}"


if __name__ == "__main__":  # python -m napari_g3dvit.registry [README.md]: print the table, or update the file
    import sys
    from pathlib import Path

    if len(sys.argv) > 1:
        path = Path(sys.argv[1])
        path.write_text(readme_table(path.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(method_table())
