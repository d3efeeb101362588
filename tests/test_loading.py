"""Real checkpoint files written and read back: formats, prefixes, configs, legacy layout, safety."""

from __future__ import annotations

import json
import pathlib
import warnings

import numpy as np
import pytest
import torch
from einops.layers.torch import Rearrange
from torch import nn

import napari_g3dvit as g3d
from napari_g3dvit.models.loading import ViTClassifier

from conftest import TINY, make_vit

CONFIG = {"vit": {**TINY, "pool": "cls", "image_size": [8, 16], "image_patch_size": [4, 4], "num_classes": 16},
          "head": {"sizes": [16, 8, 2], "activation": "relu"}, "class_names": ["young", "old"]}
VIT_ONLY = {"vit": {**TINY, "pool": "cls", "image_size": [8, 16], "image_patch_size": [4, 4]}}


@pytest.fixture
def classifier() -> ViTClassifier:
    torch.manual_seed(7)
    head = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
    return ViTClassifier(make_vit(num_classes=16), head, CONFIG).eval()


@pytest.fixture
def inputs() -> torch.Tensor:
    torch.manual_seed(8)
    return torch.randn(3, 1, 12, 8, 16)


def same_predictions(a: nn.Module, b: nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-6)


def test_safetensors_round_trip(tmp_path, classifier, inputs):
    config_path = g3d.save_model(classifier, tmp_path / "brain.safetensors", CONFIG)
    assert config_path == tmp_path / "brain.json"
    saved = json.loads(config_path.read_text())
    assert saved["patch_layout"] == "pf p1 p2 c" and saved["vit_pytorch_version"]
    assert saved["class_names"] == ["young", "old"]
    loaded = g3d.load_model(tmp_path / "brain.safetensors")
    assert same_predictions(classifier, loaded, inputs)
    config_path.unlink()  # the config also travels inside the safetensors file
    assert same_predictions(classifier, g3d.load_model(tmp_path / "brain.safetensors"), inputs)


def test_pth_round_trip_with_config_json_in_folder(tmp_path, classifier, inputs):
    torch.save(classifier.state_dict(), tmp_path / "weights.pth")
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    loaded = g3d.load_model(tmp_path / "weights.pth")
    assert same_predictions(classifier, loaded, inputs)
    assert loaded.g3dvit_config["class_names"] == ["young", "old"]


@pytest.mark.parametrize("wrap", [
    lambda sd: {f"module.{k}": v for k, v in sd.items()},
    lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}, "epoch": 12,
                "global_step": 3400, "hyper_parameters": {"lr": 1e-4}},
    lambda sd: {"model_state_dict": sd, "optimizer_state_dict": {}, "epoch": 3},
    lambda sd: {"model": {("volume_encoder.vit3d." + k[4:] if k.startswith("vit.") else "classifier." + k[5:]): v
                          for k, v in sd.items()}},
], ids=["module-prefix", "lightning", "model_state_dict", "nested-prefix"])
def test_prefixed_and_nested_checkpoints(tmp_path, classifier, inputs, wrap):
    torch.save(wrap(classifier.state_dict()), tmp_path / "run.ckpt")
    loaded = g3d.load_model(tmp_path / "run.ckpt", config=CONFIG)
    assert same_predictions(classifier, loaded, inputs)


def test_config_inference_lists_exactly_what_is_missing(tmp_path):
    vit = make_vit()
    torch.save(vit.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(g3d.ModelError) as err:
        g3d.load_model(tmp_path / "bare.pt")
    message = str(err.value)
    for needed in ("vit.image_size", "vit.image_patch_size", "vit.frames", "vit.frame_patch_size", "vit.heads"):
        assert needed in message
    for fixed in ("dim=32", "depth=2", "mlp_dim=64", "num_classes=3", "heads x dim_head = 32", "24 patches"):
        assert fixed in message
    partial = {"vit": {"image_size": [8, 16], "image_patch_size": 4, "frames": 12,
                       "frame_patch_size": 4, "heads": 2, "pool": "cls"}}
    loaded = g3d.load_model(tmp_path / "bare.pt", config=partial)
    vit_cfg = loaded.g3dvit_config["vit"]
    assert (vit_cfg["dim"], vit_cfg["depth"], vit_cfg["mlp_dim"], vit_cfg["num_classes"],
            vit_cfg["channels"], vit_cfg["dim_head"]) == (32, 2, 64, 3, 1, 16)
    x = torch.randn(2, 1, 12, 8, 16)
    assert same_predictions(vit, loaded, x)


def test_head_without_activation_in_config_is_asked_for(tmp_path, classifier):
    torch.save(classifier.state_dict(), tmp_path / "w.pt")
    with pytest.raises(g3d.ModelError, match="activation"):
        g3d.load_model(tmp_path / "w.pt", config={"vit": CONFIG["vit"]})


def legacy_model(current: nn.Module) -> nn.Module:
    """The model as vit-pytorch <= 1.16.1 built it: patch features in (p1 p2 pf c) order."""
    import copy

    old = copy.deepcopy(current)
    old.to_patch_embedding[0] = Rearrange("b c (f pf) (h p1) (w p2) -> b (f h w) (p1 p2 pf c)",
                                          p1=4, p2=4, pf=4)
    return old


def test_legacy_patch_layout_is_converted_exactly(tmp_path, inputs):
    trained_as = legacy_model(make_vit(seed=9)).eval()  # its weights expect the old feature order
    torch.save(trained_as.state_dict(), tmp_path / "old.pth")
    config = dict(VIT_ONLY, patch_layout="p1 p2 pf c")
    converted = g3d.load_model(tmp_path / "old.pth", config=config)
    assert same_predictions(trained_as, converted, inputs)
    naive = g3d.load_model(tmp_path / "old.pth", config=VIT_ONLY)  # what a silent load does
    assert not same_predictions(trained_as, naive, inputs)
    g3d.save_model(converted, tmp_path / "new.safetensors", converted.g3dvit_config)
    assert json.loads((tmp_path / "new.json").read_text())["patch_layout"] == "pf p1 p2 c"
    assert same_predictions(trained_as, g3d.load_model(tmp_path / "new.safetensors"), inputs)


def test_monai_vit(tmp_path):
    monai = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(10)
    kwargs = dict(in_channels=1, img_size=[12, 8, 16], patch_size=[4, 4, 4], hidden_size=32,
                  mlp_dim=64, num_layers=2, num_heads=2, num_classes=3)
    net = monai.ViT(**kwargs, classification=True).eval()
    config = {"architecture": "monai-vit", "monai": kwargs}
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "m.pth")
    loaded = g3d.load_model(tmp_path / "m.pth", config=config)
    x = torch.randn(2, 1, 12, 8, 16)
    with torch.no_grad():
        assert torch.allclose(net(x)[0], loaded(x), atol=1e-6)
    exp = g3d.explain(loaded, x[0, 0], method=list(g3d.METHODS), threshold=None)
    assert exp["gradcam"].layer == "vit.blocks.1.norm1"
    assert exp["hirescam"].heatmap.shape == (12, 8, 16) and exp["hirescam"].token_map.shape == (3, 2, 4)
    direct = g3d.explain(net, x[0, 0], method="hirescam", threshold=None)  # the bare MONAI model
    np.testing.assert_allclose(direct.token_map, exp["hirescam"].token_map, atol=1e-5)


# -- safety ---------------------------------------------------------------------------------

def test_whole_pickled_model_is_refused_unless_trusted(tmp_path, inputs):
    vit = make_vit()
    torch.save(vit, tmp_path / "whole.pt")
    with pytest.raises(g3d.ModelError, match=r"torch.save\(model\).*trust_pickle=True"):
        g3d.load_model(tmp_path / "whole.pt")
    with pytest.warns(UserWarning, match="runs any code"):
        trusted = g3d.load_model(tmp_path / "whole.pt", trust_pickle=True)
    assert same_predictions(vit, trusted, inputs)


class _Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.target),))


def test_crafted_pickle_never_runs_unless_trusted(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"weights": torch.zeros(2), "x": _Payload(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(g3d.ModelError, match="refused"):
        g3d.load_model(tmp_path / "evil.pth")
    assert not marker.exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(g3d.ModelError):
            g3d.load_model(tmp_path / "evil.pth", trust_pickle=True)
    assert marker.exists()  # the payload is real: trusting the file ran it


# -- bad files and configs ------------------------------------------------------------------

def test_corrupt_and_truncated_files(tmp_path, classifier):
    g3d.save_model(classifier, tmp_path / "good.safetensors", CONFIG)
    blob = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(blob[: len(blob) // 2])
    torch.save(classifier.state_dict(), tmp_path / "good.pth")
    pth = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(pth[: len(pth) // 2])
    (tmp_path / "noise.pth").write_bytes(np.random.default_rng(0).bytes(4096))
    (tmp_path / "notes.pt").write_text("not a checkpoint at all\n")
    for name in ("cut.safetensors", "cut.pth", "noise.pth", "notes.pt"):
        with pytest.raises(g3d.ModelError, match=name) as err:
            g3d.load_model(tmp_path / name, config=CONFIG)
        assert "corrupt" in str(err.value) and "pickled" not in str(err.value), name
    with pytest.raises(g3d.ModelError, match="no checkpoint file"):
        g3d.load_model(tmp_path / "missing.safetensors")


def test_checkpoint_of_another_architecture(tmp_path):
    convnet = nn.Sequential(nn.Conv3d(1, 8, 3), nn.BatchNorm3d(8), nn.Flatten(), nn.Linear(8, 2))
    torch.save(convnet.state_dict(), tmp_path / "resnetish.pth")
    with pytest.raises(g3d.ModelError, match="no 'pos_embedding' tensor"):
        g3d.load_model(tmp_path / "resnetish.pth", config=VIT_ONLY)
    from vit_pytorch.vit import ViT as ViT2D

    flat = ViT2D(image_size=16, patch_size=4, num_classes=3, dim=32, depth=2, heads=2, mlp_dim=64, channels=1)
    torch.save(flat.state_dict(), tmp_path / "vit2d.pth")
    with pytest.raises(g3d.ModelError, match="2D|mlp_head|transformer.norm"):
        g3d.load_model(tmp_path / "vit2d.pth", config=VIT_ONLY)


def test_strict_loading_names_missing_and_unexpected_tensors(tmp_path, classifier):
    state = classifier.state_dict()
    extra = dict(state, **{"vit.transformer.layers.1.0.extra_scale": torch.ones(32)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(g3d.ModelError, match="unexpected 1 tensor.*extra_scale"):
        g3d.load_model(tmp_path / "extra.pth", config=CONFIG)
    fewer = {k: v for k, v in state.items() if "layers.1.0.norm.bias" not in k}
    torch.save(fewer, tmp_path / "fewer.pth")
    with pytest.raises(g3d.ModelError, match="missing 1 tensor.*layers.1.0.norm.bias"):
        g3d.load_model(tmp_path / "fewer.pth", config=CONFIG)


BAD_CONFIGS = [
    ({"vit": dict(CONFIG["vit"], dim=64)}, "vit.dim = 64, but the weights"),
    ({"vit": dict(CONFIG["vit"], frame_patch_size=-4)}, "frame_patch_size|fit the weights"),
    ({"vit": dict(CONFIG["vit"], image_size=[8, 15])}, "not a multiple|patches"),
    ({"architecture": "resnet3d", "vit": CONFIG["vit"]}, "not supported"),
    (dict(CONFIG, head={"sizes": [16, 9, 2], "activation": "relu"}), "head sizes"),
    (dict(CONFIG, class_names=["only-one"]), "class_names"),
    (dict(CONFIG, preprocessing={"axes": [0, 0, 2]}), "axes"),
    (dict(CONFIG, preprocessing={"normalize": "histogram"}), "normalize"),
]


@pytest.mark.parametrize("config, words", BAD_CONFIGS)
def test_nonsense_configs_are_clear_errors_and_write_nothing(tmp_path, classifier, config, words):
    torch.save(classifier.state_dict(), tmp_path / "w.pth")
    with pytest.raises(g3d.ModelError, match=words):
        g3d.load_model(tmp_path / "w.pth", config=config)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(g3d.ModelError, match=words):
        g3d.save_model(classifier, out / "m.safetensors", config)
    assert list(out.iterdir()) == []


def test_unreadable_config_file(tmp_path, classifier):
    torch.save(classifier.state_dict(), tmp_path / "w.pth")
    (tmp_path / "w.json").write_text("{not json")
    with pytest.raises(g3d.ModelError, match=r"w.json is not valid JSON"):
        g3d.load_model(tmp_path / "w.pth")
