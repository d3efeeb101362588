"""GradMask against a plain reference written here: retained gradients, masks, one forward each."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_g3dvit as g3d
from napari_g3dvit.cam.engine import prepared_model
from napari_g3dvit.cam.gradmask import gradmask_scores
from napari_g3dvit.models import find_adapter

from conftest import TINY_GRID, TINY_SHAPE, make_vit
from test_attention_methods import batch, make_monai


def reference(model, inputs, heads):
    """GradMask the long way: a full backward with retained Q/K/V outputs, one masked forward each."""
    adapter = find_adapter(model)
    kept = []

    def keep(_module, _inputs, out):
        out.retain_grad()
        kept.append(out)

    handles = [m.register_forward_hook(keep) for m in adapter.qkv_modules()]
    x = inputs.clone().requires_grad_(True)
    logits = model(x)
    logits = logits[0] if isinstance(logits, tuple) else logits
    targets = logits.argmax(1)
    logits.gather(1, targets[:, None]).sum().backward()
    for h in handles:
        h.remove()
    num = int(np.prod(TINY_GRID))
    out = []
    for b in range(len(inputs)):
        masks = []
        for qkv in kept[:-1]:
            g = qkv.grad[b].reshape(qkv.shape[1], 3, heads, -1)
            for part in range(3):
                per_token = g[:, part].sum(-1).clamp(min=0)[-num:]  # [N, heads]
                for group in range(heads):
                    masks.append((per_token[:, group] > per_token[:, group].mean()).float())
        mean = inputs[b].mean()
        total = torch.zeros(num)
        for mask in masks:
            voxels = mask.reshape(TINY_GRID).repeat_interleave(4, 0).repeat_interleave(4, 1).repeat_interleave(4, 2)
            masked = torch.where(voxels > 0, inputs[b, 0], mean)[None, None]
            with torch.no_grad():
                probs = model(masked)
                probs = (probs[0] if isinstance(probs, tuple) else probs).softmax(1)
            total += probs[0, targets[b]] * mask
        out.append(total)
    return torch.stack(out), len(masks)


@pytest.mark.parametrize("make", [make_vit, make_monai], ids=["vit", "monai"])
def test_gradmask_equals_the_reference(make):
    model = make()
    inputs = batch(2)
    expected, count = reference(model, inputs, heads=2)
    adapter = find_adapter(model)
    with prepared_model(model, torch.device("cpu")):
        got = gradmask_scores(adapter, inputs, None, baseline="mean")
    assert got.masks == count == 3 * (2 - 1) * 2  # Q/K/V x blocks but the last x heads
    torch.testing.assert_close(got.scores.float(), expected, atol=1e-5, rtol=1e-4)


def test_gradmask_from_explain_counts_its_forwards(vit, volume):
    exp = g3d.explain(vit, volume, method="gradmask", device="cpu")
    assert exp.extra["forwards"] == 6 and exp.heatmap.shape == TINY_SHAPE and exp.heatmap.max() == 1.0
    with pytest.raises(g3d.SettingsError, match="masks_per_layer"):
        with prepared_model(vit, torch.device("cpu")):
            gradmask_scores(find_adapter(vit), torch.randn(1, 1, *TINY_SHAPE), None, masks_per_layer=3)
