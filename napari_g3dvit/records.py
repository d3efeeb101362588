"""What a heatmap shows, in words: for table headers, the colorbar caption and layer names.

Everything here reads the ``metadata["g3dvit"]`` record the explain run puts on a heat layer
(see ``runner.ExplainRun``); nothing imports Qt or napari.
"""

from __future__ import annotations

import re

#: names of hook layers, shortened: vit-pytorch ``...layers.3.0.norm`` and MONAI ``blocks.3.norm1``
_BLOCK = re.compile(r"(?:^|\.)(?:layers|blocks)\.(\d+)(?:\.|$)")


def short_layer(layer: str | None) -> str:
    """A hook layer as a person reads it: "block 3" for a transformer block's layer, else as it is."""
    if not layer:
        return ""
    match = _BLOCK.search(layer)
    return f"block {match.group(1)}" if match else layer


def _classes(record: dict) -> str:
    names = record.get("explained_class_name") or []
    if not names:
        return ""
    unique = list(dict.fromkeys(str(n) for n in names))
    return unique[0] if len(unique) == 1 else ", ".join(unique[:3]) + ("..." if len(unique) > 3 else "")


def _threshold(record: dict) -> str:
    value = record.get("threshold")
    if value is None or float(value) >= 100:
        return "all tokens"
    return f"top {float(value):g} % of tokens"


def method_used(record: dict) -> str:
    """The method that made the map ("auto: occlusion" when auto chose it)."""
    used = record.get("method_used") or record.get("method") or "?"
    return f"auto: {used}" if record.get("method") == "auto" else str(used)


def heat_facts(record: dict, layer_name: str | None = None) -> dict[str, str]:
    """Where a heatmap came from, as ordered ``{what: value}`` lines for a file header."""
    facts = {}
    if layer_name:
        facts["heatmap"] = layer_name
    facts["volume"] = str(record.get("volume", ""))
    facts["method"] = method_used(record)
    facts["layer"] = str(record.get("layer") or "")
    facts["class"] = _classes(record)
    facts["threshold"] = _threshold(record)
    if record.get("timepoint") is not None:
        facts["timepoint"] = str(record["timepoint"])
    if record.get("model"):
        facts["model"] = str(record["model"])
    return {key: value for key, value in facts.items() if value != ""}


def caption(record: dict) -> str:
    """One line for the colorbar: method, layer, class, threshold."""
    parts = [method_used(record), short_layer(record.get("layer"))]
    kind = _classes(record)
    if kind:
        parts.append(f"class {kind}")
    parts.append(_threshold(record))
    if record.get("timepoint") is not None:
        parts.append(f"t = {record['timepoint']}")
    return " · ".join(p for p in parts if p)


def heat_layer_name(record: dict) -> str:
    """A layer name whose start says what the map is (a layer list shows the first ~20 characters):
    ``"hirescam · block 0 — brain"``, with `` t=3`` for one timepoint of a series."""
    name = f"{method_used(record)} · {short_layer(record.get('layer'))} — {record.get('volume', '')}"
    if record.get("timepoint") is not None:
        name += f" t={record['timepoint']}"
    return name


def labels_facts(name: str, metadata: dict | None = None) -> dict[str, str]:
    """The Labels layer a table used, and where its names came from, for a file header."""
    facts = {"labels": name}
    names = (metadata or {}).get("label_names") or {}
    if names.get("source"):
        facts["label names"] = f"{names['source']} ({names.get('note', '')})".replace(" ()", "")
    source = ((metadata or {}).get("nifti") or {}).get("path")
    if source:
        facts["labels file"] = str(source)
    return facts
