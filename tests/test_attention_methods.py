"""Attention rollout, gradient-weighted rollout and LeGrad against references computed here.

The references take their own route to the attention maps: for vit-pytorch, hooks on the
softmax that call ``retain_grad``; for MONAI, a hand-written SABlock forward (its logits checked
against MONAI's own); then a plain ``backward()`` per sample with trainable parameters, and the
methods' formulas in numpy, one sample at a time.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import TINY_GRID, TINY_SHAPE, ViTWithHead, make_vit
from napari_g3dvit.cam.attention import ATTENTION_METHODS, AttentionResult, attention_scores
from napari_g3dvit.cam.engine import prepared_model
from napari_g3dvit.errors import SettingsError
from napari_g3dvit.models import find_adapter

CPU = torch.device("cpu")
NUM_PATCHES = int(np.prod(TINY_GRID))
MONAI_KWARGS = dict(in_channels=1, img_size=list(TINY_SHAPE), patch_size=[4, 4, 4], hidden_size=32,
                    mlp_dim=64, num_layers=2, num_heads=2, num_classes=3)


def make_monai(seed: int = 10, **overrides) -> nn.Module:
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(seed)
    net = nets.ViT(**{**MONAI_KWARGS, **overrides}, classification=True)
    with torch.no_grad():  # a CLS token of zeros and identity LayerNorms are too tame a test
        net.cls_token.normal_()
        for module in net.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.5)
    return net.eval()


def batch(size: int = 2, seed: int = 3) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(size, 1, *TINY_SHAPE)


def run(model, inputs, methods=ATTENTION_METHODS, targets=None) -> dict[str, AttentionResult]:
    adapter = find_adapter(model)
    with prepared_model(model, CPU):
        return attention_scores(adapter, inputs, methods, targets)


def logits_of(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


# -- the references ---------------------------------------------------------------------------

def vit_pytorch_maps(model, sample, target):
    """Attention maps and their gradients ([L, heads, T, T] each) of one sample, with logits."""
    vit = find_adapter(model).vit
    kept = []

    def keep(_m, _i, out):
        out.retain_grad()
        kept.append(out)

    handles = [attn.attend.register_forward_hook(keep) for attn, _ in vit.transformer.layers]
    try:
        logits = logits_of(model(sample[None]))
    finally:
        for handle in handles:
            handle.remove()
    return backward_maps(model, logits, kept, target)


def monai_forward(sa, kept):
    """MONAI's SABlock math written out (combined qkv, no mask, no relative positions)."""

    def forward(x, attn_mask=None):
        b, t, _ = x.shape
        qkv = sa.qkv(x).reshape(b, t, 3, sa.num_heads, sa.dim_head).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        probs = torch.softmax((q @ k.transpose(-1, -2)) * sa.scale, dim=-1)
        probs.retain_grad()
        kept.append(probs)
        return sa.out_proj((probs @ v).transpose(1, 2).reshape(b, t, -1))

    return forward


def monai_maps(model, sample, target):
    vit = find_adapter(model).vit
    kept = []
    for block in vit.blocks:
        block.attn.forward = monai_forward(block.attn, kept)
    try:
        logits = logits_of(model(sample[None]))
    finally:
        for block in vit.blocks:
            del block.attn.forward
    with torch.no_grad():
        own = logits_of(model(sample[None]))
    np.testing.assert_allclose(logits.detach().numpy(), own.numpy(), rtol=1e-5, atol=1e-6)
    return backward_maps(model, logits, kept, target)


def backward_maps(model, logits, kept, target):
    target = int(logits.argmax()) if target is None else int(target)
    logits[0, target].backward()
    model.zero_grad(set_to_none=True)
    maps = np.stack([a[0].detach().double().numpy() for a in kept])
    grads = np.stack([a.grad[0].double().numpy() for a in kept])
    return maps, grads, logits.detach()[0], target


def reference(method, maps, grads, mean_pool):
    """Patch-token scores [N] of one sample from maps/grads [L, heads, T, T]."""
    tokens = maps.shape[-1]
    eye = np.eye(tokens)
    rows = np.full(tokens, 1.0 / tokens) if mean_pool else eye[0]
    if method == "attention-rollout":
        flow = eye
        for a in maps:  # rows of a sum to 1, so (A + I) renormalised is (A + I) / 2
            flow = (0.5 * a.mean(0) + 0.5 * eye) @ flow
        return (rows @ flow)[1:]
    if method == "grad-rollout":
        rel = eye
        for a, g in zip(maps, grads):
            rel = rel + np.maximum(g * a, 0).mean(0) @ rel
        return (rows @ rel)[1:]
    if method == "legrad":
        return sum(np.maximum(g, 0).mean(axis=(0, 1)) for g in grads)[1:]
    raise AssertionError(method)


MODELS = {
    "vit-cls": lambda: make_vit(),
    "vit-mean-pool": lambda: make_vit(pool="mean"),
    "vit-with-head": lambda: (torch.manual_seed(1), ViTWithHead().eval())[1],
    "monai": lambda: make_monai(dropout_rate=0.1),
}


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("given_targets", [False, True])
def test_methods_match_reference(name, given_targets):
    model = MODELS[name]()
    maps_of = monai_maps if name == "monai" else vit_pytorch_maps
    inputs = batch()
    targets = torch.tensor([2, 0]) if given_targets and name != "vit-with-head" else None
    if given_targets and name == "vit-with-head":
        targets = torch.tensor([1, 0])
    results = run(model, inputs, targets=targets)
    assert list(results) == list(ATTENTION_METHODS)
    mean_pool = name == "vit-mean-pool"
    for b in range(inputs.shape[0]):
        maps, grads, logits, target = maps_of(model, inputs[b], None if targets is None else targets[b])
        for method, result in results.items():
            assert int(result.targets[b]) == target
            np.testing.assert_allclose(result.logits[b].numpy(), logits.numpy(), rtol=1e-5, atol=1e-6)
            expected = reference(method, maps, grads, mean_pool)
            scale = np.abs(expected).max()
            assert scale > 0, (method, "a reference of all zeros tests nothing")
            np.testing.assert_allclose(result.scores[b].numpy(), expected, rtol=1e-4, atol=1e-6 * scale,
                                       err_msg=f"{name} {method} sample {b}")


def test_monai_maps_are_monais_own():
    """The probabilities captured equal the ones MONAI stores itself with save_attn=True."""
    model = make_monai()
    inputs = batch()
    for block in model.blocks:
        block.attn.save_attn = True
    with torch.no_grad():
        model(inputs)
    saved = [block.attn.att_mat.double() for block in model.blocks]
    for block in model.blocks:
        block.attn.save_attn = False
    rollout = run(model, inputs, ["attention-rollout"])["attention-rollout"].scores
    for b in range(2):
        expected = reference("attention-rollout", np.stack([s[b].numpy() for s in saved]), None, False)
        np.testing.assert_allclose(rollout[b].numpy(), expected, rtol=1e-6, atol=1e-9)


def test_monai_flash_attention_blocks_are_read_and_switched_back():
    model = make_monai()
    for block in model.blocks:
        block.attn.use_flash_attention = True
    inputs = batch()
    before = snapshot(model)
    with torch.no_grad():
        own = model(inputs)[0]
    results = run(model, inputs)
    assert_same(before, snapshot(model))
    assert all(block.attn.use_flash_attention is True for block in model.blocks)
    np.testing.assert_allclose(results["legrad"].logits.numpy(), own.numpy(), rtol=1e-4, atol=1e-5)
    for block in model.blocks:
        block.attn.use_flash_attention = False
    plain = run(model, inputs)
    for method in ATTENTION_METHODS:
        np.testing.assert_allclose(results[method].scores.numpy(), plain[method].scores.numpy(),
                                   rtol=1e-4, atol=1e-7)


# -- properties -------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [make_vit, make_monai], ids=["vit", "monai"])
def test_rollout_is_class_agnostic_and_gradients_are_not(make):
    model = make()
    inputs = batch()
    per_class = [run(model, inputs, targets=torch.tensor([k, k])) for k in range(3)]
    for result in per_class[1:]:
        torch.testing.assert_close(result["attention-rollout"].scores, per_class[0]["attention-rollout"].scores,
                                   rtol=0, atol=0)
    for method in ("grad-rollout", "legrad"):
        assert not torch.allclose(per_class[0][method].scores, per_class[1][method].scores), method


@pytest.mark.parametrize("make", [make_vit, make_monai], ids=["vit", "monai"])
def test_logits_are_the_models_own(make):
    model = make()
    inputs = batch()
    with torch.no_grad():
        own = logits_of(model(inputs))
    for methods in (["attention-rollout"], list(ATTENTION_METHODS)):
        results = run(model, inputs, methods)
        for result in results.values():
            torch.testing.assert_close(result.logits, own, rtol=0, atol=0)
            assert not result.logits.requires_grad
            torch.testing.assert_close(result.targets, own.argmax(dim=1))


@pytest.mark.parametrize("make", [make_vit, make_monai], ids=["vit", "monai"])
def test_shapes_for_a_batch_of_two(make):
    model = make()
    adapter = find_adapter(model)
    assert adapter.geometry.num_patches == NUM_PATCHES
    for method, result in run(model, batch()).items():
        assert result.scores.shape == (2, adapter.geometry.num_patches), method
        assert result.logits.shape == (2, 3) and result.targets.shape == (2,)
        assert torch.isfinite(result.scores).all()


@pytest.mark.parametrize("make", [make_vit, make_monai], ids=["vit", "monai"])
def test_one_forward_for_all_methods(make):
    model = make()
    adapter = find_adapter(model)
    calls = []
    handle = adapter.vit.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        results = run(model, batch(), ATTENTION_METHODS)
    finally:
        handle.remove()
    assert set(results) == set(ATTENTION_METHODS)
    assert len(calls) == 1


# -- the model is left exactly as it was ------------------------------------------------------

def snapshot(model: nn.Module):
    """Everything a pass could leave behind: every module's attributes, hooks, parameters."""
    state = {}
    for name, module in model.named_modules():
        attrs = {}
        for key, value in vars(module).items():
            if isinstance(value, dict):
                attrs[key] = ("dict", id(value), tuple((k, id(v)) for k, v in value.items()))
            elif isinstance(value, (bool, int, float, str, type(None))):
                attrs[key] = ("value", value)
            else:
                attrs[key] = ("object", id(value))
        state[name] = attrs
    params = {n: (p.detach().clone(), p.requires_grad, p.grad) for n, p in model.named_parameters()}
    return state, params


def assert_same(before, after):
    assert after[0] == before[0]
    assert after[1].keys() == before[1].keys()
    for name, (value, flag, grad) in before[1].items():
        now_value, now_flag, now_grad = after[1][name]
        assert torch.equal(now_value, value) and now_flag == flag and now_grad is grad is None, name


def failing_module(model, adapter) -> nn.Module:
    """A module run after the first attention map, so the failure strikes mid-pass."""
    if adapter.architecture == "monai-vit":
        return adapter.vit.blocks[-1].mlp
    return adapter.vit.transformer.layers[-1][1]


@pytest.mark.parametrize("make", [make_vit, make_monai], ids=["vit", "monai"])
@pytest.mark.parametrize("methods", [["attention-rollout"], list(ATTENTION_METHODS)])
def test_model_restored_exactly_also_after_an_error(make, methods):
    model = make()
    model.train()  # prepared_model switches to eval; everything must come back
    adapter = find_adapter(model)
    inputs = batch()
    before = snapshot(model)
    run(model, inputs, methods)
    assert_same(before, snapshot(model))
    assert all(m.training for m in model.modules())

    def boom(*_):
        raise RuntimeError("boom")

    handle = failing_module(model, adapter).register_forward_hook(boom)
    with_failing_hook = snapshot(model)
    try:
        with prepared_model(model, CPU):
            inside = snapshot(model)
            with pytest.raises(RuntimeError, match="boom"):
                attention_scores(adapter, inputs, methods, None)
            assert_same(inside, snapshot(model))
        assert_same(with_failing_hook, snapshot(model))
    finally:
        handle.remove()
    assert_same(before, snapshot(model))
    # and the model still works as before
    model.eval()
    with torch.no_grad():
        logits_of(model(inputs))


def test_bad_requests_are_refused_plainly():
    model = make_vit()
    with pytest.raises(SettingsError, match="unknown attention method 'rollout'"):
        run(model, batch(), ["rollout"])
    with pytest.raises(SettingsError, match="target class 3 does not exist"):
        run(model, batch(), ["legrad"], targets=torch.tensor([0, 3]))
    assert not any(module._forward_hooks for module in model.modules())
