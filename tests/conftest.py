"""Tiny real vit-pytorch models shared by the tests (CPU, a few milliseconds each)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

vit_3d = pytest.importorskip("vit_pytorch.vit_3d")

# A non-cubic grid: frames 12 / 4 = 3, height 8 / 4 = 2, width 16 / 4 = 4 -> 24 patch tokens.
TINY = dict(image_size=(8, 16), image_patch_size=(4, 4), frames=12, frame_patch_size=4,
            num_classes=3, dim=32, depth=2, heads=2, mlp_dim=64, channels=1, dim_head=16)
TINY_SHAPE = (12, 8, 16)
TINY_GRID = (3, 2, 4)


def make_vit(seed: int = 0, **overrides) -> nn.Module:
    """A randomly initialised tiny 3D ViT whose LayerNorm affines are randomised too.

    Freshly built LayerNorms have weight 1 and bias 0, which makes the G3D-ViT map exactly zero
    (the channel sum of a normalised token is 0); trained models never look like that.
    """
    torch.manual_seed(seed)
    vit = vit_3d.ViT(**{**TINY, **overrides})
    with torch.no_grad():
        for module in vit.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.5)
    return vit.eval()


class ViTWithHead(nn.Module):
    """A ViT followed by a projection head, as in the published fMRI model."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.vit = make_vit(seed, num_classes=16)
        self.head = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x):
        return self.head(self.vit(x))


@pytest.fixture
def vit() -> nn.Module:
    return make_vit()


@pytest.fixture
def vit_with_head() -> nn.Module:
    torch.manual_seed(1)
    return ViTWithHead().eval()


@pytest.fixture
def volume() -> torch.Tensor:
    torch.manual_seed(2)
    return torch.randn(TINY_SHAPE)


def open_widget(viewer):
    """The explain widget exactly as Plugins > Explain 3D ViT opens it."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-g3dvit", "Explain 3D ViT")
    return widget


@pytest.fixture
def no_private_access():
    """Fails the test on napari's warning about private attributes (plugins get a proxy viewer)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    private = [str(w.message) for w in caught if "Private attribute" in str(w.message)]
    assert not private, private
