"""Plugins > Orthogonal views: two more napari canvases linked to the main viewer in world coordinates.

Driven as a user drives them: files through the reader, the dock from the Plugins menu, the slice
position through ``viewer.dims.point``, a real (simulated) mouse click on a view's canvas, and
screenshots of the three planes with the crosshair on a marker. Every test fails on any warning
about napari's private attributes (napari's PublicOnlyProxy warns on such access from a plugin).
"""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

from napari_g3dvit.orthoviews import CROSSHAIR_KEY, clicked_point, crosshair_vectors, other_planes

SHAPE = (20, 24, 16)  # x, y, z voxels (RAS)
ZOOMS = (2.0, 1.5, 2.5)
ORIGIN = (-20.0, -18.0, -20.0)
MARKER = (5, 17, 11)  # voxel of a bright marker: x = -10, y = 7.5, z = 7.5 mm
SHOTS = os.environ.get("G3DVIT_SCREENSHOTS")


def _affine():
    affine = np.diag([*ZOOMS, 1.0])
    affine[:3, 3] = ORIGIN
    return affine


def marker_mm():
    return tuple(float(o + z * i) for o, z, i in zip(ORIGIN, ZOOMS, MARKER))


@pytest.fixture
def files(tmp_path):
    data = np.full(SHAPE, 0.2, np.float32)
    x, y, z = MARKER
    data[x - 1 : x + 2, y - 1 : y + 2, z - 1 : z + 2] = 1.0
    nib.save(nib.Nifti1Image(data, _affine()), tmp_path / "anatomy.nii.gz")
    labels = np.zeros(SHAPE, np.uint8)
    labels[:10] = 1
    nib.save(nib.Nifti1Image(labels, _affine()), tmp_path / "halves_label.nii.gz")
    return tmp_path / "anatomy.nii.gz", tmp_path / "halves_label.nii.gz"


def open_ortho(viewer):
    dock, widget = viewer.window.add_plugin_dock_widget("napari-g3dvit", "Orthogonal views")
    return dock, widget


def test_plane_orders():
    assert other_planes((2, 1, 0), 3) == [("coronal", (1, 2, 0)), ("sagittal", (0, 2, 1))]
    assert other_planes((0, 3, 2, 1), 4) == [("coronal", (0, 2, 3, 1)), ("sagittal", (0, 1, 3, 2))]
    assert [order for _, order in other_planes((0, 1, 2), 3)] == [(1, 0, 2), (2, 1, 0)]
    lines = crosshair_vectors((5.0, 1.0, 2.0, 3.0), (0, -10, -20, -30), (9, 10, 20, 30))
    assert lines.shape == (3, 2, 4) and np.all(lines[:, 0, 0] == 5.0)  # time stays the current one
    np.testing.assert_allclose(lines[0, 0], (5, -10, 2, 3))
    np.testing.assert_allclose(lines[0, 1], (0, 20, 0, 0))
    assert clicked_point((1, 2, 3), (9, 8, 7), (1, 2)) == (1.0, 8.0, 7.0)


def test_layers_are_mirrored_and_the_point_is_shared(make_napari_viewer, files, qtbot, no_private_access):
    anatomy_path, labels_path = files
    viewer = make_napari_viewer(show=True)
    (anatomy,) = viewer.open(str(anatomy_path), plugin="napari-g3dvit")
    dock, ortho = open_ortho(viewer)
    assert [t.text() for t in ortho.titles] == ["coronal", "sagittal"]  # the main viewer is axial
    assert [m.dims.order for m in ortho.models] == [(1, 2, 0), (0, 2, 1)]
    (labels,) = viewer.open(str(labels_path), plugin="napari-g3dvit")
    names = [layer.name for layer in viewer.layers]
    assert names[-1] == "crosshair" or "crosshair" in names
    for model in ortho.models:
        assert [layer.name for layer in model.layers] == [layer.name for layer in viewer.layers]

    copies = ortho.copies_of(anatomy)
    anatomy.colormap, anatomy.contrast_limits, anatomy.opacity = "magma", (0.1, 0.9), 0.7
    anatomy.blending, labels.visible = "additive", False
    for copy in copies:
        assert copy.colormap.name == "magma" and tuple(copy.contrast_limits) == (0.1, 0.9)
        assert copy.opacity == 0.7 and copy.blending == "additive"
    assert not any(copy.visible for copy in ortho.copies_of(labels))
    viewer.layers.move(viewer.layers.index(labels), 0)
    for model in ortho.models:
        assert [layer.name for layer in model.layers] == [layer.name for layer in viewer.layers]

    labels.paint((2.0, 2.0, 2.0), 7, refresh=True)  # an edit in the main viewer
    assert all(copy.data[2, 2, 2] == 7 for copy in ortho.copies_of(labels))
    ortho.copies_of(labels)[0].paint((3.0, 3.0, 3.0), 9)  # an edit in a view
    assert labels.data[3, 3, 3] == 9

    mm = marker_mm()
    viewer.dims.point = mm
    assert all(tuple(m.dims.point) == mm for m in ortho.models)
    ortho.models[1].dims.set_point(0, -16.0)  # the sagittal view's slider
    assert viewer.dims.point[0] == -16.0 and ortho.models[0].dims.point[0] == -16.0

    cross = next(layer for layer in viewer.layers if CROSSHAIR_KEY in layer.metadata)
    world = cross.data * np.asarray(cross.scale)  # (3, 2, 3): start, direction
    np.testing.assert_allclose(world[0, 0, 1:], viewer.dims.point[1:])  # the x line passes the point
    ortho.show_cross.setChecked(False)
    assert not cross.visible and not any(c.visible for c in ortho.copies_of(cross))
    cross.visible = True  # its eye in the layer list and the checkbox agree
    assert ortho.show_cross.isChecked() and all(c.visible for c in ortho.copies_of(cross))

    # a 4D run joins: time first, the same time step in every view
    run = np.random.default_rng(0).random((*SHAPE, 5)).astype(np.float32)
    image = nib.Nifti1Image(run, _affine())
    image.header.set_xyzt_units("mm", "sec")
    image.header["pixdim"][4] = 2.0
    nib.save(image, anatomy_path.with_name("run.nii.gz"))
    viewer.open(str(anatomy_path.with_name("run.nii.gz")), plugin="napari-g3dvit")
    assert viewer.dims.ndim == 4 and [m.dims.order for m in ortho.models] == [(0, 2, 3, 1), (0, 1, 3, 2)]
    viewer.dims.set_point(0, 6.0)  # 6 s: timepoint 3
    assert all(m.dims.point[0] == 6.0 and m.dims.current_step[0] == 3 for m in ortho.models)
    qtbot.wait(10)
    assert ortho.crosshair.ndim == 4 and np.all(ortho.crosshair.data[:, 0, 0] * ortho.crosshair.scale[0] == 6.0)

    viewer.layers.remove(labels)
    qtbot.wait(10)  # the copies leave with the next turn of the event loop, together
    for model in ortho.models:
        assert "halves_label" not in [layer.name for layer in model.layers]
    from qtpy.QtWidgets import QDockWidget, QPushButton

    assert not dock.features() & QDockWidget.DockWidgetFeature.DockWidgetFloatable  # no floating
    qtbot.wait(10)
    floats = [b for b in dock.titleBarWidget().findChildren(QPushButton) if "float" in b.objectName().lower()]
    assert floats and all(b.isHidden() for b in floats)



def _cross_centre(image: np.ndarray) -> tuple[float, float]:
    """(row, column) where the crosshair's lines (its cyan) meet in a screenshot."""
    rgb = image[..., :3].astype(int)
    cyan = (rgb[..., 2] > 150) & (rgb[..., 1] > 130) & (rgb[..., 0] < rgb[..., 2] - 40)
    rows = np.flatnonzero(cyan.sum(axis=1) > 0.3 * cyan.shape[1])
    columns = np.flatnonzero(cyan.sum(axis=0) > 0.3 * cyan.shape[0])
    assert rows.size and columns.size, "no crosshair line in the screenshot"
    return float(rows.mean()), float(columns.mean())


def _brightest(image: np.ndarray) -> tuple[float, float]:
    grey = image[..., :3].astype(float).mean(-1)
    rows, columns = np.nonzero(grey >= grey.max() - 2)
    return float(rows.mean()), float(columns.mean())


def test_screenshots_and_a_click(make_napari_viewer, files, qtbot, no_private_access):
    """The crosshair on the marker in all three planes; then a real click in a view moves the others."""
    from qtpy.QtCore import QPoint, Qt

    viewer = make_napari_viewer(show=True)
    viewer.open(str(files[0]), plugin="napari-g3dvit")
    _, ortho = open_ortho(viewer)
    from napari_g3dvit.navigate import go_to_mm

    go_to_mm(viewer, marker_mm())
    viewer.reset_view()
    ortho.reset_views()
    qtbot.wait(100)
    shots = {"axial": np.asarray(viewer.screenshot(canvas_only=True, flash=False))}
    for name, qt_viewer in zip(("coronal", "sagittal"), ortho.qt_viewers):
        shots[name] = np.asarray(qt_viewer.screenshot(flash=False))
    for name, shot in shots.items():
        if SHOTS:
            import imageio.v3 as iio

            iio.imwrite(os.path.join(SHOTS, f"ortho_{name}.png"), shot)
        cross, marker = _cross_centre(shot), _brightest(shot)
        size = max(shot.shape[:2])
        assert abs(cross[0] - marker[0]) < 0.03 * size and abs(cross[1] - marker[1]) < 0.03 * size, (name, cross, marker)

    canvas = ortho.qt_viewers[0].canvas.native  # the coronal view
    before = tuple(viewer.dims.point)
    centre = QPoint(canvas.width() // 2, canvas.height() // 2)
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=QPoint(centre.x() + 20, centre.y() - 15))
    after = tuple(viewer.dims.point)
    assert after[1] == before[1]  # y is the coronal view's sliced axis: unchanged
    coronal = ortho.models[0]
    from napari_g3dvit.display import camera

    cam = camera(coronal)  # right of and above the centre: +x and +z by the pixels over the zoom
    assert after[0] == pytest.approx(cam.center[2] + 20 / cam.zoom, abs=2.0)
    assert after[2] == pytest.approx(cam.center[1] + 15 / cam.zoom, abs=2.5)
    assert all(tuple(m.dims.point) == after for m in ortho.models)
