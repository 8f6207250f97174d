"""ros/latest_worker.py: the keep-latest job thread behind the node's dense outputs and map (no ROS needed)."""
from __future__ import annotations

import threading

from ttt3r_ros.ros.latest_worker import LatestWorker


class _GatedJob:
    """A job that records its items and, for the items in `hold`, waits until released."""

    def __init__(self, hold: set[int]) -> None:
        self.hold, self.seen = hold, []
        self.started = {i: threading.Event() for i in hold}
        self.release = {i: threading.Event() for i in hold}

    def __call__(self, item: int) -> None:
        self.seen.append(item)
        if item in self.hold:
            self.started[item].set()
            assert self.release[item].wait(10)


def test_a_busy_job_gets_only_the_newest_item_and_the_rest_are_counted_skipped() -> None:
    job = _GatedJob({1})
    worker = LatestWorker("t", job, lambda exc: None)
    try:
        worker.put(1)
        assert job.started[1].wait(10)
        for i in range(2, 6):   # while the job is busy: each replaces the waiting one
            worker.put(i)
        job.release[1].set()
        assert worker.wait_idle(10)
        assert job.seen == [1, 5] and worker.skipped == 3 and worker.done == 2
    finally:
        worker.stop()


def test_wait_caught_up_returns_once_what_was_handed_before_is_done_while_items_keep_coming() -> None:
    job = _GatedJob({1, 2, 3})
    worker = LatestWorker("t", job, lambda exc: None)
    try:
        worker.put(1)
        assert job.started[1].wait(10)
        worker.put(2)                       # handed before the wait: the wait is for it
        caught_up = threading.Event()
        waiter = threading.Thread(target=lambda: worker.wait_caught_up(10) and caught_up.set())
        waiter.start()
        job.release[1].set()
        assert job.started[2].wait(10)
        assert not caught_up.is_set()       # item 2 is running, not done
        worker.put(3)                       # handed after the call: not waited for
        job.release[2].set()
        assert caught_up.wait(10)           # although item 3 is still to run (held)
        waiter.join()
        assert job.started[3].wait(10) and worker.wait_idle(0) is False
        job.release[3].set()
        assert worker.wait_idle(10) and job.seen == [1, 2, 3]
    finally:
        worker.stop()


def test_a_failing_job_is_reported_and_the_thread_goes_on() -> None:
    errors: list[Exception] = []

    def job(item: int) -> None:
        if item == 1:
            raise ValueError("bad item")
    worker = LatestWorker("t", job, errors.append)
    try:
        worker.put(1)
        assert worker.wait_caught_up(10)
        worker.put(2)
        assert worker.wait_caught_up(10)
        assert [str(e) for e in errors] == ["bad item"] and worker.done == 1
    finally:
        worker.stop()
