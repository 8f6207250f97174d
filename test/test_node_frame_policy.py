"""Frame hand-off policies (keep-latest vs in-order with back-pressure) and the static TF chain buffer."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ttt3r_ros.ros.frame_queue import FrameQueue


def test_keep_latest_replaces_and_counts_drops() -> None:
    q: FrameQueue[int] = FrameQueue(process_all=False)
    t0 = time.monotonic()
    for i in range(10):
        q.put(i)
    assert time.monotonic() - t0 < 0.1   # never blocks the callback
    assert q.get(timeout_s=0.1) == 9
    snap = q.snapshot()
    assert snap == {"received": 10, "dropped": 9, "refused": 0, "taken": 1, "waiting": 0}
    assert q.get(timeout_s=0.01) is None


def test_process_all_keeps_order_and_applies_back_pressure() -> None:
    q: FrameQueue[int] = FrameQueue(process_all=True, max_size=3, put_timeout_s=5.0)
    got: list[int] = []

    def slow_consumer() -> None:
        while len(got) < 20:
            item = q.get(timeout_s=1.0)
            if item is None:
                return
            time.sleep(0.005)
            got.append(item)

    worker = threading.Thread(target=slow_consumer)
    worker.start()
    max_waiting = 0
    for i in range(20):
        assert q.put(i)
        max_waiting = max(max_waiting, len(q))
    worker.join(timeout=10)
    assert got == list(range(20))
    assert max_waiting <= 3
    assert q.snapshot()["dropped"] == 0


def test_process_all_put_times_out_and_counts() -> None:
    q: FrameQueue[int] = FrameQueue(process_all=True, max_size=1, put_timeout_s=0.05)
    assert q.put(1)
    assert not q.put(2)
    assert (q.snapshot()["refused"], q.snapshot()["dropped"]) == (1, 0)


class _ConditionThatReportsWaiters(threading.Condition):
    """A Condition that sets `waiting` when a thread starts waiting on it (still holding the lock, so a notify from
    another thread cannot come before the wait releases it)."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)


def test_close_wakes_waiters() -> None:
    q: FrameQueue[int] = FrameQueue(process_all=False)
    q._cond = _ConditionThatReportsWaiters()   # to know the worker is blocked in get() before closing
    result: list[object] = []
    get_timeout_s = 60.0
    t = threading.Thread(target=lambda: result.append(q.get(timeout_s=get_timeout_s)), daemon=True)
    t.start()
    assert q._cond.waiting.wait(timeout=30.0), "the worker never started waiting"
    q.close()
    # woken by close(), not by its own timeout: it returns long before get_timeout_s
    t.join(timeout=get_timeout_s / 2)
    assert not t.is_alive() and result == [None]


def test_static_tf_chain() -> None:
    pytest.importorskip("rclpy", reason="rclpy not installed")
    from geometry_msgs.msg import TransformStamped

    from ttt3r_ros.engine import geometry
    from ttt3r_ros.ros import conversions as conv
    from ttt3r_ros.ros.static_tf import StaticTransformBuffer

    class Msg:
        def __init__(self, transforms: list[TransformStamped]) -> None:
            self.transforms = transforms

    def ts(parent: str, child: str, m: np.ndarray) -> TransformStamped:
        t = conv.transform_stamped(m, conv.Header(frame_id=parent), child)
        return t

    t_base_mount = geometry.make_se3(np.eye(3), [0.2, 0.0, 0.5])
    t_mount_optical = geometry.make_se3(geometry.R_BODY_FROM_OPTICAL, [0.0, 0.05, 0.0])
    buf = StaticTransformBuffer()
    buf.add_message(Msg([ts("base_link", "camera_link", t_base_mount)]))
    assert buf.lookup("base_link", "camera_optical") is None
    buf.add_message(Msg([ts("camera_link", "camera_optical", t_mount_optical)]))
    got = buf.lookup("base_link", "camera_optical")
    assert got is not None and np.allclose(got, t_base_mount @ t_mount_optical)
    back = buf.lookup("camera_optical", "base_link")
    assert np.allclose(back @ got, np.eye(4))
    assert np.allclose(buf.lookup("base_link", "base_link"), np.eye(4))
