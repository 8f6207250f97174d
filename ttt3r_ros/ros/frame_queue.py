"""Hand-off of incoming frames from ROS callbacks to the inference worker thread.

Two policies:
- keep-latest (live default): one slot; a new frame replaces a waiting one, which is counted as dropped. The
  callback never waits, and the worker always gets the freshest image, so latency stays one inference long
  instead of growing with a backlog.
- process-all (bag replay): a bounded FIFO in arrival order. When it is full the *callback* waits for the worker
  (back-pressure) up to `put_timeout_s`; the subscription's own QoS history then absorbs further messages. A bag
  player publishing faster than the model runs loses frames in the DDS history (the node counts them from the
  publisher's sequence numbers: ``frames_lost_before_node``) and, when a put times out, here (``refused``); for
  lossless replay play the bag at a rate the model sustains (``ros2 bag play --rate``) or step it with the player's
  ``play_next`` service.
"""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass
class QueueCounters:
    received: int = 0
    dropped: int = 0          # replaced before the worker took them (keep-latest), or cleared (pause)
    refused: int = 0          # process-all: the queue stayed full for put_timeout_s (or was closed)
    taken: int = 0


class FrameQueue(Generic[T]):
    def __init__(self, process_all: bool, max_size: int = 30, put_timeout_s: float = 5.0) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self.process_all = process_all
        self.max_size = max_size if process_all else 1
        self.put_timeout_s = put_timeout_s
        self._items: collections.deque[T] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._getters_waiting = 0   # worker threads inside get() (the keep-latest intake takes an image only then)
        self.counters = QueueCounters()

    def put(self, item: T) -> bool:
        """Queue a frame; returns False when it (or, keep-latest, nothing) was dropped. Never blocks keep-latest."""
        with self._cond:
            self.counters.received += 1
            if self._closed:
                self.counters.refused += 1
                return False
            if not self.process_all:
                if self._items:
                    self._items.popleft()
                    self.counters.dropped += 1
                self._items.append(item)
                self._cond.notify_all()
                return True
            ok = self._cond.wait_for(lambda: self._closed or len(self._items) < self.max_size,
                                     timeout=self.put_timeout_s)
            if not ok or self._closed:
                self.counters.refused += 1
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self, timeout_s: float | None = None) -> T | None:
        """Next frame, or None on timeout / after close()."""
        with self._cond:
            self._getters_waiting += 1
            if not self._items:
                self._cond.notify_all()   # wakes an intake waiting for demand (wait_for_demand)
            try:
                if not self._cond.wait_for(lambda: self._closed or bool(self._items), timeout=timeout_s):
                    return None
            finally:
                self._getters_waiting -= 1
            if not self._items:
                return None
            item = self._items.popleft()
            self.counters.taken += 1
            self._cond.notify_all()
            return item

    def wait_for_demand(self, timeout_s: float) -> bool:
        """Keep-latest intake: wait until a worker waits in get() with nothing queued; False on timeout or close."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self._closed or (self._getters_waiting > 0 and not self._items),
                timeout=timeout_s) and not self._closed

    def count_dropped_upstream(self, n: int) -> None:
        """`n` frames that reached the node's input but were replaced before being queued (keep-latest: a newer image
        overwrote them in the subscription's history while the worker was busy): received and dropped."""
        if n <= 0:
            return
        with self._cond:
            self.counters.received += n
            self.counters.dropped += n

    def clear(self) -> int:
        """Drop waiting frames (e.g. on deactivate); returns how many, which are counted as dropped."""
        with self._cond:
            n = len(self._items)
            self._items.clear()
            self.counters.dropped += n
            self._cond.notify_all()
            return n

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            return {"received": self.counters.received, "dropped": self.counters.dropped,
                    "refused": self.counters.refused, "taken": self.counters.taken, "waiting": len(self._items)}
