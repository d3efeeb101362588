"""Model-agnostic attributions that need only the model's output: occlusion and integrated gradients.

Both work on model inputs ``[B, C, frames, H, W]`` that are already on the run's device, with a
model the caller has already prepared (``engine.prepared_model``: eval mode, frozen
parameters). Nothing here changes the model: no hooks are registered, no flag is touched, and
gradients are taken with ``torch.autograd.grad`` with respect to inputs only, so no parameter's
``.grad`` is written. The one temporary change is vit-pytorch's CLS fast path (the last block
computed for the CLS query alone), which the adapter installs and removes around each call.

Baselines (what a removed patch, or the start of the integration path, is replaced by):

- ``zero``: 0 everywhere. In z-scored MRI this is the mean intensity, not the background.
- ``mean``: each volume's own mean, one value per channel, taken over all of its voxels.
- ``blur``: a box blur of the volume, computed per channel: every voxel becomes the mean of a
  centred box of ``2 * p - 1`` voxels along each axis, ``p`` being the patch size on that axis,
  with the volume's edge voxels repeated outward. A removed patch thus keeps only the
  low-frequency content it shares with its neighbours.

A note on vit-pytorch's 3D ViT: its patch embedding starts with a LayerNorm over each patch's
voxels, and every constant patch normalises to the same vector. For a single-channel model
``zero`` and ``mean`` therefore give identical occlusion maps (as would replacing a patch by its
own mean); ``blur`` is the baseline that is not constant inside a patch.

Token order everywhere is the engine's: the patch grid (frames, height, width) flattened in C
order, frames slowest and width fastest.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import ModelError, SettingsError, VolumeError
from ..options import BASELINES, OCCLUSION_MODES, REMOVALS
from .removal import DROP, grouped_by_size, kept_tokens, subset_logits
from .result import MethodResult, batched_logits, resolve_targets, target_logits

Tensor = torch.Tensor
Progress = Callable[[int, int], None]



# -- shared helpers ------------------------------------------------------------------------------


def _check_inputs(inputs: Tensor, patch_size: tuple[int, int, int]) -> tuple[int, int, int]:
    """The token grid (Gf, Gh, Gw) of ``inputs`` [B, C, F, H, W] cut into ``patch_size`` patches."""
    if inputs.ndim != 5:
        raise VolumeError(
            f"model inputs must be [batch, channels, frames, height, width]; got {tuple(inputs.shape)}"
        )
    spatial = tuple(int(s) for s in inputs.shape[2:])
    if any(s % p for s, p in zip(spatial, patch_size)):
        raise VolumeError(
            f"the input {'x'.join(map(str, spatial))} is not a whole number of "
            f"{'x'.join(map(str, patch_size))} patches"
        )
    return tuple(s // p for s, p in zip(spatial, patch_size))  # type: ignore[return-value]


def _check_positive(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SettingsError(f"{name} must be a positive whole number, got {value!r}")


def _unperturbed_logits(adapter, inputs: Tensor, batch_size: int) -> tuple[Tensor, int]:
    """Logits [B, K] of ``inputs`` in chunks of ``batch_size``, and the number of model calls."""
    return batched_logits(adapter, inputs, batch_size), -(-inputs.shape[0] // batch_size)


def baseline_inputs(inputs: Tensor, kind: str, patch_size: tuple[int, int, int]) -> Tensor:
    """The baseline of each input, same shape and dtype: [B, C, F, H, W] -> [B, C, F, H, W].

    ``kind`` is one of ``BASELINES`` (see the module docstring for what each one holds);
    ``patch_size`` sets the box of the ``blur`` baseline.
    """
    if kind == "zero":
        return torch.zeros_like(inputs)
    if kind == "mean":
        return inputs.mean(dim=(2, 3, 4), keepdim=True).expand_as(inputs).clone()
    if kind == "blur":
        # The box is separable, and so is repeating the edge: one axis at a time.
        out = inputs.reshape(-1, 1, *inputs.shape[2:]).float()
        for axis, p in enumerate(patch_size):
            radius = int(p) - 1
            if radius == 0:
                continue
            pad = [0] * 6
            pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius  # F.pad lists the last axis first
            kernel = [1, 1, 1]
            kernel[axis] = 2 * radius + 1
            out = F.avg_pool3d(F.pad(out, pad, mode="replicate"), kernel_size=kernel, stride=1)
        return out.reshape(inputs.shape).to(inputs.dtype)
    raise SettingsError(f"unknown baseline {kind!r}; choose one of: {', '.join(BASELINES)}")


def tokens_from_voxels(attributions: Tensor, patch_size: tuple[int, int, int]) -> Tensor:
    """Sum a voxel map over each patch token: [B, F, H, W] -> [B, N] in the engine's token order.

    The inverse direction of ``postprocess.tokens_to_voxels(..., "nearest")`` up to the patch's
    voxel count: a token map upsampled by nearest neighbour and summed back gives the token
    values times ``pf * ph * pw``.
    """
    if attributions.ndim != 4:
        raise VolumeError(f"voxel maps must be [batch, frames, height, width]; got {tuple(attributions.shape)}")
    pf, ph, pw = (int(p) for p in patch_size)
    b, f, h, w = attributions.shape
    if f % pf or h % ph or w % pw:
        raise VolumeError(f"the map {f}x{h}x{w} is not a whole number of {pf}x{ph}x{pw} patches")
    blocks = attributions.reshape(b, f // pf, pf, h // ph, ph, w // pw, pw)
    return blocks.sum(dim=(2, 4, 6)).reshape(b, -1)


# -- occlusion -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OcclusionCost:
    """What one ``occlusion_scores`` call cost.

    volumes:   inputs explained (B).
    tokens:    patch tokens per input (N); ``full`` evaluates ``volumes * tokens`` perturbed copies.
    perturbed: perturbed copies actually evaluated, all inputs together (forwards of one volume).
    calls:     batched model calls, the unperturbed pass included.
    measured:  tokens measured exactly per input (``fast``: the strongest by the estimate).
    backward:  whether the first-order estimate (one backward) was taken.
    """

    mode: str
    volumes: int
    tokens: int
    perturbed: int
    calls: int
    measured: int = 0
    backward: bool = False

    @property
    def full_equivalent(self) -> int:
        """Perturbed copies ``mode="full"`` would evaluate for the same inputs."""
        return self.volumes * self.tokens

    @property
    def forwards_per_volume(self) -> float:
        return self.perturbed / max(self.volumes, 1)


@dataclass
class OcclusionResult(MethodResult):
    """``scores`` [B, N], ``logits`` [B, K], ``targets`` [B], and what the call ``cost``."""

    cost: OcclusionCost | None = None


def occluded_inputs(inputs: Tensor, base: Tensor, owners: Tensor, regions: Tensor,
                    patch_size: tuple[int, int, int]) -> Tensor:
    """Perturbed copies: row j is ``inputs[owners[j]]`` with the voxels of the tokens in
    ``regions[j]`` taken from ``base[owners[j]]`` (all channels).

    inputs, base: [B, C, F, H, W]; owners: [n] input indices; regions: [n, M] token indices in
    the engine's order, -1 for none. Returns [n, C, F, H, W].
    """
    grid = _check_inputs(inputs, patch_size)
    num_tokens = math.prod(grid)
    n = regions.shape[0]
    tokens = torch.zeros(n, num_tokens + 1, dtype=torch.bool, device=regions.device)
    tokens.scatter_(1, torch.where(regions < 0, num_tokens, regions), True)
    voxels = tokens[:, :num_tokens].reshape(n, *grid)
    for axis, size in enumerate(patch_size, start=1):
        voxels = voxels.repeat_interleave(int(size), dim=axis)
    return torch.where(voxels[:, None], base[owners], inputs[owners])


class _Occluder:
    """Evaluates perturbed copies: a job is (input index, token indices to remove).

    ``base`` [B, C, F, H, W] is painted over the removed tokens' voxels; ``base=None`` leaves the
    removed tokens out of the sequence instead (``removal.DROP``).
    """

    def __init__(self, adapter, inputs: Tensor, base: Tensor | None, targets: Tensor, reference: Tensor,
                 grid: tuple[int, int, int], patch_size: tuple[int, int, int], batch_size: int,
                 progress: Progress | None):
        self.adapter, self.inputs, self.base = adapter, inputs, base
        self.targets, self.reference = targets, reference
        self.grid, self.patch_size, self.batch_size = grid, patch_size, batch_size
        self.num_tokens = math.prod(grid)
        self.progress = progress
        self.done = 0
        self.total = 0
        self.calls = 0

    def drops(self, owners: Tensor, regions: Tensor) -> Tensor:
        """Drop of the target logit for each job: owners [J] (input index), regions [J, M] -> [J]."""
        if self.base is None:
            return self._dropped(owners, regions)
        out = []
        for start in range(0, owners.shape[0], self.batch_size):
            who = owners[start : start + self.batch_size]
            perturbed = occluded_inputs(self.inputs, self.base, who, regions[start : start + self.batch_size],
                                        self.patch_size)
            logits = self.adapter.forward(perturbed)
            self.calls += 1
            out.append(self.reference[who] - target_logits(logits, self.targets[who]).float())
            self.done += int(who.shape[0])
            if self.progress is not None:
                self.progress(self.done, self.total)
        if not out:
            return torch.zeros(0, device=owners.device)
        return torch.cat(out)

    def _dropped(self, owners: Tensor, regions: Tensor) -> Tensor:
        """``drops`` with the removed tokens left out of the sequence, jobs grouped by size."""
        result = torch.zeros(owners.shape[0], device=owners.device)

        def counted(rows: int) -> None:
            self.calls += 1
            self.done += rows
            if self.progress is not None:
                self.progress(self.done, self.total)

        for group in grouped_by_size(regions):
            keep = kept_tokens(regions[group], self.num_tokens)
            logits = subset_logits(self.adapter, self.inputs, owners[group], keep, self.batch_size, counted)
            result[group] = self.reference[owners[group]] - target_logits(logits, self.targets[owners[group]]).float()
        return result


#: tokens per input that ``fast`` occlusion measures exactly, beside the estimate of all of them
DEFAULT_MEASURED = 24


def occlusion_scores(
    adapter,
    inputs: Tensor,
    targets: Tensor | None,
    baseline: str = DROP,
    batch_size: int = 32,
    mode: str = "fast",
    progress: Progress | None = None,
    *,
    measure: int = DEFAULT_MEASURED,
) -> OcclusionResult:
    """Per-token occlusion: how much the target's raw logit drops when a token is removed.

    adapter:    from ``napari_g3dvit.models.find_adapter(model)``; the model must already be
                prepared (eval, frozen parameters) and on the inputs' device.
    inputs:     model inputs [B, C, frames, H, W].
    targets:    [B] class per input, or None for each input's predicted class.
    baseline:   how a token is removed: ``"drop"`` leaves it out of the transformer's sequence
                (``removal.py``); one of ``BASELINES`` paints that baseline over its voxels.
    batch_size: perturbed copies per model call (copies of different inputs share calls).
    mode:       ``full``: every token removed on its own, N copies per input (the reference).
                ``estimate``: the first-order fall of every token from one forward and one
                backward (``first_order.removal_estimate``), nothing measured.
                ``fast``: that estimate for every token, then the ``measure`` tokens with the
                largest estimates are removed one by one and keep their measured drops; every
                other token keeps its estimate, scaled by the least-squares factor between the
                measured drops and their estimates (per input; 1 where that factor is not
                positive), so estimated and measured values share one scale. Cost per input: one
                forward and one backward, plus ``measure`` copies (``full`` runs instead when
                ``measure`` reaches N).
    progress:   called as ``progress(done, total)``, in perturbed copies, after each model call.

    Returns an ``OcclusionResult``: ``(scores [B, N] float32, logits [B, K], targets [B])``, the
    logits of the unperturbed inputs, with ``.cost`` (an ``OcclusionCost``) attached.
    """
    from .first_order import removal_estimate

    if baseline not in REMOVALS:
        raise SettingsError(f"unknown baseline {baseline!r}; choose one of: {', '.join(REMOVALS)}")
    if mode not in OCCLUSION_MODES:
        raise SettingsError(f"unknown occlusion mode {mode!r}; choose one of: {', '.join(OCCLUSION_MODES)}")
    _check_positive(batch_size, "batch_size")
    if isinstance(measure, bool) or not isinstance(measure, int) or measure < 0:
        raise SettingsError(f"measure is a number of tokens, 0 or more; got {measure!r}")
    patch_size = tuple(int(p) for p in adapter.geometry.patch_size)
    grid = _check_inputs(inputs, patch_size)
    count, num_tokens = inputs.shape[0], math.prod(grid)
    device = inputs.device
    base = None if baseline == DROP else baseline_inputs(inputs, baseline, patch_size)
    if mode == "fast" and measure >= num_tokens:
        mode = "full"

    estimates = None
    if mode != "full":
        estimates, logits, targets = removal_estimate(adapter, inputs, targets, baseline, base)
        estimates = estimates.float()
        calls = 1
    with torch.no_grad():
        if estimates is None:
            logits, calls = _unperturbed_logits(adapter, inputs, batch_size)
            targets = resolve_targets(logits, targets)
        reference = target_logits(logits, targets).float()
        occluder = _Occluder(adapter, inputs, base, targets, reference, grid, patch_size, batch_size, progress)
        occluder.calls = calls
        if mode == "full":
            scores = _occlude_all(occluder, count, num_tokens, device)
            cost = OcclusionCost("full", count, num_tokens, occluder.done, occluder.calls, measured=num_tokens)
        elif mode == "estimate" or measure == 0:
            scores = estimates
            cost = OcclusionCost(mode, count, num_tokens, 0, occluder.calls, backward=True)
        else:
            scores = _measure_strongest(occluder, estimates, measure)
            cost = OcclusionCost("fast", count, num_tokens, occluder.done, occluder.calls, measured=measure,
                                 backward=True)
    return OcclusionResult(scores, logits, targets, cost=cost)


def _occlude_all(occluder: _Occluder, count: int, num_tokens: int, device) -> Tensor:
    """One perturbed copy per (input, token): scores [B, N]."""
    owners = torch.arange(count, device=device).repeat_interleave(num_tokens)
    regions = torch.arange(num_tokens, device=device).repeat(count)[:, None]
    occluder.total = owners.shape[0]
    return occluder.drops(owners, regions).reshape(count, num_tokens)


def _measure_strongest(occluder: _Occluder, estimates: Tensor, measure: int) -> Tensor:
    """Measure the ``measure`` tokens with the largest estimates [B, N]; scale the rest to match."""
    count = estimates.shape[0]
    top = torch.sort(estimates, dim=1, descending=True, stable=True).indices[:, :measure]  # [B, m]
    owners = torch.arange(count, device=estimates.device).repeat_interleave(measure)
    occluder.total = owners.shape[0]
    measured = occluder.drops(owners, top.reshape(-1, 1)).reshape(count, measure)
    guessed = estimates.gather(1, top)
    scale = (measured * guessed).sum(dim=1) / (guessed * guessed).sum(dim=1).clamp_min(1e-30)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    scores = estimates * scale[:, None]
    scores.scatter_(1, top, measured)
    return scores


# -- integrated gradients ------------------------------------------------------------------------


@dataclass
class IntegratedGradientsResult(MethodResult):
    """``scores`` holds the attributions [B, F, H, W]; ``logits`` [B, K]; ``targets`` [B].

    ``input_scores`` [B] and ``baseline_scores`` [B] are the target's raw logit at the input and
    at the baseline; ``gap`` [B] = sum of the attributions minus their difference (completeness
    says it tends to 0 as ``steps`` grows); ``relative_gap`` divides it by that difference's
    magnitude.
    """

    input_scores: Tensor | None = None
    baseline_scores: Tensor | None = None

    @property
    def attributions(self) -> Tensor:
        return self.scores

    @property
    def gap(self) -> Tensor:
        return _gap(self.attributions, self.input_scores, self.baseline_scores)[0]

    @property
    def relative_gap(self) -> Tensor:
        return _gap(self.attributions, self.input_scores, self.baseline_scores)[1]


def _gap(attributions: Tensor, input_scores: Tensor, baseline_scores: Tensor) -> tuple[Tensor, Tensor]:
    expected = (input_scores - baseline_scores).double()
    gap = attributions.double().sum(dim=(1, 2, 3)) - expected
    return gap, gap.abs() / expected.abs().clamp_min(1e-12)


def completeness_gap(adapter, inputs: Tensor, attributions: Tensor, targets: Tensor,
                     baseline: str = "zero") -> tuple[Tensor, Tensor]:
    """How far integrated gradients are from completeness, per input.

    Returns ``(gap [B], relative [B])``: ``gap`` = sum of ``attributions`` minus
    (target logit at the input - target logit at the baseline), float64; ``relative`` = its
    magnitude over that difference's magnitude. Two forwards per input, no gradients.
    """
    patch_size = tuple(int(p) for p in adapter.geometry.patch_size)
    _check_inputs(inputs, patch_size)
    with torch.no_grad():
        targets = torch.as_tensor(targets).to(device=inputs.device, dtype=torch.int64).reshape(-1)
        at_input = target_logits(adapter.forward(inputs), targets).float()
        base = baseline_inputs(inputs, baseline, patch_size)
        at_base = target_logits(adapter.forward(base), targets).float()
    return _gap(attributions.to(inputs.device), at_input, at_base)


def integrated_gradients(
    adapter,
    inputs: Tensor,
    targets: Tensor | None,
    baseline: str = "zero",
    steps: int = 32,
    batch_size: int = 16,
) -> IntegratedGradientsResult:
    """Integrated gradients (Sundararajan et al. 2017) of the target's raw logit, per voxel.

    Path: the straight line from the baseline ``x0`` (one of ``BASELINES``) to the input ``x``,
    sampled at ``steps`` points by the midpoint rule, alpha = (k + 1/2) / steps for k = 0 ..
    steps - 1. Attribution = (x - x0) * the mean over those points of d logit / d input, summed
    over channels. The scaled inputs of all inputs are evaluated ``batch_size`` at a time, one
    forward and one backward (down to the inputs only) per batch.

    Baseline and vit-pytorch: its patch embedding normalises each patch's raw voxels
    (``adapter.normalises_raw_patches``), so on the path from ``zero`` (any channel count) or from
    ``mean`` (one channel) every patch is the input's patch scaled and shifted, which the model
    does not see: the logit stays flat for all but the smallest alpha (where LayerNorm's epsilon
    dominates), each token's attributions sum to about 0, and completeness needs thousands of
    steps. A RuntimeWarning says so; use ``blur`` for such models.

    Returns an ``IntegratedGradientsResult``: ``(attributions [B, F, H, W] float32, logits
    [B, K], targets [B])``, with the completeness check attached (``gap``, ``relative_gap``).
    """
    if baseline not in BASELINES:
        raise SettingsError(f"unknown baseline {baseline!r}; choose one of: {', '.join(BASELINES)}")
    _check_positive(steps, "steps")
    _check_positive(batch_size, "batch_size")
    patch_size = tuple(int(p) for p in adapter.geometry.patch_size)
    _check_inputs(inputs, patch_size)
    count = inputs.shape[0]
    device = inputs.device
    if baseline == "zero" or (baseline == "mean" and adapter.geometry.channels == 1):
        if adapter.normalises_raw_patches:
            warnings.warn(
                f"integrated gradients from the {baseline!r} baseline are degenerate for this model: "
                "its patch embedding normalises every patch (LayerNorm), so the straight path from "
                f"a {baseline} volume changes the logit only at its very start, and each token's "
                "attributions sum to about 0. Use baseline='blur'",
                RuntimeWarning,
                stacklevel=2,
            )

    # Inference mode off and gradients on, whatever the caller's context; the inputs are copied
    # so that tensors made under inference mode can enter the graph.
    with torch.inference_mode(False), torch.enable_grad():
        x = inputs.detach().clone()
        with torch.no_grad():
            logits, _ = _unperturbed_logits(adapter, x, batch_size)
            targets = resolve_targets(logits, targets)
            x0 = baseline_inputs(x, baseline, patch_size)
            base_logits, _ = _unperturbed_logits(adapter, x0, batch_size)
        delta = x - x0
        alphas = (torch.arange(steps, device=device, dtype=torch.float64) + 0.5) / steps
        owners = torch.arange(count, device=device).repeat_interleave(steps)
        points = alphas.repeat(count)
        grad_sum = torch.zeros(inputs.shape, dtype=torch.float64, device=device)
        for start in range(0, owners.shape[0], batch_size):
            who = owners[start : start + batch_size]
            alpha = points[start : start + batch_size].to(x.dtype).view(-1, 1, 1, 1, 1)
            scaled = (x0[who] + alpha * delta[who]).detach().requires_grad_(True)
            score = target_logits(adapter.forward(scaled), targets[who]).sum()
            if not score.requires_grad:
                raise ModelError(
                    "the class score does not depend on the input through autograd (the model "
                    "detaches it or runs without gradients), so integrated gradients cannot be taken"
                )
            (grad,) = torch.autograd.grad(score, scaled)
            grad_sum.index_add_(0, who, grad.double())
        attributions = (delta.double() * grad_sum / steps).sum(dim=1).float()

    return IntegratedGradientsResult(
        attributions.detach(),
        logits.detach(),
        targets.detach(),
        input_scores=target_logits(logits, targets).float().detach(),
        baseline_scores=target_logits(base_logits, targets).float().detach(),
    )


# -- the family passes ---------------------------------------------------------------------------


def occlusion_pass(batch, methods: list[str]) -> list:
    """Occlusion's pass (``explaining.PassInput`` in; ``settings.baseline`` already resolved)."""
    from ..explaining import MapPart
    from ..registry import METHOD_LAYERS

    s = batch.settings
    found = occlusion_scores(batch.adapter, batch.inputs, batch.targets, baseline=s.baseline, mode=s.occlusion)
    return [MapPart("occlusion", METHOD_LAYERS["occlusion"], found.scores, found.logits, found.targets,
                    {"forwards": found.cost.perturbed})]


def integrated_gradients_pass(batch, methods: list[str]) -> list:
    """Integrated gradients' pass (``explaining.PassInput`` in; ``settings.baseline`` resolved)."""
    from ..explaining import MapPart
    from ..registry import METHOD_LAYERS

    s = batch.settings
    found = integrated_gradients(batch.adapter, batch.inputs, batch.targets, baseline=s.baseline, steps=s.steps)
    return [MapPart("integrated-gradients", METHOD_LAYERS["integrated-gradients"], found.scores, found.logits,
                    found.targets)]
