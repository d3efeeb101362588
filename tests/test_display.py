"""Neurological display of RAS+ volumes: rendered screenshots, 4D order, the viewer watch."""

from __future__ import annotations

import os

import numpy as np
import pytest

from napari_g3dvit.display import PLANES, neuro_view, watch_current_viewer, watch_viewer

SHAPE = (20, 24, 16)  # x (L -> R), y (P -> A), z (I -> S)
SCALE = (1.5, 1.0, 2.5)  # anisotropic voxel sizes, mm
TRANSLATE = (-15.0, -12.0, -20.0)
# Marker "big" (value 1.0) sits left, anterior, superior; "small" (0.6) right, posterior, inferior.
BIG = (slice(2, 6), slice(18, 22), slice(11, 15))
SMALL = (slice(15, 18), slice(3, 6), slice(2, 5))
# Where each marker must appear as (row half, column half) in the slice through it, and the
# expected width / height of the volume on screen (mm across / mm up).
EXPECTED = {
    "axial": ({"big": ("top", "left"), "small": ("bottom", "right")}, 30 / 24),
    "coronal": ({"big": ("top", "left"), "small": ("bottom", "right")}, 30 / 40),
    "sagittal": ({"big": ("top", "right"), "small": ("bottom", "left")}, 24 / 40),
}
SLICED_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}
SHOTS = os.environ.get("G3DVIT_SCREENSHOTS")  # a folder to keep the screenshots in, if set


def _volume() -> np.ndarray:
    data = np.full(SHAPE, 0.15, dtype=np.float32)
    data[BIG], data[SMALL] = 1.0, 0.6
    return data


def _world(marker, axis: int) -> float:
    """World mm of the middle voxel of ``marker`` along ``axis``."""
    index = (marker[axis].start + marker[axis].stop - 1) // 2
    return TRANSLATE[axis] + SCALE[axis] * index


def _shot(viewer, name: str) -> np.ndarray:
    image = np.asarray(viewer.screenshot(canvas_only=True, flash=False))
    if SHOTS:
        import imageio.v3 as iio

        iio.imwrite(os.path.join(SHOTS, f"{name}.png"), image)
    return image[..., :3].astype(float).mean(-1)


def _where(gray: np.ndarray, value: float) -> tuple[str, str, float]:
    """(row half, column half) of the marker of grey ``value`` within the volume's footprint, and
    the footprint's width / height."""
    rows, cols = np.nonzero(gray > 20)  # the volume's background is 0.15 * 255 on black
    top, left = rows.min(), cols.min()
    height, width = rows.max() - top + 1, cols.max() - left + 1
    mr, mc = np.nonzero(np.abs(gray - value) < 20)
    assert mr.size > 10, f"marker of grey {value} not visible"
    row = (mr.mean() - top) / height
    col = (mc.mean() - left) / width
    return ("top" if row < 0.5 else "bottom"), ("left" if col < 0.5 else "right"), width / height


@pytest.fixture
def shown(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    viewer.add_image(_volume(), scale=SCALE, translate=TRANSLATE, contrast_limits=(0, 1),
                     interpolation2d="nearest", interpolation3d="nearest",
                     metadata={"nifti": {}}, name="markers")
    return viewer


@pytest.mark.parametrize("plane", PLANES)
def test_screenshots_show_anatomical_up_at_the_top(shown, plane):
    viewer = shown
    neuro_view(viewer, plane)
    camera = viewer.scene.camera
    assert tuple(map(str, camera.orientation2d)) == ("up", "right")
    expected, aspect = EXPECTED[plane]
    axis = SLICED_AXIS[plane]
    for name, marker, grey in (("big", BIG, 255), ("small", SMALL, 0.6 * 255)):
        viewer.dims.set_point(axis, _world(marker, axis))
        *halves, ratio = _where(_shot(viewer, f"{plane}_{name}"), grey)
        assert tuple(halves) == expected[name], f"{plane}: {name} marker at {halves}"
        assert ratio == pytest.approx(aspect, rel=0.08)  # millimetres, not voxels, on screen


def test_default_napari_view_would_fail_the_check(shown):
    """napari's own view (rows y downwards, columns z) puts the anterior-superior marker at the
    bottom right, so the assertions above do catch a rotated brain."""
    viewer = shown
    assert viewer.dims.order == (0, 1, 2)
    viewer.dims.set_point(0, _world(BIG, 0))
    assert _where(_shot(viewer, "default_big"), 255)[:2] == ("bottom", "right")


def test_3d_axial_keeps_left_and_anterior(shown):
    """Axial in 3D (a maximum projection along z) shows the same layout as the 2D slice."""
    viewer = shown
    viewer.dims.ndisplay = 3
    neuro_view(viewer, "axial")
    gray = _shot(viewer, "axial_3d")
    assert _where(gray, 255)[:2] == ("top", "left")
    assert _where(gray, 0.6 * 255)[:2] == ("bottom", "right")


# The end of the depth axis nearest the viewer: axial looks from above, coronal from behind,
# sagittal from the subject's right. With rows up and columns right, these keep x, y, z
# right-handed on screen (a mirrored render would look from the other side).
NEAR_END = {"axial": (2, "high"), "coronal": (1, "low"), "sagittal": (0, "high")}


@pytest.mark.parametrize("plane", PLANES)
def test_3d_looks_from_the_side_that_keeps_ras_right_handed(make_napari_viewer, plane):
    """A dim marker in front hides a bright one behind it (attenuated MIP), so the rendered
    brightness tells which end of the depth axis faces the viewer."""
    axis, end = NEAR_END[plane]
    data = np.zeros(SHAPE, np.float32)
    near = [slice(8, 12), slice(10, 14), slice(6, 10)]  # the same spot on screen
    far = list(near)
    low, high = slice(1, 4), slice(SHAPE[axis] - 4, SHAPE[axis] - 1)
    near[axis], far[axis] = (high, low) if end == "high" else (low, high)
    data[tuple(near)], data[tuple(far)] = 0.6, 1.0
    viewer = make_napari_viewer(show=True)
    viewer.add_image(data, scale=SCALE, contrast_limits=(0, 1), rendering="attenuated_mip",
                     attenuation=0.5, interpolation3d="nearest", metadata={"nifti": {}})
    viewer.dims.ndisplay = 3
    neuro_view(viewer, plane)
    assert _shot(viewer, f"{plane}_3d_depth").max() < 230  # 255 if the bright marker were in front
    depth, vertical, horizontal = viewer.scene.camera.orientation
    viewer.scene.camera.orientation = ("away" if str(depth) == "towards" else "towards", vertical, horizontal)
    assert _shot(viewer, f"{plane}_3d_depth_flipped").max() > 250


def test_4d_keeps_time_first(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((3, *SHAPE), np.float32), scale=(2.0, *SCALE), metadata={"nifti": {}})
    for plane, spatial in (("axial", (3, 2, 1)), ("coronal", (2, 3, 1)), ("sagittal", (1, 3, 2))):
        neuro_view(viewer, plane)
        assert viewer.dims.order == (0, *spatial)
        labels = viewer.dims.axis_labels
        assert labels[0].startswith("time = ") and labels[0].endswith(" s · volume")
        assert [label.split(" = ")[0] for label in labels[1:]] == ["x", "y", "z"]
        assert labels[1].endswith("mm (L→R) · slice") and labels[3].endswith("mm (I→S) · slice")
    assert viewer.dims.not_displayed == (0, 1)  # time and the sliced x stay sliders


def test_watch_applies_axial_once_and_keeps_user_choices(make_napari_viewer):
    import napari

    viewer = make_napari_viewer()
    assert napari.current_viewer() is viewer  # so readers can find it
    watch_current_viewer()
    n_callbacks = len(viewer.layers.events.inserted.callbacks)
    watch_viewer(viewer)  # idempotent: no second connection
    assert len(viewer.layers.events.inserted.callbacks) == n_callbacks
    viewer.add_image(np.zeros((8, 8), np.float32))  # not NIfTI: nothing happens
    assert viewer.dims.order == (0, 1)
    viewer.add_image(_volume(), scale=SCALE, translate=TRANSLATE, metadata={"nifti": {}})
    assert viewer.dims.order == (2, 1, 0)
    assert tuple(map(str, viewer.scene.camera.orientation2d)) == ("up", "right")
    assert viewer.dims.axis_labels[-1].startswith("z = ") and viewer.dims.axis_labels[-1].endswith("mm (I→S) · slice")
    # the view was reset after the order changed: the camera looks at the middle of the x-y plane
    centre = np.asarray(TRANSLATE) + np.asarray(SCALE) * (np.asarray(SHAPE) - 1) / 2
    np.testing.assert_allclose(viewer.scene.camera.center[1:], centre[[1, 0]], atol=1)
    viewer.dims.order = (0, 1, 2)  # the user's choice
    viewer.add_image(_volume(), scale=SCALE, translate=TRANSLATE, metadata={"nifti": {}})
    watch_viewer(viewer)
    viewer.add_image(_volume(), metadata={"nifti": {}})
    assert viewer.dims.order == (0, 1, 2)


def test_opening_nifti_files_through_the_reader(make_napari_viewer, tmp_path):
    """``viewer.open`` runs the reader (which calls watch_current_viewer) and then inserts."""
    import nibabel as nib

    affine = np.diag([-2.0, 2.0, 3.0, 1.0])  # LAS on disk; the reader makes it RAS
    nib.save(nib.Nifti1Image(np.random.rand(6, 7, 5, 3).astype(np.float32), affine), tmp_path / "run.nii.gz")
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "run.nii.gz"), plugin="napari-g3dvit")
    assert viewer.dims.order == (0, 3, 2, 1)
    assert viewer.dims.axis_labels[0].startswith("time = ")
    assert tuple(map(str, viewer.scene.camera.orientation2d)) == ("up", "right")


def test_watch_current_viewer_without_viewer_is_harmless(monkeypatch):
    import napari

    monkeypatch.setattr(napari, "current_viewer", lambda: 1 / 0)
    watch_current_viewer()  # logs, does not raise


def test_bad_plane_and_too_few_dimensions(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((4, 5, 6), np.float32))
    with pytest.raises(ValueError, match="unknown plane 'transverse'"):
        neuro_view(viewer, "transverse")
    viewer.layers.clear()
    viewer.add_image(np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="at least 3 dimensions"):
        neuro_view(viewer)
