"""`ttt3r-ros map` against the hostile-input audit (issue 13): signals, invalid frames, runs that produce nothing,
bad stamps and options, oversized images, temporaries left by kill -9. Tiny random-weight model on the CPU."""
from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from test_offline_support import (TINY_MODEL_CONFIG, map_args, parse_map_args, pattern_image, write_bag,
                                  write_image_folder)
from ttt3r_ros.cli import main
from ttt3r_ros.engine import exports
from ttt3r_ros.offline.bag_io import open_bag
from ttt3r_ros.offline.map_command import map_input
from ttt3r_ros.offline.readers import Frame, FrameSource, open_frame_source

TINY = TINY_MODEL_CONFIG


def read_run(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


class ListSource(FrameSource):
    kind = "list"

    def __init__(self, frames: list[Frame]) -> None:
        super().__init__()
        self.frames = frames

    def __iter__(self):
        return iter(self.frames)


def huge_png(width: int, height: int) -> bytes:
    """A valid 1-bit greyscale PNG of width x height (all black): a few tens of KB that decode to width*height*3
    bytes of RGB. Written by hand (zlib, streamed), never held decoded in this process."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (len(body).to_bytes(4, "big") + kind + body
                + zlib.crc32(kind + body).to_bytes(4, "big"))

    row = b"\x00" + bytes((width + 7) // 8)   # filter byte 0 + packed bits
    compressor = zlib.compressobj(9)
    rows_per_block = 1000
    parts = [compressor.compress(row * rows_per_block) for _ in range(height // rows_per_block)]
    parts.append(compressor.compress(row * (height % rows_per_block)))
    parts.append(compressor.flush())
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/self/status")


# ------------------------------------------------------------------------------------------------ item 4: SIGTERM
@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_ends_map_like_ctrl_c_with_its_own_exit_code(tmp_path: Path, signum: int, code: int) -> None:
    """A real SIGTERM (docker stop, timeout, systemd) mid-run: complete trajectory/map/run.json ("interrupted",
    stopped_by SIGTERM), the result bag finished (no .partial folder) and exit code 143 (SIGHUP: 129)."""
    folder = tmp_path / "imgs"
    write_image_folder(folder, 150)
    out, result = tmp_path / "out", tmp_path / "result_bag"
    argv = map_args(folder, out, TINY, "--fps", "10", "--checkpoint-every", "1", "--checkpoint-min-seconds", "0",
                    "--result-bag", str(result))
    process = subprocess.Popen([sys.executable, "-m", "ttt3r_ros.cli", *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 120
        rows = 0
        while time.monotonic() < deadline and process.poll() is None and rows < 3:
            try:
                rows = len(exports.read_tum(out / "trajectory.tum")[0])
            except (OSError, ValueError):
                rows = 0
            time.sleep(0.05)
        assert rows >= 3, "the run never wrote its periodic trajectory"
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == code, stderr[-2000:]
    assert f"interrupted by {signal.Signals(signum).name}" in stderr
    assert "stopping after the frame in progress" in stderr
    run = read_run(out)
    assert run["status"] == "interrupted" and run["stopped_by"] == signal.Signals(signum).name
    timestamps, _ = exports.read_tum(out / "trajectory.tum")
    assert 3 <= len(timestamps) == run["trajectory_poses"] == run["frames_processed"] < 150
    exports.read_ply(out / "map.ply")
    reader = open_bag(result)   # finished and renamed: a readable bag holding every processed frame
    try:
        assert {c.topic: c.msgcount for c in reader.connections}["/odom"] == len(timestamps)
    finally:
        reader.close()
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    assert not list(out.glob(".*"))


# ------------------------------------------------------------------------------------- item 5: invalid frames
def _every_nth_result_invalid(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """The engine's own non-finite path (valid=False: kept out of trajectory and map, stream reset) for every nth
    frame, as a NaN pose from the network would trigger it."""
    from ttt3r_ros.engine.reconstructor import BatchedReconstructor

    original = BatchedReconstructor._result
    calls = itertools.count()

    def result(self, *args, finite: bool = True, **kwargs):
        return original(self, *args, finite=finite and next(calls) % n != n - 1, **kwargs)

    monkeypatch.setattr(BatchedReconstructor, "_result", result)


def test_invalid_frames_are_counted_apart_and_outputs_stay_paired(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _every_nth_result_invalid(monkeypatch, 4)
    frames = [Frame(0.1 * i, pattern_image(i), None) for i in range(12)]
    out = tmp_path / "out"
    summary = map_input(parse_map_args(map_args(tmp_path, out, TINY, "--save-depth", "npy")),
                        source=ListSource(frames))
    assert summary.status == "completed"
    assert summary.frames_processed == 9 and summary.frames_invalid == 3
    run = read_run(out)
    assert run["frames_processed"] == 9 and run["frames_invalid"] == 3 and run["trajectory_poses"] == 9
    assert [r["timestamp_s"] for r in run["invalid_frames"]] == pytest.approx([0.3, 0.7, 1.1])
    timestamps, _ = exports.read_tum(out / "trajectory.tum")
    assert len(timestamps) == 9 and 0.3 not in np.round(timestamps, 6)
    depth_files = sorted(p.name for p in (out / "depth").glob("*_depth.npy"))
    # file N belongs to row N: one file per trajectory row, numbered 0..8 without gaps
    assert depth_files == [f"{i:06d}_depth.npy" for i in range(9)]


def test_nan_weights_fail_the_run_with_nothing_valid(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """One NaN weight tensor: every pose is non-finite. The run must not say "completed" with exit 0."""
    import torch

    from ttt3r_ros.model import build_model
    from ttt3r_ros.model.checkpoint import save_safetensors

    model = build_model(TINY, None, torch.device("cpu"))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    name = next(k for k in state if k.endswith("weight") and "enc_blocks.0" in k)
    state[name].fill_(float("nan"))
    weights = tmp_path / "nan.safetensors"
    save_safetensors(state, weights)
    folder = tmp_path / "imgs"
    write_image_folder(folder, 4)
    out = tmp_path / "out"
    argv = [a for a in map_args(folder, out, TINY, "--fps", "10") if a != "--random-weights"]
    assert main([*argv, "--weights", str(weights)]) == 1
    err = capsys.readouterr().err
    assert "no frame was processed" in err and "4 gave a non-finite pose" in err
    run = read_run(out)
    assert run["status"] == "failed" and run["frames_processed"] == 0 and run["frames_invalid"] == 4


# -------------------------------------------------------------------------- item 6: nothing processed, bad input
def test_folder_of_unreadable_images_fails_instead_of_completing(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        (folder / f"img_{i}.png").write_bytes(b"not a png at all")
    out = tmp_path / "out"
    assert main(map_args(folder, out, TINY, "--fps", "10")) == 1
    err = capsys.readouterr().err
    assert "no frame was processed: 3 skipped by the reader" in err
    assert read_run(out)["status"] == "failed"


def test_bag_without_image_messages_fails(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bag = tmp_path / "bag"
    write_bag(bag, n_frames=0)
    out = tmp_path / "out"
    assert main(map_args(bag, out, TINY)) == 1
    assert "no frame was processed: the input yielded no frames" in capsys.readouterr().err


def test_one_inf_in_times_txt_costs_one_frame(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    write_image_folder(folder, 6, times=[0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    (folder / "times.txt").write_text("0.0\n0.1\ninf\n0.3\n0.4\n0.5\n")
    with open_frame_source(folder) as source:
        frames = list(source)
        assert [f.timestamp_s for f in frames] == [0.0, 0.1, 0.3, 0.4, 0.5]
        assert source.skipped.as_dict()["by_reason"] == {"non-finite stamp": 1}


@pytest.mark.parametrize("fps", ["nan", "inf", "-1"])
def test_fps_must_be_a_positive_finite_number(tmp_path: Path, capsys: pytest.CaptureFixture, fps: str) -> None:
    folder = tmp_path / "imgs"
    write_image_folder(folder, 2)
    assert main(map_args(folder, tmp_path / "out", TINY, "--fps", fps)) == 2
    assert "--fps must be a positive finite number" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "imgs"
    write_image_folder(folder, 2)
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    assert main(map_args(folder, blocker, TINY, "--fps", "10")) == 2
    assert main(map_args(folder, blocker / "sub", TINY, "--fps", "10")) == 2
    err = capsys.readouterr().err
    assert f"--out {blocker} is a file, not a folder" in err and "cannot be created" in err
    assert "Traceback" not in err and blocker.read_text() == "keep me"


# ------------------------------------------------------------------------------------------ item 2: pixel limit
def test_oversized_png_is_refused_from_its_header_offline(tmp_path: Path) -> None:
    """A ~50 KB PNG that decodes to 20000x20000 (1.2 GB of RGB): skipped with the reason, without decoding it
    (the process's peak memory does not grow by anything like that), and the next good image is used."""
    folder = tmp_path / "imgs"
    write_image_folder(folder, 3)
    (folder / "img_1.png").write_bytes(huge_png(20000, 20000))
    assert (folder / "img_1.png").stat().st_size < 200_000
    peak_before_mb = _peak_rss_mb()
    with open_frame_source(folder, fps=10) as source:
        frames = list(source)
        records = source.skipped.records
    assert _peak_rss_mb() - peak_before_mb < 300
    assert [f.timestamp_s for f in frames] == [0.0, 0.2]
    assert "too large (20000x20000 = 400.0 MP > max_image_pixels = 33.2 MP)" in records[0]["reason"]
    # the limit is a setting: --max-image-pixels lowers it for every input kind
    with open_frame_source(folder, fps=10, max_image_pixels=48 * 64 - 1) as source:
        assert list(source) == [] and source.skipped.total == 3


# ------------------------------------------------------------------------------ item 10: kill -9 temporaries
def test_map_removes_stale_temporaries_of_a_killed_run_only(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "imgs"
    write_image_folder(folder, 2)
    out = tmp_path / "out"
    (out / "depth").mkdir(parents=True)
    stale = [out / ".map.ply.0123456789abcdef.tmp", out / "depth" / ".000001_depth.png.fedcba9876543210.tmp"]
    for path in stale:
        path.write_bytes(b"half written")
        os.utime(path, (time.time() - 60, time.time() - 60))
    # held open by a live process (a concurrent writer): must stay, whatever its age
    held = out / ".trajectory.tum.00112233445566ff.tmp"
    held.write_bytes(b"being written")
    os.utime(held, (time.time() - 60, time.time() - 60))
    keep = [out / "notes.tmp", out / ".hidden.tmp", out / "map.ply.0123456789abcdef.tmp"]   # not our pattern
    for path in keep:
        path.write_bytes(b"user data")
    with open(held, "rb"):
        assert main(map_args(folder, out, TINY, "--fps", "10")) == 0
    assert "removed 2 stale temporary file(s)" in capsys.readouterr().err
    assert not any(p.exists() for p in stale)
    assert held.exists() and all(p.exists() for p in keep)
    assert read_run(out)["stale_temporaries_removed"] == 2


# ---------------------------------------------------------------------- item 9: CameraInfo of another image size
def test_camera_info_of_another_size_is_ignored_offline_as_live(tmp_path: Path) -> None:
    """The bag's CameraInfo says 64x48, the images are 128x96: offline now applies the node's rule (ignore it,
    estimate the intrinsics, warn) instead of using K as if it were calibrated for these images."""
    from rosbags.rosbag2 import Writer

    from test_offline_support import K_TEST, PERIOD_NS, STAMP0_NS, TYPESTORE, camera_info_msg, image_msg

    bag = tmp_path / "bag"
    with Writer(bag, version=9) as writer:
        images = writer.add_connection("/cam/image_raw", "sensor_msgs/msg/Image", typestore=TYPESTORE)
        infos = writer.add_connection("/cam/camera_info", "sensor_msgs/msg/CameraInfo", typestore=TYPESTORE)
        for i in range(3):
            stamp = STAMP0_NS + i * PERIOD_NS
            writer.write(infos, stamp, TYPESTORE.serialize_cdr(camera_info_msg(stamp, K_TEST, 48, 64),
                                                               "sensor_msgs/msg/CameraInfo"))
            writer.write(images, stamp + 1, TYPESTORE.serialize_cdr(image_msg(pattern_image(i, 96, 128), stamp),
                                                                    "sensor_msgs/msg/Image"))
    with open_frame_source(bag) as source:
        frames = list(source)
        warnings = source.warnings.as_dict()
    assert len(frames) == 3 and all(f.intrinsics is None for f in frames)
    assert warnings["by_reason"] == {"CameraInfo size differs from the image": 3}
    assert "CameraInfo size 64x48 differs from the image size 128x96" in warnings["records"][0]["reason"]
