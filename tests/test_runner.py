"""The run core the widget wires, without a display: no viewer, no Qt."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import napari_g3dvit as g3d
from napari_g3dvit.models.loading import ViTClassifier
from napari_g3dvit.runner import (
    ExplainRun,
    HeatLayer,
    RunFailure,
    VolumeSource,
    describe_error,
    labels_on_grid,
    open_model,
    same_run,
)

from conftest import TINY, TINY_SHAPE, make_vit

CONFIG = {"vit": {**TINY, "image_size": [8, 16], "image_patch_size": [4, 4], "pool": "cls"},
          "class_names": ["left", "middle", "right"], "input_orientation": "LAS"}


@pytest.fixture
def loaded(tmp_path):
    g3d.save_model(ViTClassifier(make_vit(), None, CONFIG), tmp_path / "m.safetensors", CONFIG)
    return open_model(tmp_path / "m.safetensors")


def source(data, scale=(2.0, 2.0, 2.0)):
    ndim = data.ndim
    matrix = np.eye(ndim + 1)
    matrix[np.arange(ndim), np.arange(ndim)] = (1.0,) * (ndim - 3) + tuple(scale)
    transform = {"scale": np.diag(matrix)[:ndim], "translate": np.zeros(ndim), "rotate": np.eye(ndim),
                 "shear": np.zeros(ndim * (ndim - 1) // 2), "affine": np.eye(ndim + 1)}
    return VolumeSource(data=data, name="vol", to_world=matrix, transform=transform)


def test_core_needs_no_qt(loaded):
    import subprocess

    script = ("import sys, numpy as np; from napari_g3dvit.runner import ExplainRun, VolumeSource, open_model; "
              f"m = open_model({str(loaded.path)!r}); "
              "s = VolumeSource(np.zeros((12, 8, 16), 'float32'), 'v', np.eye(4), {}); "
              "ExplainRun(m, s, {'device': 'cpu'}).run(); "
              "print(sorted(n for n in sys.modules if n.split('.')[0] in ('PyQt6', 'PySide6', 'qtpy', 'vispy')))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_core_run_reorients_for_the_model(loaded):
    volume = np.random.default_rng(0).normal(size=TINY_SHAPE).astype(np.float32)
    run = ExplainRun(loaded, source(volume), {"method": "hirescam", "device": "cpu"})
    heat = run.run()
    assert isinstance(heat, HeatLayer) and heat.data.shape == TINY_SHAPE
    direct = g3d.explain(loaded.model, volume[::-1], method="hirescam", device="cpu")  # LAS for the model
    np.testing.assert_allclose(heat.data, direct.heatmap[::-1], atol=1e-6)  # back on the RAS voxels
    assert heat.record["input_orientation"] == "LAS" and heat.record["volume_orientation"] == "RAS"
    assert same_run(heat.record, dict(heat.record)) and not same_run(heat.record, {**heat.record, "method": "x"})


def test_steps_return_failures_instead_of_raising(loaded):
    run = ExplainRun(loaded, source(np.zeros((4, 4, 4), dtype=np.float32)), {"device": "cpu"})
    gen = run.steps()
    with pytest.raises(StopIteration) as stop:
        while True:
            next(gen)
    assert isinstance(stop.value.value, RunFailure) and "the model takes 12x8x16" in stop.value.value.message


def test_closing_the_steps_puts_the_model_back(loaded):
    series = np.random.default_rng(1).normal(size=(6, *TINY_SHAPE)).astype(np.float32)
    run = ExplainRun(loaded, source(series), {"device": "cpu"}, step=2)
    gen = run.steps()
    assert next(gen) == (0, 6) and next(gen) == (2, 6)
    gen.close()  # what a worker's quit does
    assert next(loaded.model.parameters()).device.type == "cpu" and not loaded.model._forward_hooks


def test_out_of_memory_message_says_what_to_do():
    message = describe_error(torch.OutOfMemoryError("CUDA out of memory."), "cuda:0")
    assert "cuda:0" in message and "batch size" in message and "'cpu'" in message


def test_labels_on_grid_matches_scipy():
    from scipy.ndimage import affine_transform

    rng = np.random.default_rng(2)
    labels = rng.integers(0, 5, size=(20, 18, 22)).astype(np.int16)
    labels_to_world = np.diag([1.5, 1.5, 1.5, 1.0])
    labels_to_world[:3, 3] = [-3.1, 2.2, 0.4]
    grid_to_world = np.diag([3.0, 3.0, 3.0, 1.0])
    grid_to_world[:3, 3] = [-2.0, 3.0, 1.0]
    shape = (9, 8, 10)
    got = labels_on_grid(labels, labels_to_world, shape, grid_to_world)
    to_labels = np.linalg.inv(labels_to_world) @ grid_to_world
    want = affine_transform(labels, to_labels, output_shape=shape, order=0, mode="constant", cval=0)
    np.testing.assert_array_equal(got, want)
    assert got.any()
