"""Environment smoke test: two separate processes talk over real DDS (Fast DDS, loopback, shared memory).

Proves the venv's rclpy, the rmw, the discovery settings and the package's own generated message type
(ttt3r_ros/Status) work across processes; it does not test the product. Takes about 5 s.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

SMOKE_DIR = Path(__file__).resolve().parent / "dds_smoke"
FRAME_COUNT = 60  # 2 s at 30 Hz


@pytest.mark.ros
@pytest.mark.timeout(60)
def test_image_and_status_cross_process(ros_scripts) -> None:
    subscriber = ros_scripts.start(SMOKE_DIR / "subscriber.py", "--count", str(FRAME_COUNT), "--timeout-s", "20",
                                   timeout_s=30)
    publisher = ros_scripts.start(SMOKE_DIR / "publisher.py", "--count", str(FRAME_COUNT), timeout_s=30)
    pub_result = publisher.wait()
    sub_result = subscriber.wait()
    assert pub_result.returncode == 0, "publisher failed:\n" + pub_result.describe()
    assert sub_result.returncode == 0, "subscriber failed:\n" + sub_result.describe()
    lines = [line for line in sub_result.stdout.splitlines() if line.startswith("SMOKE_REPORT ")]
    assert len(lines) == 1, "subscriber printed no report:\n" + sub_result.describe()
    report = json.loads(lines[0].removeprefix("SMOKE_REPORT "))

    assert report["ready_sent"]
    assert report["images"] == FRAME_COUNT, report
    assert report["statuses"] == FRAME_COUNT, report
    assert report["image_stamps_match"], "image stamps missing, duplicated or out of order"
    assert report["status_stamps_match"], "status stamps differ from their images' stamps"
    assert report["status_frame_indices"] == list(range(FRAME_COUNT))
    assert report["status_fields_ok"], "a status message's fields differ from what was sent"
    assert report["pixel_mismatch_frames"] == [], "these frames arrived with wrong layout or pixels"
    # Paced at 30 Hz, not a burst: 59 intervals of 33 ms span ~1.97 s (generous upper bound for a loaded CI box).
    expected_span_s = (FRAME_COUNT - 1) / 30.0
    assert 0.8 * expected_span_s <= report["receive_span_s"] <= 3.0 * expected_span_s, report


@pytest.mark.ros
@pytest.mark.timeout(60)
def test_stuck_process_is_killed_and_its_shared_memory_removed(ros_scripts) -> None:
    """The conftest helper every DDS test relies on: a hung child never outlives its timeout or leaks /dev/shm."""
    proc = ros_scripts.start(SMOKE_DIR / "hanging_node.py", timeout_s=15)
    stdout_path = Path(proc._stdout_path)
    while "READY" not in stdout_path.read_text() and proc.process.poll() is None:
        time.sleep(0.05)
    assert proc.process.poll() is None, "the hanging node died by itself:\n" + proc.wait().describe()
    with open(f"/proc/{proc.process.pid}/maps", encoding="utf-8") as maps:
        segments = {line[line.find("/dev/shm/"):].split()[0] for line in maps if "/dev/shm/fastdds_" in line}
    # Its own data segments (not the per-port files that other participants of the domain may share).
    own_segments = {s for s in segments if "_port" not in s}
    assert own_segments, f"no Fast DDS shared-memory segment mapped: {segments}"

    proc.deadline = time.monotonic() + 1.0  # shorten the timeout: SIGINT is ignored, so this ends in SIGKILL
    result = proc.wait()
    assert result.timed_out and result.returncode == -signal.SIGKILL, result.describe()
    leftover = {s for s in own_segments if os.path.exists(s)}
    assert not leftover, f"shared-memory files of the killed process were left behind: {leftover}"
