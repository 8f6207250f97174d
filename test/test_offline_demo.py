"""`ttt3r-ros demo` end to end without a checkpoint: rendered sequence, bag, map, eval, plumbing-check labels."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from ttt3r_ros.cli import main
from ttt3r_ros.engine import exports
from ttt3r_ros.offline.bag_io import open_bag


def test_demo_without_checkpoint_runs_and_labels_every_output(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TTT3R_WEIGHTS", raising=False)
    out = tmp_path / "demo"
    # no --model-config: the demo must not need ../shared (the model package's tiny preset)
    rc = main(["demo", "--out", str(out), "--frames", "5", "--device", "cpu", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 0
    assert "PLUMBING CHECK" in captured.err and "TTT3R_WEIGHTS" in captured.err  # said loudly
    assert str(out / "eval" / "trajectory.png") in captured.out
    gt_t, _ = exports.read_tum(out / "sequence" / "groundtruth.tum")
    est_t, _ = exports.read_tum(out / "map" / "trajectory.tum")
    assert len(gt_t) == len(est_t) == 5
    assert gt_t[0] > 1e9  # a plausible epoch, not 0 (ROS reads stamp 0 as unset)
    assert list(gt_t) == pytest.approx(list(est_t), rel=0, abs=1e-6)
    assert len(list((out / "sequence" / "rgb").glob("*.png"))) == 5
    run = json.loads((out / "map" / "run.json").read_text())
    evaluation = json.loads((out / "eval" / "eval.json").read_text())
    assert run["label"].startswith("PLUMBING CHECK") and evaluation["label"].startswith("PLUMBING CHECK")
    assert run["intrinsics_frames"] == {"calibrated": 5}
    assert run["parameters"]["model_config"] == "tiny"
    assert evaluation["matched_poses"] == 5 and evaluation["alignment"] == "sim3"
    assert Image.open(out / "eval" / "trajectory.png").info["Title"].startswith("PLUMBING CHECK")
    points, _, _ = exports.read_ply(out / "map" / "map.ply")
    assert len(points) > 0
    reader = open_bag(out / "sequence_bag")
    try:
        counts = {c.topic: c.msgcount for c in reader.connections}
    finally:
        reader.close()
    assert counts == {"/camera/image_raw": 5, "/camera/camera_info": 5}
    reader = open_bag(out / "map" / "result_bag")
    try:
        assert {c.topic: c.msgcount for c in reader.connections}["/odom"] == 5
    finally:
        reader.close()


def test_demo_with_a_missing_checkpoint_says_where_it_comes_from(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TTT3R_WEIGHTS", str(tmp_path / "missing.pth"))
    assert main(["demo", "--out", str(tmp_path / "demo"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "missing.pth" in err and "cut3r_512_dpt_4_64" in err
    assert not (tmp_path / "demo").exists()

