"""`ttt3r-ros eval --gt GT --est EST --out DIR`: ATE/RPE with evo, a table, DIR/eval.json, DIR/trajectory.png."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .atomic_files import write_json_atomic
from .errors import OfflineInputError
from .evaluation import (ALIGNMENTS, FORMATS, evaluate, format_table, load_trajectory, plot_trajectories,
                         result_to_json, run_label_for)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, help="ground-truth trajectory (TUM or KITTI)")
    parser.add_argument("--est", required=True,
                        help="estimated trajectory (e.g. trajectory.tum from `map`, or that run's folder)")
    parser.add_argument("--out", required=True, help="output folder for eval.json and trajectory.png")
    parser.add_argument("--align", choices=ALIGNMENTS, default="sim3",
                        help="alignment of the estimate onto the ground truth before ATE: sim3 (default; "
                             "monocular scale is unknown), se3 (rigid, no scale), scale (scale only), none")
    parser.add_argument("--delta", type=float, default=1.0, help="RPE step (default 1)")
    parser.add_argument("--delta-unit", choices=("frames", "m", "rad", "deg"), default="frames",
                        help="unit of --delta (default frames)")
    parser.add_argument("--t-max-diff", type=float, default=0.02,
                        help="max timestamp difference in seconds for associating poses (default 0.02)")
    parser.add_argument("--t-offset", type=float, default=0.0,
                        help="seconds added to the estimate's timestamps before association")
    parser.add_argument("--format", choices=FORMATS, default="auto",
                        help="file format of both files (auto: by extension, then by column count)")
    parser.add_argument("--gt-format", choices=FORMATS, default=None, help="format of --gt (overrides --format)")
    parser.add_argument("--est-format", choices=FORMATS, default=None, help="format of --est (overrides --format)")
    parser.add_argument("--label", default=None,
                        help="text shown in the table, plot title and eval.json (default: the label of the "
                             "map run that wrote --est, if any)")
    parser.add_argument("--no-plot", action="store_true", help="skip trajectory.png")


def evaluate_files(gt_path: str | Path, est_path: str | Path, out_dir: str | Path, align: str = "sim3",
                   delta: float = 1.0, delta_unit: str = "frames", t_max_diff_s: float = 0.02,
                   t_offset_s: float = 0.0, gt_format: str = "auto", est_format: str = "auto",
                   label: str | None = None, plot: bool = True) -> dict[str, Any]:
    """Runs the evaluation, writes eval.json (+ trajectory.png), prints the table; returns the eval.json dict."""
    gt, gt_fmt = load_trajectory(gt_path, gt_format)
    est, est_fmt = load_trajectory(est_path, est_format)
    result = evaluate(gt, est, align=align, delta=delta, delta_unit=delta_unit, t_max_diff_s=t_max_diff_s,
                      t_offset_s=t_offset_s)
    if label is None:
        label = run_label_for(Path(est_path) / "trajectory.tum" if Path(est_path).is_dir() else Path(est_path))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = result_to_json(result, align, {
        "gt": str(gt_path), "est": str(est_path), "gt_format": gt_fmt, "est_format": est_fmt,
        "gt_poses": gt.num_poses, "est_poses": est.num_poses, "delta": delta, "delta_unit": delta_unit,
        "t_max_diff_s": t_max_diff_s, "t_offset_s": t_offset_s, "label": label,
        "plot": str(out / "trajectory.png") if plot else None,
    })
    write_json_atomic(out / "eval.json", report)
    title = f"ATE ({align} aligned) {Path(est_path).name} vs {Path(gt_path).name}"
    if label:
        title = f"{label}\n{title}"
    if plot:
        plot_trajectories(out / "trajectory.png", result, title)
    print(format_table(result, align, title=label))
    print(f"wrote {out / 'eval.json'}" + (f" and {out / 'trajectory.png'}" if plot else ""))
    return report


def run(args: argparse.Namespace) -> int:
    try:
        evaluate_files(args.gt, args.est, args.out, align=args.align, delta=args.delta,
                       delta_unit=args.delta_unit, t_max_diff_s=args.t_max_diff, t_offset_s=args.t_offset,
                       gt_format=args.gt_format or args.format, est_format=args.est_format or args.format,
                       label=args.label, plot=not args.no_plot)
    except OfflineInputError as err:
        print(f"ttt3r-ros eval: error: {err}", file=sys.stderr)
        return 2
    return 0
