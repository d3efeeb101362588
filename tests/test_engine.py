"""The engine's contract: geometry, axis order, post-processing, series, and a model left as found."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_g3dvit as g3d
from napari_g3dvit.registry import CAM_METHODS
from napari_g3dvit.models import find_adapter
from napari_g3dvit.models.vit_pytorch3d import _cls_readout_forward

from conftest import TINY_GRID, TINY_SHAPE, make_vit


def snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        {n: m.training for n, m in model.named_modules()},
    )


def assert_unchanged(model, before):
    state, flags, modes = before
    after_state, after_flags, after_modes = snapshot(model)
    assert state.keys() == after_state.keys()
    for key in state:
        assert torch.equal(state[key], after_state[key]), key
    assert flags == after_flags
    assert modes == after_modes
    for name, module in model.named_modules():
        assert not module._forward_hooks and not module._forward_pre_hooks, name
        assert not module._backward_hooks, name
    assert all(p.grad is None for p in model.parameters())
    assert "forward" not in vars(find_adapter(model).vit)


def test_cls_fast_path_gives_the_models_own_logits(vit):
    torch.manual_seed(3)
    x = torch.randn(4, 1, *TINY_SHAPE)
    with torch.no_grad():
        np.testing.assert_allclose(_cls_readout_forward(vit, x), vit(x), atol=1e-5)


def test_geometry_is_read_from_the_model(vit):
    geometry = find_adapter(vit).geometry
    assert geometry.patch_size == (4, 4, 4)
    assert geometry.num_patches == 24 and geometry.num_prefix == 1 and geometry.channels == 1
    assert geometry.grid_for(TINY_SHAPE) == TINY_GRID


def test_default_layer_is_last_attention_norm(vit, vit_with_head, volume):
    assert g3d.explain(vit, volume, method="g3dvit").layer == "transformer.layers.1.0.norm"
    assert g3d.explain(vit_with_head, volume, method="g3dvit").layer == "vit.transformer.layers.1.0.norm"
    names = dict(g3d.token_layers(vit))
    assert names["transformer.layers.1.0.norm"] == (25, 32)
    assert names["to_patch_embedding.0"] == (24, 64)  # raw patch voxels, no CLS yet
    assert "mlp_head" not in names


@pytest.mark.parametrize("spot", [(2, 1, 3), (0, 1, 0), (1, 0, 2)])
def test_planted_token_lands_at_its_voxels_on_a_non_cubic_grid(vit, spot):
    """Only one patch of the volume is non-zero, so only its token has raw-voxel activations."""
    f, h, w = spot
    volume = torch.zeros(TINY_SHAPE)
    torch.manual_seed(4)
    volume[4 * f : 4 * f + 4, 4 * h : 4 * h + 4, 4 * w : 4 * w + 4] = torch.rand(4, 4, 4) + 0.5
    exp = g3d.explain(vit, volume, method="gradcam-elementwise", layer="to_patch_embedding.0",
                      threshold=None, upsample="nearest")
    assert exp.token_map.shape == TINY_GRID
    assert np.unravel_index(exp.token_map.argmax(), TINY_GRID) == spot
    assert np.count_nonzero(exp.token_map) == 1
    expected = np.zeros(TINY_SHAPE, dtype=bool)
    expected[4 * f : 4 * f + 4, 4 * h : 4 * h + 4, 4 * w : 4 * w + 4] = True
    np.testing.assert_array_equal(exp.heatmap > 0, expected)


def test_model_comes_back_as_it_was(vit_with_head, volume):
    model = vit_with_head.train()
    model.head[0].weight.requires_grad_(False)
    before = snapshot(model)
    g3d.explain(model, volume, method=list(g3d.METHODS))
    assert_unchanged(model, before)
    assert model.training and not model.head[0].weight.requires_grad


@pytest.mark.parametrize("layer", ["vit.mlp_head", "vit.transformer.layers.1.1"])
def test_model_comes_back_after_an_error_half_way(vit_with_head, volume, layer):
    before = snapshot(vit_with_head)
    with pytest.raises(g3d.LayerError):
        g3d.explain(vit_with_head, volume, method="g3dvit", layer=layer)
    assert_unchanged(vit_with_head, before)


def test_one_forward_for_all_methods_and_layers(vit, volume):
    calls = []
    handle = vit.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        layers = ["transformer.layers.0.1.net.0", "transformer.layers.1.0.norm"]
        out = g3d.explain(vit, volume, method=list(CAM_METHODS), layer=layers)
    finally:
        handle.remove()
    assert len(calls) == 1
    assert set(out) == {(m, n) for m in CAM_METHODS for n in layers}
    single = g3d.explain(vit, volume, method="hirescam", layer=layers[0])
    np.testing.assert_allclose(out[("hirescam", layers[0])].heatmap, single.heatmap, atol=1e-6)


def test_layer_given_as_module_and_list_of_layers(vit, volume):
    module = vit.transformer.layers[0][1].net[0]
    by_module = g3d.explain(vit, volume, method="g3dvit", layer=module)
    assert by_module.layer == "transformer.layers.0.1.net.0"
    by_list = g3d.explain(vit, volume, method="g3dvit", layer=[module, "transformer.layers.1.0.norm"])
    np.testing.assert_array_equal(by_list["transformer.layers.0.1.net.0"].heatmap, by_module.heatmap)


@pytest.mark.parametrize("percent", [5.0, 25.0, 50.0])
def test_threshold_keeps_the_top_percent(vit, volume, percent):
    full = g3d.explain(vit, volume, method="hirescam", threshold=None).token_map
    kept = g3d.explain(vit, volume, method="hirescam", threshold=percent).token_map
    cut = np.percentile(full, 100 - percent)
    np.testing.assert_array_equal(kept, np.where(full >= cut, full, 0))
    assert 0 < np.count_nonzero(kept) <= np.ceil(full.size * percent / 100) + 1


def test_maps_are_normalised_float32(vit, volume):
    exp = g3d.explain(vit, volume, method="hirescam", threshold=None)
    assert exp.heatmap.dtype == np.float32 and exp.heatmap.shape == TINY_SHAPE
    assert exp.token_map.min() == 0 and exp.token_map.max() == pytest.approx(1)
    assert 0 <= exp.heatmap.min() and exp.heatmap.max() <= 1
    assert exp.settings["threshold"] is None and exp.upsample == "trilinear"


def test_nearest_fills_each_patch_with_its_token(vit, volume):
    exp = g3d.explain(vit, volume, method="layercam", upsample="nearest", threshold=30)
    patches = exp.heatmap.reshape(3, 4, 2, 4, 4, 4)  # (F, pf, Gh, ph, Gw, pw)
    for f, h, w in np.ndindex(*TINY_GRID):
        assert np.all(patches[f, :, h, :, w, :] == exp.token_map[f, h, w])


def test_trilinear_differs_from_nearest_but_agrees_on_average(vit, volume):
    near = g3d.explain(vit, volume, method="layercam", upsample="nearest", threshold=None).heatmap
    lin = g3d.explain(vit, volume, method="layercam", upsample="trilinear", threshold=None).heatmap
    assert not np.allclose(near, lin)
    assert abs(near.mean() - lin.mean()) < 0.05


def test_series_matches_single_volumes_and_is_batched(vit):
    torch.manual_seed(5)
    series = torch.randn(5, *TINY_SHAPE)
    done = []
    exp = g3d.explain(vit, series.numpy(), method="gradcam", batch_size=2,
                      progress=lambda d, t: done.append((d, t)))
    assert exp.heatmap.shape == (5, *TINY_SHAPE) and exp.token_map.shape == (5, *TINY_GRID)
    assert exp.probabilities.shape == (5, 3) and exp.target.shape == (5,)
    assert done == [(2, 5), (4, 5), (5, 5)]
    for t in range(5):
        one = g3d.explain(vit, series[t], method="gradcam")
        np.testing.assert_allclose(exp.heatmap[t], one.heatmap, atol=1e-5)
        assert exp.target[t] == one.target


def test_one_target_per_timepoint(vit):
    torch.manual_seed(6)
    series = torch.randn(3, *TINY_SHAPE)
    exp = g3d.explain(vit, series, method="hirescam", target=[2, 0, 1], threshold=None)
    assert exp.target.tolist() == [2, 0, 1]
    for t, cls in enumerate([2, 0, 1]):
        one = g3d.explain(vit, series[t], method="hirescam", target=cls, threshold=None)
        np.testing.assert_allclose(exp.token_map[t], one.token_map, atol=1e-5)
    same = g3d.explain(vit, series, method="hirescam", target=1)
    assert same.target.tolist() == [1, 1, 1]


def test_cancelling_progress_stops_the_run(vit):
    class Stop(Exception):
        pass

    def stop(done, total):
        raise Stop

    before = snapshot(vit)
    with pytest.raises(Stop):
        g3d.explain(vit, torch.randn(4, *TINY_SHAPE), batch_size=1, progress=stop)
    assert_unchanged(vit, before)


def test_cpu_device_and_tensor_or_array_input(vit, volume):
    a = g3d.explain(vit, volume, device="cpu")
    b = g3d.explain(vit, volume.numpy().astype(np.float64), device=torch.device("cpu"))
    np.testing.assert_allclose(a.heatmap, b.heatmap, atol=1e-6)
    assert a.device == "cpu"


BAD_VOLUMES = [
    (np.zeros((12, 8)), "2 dimension"),
    (np.zeros((1, 1, 12, 8, 16)), "5 dimension"),
    (np.zeros((12, 8, 14)), "not a multiple"),
    (np.zeros((8, 8, 16)), "built for 24 patches"),
    (np.full(TINY_SHAPE, np.nan), "NaN"),
    (np.where(np.arange(12 * 8 * 16).reshape(TINY_SHAPE) == 7, np.inf, 0.0), "infinite"),
]


@pytest.mark.parametrize("bad, words", BAD_VOLUMES)
def test_bad_volumes_get_clear_errors(vit, bad, words):
    with pytest.raises(g3d.VolumeError, match=words):
        g3d.explain(vit, bad)


BAD_SETTINGS = [
    (dict(method="gradcam++"), g3d.SettingsError, "unknown method"),
    (dict(method=[]), g3d.SettingsError, "no method"),
    (dict(pooling="median"), g3d.SettingsError, "unknown pooling"),
    (dict(upsample="cubic"), g3d.SettingsError, "unknown upsampling"),
    (dict(threshold=0), g3d.SettingsError, "threshold"),
    (dict(threshold=150), g3d.SettingsError, "threshold"),
    (dict(target=3), g3d.SettingsError, "does not exist"),
    (dict(target=-1), g3d.SettingsError, "from 0"),
    (dict(target=[0, 1]), g3d.SettingsError, "2 targets were given for 1"),
    (dict(target=1.5), g3d.SettingsError, "class index"),
    (dict(batch_size=0), g3d.SettingsError, "batch_size"),
    (dict(device="tpu"), g3d.SettingsError, "device"),
    (dict(layer="transformer.layers.9.0.norm"), g3d.LayerError, "no layer named"),
    (dict(layer="mlp_head"), g3d.LayerError, "not a token sequence"),
    (dict(layer=torch.nn.LayerNorm(32)), g3d.LayerError, "not part of this model"),
    (dict(layer="transformer.layers.1.1"), g3d.LayerError, "zero for every patch token"),
]


@pytest.mark.parametrize("kwargs, error, words", BAD_SETTINGS)
def test_bad_settings_get_clear_errors(vit, volume, kwargs, error, words):
    if "layer" in kwargs:  # only the CAM methods read a layer; auto chooses its own
        kwargs = {"method": "g3dvit", **kwargs}
    with pytest.raises(error, match=words):
        g3d.explain(vit, volume, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(vit, volume):
    with pytest.raises(g3d.SettingsError, match="no usable CUDA"):
        g3d.explain(vit, volume, device="cuda")


def test_not_a_vit_is_a_clear_error(volume):
    with pytest.raises(g3d.ModelError, match="no 3D Vision Transformer"):
        g3d.explain(torch.nn.Conv3d(1, 2, 3), volume)
    with pytest.raises(g3d.ModelError, match="nn.Module"):
        g3d.explain("model.pt", volume)


def test_mean_pool_vit_uses_the_generic_path(volume):
    vit = make_vit(pool="mean")
    a = g3d.explain(vit, volume, method="hirescam", layer="transformer.layers.1.1", threshold=None)
    assert a.token_map.max() == pytest.approx(1)  # mean readout: patch tokens reach the score


def test_a_method_named_twice_is_computed_once(vit):
    torch.manual_seed(9)
    series = torch.randn(3, *TINY_SHAPE)
    out = g3d.explain(vit, series, method=["gradcam", "gradcam"])
    assert list(out) == ["gradcam"] and out["gradcam"].heatmap.shape == (3, *TINY_SHAPE)


def test_single_logit_model_predicts_by_its_sigmoid(volume):
    class OneLogit(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = make_vit(num_classes=1)

        def forward(self, x):
            return self.vit(x)[:, 0]

    model = OneLogit().eval()
    exp = g3d.explain(model, volume, method="hirescam")
    with torch.no_grad():
        p = torch.sigmoid(model(volume[None, None]))[0].item()
    assert exp.probabilities.shape == (1,) and exp.probabilities[0] == pytest.approx(p, abs=1e-6)
    assert exp.predicted == int(p >= 0.5)
