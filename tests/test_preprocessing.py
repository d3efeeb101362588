"""Preprocessing and its exact inverse, on MNI-sized volumes and nibabel's real fMRI run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import napari_g3dvit as g3d
from napari_g3dvit.models.preprocessing import Preprocessing

MNI_CROP = {"axes": [0, 1, 2], "crop": [[1, 0], [10, 9], [1, 0]], "normalize": "none"}


def kept_mask(shape, crop):
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(a, s - b) for s, (a, b) in zip(shape, crop))] = True
    return mask


def test_mni_crop_round_trip_is_exact():
    prep = Preprocessing.from_config(MNI_CROP)
    torch.manual_seed(0)
    volume = torch.rand(1, 91, 109, 91)
    model_in = prep.to_model(volume, (90, 90, 90))
    assert model_in.shape == (1, 90, 90, 90)
    back = prep.to_volume(model_in, (91, 109, 91))
    assert back.shape == volume.shape
    mask = kept_mask((91, 109, 91), MNI_CROP["crop"])
    np.testing.assert_array_equal(back[0].numpy()[mask], volume[0].numpy()[mask])
    assert not back[0].numpy()[~mask].any()  # zero where the crop removed voxels


def test_axes_and_padding_round_trip():
    spec = {"axes": [2, 0, 1], "crop": [[2, -3], [0, 0], [-1, 4]]}
    prep = Preprocessing.from_config(spec)
    volume = torch.arange(2 * 10 * 6 * 12, dtype=torch.float32).reshape(2, 10, 6, 12)
    model_in = prep.to_model(volume, None)
    # crop/pad on volume axes: 10-2+3=11, 6, 12+1-4=9; then axes (2, 0, 1) -> (9, 11, 6)
    assert model_in.shape == (2, 9, 11, 6)
    assert model_in[0, 1, 0, 0] == volume[0, 2, 0, 0]  # model (w=0+pad1, d=0, h=0) <- volume (2, 0, 0)
    back = prep.to_volume(model_in, (10, 6, 12))
    mask = np.zeros((10, 6, 12), dtype=bool)
    mask[2:, :, :8] = True
    np.testing.assert_array_equal(back.numpy()[:, mask], volume.numpy()[:, mask])
    assert not back.numpy()[:, ~mask].any()


def test_resample_goes_to_the_model_size_and_back():
    prep = Preprocessing.from_config({"resample": True, "normalize": "minmax"})
    volume = torch.rand(1, 40, 50, 30) * 7 + 3
    model_in = prep.to_model(volume, (24, 24, 24))
    assert model_in.shape == (1, 24, 24, 24)
    assert float(model_in.min()) == pytest.approx(0, abs=1e-6) and float(model_in.max()) == pytest.approx(1)
    assert prep.to_volume(torch.ones(1, 24, 24, 24), (40, 50, 30)).shape == (1, 40, 50, 30)


def test_zscore_is_per_timepoint():
    prep = Preprocessing.from_config({"normalize": "zscore"})
    series = torch.stack([torch.randn(8, 8, 8) * 5 + 100, torch.randn(8, 8, 8) * 0.1 - 3])
    out = prep.to_model(series, None)
    for t in range(2):
        assert float(out[t].mean()) == pytest.approx(0, abs=1e-5)
        assert float(out[t].std()) == pytest.approx(1, abs=1e-4)


def test_wrong_grid_without_crop_is_a_clear_error():
    prep = Preprocessing.from_config(None)
    with pytest.raises(g3d.VolumeError, match="91x109x91.*takes 90x90x90"):
        prep.to_model(torch.zeros(1, 91, 109, 91), (90, 90, 90))


def mni_model():
    """A tiny ViT with the published fMRI model's 90^3 input and MNI crop, 27 tokens."""
    from napari_g3dvit.models.loading import build_from_tensors
    from vit_pytorch.vit_3d import ViT

    vit_cfg = dict(image_size=90, image_patch_size=30, frames=90, frame_patch_size=30, num_classes=2,
                   dim=16, depth=1, heads=2, mlp_dim=32, channels=1, dim_head=8, pool="cls")
    torch.manual_seed(11)
    vit = ViT(**vit_cfg)
    with torch.no_grad():
        for m in vit.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.5)
    config = {"vit": vit_cfg, "preprocessing": dict(MNI_CROP, normalize="zscore")}
    return build_from_tensors(vit.state_dict(), config, "test")


def test_explain_on_the_mni_grid_comes_back_on_it():
    model = mni_model()
    torch.manual_seed(12)
    volume = torch.rand(91, 109, 91).numpy()
    exp = g3d.explain(model, volume, method="hirescam", threshold=None, upsample="nearest")
    assert exp.heatmap.shape == (91, 109, 91) and exp.token_map.shape == (3, 3, 3)
    mask = kept_mask((91, 109, 91), MNI_CROP["crop"])
    assert not exp.heatmap[~mask].any()
    # nearest upsampling: the token (f, h, w) fills model voxels [30f:30f+30, ...], i.e. volume
    # voxels shifted by the crop's leading amounts (1, 10, 1)
    f, h, w = np.unravel_index(exp.token_map.argmax(), (3, 3, 3))
    block = exp.heatmap[1 + 30 * f : 31 + 30 * f, 10 + 30 * h : 40 + 30 * h, 1 + 30 * w : 31 + 30 * w]
    assert np.all(block == 1.0)


def test_nibabel_example4d_fmri_run():
    """A real 4D fMRI run (128x96x24, 2 timepoints, time last in the file)."""
    nib = pytest.importorskip("nibabel")
    from nibabel.testing import data_path
    from napari_g3dvit.models.loading import build_from_tensors
    from vit_pytorch.vit_3d import ViT

    image = nib.load(Path(data_path) / "example4d.nii.gz")
    data = np.moveaxis(np.asarray(image.dataobj, dtype=np.float32), -1, 0)  # time first
    assert data.shape == (2, 128, 96, 24)
    vit_cfg = dict(image_size=(96, 24), image_patch_size=(16, 8), frames=128, frame_patch_size=32,
                   num_classes=2, dim=16, depth=1, heads=2, mlp_dim=32, channels=1, dim_head=8, pool="cls")
    torch.manual_seed(13)
    vit = ViT(**vit_cfg)
    config = {"vit": {**vit_cfg, "image_size": [96, 24], "image_patch_size": [16, 8]},
              "preprocessing": {"normalize": "zscore"}}
    model = build_from_tensors(vit.state_dict(), config, "example4d model")
    exp = g3d.explain(model, data, method="gradcam", threshold=10)
    assert exp.heatmap.shape == data.shape and exp.token_map.shape == (2, 4, 6, 3)
    assert np.isfinite(exp.heatmap).all() and 0 <= exp.heatmap.min() and exp.heatmap.max() <= 1
    assert exp.probabilities.shape == (2, 2) and np.allclose(exp.probabilities.sum(1), 1)
    assert exp.target.shape == (2,)


def test_crop_larger_than_the_volume_is_a_volume_error():
    prep = Preprocessing.from_config({"crop": [[30, 30], [0, 0], [0, 0]]})
    with pytest.raises(g3d.VolumeError, match="removes all of it"):
        prep.to_model(torch.zeros(1, 40, 20, 20), None)
