"""cp-lrp against a plain reference written here: a float64 copy of the model whose LayerNorms,
GELUs and attentions are replaced by hand-written conservative versions, and a full backward."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

import napari_g3dvit as g3d
from napari_g3dvit.cam.conservative import conservative_relevance
from napari_g3dvit.cam.engine import prepared_model
from napari_g3dvit.models import find_adapter

from conftest import TINY_SHAPE, make_vit

CPU = torch.device("cpu")
#: float32 engine against a float64 reference, relevance scaled by its largest magnitude: sums
#: of 32 channels x gradients that went through two blocks in float32 (see test_methods_reference)
F32_ATOL = 2e-4


class PlainLayerNorm(nn.Module):
    def __init__(self, ln: nn.LayerNorm):
        super().__init__()
        self.weight, self.bias, self.eps = ln.weight, ln.bias, ln.eps

    def forward(self, x):
        centred = x - x.mean(-1, keepdim=True)
        std = (centred.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
        return centred / std.detach() * self.weight + self.bias


class PlainGELU(nn.Module):
    def forward(self, x):
        phi = 0.5 * (1 + torch.erf(x / math.sqrt(2)))
        return x * phi.detach()


class PlainAttention(nn.Module):
    """vit-pytorch's Attention written out, probabilities detached."""

    def __init__(self, attn):
        super().__init__()
        self.norm, self.to_qkv, self.to_out = PlainLayerNorm(attn.norm), attn.to_qkv, attn.to_out
        self.heads, self.scale = attn.heads, attn.scale

    def forward(self, x):
        x = self.norm(x)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        probs = torch.softmax(q @ k.transpose(-1, -2) * self.scale, dim=-1).detach()
        return self.to_out((probs @ v).transpose(1, 2).flatten(2))


def conservative_copy(vit: nn.Module) -> nn.Module:
    """A float64 copy of a vit-pytorch ViT with every rule of cp-lrp written in by hand."""
    ref = copy.deepcopy(vit).double()
    for layer in ref.transformer.layers:
        layer[0] = PlainAttention(layer[0])
        net = layer[1].net
        net[0], net[2] = PlainLayerNorm(net[0]), PlainGELU()
    ref.mlp_head[0] = PlainLayerNorm(ref.mlp_head[0])
    return ref.eval()


def reference_relevance(vit: nn.Module, x: torch.Tensor, target: int, block: int = 0) -> np.ndarray:
    """Relevance of every token (CLS first) at ``block``'s input: [T], float64, full backward."""
    ref = conservative_copy(vit)
    tokens = ref.to_patch_embedding(x.double())
    tokens = torch.cat((ref.cls_token.expand(len(x), -1, -1), tokens), dim=1) + ref.pos_embedding
    stream = tokens.detach().requires_grad_(True)
    kept = stream
    for i, (attn, ff) in enumerate(ref.transformer.layers):
        if i == block and i > 0:
            kept = stream
            kept.retain_grad()
        stream = attn(stream) + stream
        stream = ff(stream) + stream
    logits = ref.mlp_head(stream.mean(dim=1) if ref.pool == "mean" else stream[:, 0])
    logits[0, target].backward()
    return (kept * kept.grad).sum(-1)[0].detach().numpy()


@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("block", [0, 1])
def test_cp_lrp_matches_a_plain_reference(pool, block):
    vit = make_vit(11, pool=pool)
    x = torch.randn(1, 1, *TINY_SHAPE, generator=torch.Generator().manual_seed(12))
    adapter = find_adapter(vit)
    with prepared_model(vit, CPU):
        result = conservative_relevance(adapter, x, None, blocks=(block,))[block]
    target = int(result.targets[0])
    expected = reference_relevance(vit, x, target, block)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(result.scores[0].numpy() / scale, expected[1:] / scale, atol=F32_ATOL)
    assert float(result.total[0]) == pytest.approx(expected.sum(), abs=F32_ATOL * scale * len(expected))


def without_biases(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.LayerNorm)) and module.bias is not None:
                module.bias.zero_()
    return model


def test_relevance_sums_to_the_logit_without_biases():
    """Under the conservative rules a bias-free ViT's logit is a linear function of its input
    tokens, so the relevance of all tokens (CLS included) adds up to the logit exactly."""
    vit = without_biases(make_vit(13))
    x = torch.randn(3, 1, *TINY_SHAPE, generator=torch.Generator().manual_seed(14))
    with prepared_model(vit, CPU):
        result = conservative_relevance(find_adapter(vit), x, None)[0]
        logits = vit(x)
    explained = logits.gather(1, result.targets[:, None])[:, 0]
    torch.testing.assert_close(result.total, explained, rtol=1e-4, atol=1e-4)


def test_monai_vit_relevance_sums_to_the_logit_without_biases():
    monai = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(15)
    net = without_biases(monai.ViT(in_channels=1, img_size=TINY_SHAPE, patch_size=(4, 4, 4), hidden_size=32,
                                   mlp_dim=64, num_layers=2, num_heads=2, num_classes=3, classification=True,
                                   post_activation=None))  # a Tanh after the head would not be linear
    net.eval()
    x = torch.randn(2, 1, *TINY_SHAPE, generator=torch.Generator().manual_seed(16))
    with prepared_model(net, CPU):
        result = conservative_relevance(find_adapter(net), x, torch.tensor([2, 0]))[0]
        logits = net(x)[0]
    torch.testing.assert_close(result.total, logits[[0, 1], [2, 0]], rtol=1e-4, atol=1e-4)
    assert result.scores.shape == (2, 24)


def test_model_comes_back_exactly_after_cp_lrp(vit, volume):
    vit.train()
    flags = [p.requires_grad for p in vit.parameters()]
    state = {k: v.clone() for k, v in vit.state_dict().items()}
    exp = g3d.explain(vit, volume, method="cp-lrp", relevance_block=1)
    assert exp.layer == "input of block 1 (conservative)"
    assert vit.training and [p.requires_grad for p in vit.parameters()] == flags
    assert all(torch.equal(state[k], v) for k, v in vit.state_dict().items())
    assert not any("forward" in m.__dict__ for m in vit.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in vit.modules())
    assert all(p.grad is None for p in vit.parameters())


def test_cp_lrp_on_a_series_with_a_target_per_timepoint(vit):
    series = torch.randn(4, *TINY_SHAPE, generator=torch.Generator().manual_seed(17))
    targets = [0, 2, 1, 2]
    together = g3d.explain(vit, series, method="cp-lrp", target=targets, batch_size=3, threshold=None)
    assert together.target.tolist() == targets
    for t in range(4):
        alone = g3d.explain(vit, series[t], method="cp-lrp", target=targets[t], threshold=None)
        np.testing.assert_allclose(together.token_map[t], alone.token_map, atol=1e-5)


def test_a_relevance_block_the_model_lacks_is_a_clear_error(vit, volume):
    with pytest.raises(g3d.SettingsError, match="0 to 1"):
        g3d.explain(vit, volume, method="cp-lrp", relevance_block=2)
