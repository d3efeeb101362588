"""Looking at a map with colleagues: named regions, peaks in millimetres, coordinates that say what
they are, a map readable in 2D and 3D, tables that say where they came from, views in a file.

The widget tests go through napari's routes (files through the reader, the Explain dock from the
Plugins menu) with a tiny real ViT; the others call the Qt-free modules the widget wires.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import napari_g3dvit as g3d
from napari_g3dvit.display import slider_labels
from napari_g3dvit.labelnames import LabelNamesError, find_dseg, find_names_beside, read_label_names
from napari_g3dvit.models.loading import ViTClassifier
from napari_g3dvit.navigate import parse_mm
from napari_g3dvit.outputs import read_rows, user_folder, write_rows
from napari_g3dvit.peaktable import find_peaks
from napari_g3dvit.runner import RESULT_KEY
from napari_g3dvit.sample_models import sample_path

from conftest import TINY, TINY_SHAPE, make_vit, open_widget

CONFIG = {"vit": {**TINY, "image_size": [8, 16], "image_patch_size": [4, 4], "pool": "cls"},
          "class_names": ["left", "middle", "right"], "input_orientation": "RAS"}
AFFINE = np.array([[3.0, 0, 0, -18], [0, 3, 0, -12], [0, 0, 3, -24], [0, 0, 0, 1]])
LUT = """#No. Label Name:                  R   G   B   A
0   Unknown                         0   0   0   0
4   Left-Lateral-Ventricle        120  18 134   0
43  Right-Lateral-Ventricle       120  18 134   0
"""
DSEG = "index\tname\tabbreviation\tcolor\n1\tfirst half\tH1\t#ff0000\n2\tsecond half\tH2\t#00ff00\n"


def fsl_xml(kind: str | None) -> str:
    header = f"<type>{kind}</type>" if kind else ""
    return f"""<?xml version="1.0" encoding="ISO-8859-1"?>
<atlas><header><name>Toy</name>{header}<images><imagefile>/Toy/Toy-prob-2mm</imagefile>
<summaryimagefile>/Toy/Toy-maxprob-thr25-2mm</summaryimagefile></images></header>
<data><label index="0" x="1" y="2" z="3">Frontal Pole</label>
<label index="1" x="4" y="5" z="6">Insular Cortex</label></data></atlas>"""


# -- label tables ----------------------------------------------------------------------------------------

def test_label_tables_in_three_formats(tmp_path):
    (tmp_path / "lut.txt").write_text(LUT)
    lut = read_label_names(tmp_path / "lut.txt")
    assert lut.names[4] == "Left-Lateral-Ventricle" and lut.kind == "freesurfer-lut"
    assert lut.colors[43] == pytest.approx((120 / 255, 18 / 255, 134 / 255, 1.0))  # A = 0 is not opacity
    assert lut.color_dict()[0][3] == 0.0  # the background stays transparent
    (tmp_path / "atlas_dseg.tsv").write_text(DSEG)
    dseg = read_label_names(tmp_path / "atlas_dseg.tsv")
    assert dseg.names == {1: "first half", 2: "second half"} and dseg.colors[1] == (1.0, 0.0, 0.0, 1.0)
    assert dseg.features() == {"index": [1, 2], "name": ["first half", "second half"]}
    (tmp_path / "prob.xml").write_text(fsl_xml("Probabilistic"))
    (tmp_path / "label.xml").write_text(fsl_xml("Label"))
    (tmp_path / "untyped.xml").write_text(fsl_xml(None))
    assert read_label_names(tmp_path / "prob.xml").names == {1: "Frontal Pole", 2: "Insular Cortex"}
    assert "index + 1" in read_label_names(tmp_path / "prob.xml").note
    assert read_label_names(tmp_path / "label.xml").names == {0: "Frontal Pole", 1: "Insular Cortex"}
    untyped = read_label_names(tmp_path / "untyped.xml", image="x/Toy-maxprob-thr25-2mm.nii.gz")
    assert untyped.names[1] == "Frontal Pole" and "summary image" in untyped.note
    by_values = read_label_names(tmp_path / "untyped.xml", values=[0, 1])  # only index 0's value present
    assert by_values.names[1] == "Frontal Pole" and "values present" in by_values.note
    (tmp_path / "bomb.xml").write_text('<!DOCTYPE a [<!ENTITY x "y">]><atlas/>')
    with pytest.raises(LabelNamesError, match="DTD or entities"):
        read_label_names(tmp_path / "bomb.xml")
    (tmp_path / "bad_dseg.tsv").write_text("value\tlabel\n1\tx\n")
    with pytest.raises(LabelNamesError, match="index and name"):
        read_label_names(tmp_path / "bad_dseg.tsv")


def test_tables_are_found_beside_labels(tmp_path):
    root = tmp_path / "ds"
    folder = root / "derivatives" / "seg" / "sub-01" / "anat"
    folder.mkdir(parents=True)
    (root / "dataset_description.json").write_text("{}")
    labels = folder / "sub-01_space-MNI_dseg.nii.gz"
    (root / "dseg.tsv").write_text(DSEG)  # the dataset's top-level table
    assert find_dseg(labels) == root / "dseg.tsv"
    (folder / "sub-01_space-MNI_dseg.tsv").write_text(DSEG)  # the BIDS pair wins
    assert find_dseg(labels) == folder / "sub-01_space-MNI_dseg.tsv"
    assert find_dseg(tmp_path / "elsewhere" / "mask.nii.gz") is None
    atlas = tmp_path / "fsl" / "Toy" / "Toy-maxprob-thr25-2mm.nii.gz"
    atlas.parent.mkdir(parents=True)
    (tmp_path / "fsl" / "Toy.xml").write_text(fsl_xml("Probabilistic"))  # FSL keeps the XML a folder up
    assert find_names_beside(atlas) == tmp_path / "fsl" / "Toy.xml"


# -- peaks, tables, coordinates ------------------------------------------------------------------------------

def test_peaks_in_millimetres_on_any_grid():
    heat = np.zeros((20, 20, 20))
    heat[2:6, 2:6, 2:6] = 0.6
    heat[3, 4, 5] = 0.9  # cluster 2's peak
    heat[12:16, 12:16, 12:16] = 1.0
    heat[13, 14, 15] = 1.2  # cluster 1's peak
    heat[18, 18, 18] = 0.8  # one voxel: below min_voxels
    affine = np.diag([-2.0, 2.0, 2.5, 1.0])  # LAS, anisotropic, shifted origin
    affine[:3, 3] = [30, -20, -10]
    labels = np.zeros((40, 40, 50), np.int16)  # the same space at 1 mm, on its own grid
    fine = np.diag([-1.0, 1.0, 1.0, 1.0])
    fine[:3, 3] = [30, -20, -10]
    labels[:20] = 1  # x in (10, 30]: the first 10 heat voxels along x
    labels[20:] = 2
    table = g3d.peaks(heat, affine=affine, labels=labels, labels_affine=fine, names={1: "right", 2: "left"},
                      threshold=0.3)
    assert len(table) == 2 and [p.peak for p in table] == [1.2, 0.9]  # largest peak first
    first, second = table
    assert first.peak_mm == (30 - 2 * 13, -20 + 2 * 14, -10 + 2.5 * 15) and first.label == "left"
    assert second.peak_mm == (30 - 2 * 3, -20 + 2 * 4, -10 + 2.5 * 5) and second.label == "right"
    assert first.voxels == 64 and first.volume_mm3 == pytest.approx(64 * 10.0)
    assert first.mean == pytest.approx((63 * 1.0 + 1.2) / 64)
    assert len(find_peaks(heat, affine, threshold=0.3, min_voxels=1)) == 3
    assert [p.peak for p in find_peaks(heat, affine)] == [1.2]  # default: above half the maximum


def test_tables_say_where_they_came_from(tmp_path):
    rows = [{"a": 1, "b": 0.123456789, "c": None}]
    csv_path = write_rows(tmp_path / "t.csv", rows, ("a", "b", "c"), {"method": "hirescam", "class": "left"})
    about, back = read_rows(csv_path)
    assert about == {"method": "hirescam", "class": "left"} and back == [{"a": "1", "b": "0.123457", "c": "n/a"}]
    import pandas as pd

    assert pd.read_csv(csv_path, comment="#").shape == (1, 3)
    tsv = write_rows(tmp_path / "t.tsv", rows, ("a", "b", "c"), {"method": "hirescam"})
    assert json.loads((tmp_path / "t.json").read_text()) == {"method": "hirescam"}  # BIDS: a JSON sidecar
    assert open(tsv).read().startswith("a\tb\tc\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.json", "t.tsv"]  # no temporary files
    assert user_folder(sample_path("brain_ventricles_example.nii.gz")) == Path.home()  # never the samples'
    assert user_folder(tmp_path / "t.csv") == tmp_path.resolve()


def test_slider_labels_and_typed_coordinates():
    assert slider_labels((34.0, -12.0, 7.5, 7.0), 4) == [
        "time = 34 s · volume", "x = -12.0 mm (L→R) · slice", "y = 7.5 mm (P→A) · slice",
        "z = 7.0 mm (I→S) · slice"]
    assert parse_mm("-30, -52.5 48") == (-30.0, -52.5, 48.0)
    assert parse_mm("x=-30 y=2 z=4") == (-30.0, 2.0, 4.0)
    with pytest.raises(ValueError, match="three numbers"):
        parse_mm("near the ventricles")


def test_g3dvit_batch_writes_peaks_and_named_regions(tmp_path):
    from napari_g3dvit.cli import main
    from napari_g3dvit.cohort.writing import read_table

    model = tmp_path / "tiny.safetensors"
    g3d.save_model(ViTClassifier(make_vit(), None, CONFIG), model, CONFIG)
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.normal(size=TINY_SHAPE).astype(np.float32), AFFINE), tmp_path / "scan.nii.gz")
    atlas = np.zeros(TINY_SHAPE, np.uint8)
    atlas[:6], atlas[6:] = 1, 2
    nib.save(nib.Nifti1Image(atlas, AFFINE), tmp_path / "atlas.nii.gz")
    (tmp_path / "atlas_dseg.tsv").write_text(DSEG)  # found beside the atlas
    out = tmp_path / "out"
    assert main(["batch", str(tmp_path / "scan.nii.gz"), "--out", str(out), "--model", str(model),
                 "--method", "hirescam", "--threshold", "100", "--atlas", str(tmp_path / "atlas.nii.gz"),
                 "--workers", "0", "--quiet"]) == 0
    regions = read_table(out / "scan_desc-hirescam_regions.tsv")
    assert {r["label"] for r in regions} == {"first half", "second half"} and {r["index"] for r in regions} == {"1", "2"}
    peaks = read_table(out / "scan_desc-hirescam_peaks.tsv")
    heat = nib.load(out / "scan_desc-hirescam_heatmap.nii.gz")
    expected = find_peaks(heat.get_fdata(), heat.affine, labels=atlas, names={1: "first half", 2: "second half"})
    assert len(peaks) == len(expected) > 0
    assert [float(p["x_mm"]) for p in peaks] == [p.peak_mm[0] for p in expected]
    assert peaks[0]["label"] == expected[0].label and peaks[0]["timepoint"] == "n/a"
    sidecar = json.loads((out / "scan_desc-hirescam_heatmap.json").read_text())
    assert sidecar["peaks"]["table"] == "scan_desc-hirescam_peaks.tsv"
    assert sidecar["regions"]["names"].endswith("atlas_dseg.tsv")


# -- in napari ---------------------------------------------------------------------------------------------

@pytest.fixture
def scene(tmp_path, make_napari_viewer):
    """An MNI-coded anatomy read through the reader, a colleague's labels at 2 mm in LAS with a shifted
    origin and their dseg.tsv, and the Explain dock with a tiny model loaded."""
    rng = np.random.default_rng(1)
    anatomy = nib.Nifti1Image(rng.normal(size=TINY_SHAPE).astype(np.float32), AFFINE)
    anatomy.set_sform(AFFINE, code=4)  # MNI152
    nib.save(anatomy, tmp_path / "anatomy.nii.gz")
    fine = np.diag([-2.0, 2.0, 2.0, 1.0])
    fine[:3, 3] = [18 + 1.0, -12 - 1.0, -24 - 1.0]
    labels = np.zeros((20, 14, 26), np.uint8)  # x runs right to left: the first 10 voxels are x > 0
    labels[:10], labels[10:] = 1, 2
    nib.save(nib.Nifti1Image(labels, fine), tmp_path / "colleague_labels.nii.gz")
    (tmp_path / "colleague_labels_dseg.tsv").write_text(DSEG)
    model = tmp_path / "tiny.safetensors"
    g3d.save_model(ViTClassifier(make_vit(), None, CONFIG), model, CONFIG)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(tmp_path / "anatomy.nii.gz"), plugin="napari-g3dvit")
    (regions,) = viewer.open(str(tmp_path / "colleague_labels.nii.gz"), plugin="napari-g3dvit")
    widget = open_widget(viewer)
    widget.volume.value = layer
    assert widget.load_model(model)
    return viewer, widget, layer, regions


def test_a_map_you_can_read_and_find_and_hand_on(scene, qtbot, tmp_path, make_napari_viewer, no_private_access):
    viewer, widget, anatomy, regions = scene
    # 3. the reader named the colleague's labels from the dseg.tsv beside them
    assert regions.features["name"].tolist() == ["first half", "second half"]
    assert tuple(regions.colormap.map(np.array([1]))[0]) == (1.0, 0.0, 0.0, 1.0)
    widget.method.value = "hirescam"
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget._worker is None, timeout=30_000)
    heat = widget.last_layer
    record = heat.metadata[RESULT_KEY]

    # 5. the status bar says mm (MNI152 as the sform says), the label's name and the heat
    point = (9.0, 0.0, 0.0)  # x = +9 mm: in the colleague's label 1
    viewer.dims.point = point
    viewer.cursor.position = point
    viewer.mouse_over_canvas = True
    viewer.update_status_from_cursor()  # what napari does when the mouse moves
    status = viewer.status["coordinates"] if isinstance(viewer.status, dict) else viewer.status
    value = float(heat.get_value(point, world=True))
    assert status.startswith("x 9.0, y 0.0, z 0.0 MNI152 mm")
    assert "colleague_labels: first half (1)" in status and f"heat {value:.3f}" in status
    assert "name: first half" in regions.get_status(point, world=True)["value"]  # napari's own lookup
    viewer.mouse_over_canvas = False
    # 6. readable: method first in the name, method and class in the result line, colorbar and caption
    assert heat.name.startswith("hirescam · block 1") and "hirescam at block 1" in widget.result.value
    assert record["explained_class_name"][0] in widget.result.value
    assert heat.colorbar.visible and "hirescam" in viewer.canvas.overlays.text.text
    assert heat.blending == "translucent" and heat.colormap.name == "g3dvit heat 2D"
    assert heat.colormap.map(np.array([0.0]))[0][3] == 0.0  # no heat is fully transparent in 2D
    viewer.dims.ndisplay = 3
    assert heat.blending == "additive" and heat.rendering == "mip" and heat.colormap.name == "g3dvit heat"
    viewer.dims.ndisplay = 2
    assert heat.blending == "translucent"

    # 3. names from a FreeSurfer table attached from the widget reach the region table and its CSV
    lut = tmp_path / "lut.txt"
    lut.write_text("0 Unknown 0 0 0 0\n1 Right-Cortex 200 10 10 0\n2 Left-Cortex 10 10 200 0\n")
    widget.regions.value = regions
    widget.inspect.names_file.value = lut
    assert widget.inspect.attach_names() is not None
    rows = widget.show_regions()
    assert {r["label"] for r in rows} == {"Right-Cortex", "Left-Cortex"}
    assert widget.csv_path.value.parent == tmp_path  # beside the data
    about, written = read_rows(widget.export_regions())
    assert about["method"] == "hirescam" and about["labels"] == "colleague_labels"
    assert about["class"] == record["explained_class_name"][0] and "lut.txt" in about["label names"]
    assert {r["label"] for r in written} == {"Right-Cortex", "Left-Cortex"}

    # 4. peaks: the table's rows move every view; exported with the same header
    table = widget.inspect.show_peaks()
    assert len(table) >= 1 and not widget.inspect.peak_table.native.isHidden()
    expected = g3d.peaks(heat, labels=regions)
    assert [p.peak_mm for p in table] == [p.peak_mm for p in expected]
    assert table[0].label in ("Right-Cortex", "Left-Cortex")
    point = widget.inspect.go_to_peak(0)
    # napari keeps the point on its slider steps (2 mm, from the colleague's grid): the slice of the
    # heatmap shown is the peak's own
    np.testing.assert_allclose(point, table[0].peak_mm, atol=1.0)
    assert tuple(np.round(heat.world_to_data(point)).astype(int)) == table[0].voxel
    assert viewer.dims.axis_labels[0] == f"x = {point[0]:.1f} mm (L→R) · slice"  # the slider says its value
    about, peak_rows = read_rows(widget.inspect.export_peaks(tmp_path / "peaks.csv"))
    assert about["coordinates"].startswith("MNI152 mm") and len(peak_rows) == len(table)

    # 5. go to a typed point
    np.testing.assert_allclose(widget.inspect.go_to_text("-9, 3, 6"), (-9.0, 3.0, 6.0), atol=1.0)
    assert widget.inspect.go_to_text("somewhere") is None and "three numbers" in widget.last_error

    # 7. a view in a file, opened by a colleague elsewhere; a missing file is named
    view = tmp_path / "case" / "view.json"
    view.parent.mkdir()
    anatomy.contrast_limits = (-1.0, 2.0)
    heat.opacity = 0.8
    viewer.dims.point = (3.0, 0.0, 6.0)
    assert widget.inspect.save_view(view) == str(view)
    saved = json.loads(view.read_text())
    sources = {entry["name"]: entry["source"] for entry in saved["layers"]}
    assert sources["anatomy"] == "../anatomy.nii.gz"  # its own file, relative to the view
    assert (view.parent / sources[heat.name]).is_file()  # the heatmap written beside the view
    written_heat = nib.load(view.parent / sources[heat.name])
    np.testing.assert_allclose(written_heat.affine, AFFINE)  # with the source's affine

    elsewhere = tmp_path / "colleague"
    import shutil

    shutil.copytree(tmp_path / "case", elsewhere / "case")
    for name in ("anatomy.nii.gz", "colleague_labels.nii.gz"):
        shutil.copy(tmp_path / name, elsewhere / name)
    other = make_napari_viewer()
    report = g3d.open_view(other, elsewhere / "case" / "view.json")
    assert not report.missing and [layer.name for layer in other.layers] == [layer.name for layer in viewer.layers]
    np.testing.assert_allclose(other.dims.point, viewer.dims.point, atol=1.0)  # within napari's step
    for name in ("anatomy", heat.name):  # the same slice of each layer
        here, there = viewer.layers[name], other.layers[name]
        assert np.array_equal(np.round(here.world_to_data(viewer.dims.point)),
                              np.round(there.world_to_data(other.dims.point)))
    assert tuple(other.layers["anatomy"].contrast_limits) == (-1.0, 2.0)
    opened = other.layers[heat.name]
    assert opened.opacity == 0.8 and opened.colormap.name == heat.colormap.name
    assert opened.metadata[RESULT_KEY]["method_used"] == "hirescam"
    np.testing.assert_allclose(np.asarray(opened.data), np.asarray(heat.data), atol=1e-6)
    assert other.layers["colleague_labels"].features["name"].tolist()[1:] == ["Right-Cortex", "Left-Cortex"]

    (elsewhere / "anatomy.nii.gz").unlink()
    third = make_napari_viewer()
    report = g3d.open_view(third, elsewhere / "case" / "view.json")
    assert len(report.missing) == 1 and "'anatomy'" in report.missing[0]
    assert "anatomy" not in [layer.name for layer in third.layers] and len(third.layers) == len(viewer.layers) - 1
