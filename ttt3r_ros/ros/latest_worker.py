"""A thread that runs a job on the newest item handed to it, never making the caller wait.

The node's worker hands each processed frame to two of these: the dense outputs (points, depth, confidence, built as
serialized CDR and published) and the voxel-map update. When one is still busy with an older frame, the waiting
item is replaced by the newer one (counted in ``skipped``), so a slow subscriber or a slow map never slows odometry.
"""
from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class LatestWorker(Generic[T]):
    def __init__(self, name: str, job: Callable[[T], None], on_error: Callable[[Exception], None]) -> None:
        self._job, self._on_error = job, on_error
        self._cond = threading.Condition()
        self._item: T | None = None
        self._busy = False
        self._handed = 0       # items put so far
        self._waiting_index = 0   # the put number of the waiting item
        self._covered = 0      # every item up to this put number is done or was replaced by a done one
        self._stopped = False
        self.done = 0          # items the job ran on
        self.skipped = 0       # items replaced by a newer one before the job took them
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def put(self, item: T) -> None:
        with self._cond:
            if self._item is not None:
                self.skipped += 1
            self._handed += 1
            self._item, self._waiting_index = item, self._handed
            self._cond.notify_all()

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Block until nothing is waiting or running (tests; an orderly stop)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._item is None and not self._busy, timeout=timeout_s)

    def wait_caught_up(self, timeout_s: float | None = None) -> bool:
        """Block until the job has run on the newest item handed before this call (or on a newer one): a save that
        must hold every frame so far, without waiting for a stream that keeps handing new items to pause."""
        with self._cond:
            target = self._handed
            return self._cond.wait_for(lambda: self._stopped or self._covered >= target, timeout=timeout_s)

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._cond:
            self._stopped = True
            self._item = None
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout_s)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopped or self._item is not None)
                if self._stopped:
                    return
                item, self._item, self._busy = self._item, None, True
                index = self._waiting_index
            try:
                self._job(item)  # type: ignore[arg-type]
                self.done += 1
            except Exception as exc:  # a failed job must not end the thread: the next frame tries again
                self._on_error(exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._covered = index
                    self._cond.notify_all()
