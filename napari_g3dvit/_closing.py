"""Dock widgets that close cleanly: background workers stopped and cut off, nothing called late.

napari closes a plugin dock in two ways: the dock's close button (napari takes the widget out of
its dock, sets its parent to None and deletes the dock) and closing the viewer (the window and
everything in it is deleted). A worker still loading a model or explaining a volume then finishes
in the background; had its signals stayed connected, its slots would set values on deleted Qt
widgets, and PyQt aborts the process on the exception ("wrapped C/C++ object ... has been
deleted").

- ``when_closed(widget, callback)`` calls ``callback()`` once, on either kind of close.
- ``Workers`` starts the workers of one dock widget and connects their signals; ``stop()`` asks
  each to quit (a generator worker stops at its next yield), disconnects every slot it connected,
  and keeps the workers to be waited for when the interpreter exits, so a thread never runs
  Python while the interpreter is being torn down.
"""

from __future__ import annotations

import atexit
import logging
import weakref
from typing import Callable

from qtpy.QtCore import QEvent, QObject, QThreadPool
from qtpy.QtWidgets import QWidget

log = logging.getLogger("napari_g3dvit")

#: how long the interpreter waits at exit for workers a closed dock left running (milliseconds)
EXIT_WAIT_MS = 60_000
#: workers of closed docks (superqt holds a running worker, so each stays here until it ends)
_left_running: weakref.WeakSet = weakref.WeakSet()
_exit_hook_registered = False


def _wait_at_exit() -> None:
    """At interpreter exit: let the workers of closed docks end their current step."""
    if not len(_left_running):
        return
    if not QThreadPool.globalInstance().waitForDone(EXIT_WAIT_MS):
        log.warning("napari-g3dvit: a background task did not stop within %d s", EXIT_WAIT_MS // 1000)


class _CloseWatch(QObject):
    """Event filter on a dock's widget: a parent change to None after it was docked is a close."""

    def __init__(self, widget: QWidget, fire: Callable[[], None]):
        super().__init__(widget)
        self._fire = fire
        self._docked = widget.parent() is not None
        widget.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.ParentChange:
            if obj.parent() is not None:
                self._docked = True
            elif self._docked:
                self._fire()
        return False


def when_closed(widget: QWidget, callback: Callable[[], None]) -> None:
    """Call ``callback()`` once when ``widget`` leaves its dock or is destroyed with its window.

    ``callback`` must not touch ``widget``'s Qt children: on a window close they are already gone.
    A bound method is held weakly: Qt's connection must not keep its object alive for ever.
    """
    fired = []
    held = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else (lambda: callback)

    def fire(*_args) -> None:
        target = held()
        if not fired and target is not None:
            fired.append(True)
            target()

    _CloseWatch(widget, fire)
    widget.destroyed.connect(fire)


class Workers:
    """The background workers of one dock widget, and the slots it connected to them."""

    def __init__(self) -> None:
        self._connections: dict[object, list[tuple[object, Callable]]] = {}
        self.closed = False

    def start(self, worker, **slots: Callable):
        """Connect ``slots`` (signal name -> callable, e.g. ``returned=...``) and start ``worker``.

        After ``stop()`` no slot is called again; a worker started after ``stop()`` is not started.
        """
        if self.closed:
            worker.quit()
            return worker
        connected = []
        for name, slot in slots.items():
            signal = getattr(worker, name)
            signal.connect(slot)
            connected.append((signal, slot))
        self._connections[worker] = connected
        ref = weakref.ref(worker)
        worker.finished.connect(lambda: self._connections.pop(ref(), None))
        worker.start()
        return worker

    def stop(self) -> None:
        """Quit every running worker and disconnect the slots connected by ``start``."""
        global _exit_hook_registered
        self.closed = True
        for worker, connected in list(self._connections.items()):
            worker.quit()
            for signal, slot in connected:
                try:
                    signal.disconnect(slot)
                except (TypeError, RuntimeError):  # already gone with the worker
                    pass
            _left_running.add(worker)
        self._connections.clear()
        if len(_left_running) and not _exit_hook_registered:
            atexit.register(_wait_at_exit)
            _exit_hook_registered = True
