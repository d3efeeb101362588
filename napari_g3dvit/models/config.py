"""The model config: what a checkpoint file does not say about its architecture.

Schema (a JSON file beside the checkpoint, or a dict)::

    {"architecture": "vit-pytorch-3d",
     "vit": {"image_size": 90, "image_patch_size": 9, "frames": 90, "frame_patch_size": 9,
             "num_classes": 2, "dim": 1024, "depth": 6, "heads": 8, "mlp_dim": 2048,
             "pool": "cls", "channels": 1, "dim_head": 64},
     "head": null,                       # or {"sizes": [1024, 512, 2], "activation": "relu"}
     "patch_layout": "pf p1 p2 c",       # "p1 p2 pf c": vit-pytorch 1.16.1 or older
     "preprocessing": {"axes": [0, 1, 2], "crop": [[1, 0], [10, 9], [1, 0]],
                       "normalize": "zscore"},
     "class_names": ["young", "old"],
     "input_orientation": "RAS",          # or "LAS", ..., "stored": how the training arrays ran
     "input_space": {"affine": [[3, 0, 0, -82], ...], "shape": [56, 72, 56],
                     "template": "MNI152NLin2009cAsym"}}  # the grid it was trained on (space.py)

Fields the tensors determine may be left out and are inferred; what they cannot determine must
be given, and the error lists exactly what is missing.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import ModelError

ARCHITECTURES = ("vit-pytorch-3d", "monai-vit")
CURRENT_LAYOUT = "pf p1 p2 c"
LEGACY_LAYOUT = "p1 p2 pf c"
PATCH_LAYOUTS = (CURRENT_LAYOUT, LEGACY_LAYOUT)
NORMALIZATIONS = ("none", "zscore", "minmax")
HEAD_ACTIVATIONS = ("relu", "gelu", "tanh", "none")

VIT_INT_FIELDS = ("frames", "frame_patch_size", "num_classes", "dim", "depth", "heads",
                  "mlp_dim", "channels", "dim_head")


class ConfigError(ModelError):
    """The config is missing, unreadable, or holds values that make no model."""


def pair(value) -> tuple[int, int]:
    """(height, width) from an int or a 2-sequence."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ConfigError(f"expected one size or (height, width), got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def read_config_file(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read the model config {path}: {err.strerror or err}") from err
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"the model config {path} is not valid JSON ({err.msg}, line {err.lineno})") from err
    if not isinstance(config, dict):
        raise ConfigError(f"the model config {path} must hold a JSON object, not {type(config).__name__}")
    return config


def find_config_beside(checkpoint: Path) -> Path | None:
    """``<name>.json`` beside the checkpoint, else ``config.json`` in its folder."""
    name = checkpoint.name
    for suffix in (".safetensors", ".pth", ".pt", ".ckpt", ".bin"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for candidate in (checkpoint.with_name(name + ".json"), checkpoint.with_name("config.json")):
        if candidate.is_file():
            return candidate
    return None


def _kind(value: Any) -> str:
    return {str: "a string", bool: "true/false", int: "a whole number", float: "a decimal number", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def _is_whole(value: Any, low: int = 1) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _sizes(value: Any) -> bool:
    """One positive whole number, or a (height, width) pair of them."""
    if isinstance(value, (list, tuple)):
        return len(value) == 2 and all(_is_whole(v) for v in value)
    return _is_whole(value)


#: what each given field must be: (check, expected, in words)
_VIT_FIELDS = {
    **{key: (_is_whole, "a positive whole number, e.g. 8") for key in VIT_INT_FIELDS},
    "image_size": (_sizes, "a positive whole number or [height, width]"),
    "image_patch_size": (_sizes, "a positive whole number or [height, width]"),
    "pool": (lambda v: v in ("cls", "mean"), "'cls' or 'mean'"),
    "dropout": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1,
                "a number from 0 to below 1"),
    "emb_dropout": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1,
                    "a number from 0 to below 1"),
}
_TOP_FIELDS = {
    "architecture": (lambda v: isinstance(v, str), f"a name, one of {', '.join(map(repr, ARCHITECTURES))}"),
    "vit": (lambda v: isinstance(v, dict), "an object of the ViT's constructor arguments"),
    "monai": (lambda v: isinstance(v, dict), "an object of monai.networks.nets.ViT arguments"),
    "head": (lambda v: v is None or isinstance(v, dict), "null or {\"sizes\": [...], \"activation\": ...}"),
    "patch_layout": (lambda v: v in PATCH_LAYOUTS, f"{CURRENT_LAYOUT!r} or {LEGACY_LAYOUT!r}"),
    "preprocessing": (lambda v: v is None or isinstance(v, dict), "null or an object (axes, crop, ...)"),
    "class_names": (lambda v: v is None or (isinstance(v, list) and all(isinstance(n, str) for n in v)),
                    "a list of names (strings)"),
    "input_orientation": (lambda v: v is None or isinstance(v, str), "'stored' or axis codes such as 'RAS'"),
    "input_space": (lambda v: v is None or isinstance(v, dict),
                    "null or {\"affine\": 4x4, \"shape\": [X, Y, Z], \"template\": ...}"),
}


def check_given(config: Any) -> None:
    """Types and ranges of every field a config gives, before anything uses them.

    ConfigError names the field, what it must be and what it is; fields left out are fine here
    (the weights may determine them).
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"the model config must be an object (a JSON dict), not {_kind(config)}")
    problems = []

    def check(section: str, fields: dict, values: Mapping) -> None:
        for key, (ok, expected) in fields.items():
            if key in values and not ok(values[key]):
                problems.append(f"{section}{key} must be {expected}, got {values[key]!r} ({_kind(values[key])})")

    check("", _TOP_FIELDS, config)
    if isinstance(config.get("vit"), dict):
        check("vit.", _VIT_FIELDS, config["vit"])
    head = config.get("head")
    if isinstance(head, dict):
        check("head.", {"sizes": (lambda v: isinstance(v, list) and len(v) >= 2 and all(_is_whole(n) for n in v),
                                  "a list of at least two positive whole numbers [in, ..., classes]"),
                        "activation": (lambda v: v in HEAD_ACTIVATIONS, f"one of {', '.join(HEAD_ACTIVATIONS)}")},
              head)
    if problems:
        raise ConfigError("the model config has values of the wrong type or range: " + "; ".join(problems))


def _positive_int(section: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"config {section}.{key} must be a positive whole number, got {value!r}")
    return value


def validate(config: Mapping) -> dict:
    """A checked, normalised copy of a complete config; ConfigError names each bad value."""
    check_given(config)
    cfg = copy.deepcopy(dict(config))
    arch = cfg.setdefault("architecture", "vit-pytorch-3d")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"config architecture {arch!r} is not supported; use one of {', '.join(ARCHITECTURES)}")
    vit = cfg.get("vit")
    if not isinstance(vit, dict):
        raise ConfigError("config needs a 'vit' object with the ViT's constructor arguments")
    for key in VIT_INT_FIELDS:
        vit[key] = _positive_int("vit", key, vit.get(key))
    for key in ("image_size", "image_patch_size"):
        value = vit.get(key)
        sizes = value if isinstance(value, (list, tuple)) else [value]
        for size in sizes:
            _positive_int("vit", key, size)
        vit[key] = list(pair(value)) if isinstance(value, (list, tuple)) else int(value)
    image, patch = pair(vit["image_size"]), pair(vit["image_patch_size"])
    for size, step, what in ((image[0], patch[0], "image height"), (image[1], patch[1], "image width"),
                             (vit["frames"], vit["frame_patch_size"], "frames")):
        if size % step:
            raise ConfigError(f"config vit: {what} {size} is not a multiple of its patch size {step}")
    vit.setdefault("pool", "cls")
    if vit["pool"] not in ("cls", "mean"):
        raise ConfigError(f"config vit.pool must be 'cls' or 'mean', got {vit['pool']!r}")
    head = cfg.setdefault("head", None)
    if head is not None:
        sizes = head.get("sizes") if isinstance(head, dict) else None
        if not isinstance(sizes, list) or len(sizes) < 2:
            raise ConfigError("config head needs 'sizes': [in, ..., classes], at least two numbers")
        for size in sizes:
            _positive_int("head", "sizes", size)
        if sizes[0] != vit["num_classes"]:
            raise ConfigError(
                f"config head takes {sizes[0]} inputs but the ViT gives {vit['num_classes']} outputs "
                "(vit.num_classes); they must match"
            )
        head.setdefault("activation", "relu")
        if head["activation"] not in HEAD_ACTIVATIONS:
            raise ConfigError(f"config head.activation must be one of {', '.join(HEAD_ACTIVATIONS)}")
    layout = cfg.setdefault("patch_layout", CURRENT_LAYOUT)
    if layout not in PATCH_LAYOUTS:
        raise ConfigError(f"config patch_layout must be {CURRENT_LAYOUT!r} or {LEGACY_LAYOUT!r} (vit-pytorch <= 1.16.1), got {layout!r}")
    names = cfg.get("class_names")
    if names is not None:
        classes = head["sizes"][-1] if head else vit["num_classes"]
        if not isinstance(names, list) or len(names) != classes:
            raise ConfigError(f"config class_names must list {classes} names, one per class")
    cfg.setdefault("preprocessing", None)
    check_input_orientation(cfg)
    check_input_space(cfg, input_shape(cfg))
    return cfg


def check_input_orientation(cfg: dict) -> None:
    """Normalise ``cfg["input_orientation"]`` in place (absent: the model's orientation is unknown)."""
    from ..orientation import ORIENTATION_KEY, check_orientation

    if cfg.get(ORIENTATION_KEY) is not None:
        try:
            cfg[ORIENTATION_KEY] = check_orientation(cfg[ORIENTATION_KEY])
        except ValueError as err:
            raise ConfigError(f"config {err}") from None


def check_input_space(cfg: dict, model_shape: tuple[int, int, int] | None = None) -> None:
    """Normalise ``cfg["input_space"]`` in place; with ``model_shape``, check that its grid becomes
    the model's input (after the orientation and the preprocessing's crop and axis order)."""
    from .space import SPACE_KEY, ModelSpace

    value = cfg.get(SPACE_KEY)
    if value is None:
        return
    try:
        space = ModelSpace.from_config(value)
    except ValueError as err:
        raise ConfigError(f"config {err}") from None
    cfg[SPACE_KEY] = space.to_config()
    if model_shape is None:
        return
    from ..orientation import reorientation_for
    from .preprocessing import Preprocessing

    prep = Preprocessing.from_config(cfg.get("preprocessing"))
    if prep.resample:
        return
    codes = space.grid.codes
    turned = reorientation_for(codes, codes, cfg.get("input_orientation")).to_model(
        np.zeros(space.grid.shape, dtype=np.uint8))
    cropped = tuple(n - a - b for n, (a, b) in zip(turned.shape, prep.crop))
    fed = tuple(cropped[a] for a in prep.axes)
    if fed != tuple(model_shape):
        raise ConfigError(
            f"config input_space is a grid of {'x'.join(map(str, space.grid.shape))} voxels, which the config's "
            f"orientation and preprocessing turn into {'x'.join(map(str, fed))}, but the model takes "
            f"{'x'.join(map(str, model_shape))}; give the grid of the arrays the model was trained on"
        )


def input_shape(cfg: Mapping) -> tuple[int, int, int]:
    """The model input (frames, height, width)."""
    h, w = pair(cfg["vit"]["image_size"])
    return int(cfg["vit"]["frames"]), h, w
