"""The README's fMRI picture: the sample after one click, the slider in a task block, 3D view.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/fmri_screenshot.py [PNG]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from qtpy.QtWidgets import QApplication

from napari_g3dvit.cli import open_sample_viewer


def main(target: str = "docs/images/fmri_time_course.png", seconds: float = 34.0) -> None:
    viewer, widget = open_sample_viewer("fmri_task", explain=True, show=True)
    course = next(w for name, w in viewer.window.dock_widgets.items() if name.startswith("Time course"))
    end = time.perf_counter() + 30
    while course.courses is None and time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.01)
    course.click_time(seconds)  # what a click on the plot does: the slider follows
    viewer.window.resize(1500, 950)
    for _ in range(50):
        QApplication.processEvents()
        time.sleep(0.01)
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    viewer.window.screenshot(target, canvas_only=False, flash=False)
    print(f"{widget.result.value}; slider at {course.marker_time:g} s; wrote {target}")
    viewer.close()


if __name__ == "__main__":
    main(*sys.argv[1:2])
