"""The time course of a 4D explanation: the curves, the files, and the dock linked to the time slider."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import napari_g3dvit as g3d
from napari_g3dvit._timecourse_widget import NO_SERIES, TimeCourseWidget
from napari_g3dvit._widget import ALL
from napari_g3dvit.models.loading import ViTClassifier
from napari_g3dvit.runner import RESULT_KEY
from napari_g3dvit.timecourse import (
    curves,
    default_table_path,
    events_beside,
    read_events,
    read_table,
    time_courses,
    write_table,
)

from conftest import TINY, TINY_SHAPE, make_vit, open_widget

CONFIG = {"vit": {**TINY, "image_size": [8, 16], "image_patch_size": [4, 4], "pool": "cls"},
          "class_names": ["left", "middle", "right"], "input_orientation": "RAS"}
TR = 2.0
COUNT = 6
EVENTS = "onset\tduration\ttrial_type\n0\t4\tmotor\n6.0\t3\tmotor\n30\tn/a\tcue\n"
DESIGN = [1, 1, 0, 1, 1, 0]  # times 0 2 4 6 8 10 s against [0, 4) and [6, 9)


# -- the curves without a viewer ------------------------------------------------------------------------------

def test_curves_are_plain_numpy_arithmetic(tmp_path):
    rng = np.random.default_rng(0)
    heat = rng.random((4, 3, 4, 5)).astype(np.float32)
    probs = rng.dirichlet(np.ones(3), size=4)
    labels = np.zeros((3, 4, 5), dtype=np.int16)
    labels[1:, :2, 2:] = 3
    rows = [{"onset": 1.5, "duration": 1.0}]
    out = curves(heat, probs, labels=labels, tr=1.5, events=rows, class_names=["a", "b", "c"])
    np.testing.assert_allclose(out.time_s, [0.0, 1.5, 3.0, 4.5])
    np.testing.assert_array_equal(out.predicted, probs.argmax(1))
    np.testing.assert_allclose(out.probability, probs.max(1))
    np.testing.assert_allclose(out.heat, [h[labels > 0].mean() for h in heat], rtol=1e-6)
    assert out.heat_column == "heat_in_region" and out.region_voxels == 2 * 2 * 3
    np.testing.assert_array_equal(out.design, [0, 1, 0, 0])
    assert list(out.columns()) == ["timepoint", "time_s", "predicted", "predicted_name", "probability",
                                   "heat_in_region", "design"]
    assert out.rows()[1]["predicted_name"] == "abc"[probs[1].argmax()]
    peak = curves(heat, probs)  # no labels, no events, no names
    assert list(peak.columns()) == ["timepoint", "time_s", "predicted", "probability", "heat_peak"]
    np.testing.assert_allclose(peak.heat, heat.reshape(4, -1).max(1))
    single = curves(heat, np.array([[0.2], [0.9], [0.5], [0.1]]))  # one sigmoid output
    np.testing.assert_array_equal(single.predicted, [0, 1, 1, 0])
    np.testing.assert_allclose(single.probability, [0.8, 0.9, 0.5, 0.9])
    with pytest.raises(ValueError, match="empty"):
        curves(heat, probs, labels=np.zeros((3, 4, 5)))
    with pytest.raises(ValueError, match="not on the maps' voxels"):
        curves(heat, probs, labels=np.ones((3, 4, 6)))
    with pytest.raises(ValueError, match="T, D, H, W"):
        curves(heat[0], probs)


def test_events_files(tmp_path):
    (tmp_path / "sub-01_task-x_run-1_events.tsv").write_text(EVENTS)
    bold = tmp_path / "sub-01_task-x_run-1_bold.nii.gz"
    assert events_beside(bold) == tmp_path / "sub-01_task-x_run-1_events.tsv"
    derived = tmp_path / "sub-01_task-x_run-1_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz"
    assert events_beside(derived) == tmp_path / "sub-01_task-x_run-1_events.tsv"
    (tmp_path / "scan_events.tsv").write_text("onset\tduration\n1\t2\n")
    assert events_beside(tmp_path / "scan.nii") == tmp_path / "scan_events.tsv"
    assert events_beside(tmp_path / "other.nii.gz") is None and events_beside(None) is None
    rows = read_events(tmp_path / "sub-01_task-x_run-1_events.tsv")
    assert [(r["onset"], r["duration"], r["trial_type"]) for r in rows] == [
        (0.0, 4.0, "motor"), (6.0, 3.0, "motor"), (30.0, 0.0, "cue")]
    assert read_events(tmp_path / "scan_events.tsv")[0]["trial_type"] is None
    (tmp_path / "bad_events.tsv").write_text("start,length\n1,2\n")
    with pytest.raises(ValueError, match="no onset and no duration column"):
        read_events(tmp_path / "bad_events.tsv")
    (tmp_path / "worse_events.tsv").write_text("onset\tduration\nsoon\t2\n")
    with pytest.raises(ValueError, match="line 2: the onset 'soon' is not a number"):
        read_events(tmp_path / "worse_events.tsv")
    assert default_table_path(bold) == tmp_path / "sub-01_task-x_run-1_desc-g3dvit_timeseries.tsv"
    assert default_table_path(tmp_path / "scan.nii") == tmp_path / "scan_timecourse.csv"


def test_write_table_csv_and_tsv(tmp_path):
    out = curves(np.random.default_rng(1).random((3, 2, 2, 2)), np.eye(3), tr=0.5,
                 events=[{"onset": 0.5, "duration": 0.5}], class_names=["a", "b", "c"])
    for name, sep in (("curves.csv", ","), ("curves.tsv", "\t")):
        path = write_table(out, tmp_path / name)
        with open(path) as fh:
            header = fh.readline().rstrip("\n")
        assert header == sep.join(["timepoint", "time_s", "predicted", "predicted_name", "probability",
                                   "heat_peak", "design"])
        table = read_table(path)
        np.testing.assert_allclose([float(v) for v in table["heat_peak"]], out.heat)  # full precision
        assert table["design"] == ["0", "1", "0"] and table["predicted_name"] == ["a", "b", "c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.csv", "curves.tsv"]  # no temporary files


# -- the dock in a real viewer ------------------------------------------------------------------------------------

@pytest.fixture
def bids_run(tmp_path):
    """A 4D BOLD-like run (TR 2 s) named as BIDS, its events.tsv beside it, and a tiny model."""
    series = np.random.default_rng(7).normal(size=(COUNT, *TINY_SHAPE)).astype(np.float32)
    image = nib.Nifti1Image(np.moveaxis(series, 0, -1), np.diag([2.0, 2.0, 2.0, 1.0]))
    image.header.set_xyzt_units("mm", "sec")
    image.header["pixdim"][4] = TR
    path = tmp_path / "sub-01_task-motor_run-1_bold.nii.gz"
    nib.save(image, path)
    (tmp_path / "sub-01_task-motor_run-1_events.tsv").write_text(EVENTS)
    model = tmp_path / "tiny.safetensors"
    g3d.save_model(ViTClassifier(make_vit(), None, CONFIG), model, CONFIG)
    return path, model


def explain_series(qtbot, widget, threshold):
    widget.timepoints.value = ALL
    widget.threshold.value = threshold
    assert widget.run() is not None
    qtbot.waitUntil(lambda: widget._worker is None, timeout=60_000)
    assert not widget.last_error, widget.last_error
    return widget.last_layer


def expected_curves(layer, mask):
    """The curves of a heat layer, written out with numpy alone."""
    record = layer.metadata[RESULT_KEY]
    probs = np.asarray(record["probabilities"])
    heat = np.asarray(layer.data, dtype=np.float64)
    return {"time_s": np.arange(COUNT) * TR, "predicted": probs.argmax(1), "probability": probs.max(1),
            "heat_in_region": heat[:, mask > 0].mean(1), "heat_peak": heat.reshape(COUNT, -1).max(1),
            "design": np.array(DESIGN)}


def listens(emitter, obj) -> bool:
    """Whether a napari event emitter calls a method of ``obj``."""
    return any(isinstance(cb, tuple) and cb[0]() is obj for cb in emitter.callbacks)


def mouse_on_plot(dock, seconds, name="button_press_event"):
    """A real matplotlib mouse event on the plot at ``seconds``: a left click, or a drag with it held."""
    from matplotlib.backend_bases import MouseButton, MouseEvent

    dock.canvas.draw()
    x, y = dock.axes.transData.transform((seconds, 0.5))
    if name == "button_press_event":
        event = MouseEvent(name, dock.canvas, x, y, button=MouseButton.LEFT)
    else:
        event = MouseEvent(name, dock.canvas, x, y, buttons=[MouseButton.LEFT])
    dock.canvas.callbacks.process(name, event)


def test_time_course_dock(make_napari_viewer, qtbot, bids_run, tmp_path):
    source, model = bids_run
    viewer = make_napari_viewer(show=True)
    (anatomy,) = viewer.open(str(source), plugin="napari-g3dvit")
    assert anatomy.data.shape == (COUNT, *TINY_SHAPE) and anatomy.scale[0] == pytest.approx(TR)
    _, dock = viewer.window.add_plugin_dock_widget("napari-g3dvit", "Time course")
    assert isinstance(dock, TimeCourseWidget)
    assert dock.courses is None and dock.status.value == NO_SERIES  # nothing explained yet
    assert not dock.export_button.enabled and dock.export() is None

    explain = open_widget(viewer)
    explain.volume.value = anatomy
    assert explain.load_model(model)
    explain.method.value = "hirescam"
    heat = explain_series(qtbot, explain, 100.0)
    assert heat.metadata[RESULT_KEY]["series"] and dock.heat.value is heat  # picked when it appeared
    courses = dock.courses
    assert courses.heat_column == "heat_peak" and "heat_peak" in courses.columns()

    mask = np.zeros(TINY_SHAPE, dtype=np.uint8)
    mask[2:8, 2:6, 4:12] = 1
    region = viewer.add_labels(mask, name="roi", scale=anatomy.scale[1:], translate=anatomy.translate[1:])
    dock.region.value = region
    courses, want = dock.courses, expected_curves(heat, mask)
    np.testing.assert_allclose(courses.time_s, want["time_s"])  # seconds, not indices
    np.testing.assert_array_equal(courses.predicted, want["predicted"])
    np.testing.assert_allclose(courses.probability, want["probability"], rtol=1e-6)
    np.testing.assert_allclose(courses.heat, want["heat_in_region"], rtol=1e-6)
    np.testing.assert_array_equal(courses.design, want["design"])
    assert courses.predicted_name == [CONFIG["class_names"][k] for k in want["predicted"]]
    assert "roi" in dock.status.value and "events.tsv" in dock.status.value
    assert dock.heat_axes.get_xlabel() == "time (s)" and dock.figure.legends  # the legend sits above the panels
    assert dock.axes.get_ylim() == pytest.approx((-0.03, 1.05))  # probability and heat on their own axes
    assert dock.heat_axes.get_ylim()[1] == pytest.approx(courses.heat.max(), rel=0.1)
    from matplotlib.colors import to_hex
    from napari.utils.theme import get_theme

    for theme in ("dark", "light"):  # the plot is drawn in napari's theme, and follows a change
        viewer.theme = theme
        assert to_hex(dock.figure.get_facecolor()) == get_theme(theme).background.as_hex()

    # the slider moves the marker; a click (and the real mouse event) moves the slider
    viewer.dims.set_current_step(0, 3)
    assert dock.marker_time == pytest.approx(6.0)
    assert dock.click_time(7.2) == 4 and viewer.dims.current_step[0] == 4
    assert dock.marker_time == pytest.approx(8.0)
    mouse_on_plot(dock, 2.3)
    assert viewer.dims.current_step[0] == 1 and dock.marker_time == pytest.approx(2.0)
    mouse_on_plot(dock, 9.5, "motion_notify_event")
    assert viewer.dims.current_step[0] == 5 and dock.marker_time == pytest.approx(10.0)
    mouse_on_plot(dock, 2.3)

    # export beside the BIDS source: TSV with the same numbers
    assert dock.export_path.value == source.with_name("sub-01_task-motor_run-1_desc-g3dvit_timeseries.tsv")
    written = dock.export()
    assert written == str(dock.export_path.value) and written in dock.written.value
    with open(written, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert len(rows) == COUNT and rows[0]["predicted_name"] in CONFIG["class_names"]
    np.testing.assert_allclose([float(r["time_s"]) for r in rows], want["time_s"])
    np.testing.assert_allclose([float(r["probability"]) for r in rows], want["probability"], rtol=1e-6)
    np.testing.assert_allclose([float(r["heat_in_region"]) for r in rows], want["heat_in_region"], rtol=1e-6)
    assert [int(r["design"]) for r in rows] == DESIGN
    sidecar = json.loads(Path(written).with_suffix(".json").read_text())  # what the TSV came from
    assert sidecar["method"] == "hirescam" and sidecar["labels"] == "roi" and "events.tsv" in sidecar["task design"]
    assert dock.export(tmp_path / "mine.csv") == str(tmp_path / "mine.csv")
    assert read_table(tmp_path / "mine.csv")["design"] == [str(d) for d in DESIGN]
    assert open(tmp_path / "mine.csv").readline().startswith("# heatmap: hirescam")

    # the library path gives the same curves for the same settings
    explanation = g3d.explain(explain.model, np.asarray(anatomy.data), method="hirescam", threshold=100.0)
    direct = time_courses(explanation, mask, tr=TR, events=read_events(events_beside(source)),
                          class_names=CONFIG["class_names"])
    for column, values in direct.columns().items():
        if isinstance(values[0], str):
            assert courses.columns()[column] == values, column
        else:
            np.testing.assert_allclose(courses.columns()[column], values, atol=1e-5, err_msg=column)

    # the plot follows the layer's data (a re-run) and a newer series heatmap
    heat.data = np.asarray(heat.data) * 0.5
    qtbot.waitUntil(lambda: np.allclose(dock.courses.heat, want["heat_in_region"] * 0.5, rtol=1e-5), timeout=5_000)
    newer = explain_series(qtbot, explain, 50.0)
    assert newer is not heat and dock.heat.value is newer
    np.testing.assert_allclose(dock.courses.heat, expected_curves(newer, mask)["heat_in_region"], rtol=1e-6)

    # labels elsewhere in the world: a message, no curves, no crash; back to the peak
    far = viewer.add_labels(mask, name="far away", translate=(500.0, 500.0, 500.0))
    dock.region.value = far
    assert dock.courses is None and "do not overlap" in dock.status.value and not dock.export_button.enabled
    assert dock.click_time(4.0) is None
    dock.region.value = None
    assert dock.courses.heat_column == "heat_peak"
    dock.region.value = region
    viewer.layers.remove(far)

    # both docks over the 3D view
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    qtbot.wait(100)  # the plot redraws at its docked size
    shot = os.environ.get("G3DVIT_TIMECOURSE_SCREENSHOT") or str(tmp_path / "timecourse.png")
    viewer.window.screenshot(shot, canvas_only=False)
    assert os.path.getsize(shot) > 0

    # the layer gone: the message again
    viewer.layers.remove(newer)
    viewer.layers.remove(heat)
    assert dock.courses is None and dock.status.value == NO_SERIES

    # a deleted dock is no longer called by the viewer it outlives
    emitters = (viewer.dims.events.current_step, viewer.layers.events.inserted, viewer.layers.events.removed)
    assert all(listens(emitter, dock) for emitter in emitters)
    viewer.window.remove_dock_widget(dock)
    dock.deleteLater()
    qtbot.waitUntil(lambda: not any(listens(emitter, dock) for emitter in emitters), timeout=5_000)
    viewer.dims.set_current_step(0, 2)
    viewer.add_image(np.zeros((COUNT, *TINY_SHAPE), dtype=np.float32), name="later", metadata=dict(heat.metadata))


def test_the_fmri_sample_explains_every_timepoint_in_one_click_and_plots_the_curves(qtbot):
    """``g3dvit napari --sample fmri_task``: the run, its model, both docks; one Explain gives the curves."""
    from napari_g3dvit.cli import open_sample_viewer
    from napari_g3dvit.evaluation.fmri import BlockDesign, block_design

    viewer, widget = open_sample_viewer("fmri_task", show=False)
    try:
        course = next(w for name, w in viewer.window.dock_widgets.items() if name.startswith("Time course"))
        assert widget.model is not None and widget.timepoints.value == ALL
        # the defaults: auto, for the class the model's config recommends ("task")
        assert (widget.method.value, widget.target.value) == ("auto", "task")
        assert course.region.value.name == "activation (ground truth)"
        assert course.message == NO_SERIES
        widget.run()
        widget.wait()
        qtbot.waitUntil(lambda: course.courses is not None, timeout=60_000)
        courses = course.courses
        assert len(courses) == 50 and courses.heat_column == "heat_in_region" and courses.tr == 2.0
        assert courses.design.sum() == 20  # two 20 s task blocks at TR 2 s, from the events.tsv beside the run
        # the model tells task from rest: labels are the HRF-convolved design >= 0.5
        _, regressor, _ = block_design(BlockDesign())
        assert (courses.predicted == (regressor >= 0.5)).mean() >= 0.9
        # the evidence for "task" in the activation region rises and falls with the design
        assert np.corrcoef(courses.heat, regressor)[0, 1] >= 0.8
        course.click_time(64.0)
        assert viewer.dims.current_step[0] == 32 and course.marker_time == 64.0
    finally:
        viewer.close()
