"""Every method through ``explain``, and ``method="auto"``: a choice made without ground truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_g3dvit as g3d
from napari_g3dvit.choice import choose_method, explain_auto
from napari_g3dvit.options import CAM_METHODS, METHOD_LAYERS

from conftest import TINY_SHAPE, make_vit, open_widget


def additive_vit(seed: int = 3):
    """A ViT whose score is a sum over tokens: attention outputs zeroed, mean pooling, 2 classes.

    Each token then passes through its own MLP and the readout averages them, so removing a
    token changes the score by exactly that token's occlusion drop, and deleting the tokens that
    occlusion ranks highest is provably the deletion that lowers the score most.
    """
    vit = make_vit(seed, pool="mean", num_classes=2)
    with torch.no_grad():
        for layer in vit.transformer.layers:
            out = layer[0].to_out[0]
            out.weight.zero_()
            out.bias.zero_()
    return vit.eval()


def test_every_method_from_explain(vit, volume):
    maps = g3d.explain(vit, volume, method=list(g3d.METHODS), device="cpu")
    assert list(maps) == list(g3d.METHODS)
    for name, exp in maps.items():
        assert exp.heatmap.shape == TINY_SHAPE and exp.token_map.shape == (3, 2, 4), name
        assert exp.method == name and exp.heatmap.max() <= 1.0
        if name not in CAM_METHODS:
            assert exp.layer == METHOD_LAYERS[name]
    assert maps["occlusion"].extra["forwards"] > 0


def test_methods_on_a_series_keep_one_map_per_timepoint(vit):
    series = torch.randn(5, *TINY_SHAPE, generator=torch.Generator().manual_seed(4))
    together = g3d.explain(vit, series, method=["grad-rollout", "occlusion"], device="cpu", batch_size=2)
    alone = g3d.explain(vit, series[3], method="grad-rollout", device="cpu")
    assert together["grad-rollout"].heatmap.shape == (5, *TINY_SHAPE)
    np.testing.assert_allclose(together["grad-rollout"].heatmap[3], alone.heatmap, atol=1e-6)


def test_families_share_their_passes(vit, volume):
    """All CAM methods and layers from one forward, all attention methods from one more."""
    calls = []
    handle = vit.register_forward_pre_hook(lambda *_: calls.append(1))
    g3d.explain(vit, volume, method=list(CAM_METHODS) + ["attention-rollout", "grad-rollout", "legrad"],
                layer=["transformer.layers.0.0.norm", "transformer.layers.1.0.norm"], device="cpu")
    handle.remove()
    assert len(calls) == 2


def test_auto_picks_the_provably_most_faithful_candidate():
    vit = additive_vit()
    volume = torch.randn(TINY_SHAPE, generator=torch.Generator().manual_seed(7))
    choice = choose_method(vit, volume.numpy(), device="cpu")
    occlusion = choice.scores[f"occlusion @ {METHOD_LAYERS['occlusion']}"]
    assert occlusion >= max(choice.scores.values()) - 1e-6  # nothing deletes more evidence
    assert choice.scores[f"{choice.method} @ {choice.layer or METHOD_LAYERS[choice.method]}"] == max(choice.scores.values())
    # the attention branch is dead, so the CAM methods at the attention norms cannot run: said, not hidden
    assert set(choice.skipped) == set(CAM_METHODS) and "zero for every token" in choice.skipped["hirescam"]
    assert len(choice.scores) == 4  # 3 attention methods and occlusion


def test_auto_records_the_candidates_and_reuses_a_choice(vit):
    series = torch.randn(4, *TINY_SHAPE, generator=torch.Generator().manual_seed(5))
    exp = g3d.explain(vit, series, method="auto", device="cpu")
    auto = exp.extra["auto"]
    assert auto["chosen"].startswith(exp.method) and "MoRF" in auto["criterion"]
    assert auto["scores"][auto["chosen"]] == max(auto["scores"].values())
    choice = choose_method(vit, series.numpy(), device="cpu")
    reused = explain_auto(vit, series, choice=choice, device="cpu")
    np.testing.assert_array_equal(reused.heatmap, exp.heatmap)
    assert exp.settings["details"]["auto"]["chosen"] == auto["chosen"]


def test_auto_in_the_widget_shows_why(make_napari_viewer, qtbot, tmp_path):
    from napari_g3dvit.models.loading import ViTClassifier
    from napari_g3dvit.runner import RESULT_KEY

    from conftest import TINY

    config = {"vit": {**TINY, "image_size": [8, 16], "image_patch_size": [4, 4], "pool": "cls"},
              "input_orientation": "RAS"}
    g3d.save_model(ViTClassifier(make_vit(), None, config), tmp_path / "m.safetensors", config)
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.random.default_rng(0).normal(size=TINY_SHAPE).astype(np.float32), name="v")
    widget = open_widget(viewer)
    assert widget.method.value == "auto"  # the default
    assert widget.load_model(tmp_path / "m.safetensors")
    widget.volume.value = layer
    widget.run()
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    assert not widget.last_error, widget.last_error
    record = widget.last_layer.metadata[RESULT_KEY]
    assert record["method"] == "auto" and record["method_used"] in g3d.METHODS
    assert "auto chose" in widget.result.value and "MoRF" in widget.result.tooltip
    assert widget.result.tooltip.count(" @ ") >= 10  # every candidate with its score


@pytest.mark.parametrize("bad, words", [(dict(baseline="grey"), "baseline"), (dict(occlusion="half"), "occlusion"),
                                        (dict(steps=0), "steps")])
def test_new_settings_are_checked(vit, volume, bad, words):
    with pytest.raises(g3d.SettingsError, match=words):
        g3d.explain(vit, volume, method="occlusion", device="cpu", **bad)
