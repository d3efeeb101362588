"""Faults injected on purpose: full disks, read-only folders, broken files, races, bad configs.

Every case checks the error class and words a user sees, and that nothing on disk or in memory
was lost or changed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import napari_g3dvit as g3d
from napari_g3dvit.models.loading import ViTClassifier
from napari_g3dvit.volumes import read_nifti, write_nifti

from conftest import TINY, TINY_SHAPE, ViTWithHead, make_vit

CONFIG = {"vit": {**TINY, "image_size": [8, 16], "image_patch_size": [4, 4], "pool": "cls"}}


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def run_with_file_size_limit(code: str, limit: int) -> subprocess.CompletedProcess:
    """Run ``code`` in a child whose writes stop at ``limit`` bytes per file (a full disk)."""
    prelude = ("import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n")
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parent)


# -- files on disk ------------------------------------------------------------------------------------------

def test_nifti_writer_keeps_the_original_when_the_disk_fills(tmp_path):
    target = tmp_path / "heat.nii.gz"
    original = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    write_nifti(target, original)
    before = target.read_bytes()
    code = ("import numpy as np; from napari_g3dvit.volumes import write_nifti\n"
            "big = np.random.default_rng(0).random((64, 64, 64), dtype=np.float32)\n"
            f"try:\n    write_nifti({str(target)!r}, big)\nexcept OSError as err:\n    print('OSError', err.errno)\n")
    child = run_with_file_size_limit(code, 20_000)
    assert child.returncode == 0 and child.stdout.startswith("OSError"), child.stderr
    assert target.read_bytes() == before  # the user's file is whole
    np.testing.assert_array_equal(nib.load(target).get_fdata(), original)
    assert leftovers(tmp_path, {"heat.nii.gz"}) == []


def test_nifti_writer_into_a_read_only_folder():
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="g3dvit-ro-"))  # under /tmp, reachable by any user
    os.chmod(folder, 0o555)
    code = ("import os, tempfile, numpy as np, nibabel; from napari_g3dvit.volumes import write_nifti\n"
            "import napari_g3dvit.atomic, nibabel.nifti1, gzip\n"  # everything loaded before dropping root
            "if os.getuid() == 0:\n    os.setuid(65534)\n"  # root would override the folder's mode
            f"try:\n    write_nifti({str(folder / 'x.nii.gz')!r}, np.zeros((2, 2, 2), 'float32'))\n"
            "except OSError as err:\n    print('OSError', err.errno)\n")
    try:
        child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert child.stdout.startswith("OSError"), child.stdout + child.stderr
        assert leftovers(folder, set()) == []
    finally:
        os.chmod(folder, 0o755)
        shutil.rmtree(folder)


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "m.safetensors"
    g3d.save_model(ViTClassifier(make_vit(seed=0), None, CONFIG), path, CONFIG)
    return path


def test_save_model_changes_both_files_or_neither(saved, tmp_path):
    weights, config = saved.read_bytes(), saved.with_suffix(".json").read_bytes()
    newer = ViTClassifier(make_vit(seed=5), None, CONFIG)
    # the config cannot be replaced (a folder stands in its way) after the weights were staged
    (tmp_path / "other.json").mkdir()
    with pytest.raises(OSError):
        g3d.save_model(newer, tmp_path / "other.safetensors", CONFIG)
    assert not (tmp_path / "other.safetensors").exists()  # no lone weights beside a broken config
    os.rmdir(tmp_path / "other.json")
    # the same with an existing pair: both keep their old bytes
    os.replace(saved.with_suffix(".json"), tmp_path / "kept.json")
    saved.with_suffix(".json").mkdir()
    with pytest.raises(OSError):
        g3d.save_model(newer, saved, CONFIG)
    assert saved.read_bytes() == weights
    os.rmdir(saved.with_suffix(".json"))
    os.replace(tmp_path / "kept.json", saved.with_suffix(".json"))
    assert saved.with_suffix(".json").read_bytes() == config
    assert leftovers(tmp_path, {"m.safetensors", "m.json"}) == []


def test_save_model_on_a_full_disk_is_an_oserror_and_keeps_the_pair(saved, tmp_path):
    weights, config = saved.read_bytes(), saved.with_suffix(".json").read_bytes()
    code = ("import napari_g3dvit as g3d\nfrom conftest import make_vit, TINY\n"
            "from napari_g3dvit.models.loading import ViTClassifier\n"
            f"cfg = {json.dumps(CONFIG)}\n"
            "try:\n"
            f"    g3d.save_model(ViTClassifier(make_vit(seed=5), None, cfg), {str(saved)!r}, cfg)\n"
            "except OSError as err:\n    print('OSError', type(err).__name__)\n"
            "except Exception as err:\n    print('OTHER', type(err).__module__, type(err).__name__)\n")
    child = run_with_file_size_limit(code, 4096)
    assert child.stdout.startswith("OSError"), child.stdout + child.stderr
    assert saved.read_bytes() == weights and saved.with_suffix(".json").read_bytes() == config
    assert leftovers(tmp_path, {"m.safetensors", "m.json"}) == []


@pytest.mark.parametrize("shape", ["empty", "text", "random", "truncated zip", "truncated safetensors", "folder"])
def test_unreadable_checkpoints(tmp_path, saved, shape):
    path = tmp_path / ("bad.safetensors" if shape == "truncated safetensors" else "bad.pth")
    if shape == "empty":
        path.write_bytes(b"")
    elif shape == "text":
        path.write_text("epoch 12, loss 0.31\n")
    elif shape == "random":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif shape == "truncated zip":
        torch.save(make_vit().state_dict(), path)
        assert zipfile.is_zipfile(path)
        path.write_bytes(path.read_bytes()[:3000])
    elif shape == "truncated safetensors":
        path.write_bytes(saved.read_bytes()[:2000])
    else:
        path.mkdir()
    with pytest.raises(g3d.ModelError) as info:
        g3d.load_model(path, config=CONFIG)
    message = str(info.value)
    assert str(path) in message
    assert ("not a checkpoint (truncated, corrupt, or another format)" in message) or (
        shape == "folder" and "is a folder" in message)


# -- configs -------------------------------------------------------------------------------------------------

BAD_CONFIGS = [
    ({"heads": "2"}, "vit.heads"),
    ({"image_patch_size": 0}, "vit.image_patch_size"),
    ({"dim_head": 0}, "vit.dim_head"),
    ({"frames": 12.0}, "vit.frames"),
    ({"depth": True}, "vit.depth"),
    ({"image_size": [8, "16"]}, "vit.image_size"),
    ({"pool": "max"}, "vit.pool"),
    ({"dropout": 2}, "vit.dropout"),
]


@pytest.mark.parametrize("change, field", BAD_CONFIGS)
def test_config_fields_of_the_wrong_type_or_range(saved, change, field):
    config = {"vit": {**CONFIG["vit"], **change}}
    with pytest.raises(g3d.ConfigError, match=field.replace(".", r"\.")):
        g3d.load_model(saved, config=config)


@pytest.mark.parametrize("config, field", [
    ({"vit": "big"}, "vit must be an object"),
    ({**CONFIG, "head": {"sizes": ["3", 2]}}, "head.sizes"),
    ({**CONFIG, "class_names": "a b c"}, "class_names"),
    ({**CONFIG, "preprocessing": [1, 2]}, "preprocessing"),
    ({**CONFIG, "architecture": 3}, "architecture"),
])
def test_config_sections_of_the_wrong_type(saved, config, field):
    with pytest.raises(g3d.ConfigError, match=field):
        g3d.load_model(saved, config=config)


def test_every_number_as_a_string_names_the_fields_not_a_mismatch(saved):
    config = {"vit": {k: str(v) if isinstance(v, int) else v for k, v in CONFIG["vit"].items()}}
    with pytest.raises(g3d.ConfigError) as info:
        g3d.load_model(saved, config=config)
    assert "vit.dim must be a positive whole number" in str(info.value) and "but the weights have" not in str(info.value)


# -- volumes --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("volume, words", [
    (torch.empty(TINY_SHAPE, device="meta"), "meta"),
    (np.zeros((0, *TINY_SHAPE), np.float32), "empty"),
    (np.zeros((0, 8, 16), np.float32), "empty"),
    (np.array([["a"]]), "numbers"),
    (np.full(TINY_SHAPE, np.nan, np.float32), "NaN"),
])
def test_bad_volumes_are_volume_errors(vit, volume, words):
    with pytest.raises(g3d.VolumeError, match=words):
        g3d.explain(vit, volume, device="cpu")


def test_volumes_are_never_changed(tmp_path):
    cfg = {**CONFIG, "preprocessing": {"normalize": "zscore"}}
    g3d.save_model(ViTClassifier(make_vit(), None, cfg), tmp_path / "z.safetensors", cfg)
    model = g3d.load_model(tmp_path / "z.safetensors")
    volume = np.random.default_rng(0).normal(5.0, 2.0, size=TINY_SHAPE).astype(np.float32)
    before = volume.copy()
    g3d.explain(model, volume, device="cpu")
    tensor = torch.from_numpy(volume.copy())
    g3d.explain(model, tensor, device="cpu")
    np.testing.assert_array_equal(volume, before)
    np.testing.assert_array_equal(tensor.numpy(), before)


def test_nifti_with_an_empty_axis_is_refused_at_reading(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 0, 3), np.float32), np.eye(4)), tmp_path / "empty.nii.gz")
    with pytest.raises(g3d.NiftiError, match="no voxels") as info:
        read_nifti(tmp_path / "empty.nii.gz")
    assert isinstance(info.value, g3d.VolumeError)


# -- the model in memory ----------------------------------------------------------------------------------------

def model_state(model):
    return ([p.requires_grad for p in model.parameters()], [m.training for m in model.modules()],
            sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()),
            [k for m in model.modules() for k in vars(m) if k == "forward"],
            {k: v.clone() for k, v in model.state_dict().items()})


def assert_same_state(a, b):
    assert a[:4] == b[:4]
    assert a[4].keys() == b[4].keys() and all(torch.equal(a[4][k], b[4][k]) for k in a[4])


def test_two_threads_explaining_one_model_take_turns(vit, volume):
    vit.train()
    for i, param in enumerate(vit.parameters()):
        param.requires_grad_(i % 2 == 0)
    before = model_state(vit)
    volumes = [volume, torch.flip(volume, dims=[0])]
    serial = [g3d.explain(vit, v, method=["g3dvit", "hirescam"], device="cpu") for v in volumes]
    errors, results = [], {0: [], 1: []}

    def work(index):
        try:
            for _ in range(12):
                results[index].append(g3d.explain(vit, volumes[index], method=["g3dvit", "hirescam"], device="cpu"))
        except Exception as err:  # pragma: no cover - the failure is the assertion below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for index in (0, 1):
        for maps in results[index]:
            for method in ("g3dvit", "hirescam"):
                np.testing.assert_array_equal(maps[method].heatmap, serial[index][method].heatmap)
    assert_same_state(model_state(vit), before)


@pytest.mark.parametrize("where", ["forward hook", "backward"])
def test_model_comes_back_after_an_error_inside_the_pass(vit_with_head, volume, where):
    model = vit_with_head
    model.train()
    before = model_state(model)

    def fail(*_args):
        raise RuntimeError(f"injected in the {where}")

    if where == "forward hook":
        handle = model.vit.transformer.layers[0][0].register_forward_hook(fail)
    else:
        handle = model.head.register_full_backward_hook(fail)
    with pytest.raises(RuntimeError, match="injected"):
        g3d.explain(model, volume, device="cpu")
    handle.remove()
    assert_same_state(model_state(model), before)


# -- diagnoses from the numbers seen -------------------------------------------------------------------------------

def test_all_negative_scores_are_named_as_such(vit, volume):
    with torch.no_grad():
        vit.transformer.layers[1][0].norm.bias.fill_(-10.0)  # every token's channel sum < 0
    with pytest.warns(RuntimeWarning, match="every token's score was negative"):
        exp = g3d.explain(vit, volume, method="g3dvit", pooling="relu", device="cpu")
    assert not exp.heatmap.any()


def test_a_head_that_blocks_the_gradient_is_named_as_such(volume):
    model = ViTWithHead().eval()
    with torch.no_grad():
        model.head[0].bias.fill_(-1000.0)  # the ReLU after it sees only negative inputs
    with pytest.raises(g3d.LayerError) as info:
        g3d.explain(model, volume, method="g3dvit", device="cpu")
    message = str(info.value)
    assert "zero for every token, the CLS token included" in message and "another layer will not help" in message
    assert "(the default)" not in message
