"""``load_model`` and ``save_model``: checkpoints from users' own training code, made boring.

A checkpoint's tensors are split into the ViT's (found by their ``pos_embedding``, whatever
prefix training code gave them: ``module.``, ``model.``, ``volume_encoder.vit3d.``...) and the
rest, which must be a classifier head described by the config. Loading is strict.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..errors import ModelError
from .building import ViTClassifier, head_layers, load_strict, split_vit
from .checkpoint import CheckpointError, read_checkpoint
from .config import (
    CURRENT_LAYOUT,
    LEGACY_LAYOUT,
    ConfigError,
    check_given,
    check_input_orientation,
    check_input_space,
    find_config_beside,
    input_shape,
    pair,
    read_config_file,
    validate,
)
from .preprocessing import Preprocessing

CONFIG_METADATA_KEY = "g3dvit_config"


def _infer_vit_pytorch(vit: Mapping[str, torch.Tensor], given: dict, source: str) -> dict:
    """Fill the ``vit`` section from tensor shapes; ConfigError lists what is still needed."""
    def shape(key: str, rank: int) -> tuple[int, ...]:
        if key not in vit:
            raise ModelError(f"{source} is missing tensor '{key}' of a vit-pytorch 3D ViT; is it another architecture?")
        found = tuple(vit[key].shape)
        if len(found) != rank:
            raise ModelError(
                f"{source}: tensor '{key}' has shape {found}, but in a vit-pytorch 3D ViT it has "
                f"{rank} dimensions; is it another architecture (a 2D ViT, say)?"
            )
        return found

    blocks = {int(m.group(1)) for k in vit if (m := re.match(r"transformer\.layers\.(\d+)\.", k))}
    if not blocks:
        raise ModelError(f"{source} holds no transformer blocks ('transformer.layers.N...')")
    known = {
        "dim": shape("pos_embedding", 3)[2],
        "depth": max(blocks) + 1,
        "mlp_dim": shape("transformer.layers.0.1.net.1.weight", 2)[0],
        "num_classes": shape("mlp_head.1.weight", 2)[0],
    }
    inner = shape("transformer.layers.0.0.to_qkv.weight", 2)[0] // 3
    patch_dim = shape("to_patch_embedding.2.weight", 2)[1]
    num_patches = shape("pos_embedding", 3)[1] - 1
    cfg = dict(given)
    for key, value in known.items():
        if key in cfg and cfg[key] != value:
            raise ConfigError(f"the config says vit.{key} = {cfg[key]}, but the weights in {source} have {value}")
        cfg[key] = value
    if "heads" in cfg and "dim_head" not in cfg and inner % cfg["heads"] == 0:
        cfg["dim_head"] = inner // cfg["heads"]
    if "dim_head" in cfg and "heads" not in cfg and inner % cfg["dim_head"] == 0:
        cfg["heads"] = inner // cfg["dim_head"]
    needed = [f"vit.{k}" for k in ("image_size", "image_patch_size", "frames", "frame_patch_size") if k not in cfg]
    if "heads" not in cfg:
        needed.append("vit.heads (or vit.dim_head)")
    if needed:
        raise ConfigError(
            f"{source} needs a config: its weights fix dim={known['dim']}, depth={known['depth']}, "
            f"mlp_dim={known['mlp_dim']}, num_classes={known['num_classes']}, heads x dim_head = "
            f"{inner}, and {num_patches} patches of {patch_dim} values, but not: "
            f"{', '.join(needed)}. Write them to a JSON file beside the checkpoint "
            "('<name>.json' or 'config.json') or pass config={...}"
        )
    if cfg["heads"] * cfg["dim_head"] != inner:
        raise ConfigError(f"vit.heads x vit.dim_head = {cfg['heads'] * cfg['dim_head']}, but the weights in {source} have {inner}")
    ph, pw = pair(cfg["image_patch_size"])
    voxels = ph * pw * int(cfg["frame_patch_size"])
    channels = cfg.get("channels", patch_dim // voxels if patch_dim % voxels == 0 else None)
    if channels is None or channels * voxels != patch_dim:
        raise ConfigError(
            f"patches of {cfg['frame_patch_size']}x{ph}x{pw} voxels do not fit the weights in {source}, "
            f"whose patches hold {patch_dim} values"
        )
    cfg["channels"] = channels
    h, w = pair(cfg["image_size"])
    grid = (int(cfg["frames"]) // int(cfg["frame_patch_size"])) * (h // ph) * (w // pw)
    if grid != num_patches:
        raise ConfigError(
            f"an input of {cfg['frames']}x{h}x{w} voxels in {cfg['frame_patch_size']}x{ph}x{pw} patches "
            f"makes {grid} patches, but the weights in {source} have {num_patches}"
        )
    if "pool" not in cfg:
        warnings.warn(f"{source}: vit.pool not given; assuming 'cls' (vit-pytorch's default)", UserWarning, stacklevel=4)
    return cfg


def _infer_head(layers, given_head, vit_classes: int, source: str) -> dict | None:
    if not layers:
        if given_head:
            raise ModelError(f"the config describes a head after the ViT, but {source} holds no head tensors")
        return None
    sizes = [layers[0][1].shape[1]] + [w.shape[0] for _, w, _ in layers]
    for (name, w, _), (nxt, w2, _) in zip(layers, layers[1:]):
        if w2.shape[1] != w.shape[0]:
            raise ModelError(f"{source}: head layers {name} ({w.shape[0]} outputs) and {nxt} ({w2.shape[1]} inputs) do not chain")
    if sizes[0] != vit_classes:
        raise ModelError(f"{source}: the head takes {sizes[0]} inputs but the ViT gives {vit_classes} outputs")
    if given_head:
        if list(given_head.get("sizes", [])) != sizes:
            raise ConfigError(f"the config's head sizes {given_head.get('sizes')} differ from the weights in {source}: {sizes}")
        return dict(given_head)
    if len(layers) > 1:
        names = ", ".join(name for name, _, _ in layers)
        raise ConfigError(
            f"{source} has a classifier head after the ViT ({names}; sizes {sizes}); the config must "
            'say its activation, e.g. "head": {"sizes": %s, "activation": "relu"}' % sizes
        )
    return {"sizes": sizes, "activation": "none"}


# -- building -----------------------------------------------------------------------------------

def _build_head(head_cfg: dict | None) -> nn.Sequential | None:
    if not head_cfg:
        return None
    acts = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "none": nn.Identity}
    sizes, modules = head_cfg["sizes"], []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        modules.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            modules.append(acts[head_cfg["activation"]]())
    return nn.Sequential(*modules)


def _legacy_patch_order(vit: dict, cfg: dict) -> dict:
    """Permute patch-embedding tensors from the ``(p1 p2 pf c)`` layout to ``(pf p1 p2 c)``."""
    ph, pw = pair(cfg["vit"]["image_patch_size"])
    pf, c = cfg["vit"]["frame_patch_size"], cfg["vit"]["channels"]
    # new feature j holds old feature order[j]
    order = torch.arange(ph * pw * pf * c).reshape(ph, pw, pf, c).permute(2, 0, 1, 3).reshape(-1)
    vit = dict(vit)
    for key in ("to_patch_embedding.1.weight", "to_patch_embedding.1.bias"):
        vit[key] = vit[key][order]
    vit["to_patch_embedding.2.weight"] = vit["to_patch_embedding.2.weight"][:, order]
    return vit


def _vit_pytorch_version() -> str:
    try:
        return version("vit-pytorch")
    except PackageNotFoundError:  # pragma: no cover
        return "unknown"


def build_from_tensors(tensors: Mapping[str, torch.Tensor], config: dict | None, source: str) -> ViTClassifier:
    """A ViTClassifier holding ``tensors``, the config completed from their shapes and checked."""
    check_given(config or {})
    given = dict(config or {})
    arch = given.get("architecture", "vit-pytorch-3d")
    if arch == "monai-vit":
        from .monai_vit import build_monai

        return build_monai(tensors, given, source)
    if arch != "vit-pytorch-3d":
        validate(given)  # raises the architecture error
    vit_t, rest = split_vit(tensors, "pos_embedding", source)
    given["vit"] = _infer_vit_pytorch(vit_t, dict(given.get("vit") or {}), source)
    layers = head_layers(rest, source)
    given["head"] = _infer_head(layers, given.get("head"), given["vit"]["num_classes"], source)
    cfg = validate(given)
    if cfg["patch_layout"] == LEGACY_LAYOUT:
        vit_t = _legacy_patch_order(vit_t, cfg)
    from .vit_pytorch3d import import_vit3d

    vit = import_vit3d().ViT(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg["vit"].items()})
    load_strict(vit, vit_t, "vit-pytorch 3D ViT", source)
    vit.g3dvit_input_shape = input_shape(cfg)
    head = _build_head(cfg["head"])
    if head is not None:
        positions = [i for i, m in enumerate(head) if isinstance(m, nn.Linear)]
        head_t = {}
        for index, (_, weight, bias) in zip(positions, layers):
            head_t[f"{index}.weight"] = weight
            if bias is not None:
                head_t[f"{index}.bias"] = bias
        load_strict(head, head_t, "classifier head", source)
    cfg["patch_layout"] = CURRENT_LAYOUT  # the tensors are in the current layout from here on
    Preprocessing.from_config(cfg.get("preprocessing"))  # check it now, not at explain time
    return ViTClassifier(vit, head, cfg).eval()


def load_model(path: str | os.PathLike, config: dict | str | os.PathLike | None = None,
               trust_pickle: bool = False) -> nn.Module:
    """A model from a checkpoint file, ready for ``explain``.

    path:   ``.safetensors``, or ``.pt/.pth/.ckpt`` (read with ``torch.load(weights_only=True)``):
            a state dict, possibly nested (``state_dict``, ``model``, ``model_state_dict``) and
            with prefixed keys.
    config: a dict or a JSON file; None looks for ``<name>.json`` or ``config.json`` beside the
            checkpoint, then inside a safetensors file written by ``save_model``.
    trust_pickle: allow a whole pickled model (runs code from the file; warns).
    """
    path = Path(path)
    if isinstance(config, (str, os.PathLike)):
        config = read_config_file(Path(config))
    loaded, metadata = read_checkpoint(path, trust_pickle=trust_pickle)
    if config is None:
        beside = find_config_beside(path)
        if beside is not None:
            config = read_config_file(beside)
        elif CONFIG_METADATA_KEY in metadata:
            config = json.loads(metadata[CONFIG_METADATA_KEY])
    if isinstance(loaded, nn.Module):
        if config:
            loaded.g3dvit_config = validate_partial(config)
        return loaded.eval()
    return build_from_tensors(loaded, config, str(path))


def validate_partial(config: Mapping) -> dict:
    """Config check for a whole (trusted) pickled module, where the weights say the rest."""
    cfg = dict(config)
    Preprocessing.from_config(cfg.get("preprocessing"))
    check_input_orientation(cfg)
    check_input_space(cfg)
    return cfg


def save_model(module: nn.Module, path: str | os.PathLike, config: Mapping, space=None) -> Path:
    """Write ``module``'s weights to ``path`` (.safetensors) and its config to ``<name>.json``.

    The config is checked against the weights first (nothing is written if they disagree); the
    patch layout and vit-pytorch version are recorded. space: the grid the model was trained on
    (a ``ModelSpace``, or a NIfTI image or path of one training volume), recorded as the config's
    ``input_space``. Returns the config file's path.
    """
    from safetensors.torch import save

    from ..atomic import write_together

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModelError(f"save_model writes .safetensors files; got {path.name}")
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    cfg = dict(config)
    if space is not None:
        from .space import SPACE_KEY, ModelSpace

        cfg[SPACE_KEY] = (space if isinstance(space, ModelSpace) else ModelSpace.from_image(space)).to_config()
    cfg.setdefault("patch_layout", CURRENT_LAYOUT)
    if cfg["patch_layout"] != CURRENT_LAYOUT:
        raise ConfigError("save_model writes the current patch layout; load legacy checkpoints with load_model first")
    checked = build_from_tensors(tensors, cfg, f"the weights of this {type(module).__name__}").g3dvit_config
    checked["vit_pytorch_version"] = _vit_pytorch_version()
    text = json.dumps(checked, indent=2)
    try:  # serialised in memory, so a full disk is an OSError of our own write, not the library's
        weights = save(tensors, metadata={CONFIG_METADATA_KEY: text})
    except Exception as err:
        raise ModelError(f"the weights of this {type(module).__name__} cannot be stored as safetensors ({err})") from err
    config_path = path.with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_together([(path, lambda p: p.write_bytes(weights)),
                    (config_path, lambda p: p.write_text(text + "\n"))])
    return config_path


def _safetensors_with_metadata(path: Path, metadata: dict[str, str]) -> bytes:
    """The bytes of safetensors file ``path`` with its metadata replaced; the tensors' bytes unchanged.

    The format: an 8-byte little-endian header length, a JSON header (tensor offsets are relative
    to the data after it), then the data.
    """
    raw = path.read_bytes()
    if len(raw) < 8:
        raise CheckpointError(f"{path} is not a safetensors file (it is {len(raw)} bytes long)")
    size = int.from_bytes(raw[:8], "little")
    try:
        header = json.loads(raw[8 : 8 + size])
    except ValueError as err:
        raise CheckpointError(f"{path} is not a safetensors file: its header is not JSON ({err})") from err
    header["__metadata__"] = {**(header.get("__metadata__") or {}), **metadata}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data stays 8-byte aligned, as safetensors writes it
    return len(text).to_bytes(8, "little") + text + raw[8 + size :]


def set_input_space(path: str | os.PathLike, space, config: str | os.PathLike | None = None):
    """Record the grid a checkpoint's model was trained on (its config's ``input_space``).

    space: a ``ModelSpace``, or a NIfTI image or path whose grid it is. The config beside the
    checkpoint (or ``config``) gets it, and a safetensors file's own copy of the config too,
    together or not at all; the new config is checked against the weights first. Returns the
    ``ModelSpace`` recorded.
    """
    from ..atomic import write_together
    from .space import SPACE_KEY, ModelSpace

    path = Path(path)
    space = space if isinstance(space, ModelSpace) else ModelSpace.from_image(space)
    config_path = Path(config) if config is not None else find_config_beside(path)
    _, metadata = read_checkpoint(path)
    embedded = CONFIG_METADATA_KEY in metadata and path.suffix == ".safetensors"
    if config_path is None and not embedded:
        raise ConfigError(f"{path.name} has no config to record the space in: write its config to "
                          f"{path.with_suffix('.json').name} beside it first")
    files = []
    if config_path is not None:
        given = read_config_file(config_path)
        given[SPACE_KEY] = space.to_config()
        load_model(path, config=given)  # the new config must still make this model
        files.append((config_path, lambda p, text=json.dumps(given, indent=2) + "\n": p.write_text(text)))
    if embedded:
        inside = json.loads(metadata[CONFIG_METADATA_KEY])
        inside[SPACE_KEY] = space.to_config()
        if config_path is None:
            load_model(path, config=inside)
        data = _safetensors_with_metadata(path, {CONFIG_METADATA_KEY: json.dumps(inside, indent=2)})
        files.append((path, lambda p, data=data: p.write_bytes(data)))
    write_together(files)
    return space


__all__ = ["load_model", "save_model", "set_input_space", "ViTClassifier", "CheckpointError", "ConfigError"]
