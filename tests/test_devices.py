"""Devices: CUDA, Apple's GPU (mps) and the CPU, offered as torch reports them.

No Mac is available here: these tests check the logic with torch's availability answers set by
the test (what a Mac with MPS, or a machine without, would report), the messages, and the CPU
fallback when an operation has no MPS kernel. No computation ran on an Apple GPU.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import napari_g3dvit as g3d
from napari_g3dvit import devices
from napari_g3dvit.front import _on_mps_or_cpu

from conftest import open_widget

# torch's own words for an operation without an MPS kernel (torch 2.x)
MISSING = ("The operator 'aten::_upsample_trilinear3d' is not currently implemented for the MPS device. If you "
           "want this op to be added in priority during the prototype phase of this feature, please comment on "
           "https://github.com/pytorch/pytorch/issues/77764. As a temporary fix, you can set the environment "
           "variable `PYTORCH_ENABLE_MPS_FALLBACK=1` to use the CPU as a fallback for this op.")


def pretend(monkeypatch, cuda: int, mps: bool) -> None:
    """torch's answers on another machine: ``cuda`` GPUs, Apple's GPU or not."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: cuda)
    monkeypatch.setattr(devices, "mps_state", lambda: (mps, mps))


def test_the_list_and_the_default_follow_what_torch_reports(monkeypatch):
    assert devices.device_choices(2, True) == ["cuda:0", "cuda:1", "mps", "cpu"]
    assert devices.device_choices(0, False) == ["cpu"]
    pretend(monkeypatch, cuda=0, mps=True)  # a Mac with Apple silicon
    assert devices.available_devices() == ["mps", "cpu"]
    assert devices.resolve_device(None) == torch.device("mps")
    assert devices.resolve_device("mps") == torch.device("mps")
    assert devices.device_label("mps") == "mps (Apple GPU)"
    pretend(monkeypatch, cuda=1, mps=False)
    assert devices.available_devices()[0] == "cuda:0" and devices.resolve_device(None) == torch.device("cuda")


def test_asking_for_a_device_that_is_not_there_says_what_is(monkeypatch):
    pretend(monkeypatch, cuda=0, mps=False)
    monkeypatch.setattr(devices, "mps_state", lambda: (True, False))  # built with MPS, no Apple GPU here
    with pytest.raises(g3d.SettingsError, match="torch reports Apple's GPU \\(MPS\\) unavailable.*available here: cpu"):
        devices.resolve_device("mps")
    monkeypatch.setattr(devices, "mps_state", lambda: (False, False))
    with pytest.raises(g3d.SettingsError, match="built without MPS support"):
        devices.resolve_device("mps")
    with pytest.raises(g3d.SettingsError, match="no usable CUDA GPU; available here: cpu"):
        devices.resolve_device("cuda")
    with pytest.raises(g3d.SettingsError, match="'cpu', 'cuda', 'cuda:N' or 'mps'"):
        devices.resolve_device("tpu")
    from napari_g3dvit import api

    assert api.resolve_device is devices.resolve_device is g3d.resolve_device  # the library's names for it


def test_an_operation_missing_on_mps_runs_again_on_the_cpu_and_says_so():
    assert devices.missing_on_mps(NotImplementedError(MISSING))
    assert not devices.missing_on_mps(RuntimeError("CUDA out of memory"))
    asked = []

    def explain(**arguments):  # what explain's body does on a machine whose MPS lacks the operator
        asked.append(arguments["device"])
        if arguments["device"] == "mps":
            raise NotImplementedError(MISSING)
        return "explained on " + arguments["device"]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _on_mps_or_cpu(explain, {"model": None, "volume": None, "device": "mps"}) == "explained on cpu"
    assert asked == ["mps", "cpu"]
    assert "not available on Apple's GPU (mps)" in str(caught[0].message) and "aten::_upsample" in str(caught[0].message)

    def broken(**arguments):  # any other error is the caller's to see
        raise ValueError("bad volume")

    with pytest.raises(ValueError, match="bad volume"):
        _on_mps_or_cpu(broken, {"device": "mps"})


def test_the_widget_offers_apples_gpu_first_when_torch_reports_it(make_napari_viewer, monkeypatch):
    from napari_g3dvit.sample_models import sample_path

    pretend(monkeypatch, cuda=0, mps=True)
    viewer = make_napari_viewer()
    widget = open_widget(viewer)
    assert widget.load_model(sample_path("cube_value.safetensors"))
    shown = [widget.device.native.itemText(i) for i in range(widget.device.native.count())]
    assert shown == ["mps (Apple GPU)", "cpu"] and widget.device.value == "mps"
    assert widget.summary.value.endswith("mps")
