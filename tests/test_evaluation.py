"""Synthetic data, metrics on maps whose answers are known, toy training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_g3dvit.evaluation import metrics as M
from napari_g3dvit.evaluation.synthetic import CubeTask, make_cubes

from conftest import make_vit


def test_aligned_position_task():
    spec = CubeTask("position", grid=40, cube=8, aligned=True)
    s = make_cubes(spec, 20, seed=1)
    assert s.volumes.shape == (20, 40, 40, 40) and s.volumes.dtype == np.float32
    assert spec.num_classes == 125 and s.labels.max() < 125
    for volume, label, mask, corner in zip(s.volumes, s.labels, s.masks, s.corners):
        assert tuple(corner) == tuple(np.array(np.unravel_index(label, (5, 5, 5))) * 8)
        assert mask.sum() == 512 and np.all(volume[mask] == 1) and not volume[~mask].any()
    again = make_cubes(spec, 20, seed=1)
    np.testing.assert_array_equal(again.volumes, s.volumes)
    assert not np.array_equal(make_cubes(spec, 20, seed=2).labels, s.labels)


def test_unaligned_position_and_value_tasks_with_noise():
    spec = CubeTask("position", grid=40, cube=8, aligned=False, noise=0.5)
    s = make_cubes(spec, 30, seed=3)
    centres = s.corners + 4
    np.testing.assert_array_equal(s.labels, np.ravel_multi_index(tuple((centres // 8).T), (5, 5, 5)))
    assert abs(s.volumes[~s.masks].std() - 0.5) < 0.01
    value = make_cubes(CubeTask("value", grid=40, cube=8, aligned=False), 30, seed=4)
    for volume, label, mask in zip(value.volumes, value.labels, value.masks):
        assert np.all(volume[mask] == (1 if label == 1 else -1))
    assert set(value.labels) == {0, 1}
    with pytest.raises(ValueError, match="multiple of the cube"):
        CubeTask("position", grid=40, cube=7)


@pytest.fixture
def region():
    mask = np.zeros((16, 16, 16), dtype=bool)
    mask[4:8, 8:12, 0:4] = True
    return mask


def test_metrics_of_perfect_inverted_random_and_uniform_maps(region):
    perfect, inverted = region.astype(float), (~region).astype(float)
    fraction = region.mean()
    assert M.relevance_mass(perfect, region) == 1.0
    assert M.relevance_mass(inverted, region) == 0.0
    assert M.relevance_mass(np.ones(region.shape), region) == pytest.approx(fraction)
    random = np.random.default_rng(0).random(region.shape)
    assert M.relevance_mass(random, region) == pytest.approx(fraction, abs=0.01)
    assert M.pointing_game(perfect, region) and not M.pointing_game(inverted, region)
    assert M.pointing_game(np.pad(np.ones((1, 1, 1)), ((3, 12), (7, 8), (0, 15))), region, tolerance=1)
    pct = 100 * fraction
    assert M.topk_iou(perfect, region, pct) == 1.0
    assert M.topk_iou(inverted, region, pct) == 0.0
    assert M.topk_iou(perfect, region, pct, patch=(4, 4, 4)) == 1.0


def test_token_ranking_moves_whole_patches():
    heat = np.zeros((8, 8, 8))
    heat[4:8, 0:4, 4:8] = 0.5
    heat[4, 0, 4] = 1.0  # one hot voxel inside the second-best token
    heat[0:4, 0:4, 0:4] = 0.9
    order = M.ranking(heat, patch=(4, 4, 4))
    first = np.zeros(512, bool)
    first[order[:64]] = True
    assert first.reshape(8, 8, 8)[0:4, 0:4, 0:4].all()  # token mean 0.9 beats 0.5 + one spike
    voxel_first = M.ranking(heat)[0]
    assert np.unravel_index(voxel_first, heat.shape) == (4, 0, 4)


def test_deletion_and_insertion_separate_good_from_bad_maps(region):
    volume = np.where(region, 1.0, 0.0).astype(np.float32)

    def predict(volumes):  # a model whose confidence is the share of the cube still present
        kept = volumes[:, region].mean(axis=1).clip(0, 1)
        return np.stack([1 - kept, kept], axis=1)

    perfect, inverted = region.astype(float), (~region).astype(float)
    kwargs = dict(baseline="zero", steps=64, patch=(4, 4, 4))
    fr, curve, good_del = M.perturbation_curve(predict, volume, perfect, 1, "deletion", **kwargs)
    assert fr[0] == 0 and fr[-1] == 1 and curve[0] == 1 and curve[-1] == 0
    _, _, bad_del = M.perturbation_curve(predict, volume, inverted, 1, "deletion", **kwargs)
    _, _, good_ins = M.perturbation_curve(predict, volume, perfect, 1, "insertion", **kwargs)
    _, _, bad_ins = M.perturbation_curve(predict, volume, inverted, 1, "insertion", **kwargs)
    assert good_del == pytest.approx(1 / 64 / 2, abs=1e-9)  # gone after the first of 64 tokens
    assert bad_del == pytest.approx(1 - 1 / 64 / 2, abs=1e-9)
    assert good_ins > 0.95 and bad_ins < 0.05


def test_baselines():
    volume = np.random.default_rng(1).random((12, 12, 12)).astype(np.float32)
    assert not M.baseline_volume(volume, "zero").any()
    assert np.allclose(M.baseline_volume(volume, "mean"), volume.mean())
    blurred = M.baseline_volume(volume, "blur", sigma=2)
    assert blurred.std() < volume.std() / 2 and abs(blurred.mean() - volume.mean()) < 0.02
    with pytest.raises(ValueError, match="unknown baseline"):
        M.baseline_volume(volume, "noise")


def test_spearman():
    a = np.arange(27.0)
    assert M.spearman(a, a * 3 + 1) == pytest.approx(1)
    assert M.spearman(a, -a) == pytest.approx(-1)
    assert M.spearman(a, np.ones(27)) == 0.0


def test_cascade_randomisation_goes_top_down_and_leaves_the_model():
    vit = make_vit()
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    stages = M.cascade_randomized(vit, seed=0)
    assert [label for label, _ in stages] == ["mlp_head", "block 1", "block 0"]
    for key, value in vit.state_dict().items():
        assert torch.equal(value, before[key])
    last = stages[-1][1].state_dict()
    assert not torch.equal(last["transformer.layers.0.0.to_qkv.weight"], before["transformer.layers.0.0.to_qkv.weight"])
    assert torch.equal(last["pos_embedding"], before["pos_embedding"])  # the embedding is kept
    first = stages[0][1].state_dict()
    assert torch.equal(first["transformer.layers.1.0.to_qkv.weight"], before["transformer.layers.1.0.to_qkv.weight"])


def test_training_on_a_toy_size():
    from napari_g3dvit.evaluation.train import build_vit, train_classifier

    spec = CubeTask("value", grid=8, cube=4, aligned=False)
    val = make_cubes(spec, 16, seed=99)
    vit = build_vit(dict(image_size=8, image_patch_size=4, frames=8, frame_patch_size=4, num_classes=2,
                         dim=16, depth=1, heads=2, dim_head=8, mlp_dim=32, channels=1))

    def data(epoch):
        s = make_cubes(spec, 64, seed=epoch)
        return s.volumes, s.labels

    result = train_classifier(vit, data, (val.volumes, val.labels), epochs=2, batch_size=16, lr=1e-3,
                              progress=False)
    assert len(result.history) == 2 and 0 <= result.validation_accuracy <= 1
    assert not result.model.training


def test_train_recipe_writes_a_loadable_model_and_its_example(tmp_path, monkeypatch):
    import json

    import nibabel as nib

    import napari_g3dvit as g3d
    from napari_g3dvit.evaluation import recipes

    toy = recipes.Recipe("toy", "a toy value task", "cube", CubeTask("value", grid=10, cube=4, aligned=False),
                         patch=5, per_epoch=16, epochs=1, batch_size=8, lr=1e-3, n_val=8,
                         recommended={"layer": "vit.transformer.layers.0.0.norm", "method": "hirescam"})
    monkeypatch.setitem(recipes.RECIPES, "toy", toy)
    config = recipes.train_recipe("toy", tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "toy.json", "toy.safetensors", "toy_example.nii.gz", "toy_example_mask.nii.gz"]
    saved = json.loads((tmp_path / "toy.json").read_text())
    assert saved["validation_accuracy"] == config["validation_accuracy"]
    assert saved["training"]["command"] == f"g3dvit train toy --out {tmp_path}"
    assert saved["recommended_explanation"]["method"] == "hirescam"
    model = g3d.load_model(tmp_path / "toy.safetensors")
    example = np.asarray(nib.load(tmp_path / "toy_example.nii.gz").dataobj)
    mask = np.asarray(nib.load(tmp_path / "toy_example_mask.nii.gz").dataobj).astype(bool)
    assert example.shape == mask.shape == (10, 10, 10) and mask.sum() == 64
    assert g3d.explain(model, example, method="gradcam").heatmap.shape == (10, 10, 10)
