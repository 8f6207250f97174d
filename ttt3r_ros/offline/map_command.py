"""`ttt3r-ros map INPUT --out DIR`: a rosbag2, image folder or video -> trajectory.tum, map.ply, run.json
(+ optional result rosbag2 for RViz, per-frame depth).

Options mirror the live node's parameters (config/live.yaml) with the same meaning and defaults:
weights, model_config, update_rule, device, precision, image_size, reset_interval, confidence_threshold,
voxel_size_m (here --voxel-size), map_max_points, odom_frame, base_frame, camera_frame.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from ..engine.reconstructor import UPDATE_RULE_NAMES  # the engine owns the list of update rules
from .errors import OfflineInputError
from .make_bag_command import intrinsics_from_args
from .mapping import MapRunOptions, MapRunSummary, OfflineMapper, software_versions
from .model_setup import (DEFAULT_MODEL_CONFIG, PLUMBING_LABEL, WEIGHTS_ENV, WeightsChoice, build, device_name,
                          checkpoint_help, precision_name, resolve_device, resolve_precision,
                          resolve_weights)
from .readers import FrameSource, PrefetchingSource, open_frame_source
from .result_bag import ResultBagWriter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="rosbag2 (folder, .db3 or .mcap), image folder, or video file")
    parser.add_argument("--out", required=True, help="output folder (trajectory.tum, map.ply, run.json)")
    source = parser.add_argument_group("input")
    source.add_argument("--image-topic", default=None,
                        help="bag image topic (Image or CompressedImage); may be left out when the bag has one")
    source.add_argument("--camera-info-topic", default=None,
                        help="bag CameraInfo topic; K is used when calibrated (K[0] != 0). Default: the "
                             "CameraInfo topic next to the image topic, if the bag has one")
    source.add_argument("--no-camera-info", action="store_true",
                        help="ignore CameraInfo in the bag: intrinsics are estimated by the model")
    source.add_argument("--fps", type=float, default=None,
                        help="frame rate for an image folder without times.txt/rgb.txt, or to override a video's")
    source.add_argument("--max-frames", type=int, default=None, help="stop after this many processed frames")
    source.add_argument("--prefetch", type=int, default=4,
                        help="frames read and decoded ahead in a background thread (0 = read inline; default 4)")
    for name in ("fx", "fy", "cx", "cy"):
        source.add_argument(f"--{name}", type=float, default=None,
                            help=("calibrated intrinsics in pixels for folders/videos (give all four of "
                                  "--fx --fy --cx --cy)") if name == "fx" else None)
    source.add_argument("--camera-yaml", default=None,
                        help="calibration YAML (ROS camera_calibration format) for folders/videos")
    model = parser.add_argument_group("model (same meaning as the node's parameters)")
    model.add_argument("--weights", default=None,
                       help=f"checkpoint (.safetensors or official .pth); default ${WEIGHTS_ENV}; "
                            "'random' = --random-weights")
    model.add_argument("--random-weights", action="store_true",
                       help="run with deterministic random (untrained) weights: a plumbing check, results meaningless")
    model.add_argument("--model-config", default=DEFAULT_MODEL_CONFIG,
                       help=f"model preset name or JSON config path (default {DEFAULT_MODEL_CONFIG})")
    model.add_argument("--update-rule", choices=UPDATE_RULE_NAMES, default="ttt3r",
                       help="recurrent state update (ttt3r = confidence-gated, cut3r = full); default ttt3r")
    model.add_argument("--reset-interval", type=int, default=0,
                       help="reset the recurrent state every N frames, chaining chunks (0 = never; default 0)")
    model.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    model.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                       help="inference precision: auto (default) = bf16 on CUDA (the fast path), fp32 on CPU; "
                            "fp32 = the parity path; fp16 drifts less from fp32 than bf16 at the same speed "
                            "(docs/speed_notes.md)")
    model.add_argument("--image-size", type=int, default=512,
                       help="model input long side in pixels, multiple of 16 (default 512)")
    model.add_argument("--seed", type=int, default=0, help="seed for random weights (default 0)")
    mapping = parser.add_argument_group("map")
    mapping.add_argument("--confidence-threshold", type=float, default=3.0,
                         help="points below this self-view confidence stay out of the map (conf >= 1; default 3)")
    mapping.add_argument("--voxel-size", type=float, default=0.02,
                         help="voxel edge of the map in model units (metres up to scale; default 0.02)")
    mapping.add_argument("--map-max-points", type=int, default=2_000_000, help="bound of the map (default 2e6)")
    output = parser.add_argument_group("outputs")
    output.add_argument("--result-bag", default=None,
                        help="also write a rosbag2 with /odom, /tf, /tf_static, /path, /points, /map_points")
    output.add_argument("--result-bag-storage", choices=("sqlite3", "mcap"), default="mcap")
    output.add_argument("--cloud-stride", type=int, default=4,
                        help="per-frame clouds in the result bag keep every Nth pixel per axis (default 4)")
    output.add_argument("--result-map-every", type=int, default=50,
                        help="frames between map snapshots on /map_points in the result bag (0 = final map only)")
    output.add_argument("--path-max-length", type=int, default=1024,
                        help="poses kept in the result bag's /path (as the node's path_max_length; default 1024)")
    output.add_argument("--odom-frame", default="odom")
    output.add_argument("--base-frame", default="base_link",
                        help="body frame; offline the camera is the base (REP 103 axes at the camera)")
    output.add_argument("--camera-frame", default="camera_optical_frame")
    output.add_argument("--save-depth", nargs="?", const="png", choices=("png", "npy"), default=None,
                        help="write per-frame depth and confidence at model resolution into DIR/depth (file N "
                             "belongs to row N of trajectory.tum; png: 16-bit, depth in mm, confidence x1000; "
                             "npy: float32)")
    output.add_argument("--checkpoint-every", type=int, default=100,
                        help="rewrite trajectory/map/run.json every N frames so a killed run loses little "
                             "(0 = off; default 100)")
    output.add_argument("--checkpoint-min-seconds", type=float, default=30.0,
                        help="but not more often than this (default 30 s; big maps are costly to rewrite)")
    output.add_argument("--overwrite", action="store_true", help="replace an existing --result-bag")
    output.add_argument("--no-progress", action="store_true", help="no progress bar")


def parameters_of(args: argparse.Namespace) -> dict[str, Any]:
    return {key: value for key, value in vars(args).items() if not key.startswith("_") and not callable(value)}


def make_engine(model: Any, args: argparse.Namespace) -> Any:
    from ..engine import StreamingReconstructor

    return StreamingReconstructor(model, update_rule=args.update_rule,
                                  reset_interval=args.reset_interval or None, size=args.image_size,
                                  confidence_threshold=args.confidence_threshold, voxel_size=args.voxel_size,
                                  map_max_points=args.map_max_points)


def validate(args: argparse.Namespace) -> None:
    if args.image_size <= 0 or args.image_size % 16:
        raise OfflineInputError(f"--image-size must be a positive multiple of 16, not {args.image_size}")
    if args.reset_interval < 0:
        raise OfflineInputError("--reset-interval must be >= 0 (0 = never)")
    if args.voxel_size <= 0:
        raise OfflineInputError("--voxel-size must be positive")
    if args.no_camera_info and args.camera_info_topic:
        raise OfflineInputError("--no-camera-info and --camera-info-topic exclude each other")
    if args.prefetch < 0:
        raise OfflineInputError("--prefetch must be >= 0")
    if args.max_frames is not None and args.max_frames <= 0:
        raise OfflineInputError("--max-frames must be positive")
    if args.result_bag and Path(args.result_bag).exists() and not args.overwrite:
        raise OfflineInputError(f"--result-bag {args.result_bag} exists; remove it or pass --overwrite")


def map_input(args: argparse.Namespace, source: FrameSource | None = None) -> MapRunSummary:
    """The whole command, minus printing the final lines. `source` lets tests inject a frame source."""
    validate(args)
    if args.weights == "random":
        args.weights, args.random_weights = None, True
    weights: WeightsChoice = resolve_weights(args.weights, args.random_weights)
    device = resolve_device(args.device)
    dtype = resolve_precision(args.precision, device)
    if source is None:
        intrinsics, _, _ = intrinsics_from_args(args)
        source = open_frame_source(args.input, image_topic=args.image_topic,
                                   camera_info_topic=args.camera_info_topic, fps=args.fps, intrinsics=intrinsics,
                                   auto_camera_info=not args.no_camera_info)
        described = source.describe()
        if described.get("camera_info_auto"):
            print(f"using CameraInfo from {described['camera_info_topic']} (next to {described['image_topic']}; "
                  "--no-camera-info to estimate intrinsics instead)", file=sys.stderr)
    if args.prefetch > 0:
        source = PrefetchingSource(source, args.prefetch)
    if weights.is_random:
        banner = "!" * 100
        print(f"{banner}\n{PLUMBING_LABEL}\nNo checkpoint: running with random weights "
              f"(--random-weights). {checkpoint_help()}\n{banner}", file=sys.stderr)
    with source:
        torch.manual_seed(args.seed)
        model = build(args.model_config, weights, device, dtype, args.seed)
        engine = make_engine(model, args)
        result_bag = None
        if args.result_bag:
            result_bag = ResultBagWriter(args.result_bag, storage=args.result_bag_storage, overwrite=args.overwrite,
                                         odom_frame=args.odom_frame, base_frame=args.base_frame,
                                         camera_frame=args.camera_frame, cloud_stride=args.cloud_stride,
                                         path_max_length=args.path_max_length,
                                         camera_to_base=engine.config.camera_to_base)
        run_info = {
            "parameters": parameters_of(args),
            "weights": {"path": str(weights.path) if weights.path else None, "source": weights.source,
                        "random": weights.is_random},
            "versions": software_versions(),
            "device": {"type": device.type, "name": device_name(device), "precision": precision_name(dtype)},
            "frames": {"odom_frame": args.odom_frame, "base_frame": args.base_frame,
                       "camera_frame": args.camera_frame,
                       "trajectory": "camera optical frame (x right, y down, z forward) relative to the first "
                                     "frame, camera-to-world, TUM scalar-last quaternions; scale is the model's"},
        }
        options = MapRunOptions(out_dir=Path(args.out), max_frames=args.max_frames,
                                checkpoint_every=args.checkpoint_every,
                                checkpoint_min_interval_s=args.checkpoint_min_seconds, save_depth=args.save_depth,
                                progress=not args.no_progress, confidence_threshold=args.confidence_threshold,
                                result_map_every=args.result_map_every,
                                label=weights.label, run_info=run_info)
        return OfflineMapper(engine, options, result_bag).run(source)


def run(args: argparse.Namespace) -> int:
    try:
        summary = map_input(args)
    except OfflineInputError as err:
        print(f"ttt3r-ros map: error: {err}", file=sys.stderr)
        return 2
    report = summary.run_json
    skipped = report["frames_skipped"]
    print(f"{summary.status}: {summary.frames_processed} frames processed, {skipped} skipped"
          + (f" ({report['skipped']['by_reason']})" if skipped else "")
          + f", {report['map_points']} map points, {report['timings']['frames_per_s'] or 0:.2f} frames/s")
    outputs = report["outputs"]
    print(f"trajectory: {outputs['trajectory']}\nmap:        {outputs['map']}\n"
          f"report:     {Path(args.out) / 'run.json'}")
    if outputs["result_bag"]:
        print(f"result bag: {outputs['result_bag']}")
    if summary.frames_processed:
        print(f"evaluate:   ttt3r-ros eval --gt GROUND_TRUTH.tum --est {outputs['trajectory']} "
              f"--out {Path(args.out) / 'eval'}")
    if outputs["result_bag"]:
        print(f"replay:     ros2 bag play {outputs['result_bag']} --clock   "
              "with RViz: rviz2 -d $(ros2 pkg prefix ttt3r_ros)/share/ttt3r_ros/config/ttt3r.rviz "
              "--ros-args -p use_sim_time:=true")
    if report.get("label"):
        print(report["label"], file=sys.stderr)
    if summary.status == "interrupted":
        return 130
    if summary.status == "failed":
        if summary.traceback:
            print(summary.traceback, file=sys.stderr)
        print(f"ttt3r-ros map: error: {summary.error} (outputs hold the {summary.frames_processed} frames "
              "processed before it)", file=sys.stderr)
        return 1
    return 0
