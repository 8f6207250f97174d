"""`ttt3r-ros map --snapshot-every N` / `--resume` on bags written with rosbags (tiny random model, CPU, fp32).

A real `ttt3r-ros map` process is SIGKILLed in the middle of a frame (after a snapshot exists and after newer
outputs were written), or sent SIGTERM; the same command with --resume must leave trajectory.tum, map.ply and the
depth files equal, byte for byte, to an uninterrupted run's, and run.json must say that and where it resumed.

The child process is stopped at a known point without sleeps: a wrapper around the depth writer of one frame
prints a line and blocks (on an event that never comes, or on a line from the test), and the test waits for that
line.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from test_offline_support import PERIOD_NS, STAMP0_NS, map_args, write_bag
from ttt3r_ros.cli import main
from ttt3r_ros.offline.resume import SNAPSHOT_NAME

# Chunked (reset interval 3), a map small enough to evict, depth files, outputs rewritten after every frame (so the
# killed run leaves outputs newer than its snapshot behind); the bag has an undecodable message at input 3.
OPTIONS = ("--reset-interval", "3", "--voxel-size", "0.002", "--map-max-points", "700", "--save-depth", "npy",
           "--checkpoint-every", "1", "--checkpoint-min-seconds", "0")
N_FRAMES = 10          # 9 decodable
CORRUPT = {3: "garbage"}
SNAPSHOT_EVERY = "4"
# The child blocks while writing the depth of this engine frame: frames 0-3 are in the snapshot taken at 4 processed
# frames, 4 and 5 only in the outputs rewritten after each frame (the resumed run redoes them).
BLOCK_AT_FRAME = 6

CHILD = r"""
import sys, threading
from pathlib import Path
from ttt3r_ros.engine import exports
from ttt3r_ros.cli import main

block_at, mode = int(sys.argv[1]), sys.argv[2]
write_npy = exports.write_npy

def blocking_write_npy(path, array):
    if Path(path).name == f"{block_at:06d}_depth.npy":
        print("BLOCKED", flush=True)
        if mode == "forever":
            threading.Event().wait()
        else:
            sys.stdin.readline()
    write_npy(path, array)

exports.write_npy = blocking_write_npy
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bag") / "bag"
    write_bag(path, n_frames=N_FRAMES, corrupt=CORRUPT)
    return path


@pytest.fixture(scope="module")
def uninterrupted(bag, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "out"
    assert main(map_args(bag, out, "tiny", *OPTIONS)) == 0
    return out


def _start_child(bag: Path, out: Path, mode: str, repo_root: Path) -> tuple[subprocess.Popen, queue.Queue]:
    argv = map_args(bag, out, "tiny", *OPTIONS, "--snapshot-every", SNAPSHOT_EVERY)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(BLOCK_AT_FRAME), mode, *argv], cwd=repo_root,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return proc, lines


def _wait_for_line(proc: subprocess.Popen, lines: queue.Queue, text: str, timeout_s: float = 300) -> None:
    while True:
        line = lines.get(timeout=timeout_s)
        if line is None:
            raise AssertionError(f"the child ended (rc {proc.wait()}) before printing {text!r}: "
                                 f"{proc.stderr.read()[-3000:]}")
        if line.strip() == text:
            return


def _assert_same_outputs(out: Path, reference: Path) -> None:
    for name in ("trajectory.tum", "map.ply"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    depth = sorted(p.name for p in (reference / "depth").iterdir())
    assert sorted(p.name for p in (out / "depth").iterdir()) == depth and len(depth) == 2 * 9
    for name in depth:
        assert (out / "depth" / name).read_bytes() == (reference / "depth" / name).read_bytes(), name


def _run_json(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def test_a_killed_run_resumes_to_the_uninterrupted_result(bag, uninterrupted, tmp_path, repo_root) -> None:
    out = tmp_path / "out"
    proc, lines = _start_child(bag, out, "forever", repo_root)
    try:
        _wait_for_line(proc, lines, "BLOCKED")
        assert (out / SNAPSHOT_NAME).is_file()
        proc.kill()   # SIGKILL: no handler, no final outputs, no final snapshot
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # what the kill left: the snapshot at 4 processed frames, outputs up to frame 5, frame 6 half processed
    assert _run_json(out)["status"] == "running" and _run_json(out)["frames_processed"] == 6
    assert (out / "depth" / "000005_depth.npy").is_file() and not (out / "depth" / "000006_depth.npy").exists()

    assert main(map_args(bag, out, "tiny", *OPTIONS, "--snapshot-every", SNAPSHOT_EVERY, "--resume")) == 0
    _assert_same_outputs(out, uninterrupted)
    run, reference_run = _run_json(out), _run_json(uninterrupted)
    assert run["status"] == "completed"
    for key in ("frames_processed", "trajectory_poses", "map_points", "frames_skipped", "skipped",
                "intrinsics_frames", "timestamps_s"):
        assert run[key] == reference_run[key], key
    (resumed,) = run["resumed"]
    assert resumed["snapshot"] == str(out / SNAPSHOT_NAME)
    assert (resumed["frames_processed"], resumed["frames_read"]) == (4, 4)
    # the source never yields the undecodable input 3: the 4th frame read is input 4
    assert resumed["last_stamp_ns"] == STAMP0_NS + 4 * PERIOD_NS
    assert reference_run["resumed"] == [] and run["snapshot"]["frames_processed"] == 9


def test_sigterm_finishes_the_frame_writes_a_snapshot_and_resumes(bag, uninterrupted, tmp_path,
                                                                  repo_root) -> None:
    out = tmp_path / "out"
    proc, lines = _start_child(bag, out, "stdin", repo_root)
    try:
        _wait_for_line(proc, lines, "BLOCKED")
        proc.send_signal(signal.SIGTERM)
        proc.stdin.write("go on\n")   # the frame in progress finishes, then the run stops as on Ctrl-C
        proc.stdin.flush()
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM, proc.stderr.read()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run = _run_json(out)
    assert run["status"] == "interrupted" and run["stopped_by"] == "SIGTERM"
    assert run["frames_processed"] == BLOCK_AT_FRAME + 1   # the frame in progress was finished
    assert run["snapshot"]["frames_processed"] == BLOCK_AT_FRAME + 1
    assert main(map_args(bag, out, "tiny", *OPTIONS, "--resume")) == 0
    _assert_same_outputs(out, uninterrupted)
    assert _run_json(out)["resumed"][0]["frames_processed"] == BLOCK_AT_FRAME + 1


def test_resume_refuses_without_a_snapshot_with_other_options_or_another_input(bag, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main(map_args(bag, out, "tiny", *OPTIONS, "--resume")) == 2
    assert f"--resume: no snapshot {SNAPSHOT_NAME} in {out}" in capsys.readouterr().err
    assert main(map_args(bag, out, "tiny", *OPTIONS, "--snapshot-every", "2", "--max-frames", "3")) == 0
    # another confidence threshold and update rule: both named
    assert main(map_args(bag, out, "tiny", *OPTIONS, "--resume", "--confidence-threshold", "2",
                         "--update-rule", "cut3r")) == 2
    err = capsys.readouterr().err
    assert "--confidence-threshold: snapshot 1.0, now 2.0" in err and "--update-rule: snapshot 'ttt3r'" in err
    assert "--image-size" not in err
    # options that may be spelled differently are compared by what they resolve to (the snapshot's own check)
    assert main(map_args(bag, out, "tiny", *OPTIONS, "--resume", "--precision", "bf16")) == 2
    assert "precision: snapshot 'fp32', this session 'bf16'" in capsys.readouterr().err
    # another input (same length, other stamps): found by the stamp of the last frame read
    other = tmp_path / "other_bag"
    write_bag(other, n_frames=N_FRAMES, corrupt={0: "garbage"})
    assert main(map_args(other, out, "tiny", *OPTIONS, "--resume")) == 2
    assert "is it the same input?" in capsys.readouterr().err
    # the failed attempts changed nothing: the same input resumes
    assert main(map_args(bag, out, "tiny", *OPTIONS, "--resume", "--max-frames", "5")) == 0
    assert _run_json(out)["frames_processed"] == 5
