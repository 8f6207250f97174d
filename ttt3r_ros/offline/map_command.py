"""`ttt3r-ros map INPUT --out DIR`: a rosbag2, image folder or video -> trajectory.tum, map.ply, run.json
(+ optional result rosbag2 for RViz, per-frame depth).

The command is the typed function `map_input(MapOptions, source=None)`; argparse only fills `MapOptions`
(`options_from_args`), and `demo` calls `map_input` directly. The model and map options are session settings
(`ttt3r_ros.session.settings`, the node's parameters of the same meaning): their defaults and help come from
that table, only the flag names are this command's (`--voxel-size` is the setting voxel_size_m).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..atomic_io import remove_stale_temporaries
from ..engine.reconstructor import UPDATE_RULE_NAMES  # the engine owns the list of update rules
from ..session import settings
from ..session.build import (PLUMBING_LABEL, WEIGHTS_ENV, SessionError, WeightsChoice, checkpoint_help,
                             device_name, open_session, resolve_weights)
from ..session.settings import DEFAULTS, OFFLINE_CAMERA_FRAME, SessionConfig
from .errors import OfflineInputError
from .make_bag_command import intrinsics_from_args
from .mapping import DEPTH_FOLDER, MapRunOptions, MapRunSummary, OfflineMapper, software_versions
from .readers import FrameSource, PrefetchingSource, open_frame_source
from .result_bag import ResultBagWriter
from .termination import exit_code_for, signal_name, signal_of, stop_signals_interrupt
from .resume import SNAPSHOT_NAME, prepare_snapshots

# option (MapOptions field, = argparse dest) -> the session setting it sets, where the names differ
_SETTING_OF_OPTION = {"voxel_size": "voxel_size_m"}
# session settings that are map options (the rest, e.g. warmup_frames or the odometry limits, are node-only here)
_MAP_SETTINGS = ("max_image_pixels", "weights", "model_config", "update_rule", "device", "precision", "image_size", "reset_interval",
                 "seed", "confidence_threshold", "voxel_size_m", "map_max_points", "odom_frame", "base_frame",
                 "camera_frame", "path_max_length")


@dataclass
class MapOptions:
    """Everything `ttt3r-ros map` takes (field names are the flags' argparse dests; they are also the keys of
    run.json's "parameters"). Settings shared with the node default to the session table."""
    input: str
    out: str
    # input
    image_topic: str | None = None
    camera_info_topic: str | None = None
    no_camera_info: bool = False
    fps: float | None = None
    max_frames: int | None = None
    prefetch: int = 4
    fx: float | None = None
    fy: float | None = None
    cx: float | None = None
    cy: float | None = None
    camera_yaml: str | None = None
    max_image_pixels: int = DEFAULTS.max_image_pixels
    # model (session settings)
    weights: str | None = None          # None: $TTT3R_WEIGHTS; 'random' = random_weights
    random_weights: bool = False
    model_config: str = DEFAULTS.model_config
    update_rule: str = DEFAULTS.update_rule
    reset_interval: int = DEFAULTS.reset_interval
    device: str = DEFAULTS.device
    precision: str = DEFAULTS.precision
    image_size: int = DEFAULTS.image_size
    seed: int = DEFAULTS.seed
    # map
    confidence_threshold: float = DEFAULTS.confidence_threshold
    voxel_size: float = DEFAULTS.voxel_size_m
    map_max_points: int = DEFAULTS.map_max_points
    # outputs
    result_bag: str | None = None
    result_bag_storage: str = "mcap"
    cloud_stride: int = 4
    result_map_every: int = 50
    path_max_length: int = DEFAULTS.path_max_length
    odom_frame: str = DEFAULTS.odom_frame
    base_frame: str = DEFAULTS.base_frame
    camera_frame: str = OFFLINE_CAMERA_FRAME   # offline images carry no header.frame_id (settings.py)
    save_depth: str | None = None
    checkpoint_every: int = 100
    checkpoint_min_seconds: float = 30.0
    overwrite: bool = False
    snapshot_every: int = 0            # offline/resume.py
    resume: bool = False
    no_progress: bool = False

    def session_config(self) -> SessionConfig:
        """The session settings among these options (weights are resolved separately: see `resolve_weights`)."""
        values = {_SETTING_OF_OPTION.get(f.name, f.name): getattr(self, f.name) for f in dataclasses.fields(self)}
        values["weights"] = self.weights or ""
        return SessionConfig.from_values({name: values[name] for name in _MAP_SETTINGS})


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _setting_help(option: str, note: str = "") -> str:
    """A flag's help from the session table: its description, this command's note, its default."""
    name = _SETTING_OF_OPTION.get(option, option)
    default = getattr(MapOptions, option)
    return f"{settings.setting_info(name).description}{note} (default {default})"


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
    source.add_argument("--prefetch", type=int, default=MapOptions.prefetch,
                        help="frames read and decoded ahead in a background thread (0 = read inline; default 4)")
    for name in ("fx", "fy", "cx", "cy"):
        source.add_argument(f"--{name}", type=float, default=None,
                            help=("calibrated intrinsics in pixels for folders/videos (give all four of "
                                  "--fx --fy --cx --cy)") if name == "fx" else None)
    source.add_argument("--camera-yaml", default=None,
                        help="calibration YAML (ROS camera_calibration format) for folders/videos")
    source.add_argument("--max-image-pixels", type=int, default=MapOptions.max_image_pixels,
                        help=_setting_help("max_image_pixels", "; such frames are skipped and counted"))
    model = parser.add_argument_group("model (same meaning as the node's parameters)")
    model.add_argument("--weights", default=None,
                       help=f"checkpoint (.safetensors or official .pth); default ${WEIGHTS_ENV}; "
                            "'random' = --random-weights")
    model.add_argument("--random-weights", action="store_true",
                       help="run with deterministic random (untrained) weights: a plumbing check, results meaningless")
    model.add_argument("--model-config", default=MapOptions.model_config, help=_setting_help("model_config"))
    model.add_argument("--update-rule", choices=UPDATE_RULE_NAMES, default=MapOptions.update_rule,
                       help=_setting_help("update_rule"))
    model.add_argument("--reset-interval", type=int, default=MapOptions.reset_interval,
                       help=_setting_help("reset_interval", "; chunks are chained"))
    model.add_argument("--device", default=MapOptions.device, help=_setting_help("device"))
    model.add_argument("--precision", choices=settings.setting_info("precision").choices,
                       default=MapOptions.precision, help=_setting_help("precision"))
    model.add_argument("--image-size", type=int, default=MapOptions.image_size, help=_setting_help("image_size"))
    model.add_argument("--seed", type=int, default=MapOptions.seed, help=_setting_help("seed"))
    mapping = parser.add_argument_group("map")
    mapping.add_argument("--confidence-threshold", type=float, default=MapOptions.confidence_threshold,
                         help=_setting_help("confidence_threshold"))
    mapping.add_argument("--voxel-size", type=float, default=MapOptions.voxel_size,
                         help=_setting_help("voxel_size"))
    mapping.add_argument("--map-max-points", type=int, default=MapOptions.map_max_points,
                         help=_setting_help("map_max_points"))
    output = parser.add_argument_group("outputs")
    output.add_argument("--result-bag", default=None,
                        help="also write a rosbag2 with /odom, /tf, /tf_static, /path, /points, /map_points")
    output.add_argument("--result-bag-storage", choices=("sqlite3", "mcap"), default=MapOptions.result_bag_storage)
    output.add_argument("--cloud-stride", type=int, default=MapOptions.cloud_stride,
                        help="per-frame clouds in the result bag keep every Nth pixel per axis (default 4)")
    output.add_argument("--result-map-every", type=int, default=MapOptions.result_map_every,
                        help="frames between map snapshots on /map_points in the result bag (0 = final map only)")
    output.add_argument("--path-max-length", type=int, default=MapOptions.path_max_length,
                        help=_setting_help("path_max_length", " (the result bag's /path)"))
    output.add_argument("--odom-frame", default=MapOptions.odom_frame, help=_setting_help("odom_frame"))
    output.add_argument("--base-frame", default=MapOptions.base_frame,
                        help=_setting_help("base_frame", "; offline the camera is the base (REP 103 axes at the "
                                                         "camera)"))
    output.add_argument("--camera-frame", default=MapOptions.camera_frame,
                        help="camera optical frame of the result bag (offline images carry no frame id; "
                             f"default {MapOptions.camera_frame})")
    output.add_argument("--save-depth", nargs="?", const="png", choices=("png", "npy"), default=None,
                        help="write per-frame depth and confidence at model resolution into DIR/depth (file N "
                             "belongs to row N of trajectory.tum; png: 16-bit, depth in mm, confidence x1000; "
                             "npy: float32)")
    output.add_argument("--checkpoint-every", type=int, default=MapOptions.checkpoint_every,
                        help="rewrite trajectory/map/run.json every N frames so a killed run loses little "
                             "(0 = off; default 100)")
    output.add_argument("--checkpoint-min-seconds", type=float, default=MapOptions.checkpoint_min_seconds,
                        help="but not more often than this (default 30 s; big maps are costly to rewrite)")
    output.add_argument("--overwrite", action="store_true", help="replace an existing --result-bag")
    output.add_argument("--snapshot-every", type=int, default=MapOptions.snapshot_every,
                        help=f"keep a session snapshot ({SNAPSHOT_NAME}) in --out, rewritten every N processed "
                             "frames and when the run stops (also on SIGINT/SIGTERM), for --resume (0 = off)")
    output.add_argument("--resume", action="store_true",
                        help="continue the run whose snapshot is in --out (same options; frames already read "
                             "are skipped; trajectory, map and run.json continue; the result bag holds only "
                             "the frames from the resume point on)")
    output.add_argument("--no-progress", action="store_true", help="no progress bar")


def options_from_args(args: argparse.Namespace) -> MapOptions:
    """The parsed command line as MapOptions (argparse's own entries, e.g. the subcommand name, are left out)."""
    names = {f.name for f in dataclasses.fields(MapOptions)}
    return MapOptions(**{k: v for k, v in vars(args).items() if k in names})


def validate(options: MapOptions) -> None:
    """The session's rules for the settings (ranges, choices, multiples), then this command's own."""
    config = options.session_config()
    flags = {settings_name: _flag(option) for option, settings_name in _SETTING_OF_OPTION.items()}
    for name in _MAP_SETTINGS:
        if name == "weights":
            continue
        problem = settings.validate_value(name, getattr(config, name))
        if problem:
            raise OfflineInputError(f"{flags.get(name, _flag(name))}: {problem}")
    if options.no_camera_info and options.camera_info_topic:
        raise OfflineInputError("--no-camera-info and --camera-info-topic exclude each other")
    if options.prefetch < 0:
        raise OfflineInputError("--prefetch must be >= 0")
    if options.fps is not None and not (math.isfinite(options.fps) and options.fps > 0):
        raise OfflineInputError(f"--fps must be a positive finite number of frames per second, got {options.fps}")
    _check_out_folder(Path(options.out))
    if options.max_frames is not None and options.max_frames <= 0:
        raise OfflineInputError("--max-frames must be positive")
    if options.snapshot_every < 0:
        raise OfflineInputError("--snapshot-every must be >= 0")
    if options.result_bag and Path(options.result_bag).exists() and not options.overwrite:
        raise OfflineInputError(f"--result-bag {options.result_bag} exists; remove it or pass --overwrite")


def _check_out_folder(out: Path) -> None:
    """--out must be a folder or creatable as one: an existing file (or a file where a parent folder should be)
    is refused here with a one-line message instead of failing at the first write."""
    for candidate in (out, *out.parents):
        if candidate.exists():
            if not candidate.is_dir():
                what = "is a file" if candidate == out else f"cannot be created: {candidate} is a file"
                raise OfflineInputError(f"--out {out} {what}, not a folder")
            if not os.access(candidate, os.W_OK | os.X_OK):
                raise OfflineInputError(f"--out {out}: {candidate} is not writable")
            return


def _remove_stale_temporaries(out: Path, run_start_s: float) -> int:
    """Temporaries of the atomic writer that a killed run (kill -9) left in --out and its depth folder: removed
    when older than this run and held by no live process (ttt3r_ros.atomic_io). Returns how many."""
    removed = [path for folder in (out, out / DEPTH_FOLDER)
               for path in remove_stale_temporaries(folder, older_than_s=run_start_s)]
    if removed:
        print(f"removed {len(removed)} stale temporary file(s) left in {out} by an earlier run that was killed",
              file=sys.stderr)
    return len(removed)


def map_input(options: MapOptions, source: FrameSource | None = None) -> MapRunSummary:
    """The whole command, minus printing the final lines. `source` lets tests inject a frame source.
    Problems with the options or the input raise OfflineInputError or SessionError (one-line messages)."""
    run_start_s = time.time()   # temporaries older than this in --out are a killed run's (see below)
    validate(options)
    weights: WeightsChoice = resolve_weights(options.weights, options.random_weights, environment=os.environ)
    if source is None:
        intrinsics, _, _ = intrinsics_from_args(options)
        source = open_frame_source(options.input, image_topic=options.image_topic,
                                   camera_info_topic=options.camera_info_topic, fps=options.fps,
                                   intrinsics=intrinsics, auto_camera_info=not options.no_camera_info,
                                   max_image_pixels=options.max_image_pixels)
        described = source.describe()
        if described.get("camera_info_auto"):
            print(f"using CameraInfo from {described['camera_info_topic']} (next to {described['image_topic']}; "
                  "--no-camera-info to estimate intrinsics instead)", file=sys.stderr)
    if options.prefetch > 0:
        source = PrefetchingSource(source, options.prefetch)
    if weights.is_random:
        banner = "!" * 100
        print(f"{banner}\n{PLUMBING_LABEL}\nNo checkpoint: running with random weights "
              f"(--random-weights). {checkpoint_help()}\n{banner}", file=sys.stderr)
    with source:
        session = open_session(options.session_config(), weights=weights)
        engine = session.new_engine()
        snapshots, resumed = prepare_snapshots(dataclasses.asdict(options), options.out, options.snapshot_every,
                                               options.resume, session, engine)
        result_bag = None
        if options.result_bag:
            result_bag = ResultBagWriter(options.result_bag, storage=options.result_bag_storage,
                                         overwrite=options.overwrite, odom_frame=options.odom_frame,
                                         base_frame=options.base_frame, camera_frame=options.camera_frame,
                                         cloud_stride=options.cloud_stride,
                                         path_max_length=options.path_max_length,
                                         camera_to_base=engine.config.camera_to_base)
        run_info = {
            "parameters": dataclasses.asdict(options),
            "weights": {"path": str(weights.path) if weights.path else None, "source": weights.source,
                        "random": weights.is_random},
            "versions": software_versions(),
            "device": {"type": session.device.type, "name": device_name(session.device),
                       "precision": session.precision},
            "frames": {"odom_frame": options.odom_frame, "base_frame": options.base_frame,
                       "camera_frame": options.camera_frame,
                       "trajectory": "camera optical frame (x right, y down, z forward) relative to the first "
                                     "frame, camera-to-world, TUM scalar-last quaternions; scale is the model's"},
        }
        run_options = MapRunOptions(out_dir=Path(options.out), max_frames=options.max_frames,
                                    checkpoint_every=options.checkpoint_every,
                                    checkpoint_min_interval_s=options.checkpoint_min_seconds,
                                    save_depth=options.save_depth, progress=not options.no_progress,
                                    confidence_threshold=options.confidence_threshold,
                                    result_map_every=options.result_map_every, label=session.label,
                                    run_info=run_info, snapshots=snapshots, resume=resumed)
        run_info["stale_temporaries_removed"] = _remove_stale_temporaries(Path(options.out), run_start_s)
        return OfflineMapper(engine, run_options, result_bag).run(source)


def run(args: argparse.Namespace) -> int:
    """Exit status: 0 completed with frames processed; 1 failed (including: no frame processed, e.g. every image
    unreadable or every pose non-finite); 2 bad options or input; 128 + signal when stopped by a signal, with
    complete outputs (130 SIGINT/Ctrl-C, 143 SIGTERM, 129 SIGHUP: offline/termination.py)."""
    options = options_from_args(args)
    try:
        with stop_signals_interrupt():   # SIGTERM / SIGHUP end the run as Ctrl-C does
            summary = map_input(options)
    except (OfflineInputError, SessionError) as err:
        print(f"ttt3r-ros map: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:   # before the first frame (e.g. while the model loads): nothing written
        signum = signal_of(interrupt)
        print(f"ttt3r-ros map: stopped by {signal_name(signum)} before mapping started; no outputs written",
              file=sys.stderr)
        return exit_code_for(signum)
    report = summary.run_json
    skipped = report["frames_skipped"]
    print(f"{summary.status}: {summary.frames_processed} frames processed, {skipped} skipped"
          + (f" ({report['skipped']['by_reason']})" if skipped else "")
          + (f", {summary.frames_invalid} invalid (non-finite pose; no outputs for them)"
             if summary.frames_invalid else "")
          + f", {report['map_points']} map points, {report['timings']['frames_per_s'] or 0:.2f} frames/s")
    outputs = report["outputs"]
    print(f"trajectory: {outputs['trajectory']}\nmap:        {outputs['map']}\n"
          f"report:     {Path(options.out) / 'run.json'}")
    if outputs["result_bag"]:
        print(f"result bag: {outputs['result_bag']}")
    if summary.frames_processed:
        print(f"evaluate:   ttt3r-ros eval --gt GROUND_TRUTH.tum --est {outputs['trajectory']} "
              f"--out {Path(options.out) / 'eval'}")
    if outputs["result_bag"]:
        print(f"replay:     ros2 bag play {outputs['result_bag']} --clock   "
              "with RViz: rviz2 -d $(ros2 pkg prefix ttt3r_ros)/share/ttt3r_ros/config/ttt3r.rviz "
              "--ros-args -p use_sim_time:=true")
    if report.get("label"):
        print(report["label"], file=sys.stderr)
    if summary.status == "interrupted":
        signum = summary.stop_signal if summary.stop_signal is not None else signal_of(KeyboardInterrupt())
        print(f"ttt3r-ros map: interrupted by {signal_name(signum)}; outputs hold the {summary.frames_processed} "
              "frames processed before it", file=sys.stderr)
        return exit_code_for(signum)
    if summary.status == "failed":
        if summary.traceback:
            print(summary.traceback, file=sys.stderr)
        print(f"ttt3r-ros map: error: {summary.error} (outputs hold the {summary.frames_processed} frames "
              "processed before it)", file=sys.stderr)
        return 1
    return 0
