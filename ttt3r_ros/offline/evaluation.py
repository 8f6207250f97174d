"""Trajectory evaluation with evo: association, Sim(3)/SE(3) alignment, ATE and RPE, plot.

Metric computation is evo's (evo.core.sync, evo.core.metrics, PosePath3D.align); this module only loads,
chooses options, and reports.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from evo.core import filters, metrics, sync
from evo.core.trajectory import PosePath3D, PoseTrajectory3D
from evo.tools import file_interface

from ..atomic_io import atomic_write
from .errors import OfflineInputError

FORMATS = ("auto", "tum", "kitti")
ALIGNMENTS = ("sim3", "se3", "scale", "none")


def detect_format(path: Path) -> str:
    """'tum' (timestamp tx ty tz qx qy qz qw) or 'kitti' (12 values of a 3x4 matrix) from the first data line."""
    suffix = path.suffix.lower()
    if suffix == ".tum":
        return "tum"
    if suffix == ".kitti":
        return "kitti"
    with open(path) as handle:
        for line in handle:
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            columns = len(stripped.replace(",", " ").split())
            if columns == 8:
                return "tum"
            if columns == 12:
                return "kitti"
            raise OfflineInputError(
                f"{path}: first data line has {columns} columns; TUM has 8 (t tx ty tz qx qy qz qw), "
                f"KITTI has 12 (3x4 pose matrix)")
    raise OfflineInputError(f"{path} holds no poses")


def load_trajectory(path: str | Path, fmt: str = "auto") -> tuple[PosePath3D, str]:
    trajectory_path = Path(path)
    if trajectory_path.is_dir() and (trajectory_path / "trajectory.tum").is_file():
        trajectory_path = trajectory_path / "trajectory.tum"  # the output folder of `ttt3r-ros map`
    if not trajectory_path.is_file():
        raise OfflineInputError(f"no such trajectory file: {trajectory_path}")
    fmt = detect_format(trajectory_path) if fmt == "auto" else fmt
    try:
        if fmt == "tum":
            trajectory: PosePath3D = file_interface.read_tum_trajectory_file(trajectory_path)
        else:
            trajectory = file_interface.read_kitti_poses_file(trajectory_path)
    except Exception as err:  # evo raises FileInterfaceException and numpy errors
        raise OfflineInputError(f"cannot read {trajectory_path} as {fmt.upper()}: {err}") from err
    if trajectory.num_poses == 0:
        raise OfflineInputError(f"{trajectory_path} holds no poses")
    return trajectory, fmt


@dataclass
class EvalResult:
    ate_stats: dict[str, float]
    rpe_trans_stats: dict[str, float] | None
    rpe_rot_stats_deg: dict[str, float] | None
    scale: float
    rotation: np.ndarray
    translation: np.ndarray
    matched_poses: int
    gt_aligned: PosePath3D
    est_aligned: PosePath3D
    ate_errors_m: np.ndarray
    notes: list[str]


def _as_path(trajectory: PosePath3D) -> PosePath3D:
    return PosePath3D(poses_se3=list(trajectory.poses_se3))


def evaluate(gt: PosePath3D, est: PosePath3D, align: str = "sim3", delta: float = 1.0,
             delta_unit: str = "frames", t_max_diff_s: float = 0.02, t_offset_s: float = 0.0) -> EvalResult:
    """Associate (when both have timestamps), align est onto gt, then ATE (translation) and RPE."""
    if align not in ALIGNMENTS:
        raise OfflineInputError(f"--align must be one of {', '.join(ALIGNMENTS)}, not {align!r}")
    notes: list[str] = []
    if isinstance(gt, PoseTrajectory3D) and isinstance(est, PoseTrajectory3D):
        try:
            gt, est = sync.associate_trajectories(gt, est, max_diff=t_max_diff_s, offset_2=t_offset_s)
        except sync.SyncException as err:
            raise OfflineInputError(
                f"no timestamps of the estimate match the ground truth within --t-max-diff {t_max_diff_s} s "
                f"({err}); check both use the same clock, or raise --t-max-diff / set --t-offset") from err
    else:
        # KITTI poses carry no time: pose i of one file is pose i of the other.
        if gt.num_poses != est.num_poses:
            raise OfflineInputError(
                f"without timestamps (KITTI format) both files need the same number of poses: "
                f"ground truth {gt.num_poses}, estimate {est.num_poses}")
        gt, est = _as_path(gt), _as_path(est)
        notes.append("associated by index (no timestamps)")
    matched = est.num_poses
    minimum = 3 if align in ("sim3", "se3") else 1
    if matched < minimum:
        raise OfflineInputError(f"only {matched} matched poses; {align} alignment needs at least {minimum}")

    est_aligned = copy.deepcopy(est)
    rotation, translation, scale = np.eye(3), np.zeros(3), 1.0
    if align == "sim3":
        rotation, translation, scale = est_aligned.align(gt, correct_scale=True)
    elif align == "se3":
        rotation, translation, scale = est_aligned.align(gt, correct_scale=False)
    elif align == "scale":
        rotation, translation, scale = est_aligned.align(gt, correct_scale=False, correct_only_scale=True)

    ape = metrics.APE(metrics.PoseRelation.translation_part)
    ape.process_data((gt, est_aligned))
    ate_stats = {k: float(v) for k, v in ape.get_all_statistics().items()}

    rpe_trans, rpe_rot = None, None
    unit = metrics.Unit.frames if delta_unit == "frames" else metrics.Unit(delta_unit)
    try:
        rpe = metrics.RPE(metrics.PoseRelation.translation_part, delta=delta, delta_unit=unit, all_pairs=False)
        rpe.process_data((gt, est_aligned))
        rpe_trans = {k: float(v) for k, v in rpe.get_all_statistics().items()}
        rpe_r = metrics.RPE(metrics.PoseRelation.rotation_angle_deg, delta=delta, delta_unit=unit,
                            all_pairs=False)
        rpe_r.process_data((gt, est_aligned))
        rpe_rot = {k: float(v) for k, v in rpe_r.get_all_statistics().items()}
    except (metrics.MetricsException, filters.FilterException) as err:
        # e.g. --delta longer than the sequence: ATE is still valid, RPE is reported as missing with the reason
        notes.append(f"RPE not computed: {err}")

    return EvalResult(ate_stats=ate_stats, rpe_trans_stats=rpe_trans, rpe_rot_stats_deg=rpe_rot,
                      scale=float(scale), rotation=np.asarray(rotation), translation=np.asarray(translation),
                      matched_poses=int(matched), gt_aligned=gt, est_aligned=est_aligned,
                      ate_errors_m=np.asarray(ape.error, dtype=np.float64), notes=notes)


def result_to_json(result: EvalResult, align: str, extra: dict[str, Any]) -> dict[str, Any]:
    rpe = result.rpe_trans_stats or {}
    rpe_rot = result.rpe_rot_stats_deg or {}
    labelled = {"label": extra["label"]} if extra.get("label") else {}
    return {
        **labelled,
        "ate_rmse_m": result.ate_stats["rmse"],
        "ate_mean_m": result.ate_stats["mean"],
        "ate_median_m": result.ate_stats["median"],
        "ate_max_m": result.ate_stats["max"],
        "rpe_trans_rmse_m": rpe.get("rmse"),
        "rpe_trans_mean_m": rpe.get("mean"),
        "rpe_rot_rmse_deg": rpe_rot.get("rmse"),
        "scale": result.scale,
        "matched_poses": result.matched_poses,
        "alignment": align,
        "alignment_rotation": result.rotation.tolist(),
        "alignment_translation": result.translation.tolist(),
        "notes": result.notes,
        **extra,
    }


def format_table(result: EvalResult, align: str, title: str | None = None) -> str:
    rows = [("matched poses", f"{result.matched_poses}"), ("alignment", align), ("scale", f"{result.scale:.6g}")]
    for name in ("rmse", "mean", "median", "std", "min", "max"):
        rows.append((f"ATE {name} [m]", f"{result.ate_stats[name]:.6f}"))
    if result.rpe_trans_stats is not None:
        rows.append(("RPE trans rmse [m]", f"{result.rpe_trans_stats['rmse']:.6f}"))
        rows.append(("RPE trans mean [m]", f"{result.rpe_trans_stats['mean']:.6f}"))
    if result.rpe_rot_stats_deg is not None:
        rows.append(("RPE rot rmse [deg]", f"{result.rpe_rot_stats_deg['rmse']:.4f}"))
    width = max(len(name) for name, _ in rows)
    lines = [title] if title else []
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines)


def plot_trajectories(path: str | Path, result: EvalResult, title: str) -> None:
    """Top view (the two axes along which the ground truth moves most) plus ATE over the sequence."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gt_xyz = result.gt_aligned.positions_xyz
    est_xyz = result.est_aligned.positions_xyz
    spread = np.ptp(gt_xyz, axis=0) if len(gt_xyz) else np.ones(3)
    axis_a, axis_b = sorted(np.argsort(spread)[-2:])
    names = "xyz"
    figure, (ax_top, ax_err) = plt.subplots(1, 2, figsize=(11, 4.8))
    ax_top.plot(gt_xyz[:, axis_a], gt_xyz[:, axis_b], "k-", label="ground truth")
    ax_top.plot(est_xyz[:, axis_a], est_xyz[:, axis_b], "--", color="tab:blue", label="estimate (aligned)")
    ax_top.plot(gt_xyz[:1, axis_a], gt_xyz[:1, axis_b], "ko", markersize=5)
    ax_top.set_xlabel(f"{names[axis_a]} [m]")
    ax_top.set_ylabel(f"{names[axis_b]} [m]")
    ax_top.set_aspect("equal", adjustable="datalim")
    ax_top.legend(loc="best")
    ax_top.grid(True, alpha=0.3)
    ax_err.plot(np.arange(len(result.ate_errors_m)), result.ate_errors_m, color="tab:red")
    ax_err.set_xlabel("matched pose")
    ax_err.set_ylabel("ATE [m]")
    ax_err.set_title(f"ATE RMSE {result.ate_stats['rmse']:.4f} m")
    ax_err.grid(True, alpha=0.3)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    # The title (with any plumbing-check label) also goes into the PNG's metadata, where tools and tests can read it.
    metadata = {"Title": title, "Software": "ttt3r-ros eval (evo metrics)"}
    atomic_write(path, lambda handle: figure.savefig(handle, dpi=110, format="png", metadata=metadata))
    plt.close(figure)


def run_label_for(est_path: Path) -> str | None:
    """The plumbing-check label of the map run that wrote `est_path`, read from the run.json beside it."""
    run_json = est_path.parent / "run.json"
    if not run_json.is_file():
        return None
    try:
        data = json.loads(run_json.read_text())
    except (OSError, ValueError):
        return None
    label = data.get("label")
    return str(label) if label else None
