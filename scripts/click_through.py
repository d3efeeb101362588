"""The napari-hub path, clicked through in a real window, with screenshots.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/click_through.py [OUT_DIR]

Plain napari; File > Open of the brain demo stored as LAS (as FSL writes MNI data); Plugins >
Explain 3D ViT; the checkpoint picked; Explain clicked; a colleague's ventricle labels on a 1.5 mm
grid opened; Region table clicked; Export CSV clicked. Buttons are pressed with real Qt mouse
clicks. Screenshots go to OUT_DIR (default docs/images); what each step showed is printed.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path


def colleague_files(folder: Path) -> tuple[Path, Path]:
    """The demo T1 stored LAS, and its ventricle mask resampled to 1.5 mm (as another lab would)."""
    import nibabel as nib
    import numpy as np
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform
    from nibabel.processing import resample_from_to

    from napari_g3dvit.sample_models import sample_path

    t1 = nib.load(sample_path("brain_ventricles_example.nii.gz"))
    las = t1.as_reoriented(ornt_transform(io_orientation(t1.affine), axcodes2ornt(("L", "A", "S"))))
    nib.save(las, folder / "sub-01_T1w_LAS.nii.gz")
    mask = nib.load(sample_path("brain_ventricles_example_mask.nii.gz"))
    fine_affine = mask.affine.copy()
    fine_affine[:3, :3] = np.diag([1.5, 1.5, 1.5])
    fine_shape = tuple(int(n) * 2 for n in mask.shape)
    fine = resample_from_to(mask, (fine_shape, fine_affine), order=0)
    labels = nib.Nifti1Image(np.asarray(fine.dataobj).astype(np.uint8), fine_affine)
    nib.save(labels, folder / "colleague_ventricles_label.nii.gz")
    return folder / "sub-01_T1w_LAS.nii.gz", folder / "colleague_ventricles_label.nii.gz"


def main(out: Path) -> int:
    import napari
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QApplication

    from napari_g3dvit.display import camera
    from napari_g3dvit.sample_models import sample_path

    out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="g3dvit-hub-"))
    t1_path, labels_path = colleague_files(folder)

    def settle(seconds: float = 0.5) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            QApplication.processEvents()
            time.sleep(0.01)

    def click(button) -> None:
        QTest.mouseClick(button.native, Qt.MouseButton.LeftButton)
        settle(0.2)

    def shot(name: str) -> None:
        settle(0.5)
        viewer.window.screenshot(str(out / name), canvas_only=False, flash=False)
        print(f"  screenshot {out / name}")

    viewer = napari.Viewer(title="napari")
    viewer.window.resize(1500, 950)
    # File > Open asks which plugin reads a .nii.gz (napari's built-in reader claims every file but
    # cannot read NIfTI); choosing napari-g3dvit there is this call
    (t1,) = viewer.open(str(t1_path), plugin="napari-g3dvit")
    print(f"opened {t1_path.name}: {type(t1).__name__} {t1.data.shape}, stored "
          f"{t1.metadata['nifti']['orientation']}, dims order {viewer.dims.order}")
    viewer.dims.set_point(viewer.dims.order[0], 10.0)  # an axial slice through the ventricles
    _, widget = viewer.window.add_plugin_dock_widget("napari-g3dvit", "Explain 3D ViT")
    widget.checkpoint.value = sample_path("brain_ventricles.safetensors")  # as the file dialog sets it
    widget.wait()
    print(f"model: {widget.summary.value}\n  {widget.model_orientation.value}")
    shot("hub_1_open_las_axial.png")

    click(widget.run_button)
    widget.wait()
    settle(0.5)
    print(f"Explain: {widget.result.value} -> layer '{widget.last_layer.name}'")
    shot("hub_2_explained_axial.png")

    (labels,) = viewer.open(str(labels_path), plugin="napari-g3dvit")
    print(f"opened {labels_path.name}: {type(labels).__name__} {labels.data.shape} at "
          f"{labels.scale[0]:.1f} mm (heatmap grid {widget.last_layer.data.shape} at {t1.scale[0]:.1f} mm)")
    widget.regions.value = labels
    click(widget.region_button)
    for row in widget._region_rows:
        print(f"  label {row['label']}: {row['voxels']} voxels, {100 * row['share of heat']:.1f} % of the heat")
    widget.csv_path.value = folder / "regions.csv"
    click(widget.export_button)
    print(f"Export CSV: {widget.result.value}")
    viewer.layers["sub-01_T1w_LAS"].visible = True
    viewer.dims.ndisplay = 3
    camera(viewer).angles = (0, -60, 60)
    shot("hub_3_regions_3d.png")
    ok = not widget.last_error and bool(widget._region_rows)
    viewer.close()
    print("click-through", "ok" if ok else f"FAILED: {widget.last_error}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/images")))
