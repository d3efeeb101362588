"""A model's config can recommend explain settings; the widget preselects them."""

from __future__ import annotations

import napari_g3dvit as g3d
from napari_g3dvit.models.loading import ViTClassifier

from conftest import TINY, make_vit, open_widget


def test_recommended_settings_are_preselected(make_napari_viewer, tmp_path):
    config = {"vit": {**TINY, "image_size": [8, 16], "image_patch_size": [4, 4], "pool": "cls"},
              "recommended_explanation": {"layer": "vit.transformer.layers.0.0.norm", "method": "hirescam"}}
    g3d.save_model(ViTClassifier(make_vit(), None, config), tmp_path / "m.safetensors", config)
    widget = open_widget(make_napari_viewer())
    assert widget.load_model(tmp_path / "m.safetensors")
    assert widget.hook_layer.value == "vit.transformer.layers.0.0.norm"
    assert widget.method.value == "hirescam"
    assert "vit.transformer.layers.1.0.norm" in widget.hook_layer.choices  # the default stays offered
