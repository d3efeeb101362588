"""Occlusion and integrated gradients against plain loops written here, on the tiny models."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TINY_GRID, TINY_SHAPE, make_vit
from napari_g3dvit.cam import perturbation as pert
from napari_g3dvit.cam.engine import prepared_model
from napari_g3dvit.cam.postprocess import tokens_to_voxels
from napari_g3dvit.errors import SettingsError
from napari_g3dvit.evaluation.metrics import spearman
from napari_g3dvit.models import find_adapter

CPU = torch.device("cpu")
PATCH = (4, 4, 4)


def batch(size: int = 2, seed: int = 3, channels: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(size, channels, *TINY_SHAPE)


def model_state(model: nn.Module):
    """Everything the methods promise not to change: flags, modes, hooks, patched forwards."""
    return (
        [p.requires_grad for p in model.parameters()],
        [m.training for m in model.modules()],
        [(len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks)) for m in model.modules()],
        ["forward" in m.__dict__ for m in model.modules()],
        [p.grad is None for p in model.parameters()],
    )


def token_slices(token: int, grid=TINY_GRID, patch=PATCH):
    """The voxel slices (frames, height, width) of ``token`` in C order over the grid."""
    cell = np.unravel_index(token, grid)
    return tuple(slice(c * p, (c + 1) * p) for c, p in zip(cell, patch))


# -- occlusion -------------------------------------------------------------------------------------


def test_full_occlusion_equals_a_plain_loop():
    model = make_vit()
    adapter = find_adapter(model)
    inputs = batch()
    targets = torch.tensor([0, 2])
    before = model_state(model)
    seen = []
    with prepared_model(model, CPU):
        inside = model_state(model)
        result = pert.occlusion_scores(
            adapter, inputs, targets, baseline="mean", batch_size=5, mode="full",
            progress=lambda done, total: seen.append((done, total)),
        )
        scores, logits, used = result.scores, result.logits, result.targets
        result = pert.occlusion_scores(adapter, inputs, None, baseline="mean", mode="full")
        assert model_state(model) == inside
        with torch.no_grad():
            plain_logits = model(inputs)
            expected = torch.zeros(2, math.prod(TINY_GRID))
            for b, target in enumerate(targets.tolist()):
                for token in range(expected.shape[1]):
                    copy = inputs[b].clone()
                    copy[(slice(None), *token_slices(token))] = inputs[b].mean()
                    expected[b, token] = plain_logits[b, target] - model(copy[None])[0, target]
    assert model_state(model) == before

    assert scores.shape == (2, 24) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, expected, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(logits, plain_logits, atol=1e-5, rtol=1e-5)
    assert used.tolist() == [0, 2]
    assert result.targets.tolist() == plain_logits.argmax(1).tolist()
    # 48 perturbed copies, 5 per call, plus the unperturbed pass; progress counts copies.
    assert result.cost.perturbed == result.cost.full_equivalent == 48
    assert [d for d, _ in seen] == [min(5 * (i + 1), 48) for i in range(10)]
    assert {t for _, t in seen} == {48}


class LocalEvidence(nn.Module):
    """A real vit-pytorch ViT whose class-0 logit also reads a Gaussian-weighted region.

    The truth is known: the added evidence is the input's weighted mean around ``centre``
    (voxels), so a token's occlusion drop grows with its weight and intensity, and falls off
    smoothly with distance. The ViT (patch 2: a 6 x 4 x 8 token grid) adds its own, realistic
    token-to-token noise.
    """

    def __init__(self, centre, sigma: float = 5.0, gain: float = 10.0):
        super().__init__()
        self.vit = make_vit(0, image_patch_size=(2, 2), frame_patch_size=2)
        self.register_buffer("weight", gaussian(centre, sigma))
        self.gain = gain

    def forward(self, x):
        evidence = (x[:, 0] * self.weight).sum(dim=(1, 2, 3)) / self.weight.sum()
        logits = self.vit(x)
        return logits + self.gain * torch.stack([evidence, -evidence, torch.zeros_like(evidence)], 1)


def gaussian(centre, sigma: float) -> torch.Tensor:
    axes = [torch.arange(n, dtype=torch.float32) + 0.5 for n in TINY_SHAPE]
    f, h, w = torch.meshgrid(*axes, indexing="ij")
    d2 = (f - centre[0]) ** 2 + (h - centre[1]) ** 2 + (w - centre[2]) ** 2
    return torch.exp(-d2 / (2 * sigma**2))


@pytest.mark.parametrize("removal", ["zero", "drop"])
def test_fast_occlusion_estimates_every_token_and_measures_the_strongest(removal):
    centre = (3.0, 3.0, 4.0)
    model = LocalEvidence(centre).eval()
    adapter = find_adapter(model)
    torch.manual_seed(0)
    inputs = (1 + 2 * gaussian(centre, 5.0) + 0.1 * torch.randn(TINY_SHAPE))[None, None]
    target = torch.tensor([0])
    seen = []
    before = model_state(model)
    with prepared_model(model, CPU):
        full = pert.occlusion_scores(adapter, inputs, target, baseline=removal, mode="full")
        fast = pert.occlusion_scores(adapter, inputs, target, baseline=removal, mode="fast", measure=24,
                                     progress=lambda done, total: seen.append((done, total)))
        estimate = pert.occlusion_scores(adapter, inputs, target, baseline=removal, mode="estimate")
    assert model_state(model) == before

    assert full.cost.perturbed == 192
    assert fast.cost.mode == "fast" and fast.cost.perturbed == fast.cost.measured == 24 and fast.cost.backward
    assert estimate.cost.perturbed == 0
    f, s = full.scores[0].numpy(), fast.scores[0].numpy()
    assert spearman(f, s) >= 0.9 and spearman(f, estimate.scores[0].numpy()) >= 0.9
    # the 24 tokens with the largest estimates are measured one by one: they agree exactly
    measured = np.argsort(-estimate.scores[0].numpy(), kind="stable")[:24]
    np.testing.assert_allclose(s[measured], f[measured], rtol=1e-5, atol=1e-6)
    assert set(np.argsort(-f)[:8]) <= set(measured)  # the strongest tokens are among them
    torch.testing.assert_close(fast.logits, full.logits)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1] == (24, 24)


def dropped_by_hand(vit, x: torch.Tensor, token: int) -> torch.Tensor:
    """vit-pytorch's forward written out, with patch token ``token`` left out of the sequence."""
    tokens = vit.to_patch_embedding(x)
    b, n, _ = tokens.shape
    tokens = torch.cat((vit.cls_token.expand(b, -1, -1), tokens), dim=1) + vit.pos_embedding[:, : n + 1]
    keep = [0] + [i + 1 for i in range(n) if i != token]
    out = vit.transformer(tokens[:, keep])
    return vit.mlp_head(out.mean(dim=1) if vit.pool == "mean" else out[:, 0])


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_dropped_token_occlusion_equals_a_plain_loop(pool):
    model = make_vit(5, pool=pool)
    adapter = find_adapter(model)
    inputs = batch()
    with prepared_model(model, CPU), torch.no_grad():
        result = pert.occlusion_scores(adapter, inputs, None, baseline="drop", mode="full", batch_size=7)
        logits = model(inputs)
        for b in range(2):
            t = int(result.targets[b])
            expected = [float(logits[b, t] - dropped_by_hand(model, inputs[b : b + 1], j)[0, t]) for j in range(24)]
            np.testing.assert_allclose(result.scores[b].numpy(), expected, rtol=1e-4, atol=1e-5)


def test_a_closed_key_gate_is_the_token_dropped():
    """The estimate's gates: a gate of 0 in every block gives exactly the dropped token's logits,
    so the gradient at gate 1 is the first-order effect of dropping it."""
    from napari_g3dvit.cam.first_order import key_gates

    model = make_vit(6)
    adapter = find_adapter(model)
    inputs = batch(1)
    with prepared_model(model, CPU), torch.no_grad():
        for token in (0, 11, 23):
            gate = torch.ones(1, 24)
            gate[0, token] = 0.0
            with key_gates(adapter, gate):
                gated = adapter.forward(inputs)
            torch.testing.assert_close(gated, dropped_by_hand(model, inputs, token), rtol=1e-4, atol=1e-5)


def test_occlusion_settings_are_checked():
    model = make_vit()
    adapter = find_adapter(model)
    with prepared_model(model, CPU):
        for kwargs in ({"baseline": "noise"}, {"mode": "exact"}, {"batch_size": 0}, {"measure": -1}):
            with pytest.raises(SettingsError):
                pert.occlusion_scores(adapter, batch(), None, **kwargs)
        with pytest.raises(SettingsError, match="0 to 2"):
            pert.occlusion_scores(adapter, batch(), torch.tensor([0, 3]))


# -- baselines and perturbed inputs -------------------------------------------------------------------


def box_blur_reference(volume: np.ndarray, patch) -> np.ndarray:
    """Mean over a centred box of 2p - 1 voxels per axis, edge voxels repeated (index clamping)."""
    out = volume.astype(np.float64)
    for axis, p in enumerate(patch):
        size = out.shape[axis]
        shifted = [np.take(out, np.clip(np.arange(size) + d, 0, size - 1), axis=axis) for d in range(-(p - 1), p)]
        out = np.mean(shifted, axis=0)
    return out


def test_baselines_hold_the_documented_values():
    inputs = batch(size=2, channels=2)
    zero = pert.baseline_inputs(inputs, "zero", PATCH)
    mean = pert.baseline_inputs(inputs, "mean", PATCH)
    blur = pert.baseline_inputs(inputs, "blur", PATCH)
    for out in (zero, mean, blur):
        assert out.shape == inputs.shape and out.dtype == inputs.dtype
    assert not zero.any()
    for b in range(2):
        for c in range(2):
            torch.testing.assert_close(mean[b, c], torch.full(TINY_SHAPE, float(inputs[b, c].mean())))
            expected = box_blur_reference(inputs[b, c].numpy(), PATCH)
            np.testing.assert_allclose(blur[b, c].numpy(), expected, rtol=1e-5, atol=1e-6)
    # Anisotropic patches get anisotropic boxes.
    expected = box_blur_reference(inputs[0, 0].numpy(), (2, 4, 1))
    np.testing.assert_allclose(pert.baseline_inputs(inputs, "blur", (2, 4, 1))[0, 0].numpy(), expected,
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(SettingsError):
        pert.baseline_inputs(inputs, "noise", PATCH)


@pytest.mark.parametrize("kind", pert.BASELINES)
def test_occluded_inputs_replace_exactly_the_tokens_voxels(kind):
    inputs = batch(size=2, channels=2)
    base = pert.baseline_inputs(inputs, kind, PATCH)
    owners = torch.tensor([1, 0, 1])
    regions = torch.tensor([[5, -1], [0, 23], [-1, -1]])
    copies = pert.occluded_inputs(inputs, base, owners, regions, PATCH)
    for row, (owner, tokens) in enumerate(zip(owners.tolist(), regions.tolist())):
        expected = inputs[owner].clone()
        for token in (t for t in tokens if t >= 0):
            where = (slice(None), *token_slices(token))
            expected[where] = base[owner][where]
        torch.testing.assert_close(copies[row], expected, rtol=0, atol=0)


def test_zero_and_mean_occlusion_agree_for_a_single_channel_vit_pytorch_model():
    """Its patch embedding normalises each patch, and any constant patch normalises alike."""
    model = make_vit()
    adapter = find_adapter(model)
    with prepared_model(model, CPU):
        zero = pert.occlusion_scores(adapter, batch(), None, baseline="zero", mode="full")
        mean = pert.occlusion_scores(adapter, batch(), None, baseline="mean", mode="full")
        blur = pert.occlusion_scores(adapter, batch(), None, baseline="blur", mode="full")
    torch.testing.assert_close(zero.scores, mean.scores, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(zero.scores, blur.scores, atol=1e-4)


# -- integrated gradients ----------------------------------------------------------------------------


def plain_integrated_gradients(model, x, x0, target: int, steps: int) -> torch.Tensor:
    """One input [C, F, H, W], one scaled copy at a time, a full backward each: [F, H, W]."""
    total = torch.zeros_like(x, dtype=torch.float64)
    for k in range(steps):
        point = (x0 + (k + 0.5) / steps * (x - x0)).detach().requires_grad_(True)
        model(point[None])[0, target].backward()
        total += point.grad.double()
    return ((x - x0).double() * total / steps).sum(dim=0).float()


def test_integrated_gradients_equal_a_plain_loop_and_leave_the_model_alone():
    model = make_vit()
    adapter = find_adapter(model)
    inputs = batch()
    targets = torch.tensor([1, 2])
    before = model_state(model)
    with prepared_model(model, CPU):
        inside = model_state(model)
        with torch.no_grad():  # a caller's no_grad context must not matter
            result = pert.integrated_gradients(adapter, inputs, targets, baseline="blur", steps=8, batch_size=5)
            attributions, logits, used = result.attributions, result.logits, result.targets
        assert model_state(model) == inside
        base = pert.baseline_inputs(inputs, "blur", PATCH)
        expected = torch.stack([plain_integrated_gradients(model, inputs[b], base[b], t, 8)
                                for b, t in enumerate(targets.tolist())])
        plain_logits = model(inputs).detach()
    assert model_state(model) == before
    assert attributions.shape == (2, *TINY_SHAPE) and attributions.dtype == torch.float32
    scale = float(expected.abs().max())
    torch.testing.assert_close(attributions, expected, atol=1e-4 * scale, rtol=1e-3)
    torch.testing.assert_close(logits, plain_logits, atol=1e-5, rtol=1e-5)
    assert used.tolist() == [1, 2]


def test_integrated_gradients_are_complete_with_64_steps():
    model = make_vit(seed=4)
    adapter = find_adapter(model)
    with prepared_model(model, CPU):
        result = pert.integrated_gradients(adapter, batch(), None, baseline="blur", steps=64)
        gap, relative = pert.completeness_gap(adapter, batch(), result.attributions, result.targets, "blur")
    difference = result.input_scores - result.baseline_scores
    assert bool((difference.abs() > 0.01).all())  # a real difference to explain
    assert float(result.relative_gap.max()) < 0.03
    torch.testing.assert_close(gap, result.gap, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(relative, result.relative_gap, atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(result.attributions.sum(dim=(1, 2, 3)).numpy(), difference.numpy(),
                               atol=0.03 * float(difference.abs().min()))


def test_integrated_gradients_from_zero_are_complete_on_a_conv_patch_vit():
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(10)
    model = nets.ViT(in_channels=1, img_size=list(TINY_SHAPE), patch_size=list(PATCH), hidden_size=32,
                     mlp_dim=64, num_layers=2, num_heads=2, num_classes=3, classification=True).eval()
    with torch.no_grad():  # untrained LayerNorms and a zero CLS token are too tame
        model.cls_token.normal_()
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.5)
    adapter = find_adapter(model)
    with prepared_model(model, CPU), warnings.catch_warnings():
        warnings.simplefilter("error")  # no degenerate-baseline warning for this model
        result = pert.integrated_gradients(adapter, batch(), None, baseline="zero", steps=64)
    assert not adapter.normalises_raw_patches
    assert float((result.input_scores - result.baseline_scores).abs().min()) > 0.01
    assert float(result.relative_gap.max()) < 0.03


def test_integrated_gradients_from_a_constant_baseline_warn_on_vit_pytorch():
    """vit-pytorch normalises each raw patch: from zero, each token's attributions sum to ~0."""
    model = make_vit()
    adapter = find_adapter(model)
    assert adapter.normalises_raw_patches
    with prepared_model(model, CPU):
        with pytest.warns(RuntimeWarning, match="degenerate"):
            result = pert.integrated_gradients(adapter, batch(), None, baseline="zero", steps=16)
    per_token = pert.tokens_from_voxels(result.attributions, PATCH)
    spread = pert.tokens_from_voxels(result.attributions.abs(), PATCH)
    assert float(per_token.abs().max()) < 0.02 * float(spread.max())
    assert float(result.relative_gap.max()) > 0.5  # and 16 steps are far from complete


# -- token order ----------------------------------------------------------------------------------


def test_tokens_from_voxels_follows_the_engines_token_order():
    torch.manual_seed(5)
    grid_maps = torch.rand(2, *TINY_GRID)
    voxels = tokens_to_voxels(grid_maps, PATCH, "nearest")
    tokens = pert.tokens_from_voxels(voxels, PATCH)
    torch.testing.assert_close(tokens, grid_maps.reshape(2, -1) * math.prod(PATCH))

    # The model's own patch split gives the same order: token i is the i-th patch it embeds.
    model = make_vit()
    adapter = find_adapter(model)
    assert adapter.geometry.grid_for(TINY_SHAPE) == TINY_GRID
    attributions = torch.randn(2, *TINY_SHAPE)
    patches = model.to_patch_embedding[0](attributions[:, None])  # [B, N, patch voxels]
    torch.testing.assert_close(pert.tokens_from_voxels(attributions, PATCH), patches.sum(dim=-1))
