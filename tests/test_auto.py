"""Every method through ``explain``, and ``method="auto"``: a choice made without ground truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_g3dvit as g3d
from napari_g3dvit.choice import choose_method, explain_auto
from napari_g3dvit.registry import CAM_METHODS, METHOD_LAYERS

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


def test_cam_and_attention_methods_share_one_pass(vit, volume):
    """All CAM methods at two layers and all attention methods from one forward (and one
    backward), with the same maps as when each family runs alone."""
    calls = []
    handle = vit.register_forward_pre_hook(lambda *_: calls.append(1))
    layers = ["transformer.layers.0.0.norm", "transformer.layers.1.0.norm"]
    attention = ["attention-rollout", "grad-rollout", "legrad"]
    together = g3d.explain(vit, volume, method=list(CAM_METHODS) + attention, layer=layers, device="cpu",
                           threshold=None)
    handle.remove()
    assert len(calls) == 1
    cams = g3d.explain(vit, volume, method=list(CAM_METHODS), layer=layers, device="cpu", threshold=None)
    alone = g3d.explain(vit, volume, method=attention, device="cpu", threshold=None)
    for key, exp in cams.items():
        np.testing.assert_allclose(together[key].token_map, exp.token_map, atol=1e-5)
    for method, exp in alone.items():
        np.testing.assert_allclose(together[(method, METHOD_LAYERS[method])].token_map, exp.token_map, atol=1e-5)


def test_auto_is_the_default_and_records_every_candidate(vit, volume):
    exp = g3d.explain(vit, volume, device="cpu", rechoose=True)
    auto = exp.extra["auto"]
    assert "relevance gain" in auto["criterion"] and auto["removal"] == "drop"
    finalists = [label for label, curve in auto["curves"].items() if curve["finalist"]]
    assert len(finalists) == 2 and auto["chosen"] in finalists  # the two best of round one
    best = max(auto["scores"][label] for label in finalists)
    assert auto["scores"][auto["chosen"]] >= best - 0.005  # a tie goes to the candidate listed first
    assert auto["chosen"] == next(label for label in finalists if auto["scores"][label] >= best - 0.005)
    assert auto["chosen"].startswith(exp.method)
    for label, curve in auto["curves"].items():  # the gain is insertion minus deletion, as recorded
        assert auto["scores"][label] == pytest.approx(curve["insertion"] - curve["deletion"], abs=1e-5)
        assert curve["counts"][0] == 1  # from one token up
    assert any(label.startswith("cp-lrp") for label in auto["scores"])


def test_auto_skips_candidates_that_cannot_run_and_says_why():
    vit = additive_vit()  # the attention branch is dead: CAM methods at the attention norms have no gradient
    volume = torch.randn(TINY_SHAPE, generator=torch.Generator().manual_seed(7))
    choice = choose_method(vit, volume.numpy(), device="cpu")
    assert {label.split(" @ ")[0] for label in choice.skipped} == set(CAM_METHODS) - {"g3dvit"}
    assert all("zero for every" in why for why in choice.skipped.values())
    assert choice.method not in CAM_METHODS and choice.scores


def test_auto_reuses_its_choice_until_the_model_or_input_changes(vit):
    series = torch.randn(4, *TINY_SHAPE, generator=torch.Generator().manual_seed(5))
    first = g3d.explain(vit, series, device="cpu", rechoose=True)
    again = g3d.explain(vit, series, device="cpu")
    assert not first.extra["auto"]["reused"] and again.extra["auto"]["reused"]
    np.testing.assert_array_equal(again.heatmap, first.heatmap)
    assert first.extra["auto"]["volumes"] == 3  # a series is judged on a few of its timepoints
    fresh = g3d.explain(vit, series, device="cpu", rechoose=True)
    assert not fresh.extra["auto"]["reused"]
    with torch.no_grad():  # the model changes in place (as training would): the old choice is stale
        next(vit.parameters()).add_(0.01)
    assert not g3d.explain(vit, series, device="cpu").extra["auto"]["reused"]
    other_target = g3d.explain(vit, series, device="cpu", target=2)
    assert not other_target.extra["auto"]["reused"]
    choice = choose_method(vit, series.numpy(), device="cpu")
    given = explain_auto(vit, series, choice=choice, device="cpu")
    assert given.extra["auto"]["reused"] and given.extra["auto"]["chosen"] == choice.label


def test_auto_on_a_trained_model_puts_its_heat_on_the_evidence():
    """The shipped cube-value model on its held-out example: auto's map holds several times the
    heat a map spread at random would put into the cube, and its choice removes evidence."""
    from napari_g3dvit.sample_models import sample_path
    import nibabel as nib

    model = g3d.load_model(sample_path("cube_value.safetensors"))
    volume = np.asarray(nib.load(sample_path("cube_value_example.nii.gz")).dataobj, dtype=np.float32)
    mask = np.asarray(nib.load(sample_path("cube_value_example_mask.nii.gz")).dataobj) > 0
    exp = g3d.explain(model, volume, threshold=None, rechoose=True)
    mass = float((exp.heatmap * mask).sum() / exp.heatmap.sum())
    assert mass >= 5 * mask.mean()
    auto = exp.extra["auto"]
    assert auto["curves"][auto["chosen"]]["deletion"] < 0.5 < auto["curves"][auto["chosen"]]["insertion"]


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
    assert "auto chose" in widget.result.value and "relevance gain" in widget.result.tooltip
    assert widget.result.tooltip.count(" @ ") >= 4  # every candidate with its score


@pytest.mark.parametrize("bad, words", [(dict(baseline="grey"), "baseline"), (dict(occlusion="half"), "occlusion"),
                                        (dict(steps=0), "steps")])
def test_new_settings_are_checked(vit, volume, bad, words):
    with pytest.raises(g3d.SettingsError, match=words):
        g3d.explain(vit, volume, method="occlusion", device="cpu", **bad)


def test_a_cohort_makes_the_choice_once(tmp_path):
    """g3dvit batch in one process: the second input of the same shape reuses the first one's choice."""
    import json

    import nibabel as nib

    from napari_g3dvit.cli import main
    from napari_g3dvit.models.loading import ViTClassifier

    from conftest import TINY

    config = {"vit": {**TINY, "image_size": [8, 16], "image_patch_size": [4, 4], "pool": "cls"},
              "input_orientation": "RAS"}
    model = tmp_path / "m.safetensors"
    g3d.save_model(ViTClassifier(make_vit(), None, config), model, config)
    rng = np.random.default_rng(8)
    for name in ("a", "b"):
        nib.save(nib.Nifti1Image(rng.normal(size=TINY_SHAPE).astype(np.float32), np.eye(4)), tmp_path / f"{name}.nii.gz")
    out = tmp_path / "out"
    assert main(["batch", str(tmp_path / "a.nii.gz"), str(tmp_path / "b.nii.gz"), "--out", str(out),
                 "--model", str(model), "--workers", "0", "--quiet"]) == 0
    first, second = (json.loads((out / f"{n}_desc-auto_heatmap.json").read_text())["auto"] for n in ("a", "b"))
    assert not first["reused"] and second["reused"] and second["chosen"] == first["chosen"]


def test_a_series_is_judged_where_the_model_sees_the_explained_class(vit):
    from napari_g3dvit.cam.engine import prepared_model
    from napari_g3dvit.choice import CHOICE_POOL, CHOICE_VOLUMES, _judged_timepoints
    from napari_g3dvit.models import find_adapter

    series = torch.randn(30, 1, *TINY_SHAPE, generator=torch.Generator().manual_seed(9))
    picks = _judged_timepoints(find_adapter(vit), series, 2, torch.device("cpu"))
    with prepared_model(vit, torch.device("cpu")), torch.no_grad():
        p2 = torch.softmax(vit(series), dim=1)[:, 2].numpy()
    pool = np.unique(np.linspace(0, 29, CHOICE_POOL).round().astype(int))
    assert len(picks) == CHOICE_VOLUMES and set(picks) <= set(pool)
    assert set(picks) == set(pool[np.argsort(-p2[pool])[:CHOICE_VOLUMES]])  # the surest of class 2
