"""`ttt3r-ros eval` (evo): known answers for Sim(3)/SE(3) alignment, perturbations, formats, association, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from test_offline_support import ground_truth, write_kitti_file, write_tum_file
from ttt3r_ros.cli import main


def similarity(positions, quats, scale, rotvec, translation):
    r = Rotation.from_rotvec(rotvec)
    return scale * r.apply(positions) + translation, (r * Rotation.from_quat(quats)).as_quat()


def run_eval(tmp_path, gt, est, *extra):
    out = tmp_path / "eval"
    rc = main(["eval", "--gt", str(gt), "--est", str(est), "--out", str(out), *extra])
    report = json.loads((out / "eval.json").read_text()) if rc == 0 else None
    return rc, report, out


def test_similarity_transform_gives_zero_ate_and_the_scale(tmp_path, capsys):
    t, p, q = ground_truth()
    write_tum_file(tmp_path / "gt.tum", t, p, q)
    p2, q2 = similarity(p, q, 0.25, [0.3, -1.2, 0.5], [4.0, -2.0, 1.0])
    write_tum_file(tmp_path / "est.tum", t, p2, q2)
    rc, report, out = run_eval(tmp_path, tmp_path / "gt.tum", tmp_path / "est.tum")
    assert rc == 0
    for key in ("ate_rmse_m", "rpe_trans_rmse_m", "scale", "matched_poses", "alignment"):
        assert key in report
    assert report["ate_rmse_m"] < 1e-6
    assert report["rpe_trans_rmse_m"] < 1e-6
    assert report["scale"] == pytest.approx(4.0, rel=1e-6)  # estimate scaled by 0.25 -> aligned by 4
    assert report["matched_poses"] == len(t)
    assert report["alignment"] == "sim3"
    printed = capsys.readouterr().out
    assert "ATE rmse [m]" in printed and "matched poses" in printed
    png = out / "trajectory.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(png).size[0] > 400


def test_se3_alignment_on_a_scaled_trajectory_leaves_the_expected_error(tmp_path):
    t, p, q = ground_truth()
    write_tum_file(tmp_path / "gt.tum", t, p, q)
    scale = 1.5
    p2, q2 = similarity(p, q, scale, [0.0, 0.4, 0.1], [1.0, 2.0, 3.0])
    write_tum_file(tmp_path / "est.tum", t, p2, q2)
    # The best rigid fit of a scaled copy matches centroids and rotation; what is left is the scale error:
    # |s - 1| * RMS distance of the (estimate's) points to their centroid, measured in ground-truth units
    # after undoing nothing else -> (s - 1)/1 * rms(gt centred) since the estimate is s * gt.
    expected = abs(scale - 1.0) * np.sqrt(np.mean(np.sum((p - p.mean(axis=0)) ** 2, axis=1)))
    rc, report, _ = run_eval(tmp_path, tmp_path / "gt.tum", tmp_path / "est.tum", "--align", "se3")
    assert rc == 0
    assert report["alignment"] == "se3" and report["scale"] == 1.0
    assert report["ate_rmse_m"] == pytest.approx(expected, rel=1e-6)
    rc, report, _ = run_eval(tmp_path, tmp_path / "gt.tum", tmp_path / "est.tum")
    assert report["ate_rmse_m"] < 1e-6


def test_known_perturbation_gives_the_known_error(tmp_path):
    t, p, q = ground_truth()
    write_tum_file(tmp_path / "gt.tum", t, p, q)
    rng = np.random.default_rng(3)
    directions = rng.normal(size=p.shape)
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    d = 0.05
    write_tum_file(tmp_path / "est.tum", t, p + d * directions, q)
    # without alignment every position is off by exactly d
    rc, report, _ = run_eval(tmp_path, tmp_path / "gt.tum", tmp_path / "est.tum", "--align", "none")
    assert rc == 0
    assert report["ate_rmse_m"] == pytest.approx(d, rel=1e-9)
    assert report["ate_max_m"] == pytest.approx(d, rel=1e-9)
    # alignment can only reduce the error, and random directions leave almost all of it
    rc, report, _ = run_eval(tmp_path, tmp_path / "gt.tum", tmp_path / "est.tum")
    assert 0.9 * d < report["ate_rmse_m"] <= d
    # RPE sees the difference of consecutive errors: between 0 and 2d
    assert 0 < report["rpe_trans_rmse_m"] < 2 * d


def test_kitti_format_is_detected_and_associated_by_index(tmp_path):
    t, p, q = ground_truth(30)
    write_kitti_file(tmp_path / "gt.txt", p, q)
    p2, q2 = similarity(p, q, 2.0, [0.1, 0.2, 0.3], [0.0, 1.0, 0.0])
    write_kitti_file(tmp_path / "est.txt", p2, q2)
    rc, report, _ = run_eval(tmp_path, tmp_path / "gt.txt", tmp_path / "est.txt")
    assert rc == 0
    assert report["gt_format"] == "kitti" and report["est_format"] == "kitti"
    assert report["matched_poses"] == 30 and report["ate_rmse_m"] < 1e-6
    assert report["scale"] == pytest.approx(0.5, rel=1e-6)
    # a KITTI file of another length cannot be associated
    write_kitti_file(tmp_path / "short.txt", p2[:20], q2[:20])
    rc, _, _ = run_eval(tmp_path, tmp_path / "gt.txt", tmp_path / "short.txt")
    assert rc == 2


def test_timestamp_association_and_max_diff(tmp_path, capsys):
    t, p, q = ground_truth(60)
    write_tum_file(tmp_path / "gt.tum", t, p, q)
    keep = np.arange(0, 60, 3)  # every third pose, stamps jittered by 4 ms
    write_tum_file(tmp_path / "est.tum", t[keep] + 0.004, p[keep], q[keep])
    rc, report, _ = run_eval(tmp_path, tmp_path / "gt.tum", tmp_path / "est.tum")
    assert rc == 0 and report["matched_poses"] == len(keep) and report["ate_rmse_m"] < 1e-6
    rc, _, _ = run_eval(tmp_path, tmp_path / "gt.tum", tmp_path / "est.tum", "--t-max-diff", "0.001")
    assert rc == 2
    assert "--t-max-diff" in capsys.readouterr().err
    # an offset brings them back
    rc, report, _ = run_eval(tmp_path, tmp_path / "gt.tum", tmp_path / "est.tum", "--t-max-diff", "0.001",
                             "--t-offset", "-0.004")
    assert rc == 0 and report["matched_poses"] == len(keep)


def test_bad_inputs_give_clear_messages(tmp_path, capsys):
    t, p, q = ground_truth(10)
    write_tum_file(tmp_path / "gt.tum", t, p, q)
    rc, _, _ = run_eval(tmp_path, tmp_path / "gt.tum", tmp_path / "missing.tum")
    assert rc == 2 and "no such trajectory file" in capsys.readouterr().err
    (tmp_path / "odd.txt").write_text("1 2 3 4 5\n")
    rc, _, _ = run_eval(tmp_path, tmp_path / "gt.tum", tmp_path / "odd.txt")
    assert rc == 2 and "TUM has 8" in capsys.readouterr().err
    write_tum_file(tmp_path / "two.tum", t[:2], p[:2], q[:2])
    rc, _, _ = run_eval(tmp_path, tmp_path / "gt.tum", tmp_path / "two.tum")
    assert rc == 2 and "at least 3" in capsys.readouterr().err


def test_label_of_the_map_run_reaches_eval_json_and_plot(tmp_path):
    t, p, q = ground_truth(20)
    write_tum_file(tmp_path / "gt.tum", t, p, q)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_tum_file(run_dir / "trajectory.tum", t, p, q)
    (run_dir / "run.json").write_text(json.dumps({"label": "PLUMBING CHECK — untrained weights"}))
    rc, report, out = run_eval(tmp_path, tmp_path / "gt.tum", run_dir / "trajectory.tum")
    assert rc == 0
    assert report["label"].startswith("PLUMBING CHECK")
    assert Image.open(out / "trajectory.png").info["Title"].startswith("PLUMBING CHECK")
    # the run's folder works as --est too
    rc, report, _ = run_eval(tmp_path, tmp_path / "gt.tum", run_dir, "--no-plot")
    assert rc == 0 and report["label"].startswith("PLUMBING CHECK") and report["matched_poses"] == 20
