"""Every method against a plain reference computed here from a full ``backward()``.

The reference runs in float64 on a copy of the model, so it is exact to about 1e-15 relative;
the engine runs in float32. Tolerances follow from float32 rounding, not from one machine's
results (see ``F32_MAP_ATOL``).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import napari_g3dvit as g3d
from napari_g3dvit.registry import CAM_METHODS

from conftest import TINY_GRID


#: Float32 against the float64 reference, on maps normalised to [0, 1]: each token score sums
#: C = 32 channel products whose factors went through two blocks (forward and backward, sums of
#: up to 64 terms each) in float32, so each carries a relative rounding error of a few hundred
#: float32 epsilons at most (64 terms x a handful of layers x eps = 1.2e-7); 2e-4 allows that
#: on every CPU and thread count, and is still far below any difference between two methods.
F32_MAP_ATOL = 2e-4
EPS64 = float(np.finfo(np.float64).eps)


def full_backward(model, volume, layer_name, target=None):
    """Activations and gradients of one layer ([T, C] each, float64), the plain way: a full
    backward through a float64 copy of the model."""
    model = copy.deepcopy(model).double()
    volume = volume.double()
    modules = dict(model.named_modules())
    kept = {}

    def keep(_m, _i, out):
        out.retain_grad()
        kept["a"] = out

    handle = modules[layer_name].register_forward_hook(keep)
    try:
        logits = model(volume[None, None])
    finally:
        handle.remove()
    target = int(logits.argmax()) if target is None else target
    logits[0, target].backward()
    model.zero_grad(set_to_none=True)
    return kept["a"][0].detach().numpy(), kept["a"].grad[0].numpy(), target


def reference_scores(method, a, g, pooling="mean"):
    """Raw patch-token scores [N] from activations/gradients [1 + N, C] (CLS first)."""
    a, g = a.astype(np.float64), g.astype(np.float64)
    if method == "g3dvit":
        pooled = {"mean": g.mean(1), "max": g.max(1), "absmean": np.abs(g).mean(1),
                  "relu": np.maximum(g, 0).mean(1)}[pooling]
        return (pooled * a.sum(1))[1:]
    a, g = a[1:], g[1:]
    if method == "gradcam":
        return (g.mean(0)[None] * a).sum(1)
    if method == "layercam":
        return (np.maximum(g, 0) * a).sum(1)
    if method == "gradcam-elementwise":
        return np.maximum(g * a, 0).sum(1)
    if method == "hirescam":
        return (g * a).sum(1)
    raise AssertionError(method)


def reference_map(scores, percent=None):
    cam = np.maximum(scores, 0)
    cam = (cam - cam.min()) / (cam.max() - cam.min())
    if percent is not None:
        cam = np.where(cam >= np.percentile(cam, 100 - percent), cam, 0)
    return cam.reshape(TINY_GRID)


@pytest.mark.parametrize("layer", ["transformer.layers.1.0.norm", "transformer.layers.0.1.net.0",
                                   "transformer.layers.1.0.to_qkv"])
def test_every_method_matches_full_backward(vit, volume, layer):
    a, g, target = full_backward(vit, volume, layer)
    results = g3d.explain(vit, volume, method=list(CAM_METHODS), layer=layer, threshold=None)
    assert set(results) == set(CAM_METHODS)
    for method, exp in results.items():
        expected = reference_map(reference_scores(method, a, g))
        np.testing.assert_allclose(exp.token_map, expected, atol=F32_MAP_ATOL, err_msg=method)
        assert exp.target == target and exp.layer == layer and exp.method == method


@pytest.mark.parametrize("pooling", g3d.POOLINGS)
def test_g3dvit_poolings_match_reference(vit, volume, pooling):
    a, g, target = full_backward(vit, volume, "transformer.layers.1.0.norm")
    exp = g3d.explain(vit, volume, method="g3dvit", pooling=pooling, threshold=None)
    np.testing.assert_allclose(exp.token_map, reference_map(reference_scores("g3dvit", a, g, pooling)), atol=F32_MAP_ATOL)
    assert exp.pooling == pooling


def test_reference_with_head_and_chosen_target(vit_with_head, volume):
    layer = "vit.transformer.layers.1.0.norm"
    a, g, _ = full_backward(vit_with_head, volume, layer, target=0)
    for method in CAM_METHODS:
        exp = g3d.explain(vit_with_head, volume, method=method, target=0, threshold=10)
        expected = reference_map(reference_scores(method, a, g), percent=10)
        np.testing.assert_allclose(exp.token_map, expected, atol=F32_MAP_ATOL, err_msg=method)
        assert exp.layer == layer and exp.target == 0


def test_probabilities_are_the_models_softmax(vit_with_head, volume):
    with torch.no_grad():
        probs = torch.softmax(vit_with_head(volume[None, None]), dim=1)[0].numpy()
    exp = g3d.explain(vit_with_head, volume)
    np.testing.assert_allclose(exp.probabilities, probs, atol=1e-5)
    assert exp.target == int(probs.argmax()) == exp.predicted


def test_g3dvit_is_empty_on_the_residual_stream(vit, volume):
    """The residual stream reaches the score only through LayerNorms, so mean_C G = 0 there.

    The reference agrees to rounding; the engine reports an empty map and warns instead of
    normalising rounding noise into a picture. The other methods still match the reference.
    """
    layer = "transformer.layers.0.0"
    a, g, _ = full_backward(vit, volume, layer)
    # exactly 0 in real arithmetic; in float64 the mean of C terms keeps at most C * eps64 of
    # their magnitude (with a factor 4 for the LayerNorm backward's own sums)
    channels = g.shape[1]
    assert np.all(np.abs(g.mean(1)) <= 4 * channels * EPS64 * np.abs(g).mean(1))
    with pytest.warns(RuntimeWarning, match="zero everywhere"):
        results = g3d.explain(vit, volume, method=list(CAM_METHODS), layer=layer, threshold=None)
    assert not results["g3dvit"].heatmap.any()
    for method in ("gradcam", "layercam", "gradcam-elementwise", "hirescam"):
        expected = reference_map(reference_scores(method, a, g))
        np.testing.assert_allclose(results[method].token_map, expected, atol=F32_MAP_ATOL, err_msg=method)
