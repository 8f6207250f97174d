"""`ttt3r-ros demo`: render a small sequence of the engine's synthetic room (known camera path, nothing downloaded),
write it as an image folder + ground truth (and a rosbag2), map it, evaluate it, and say where everything is.

With the official checkpoint (--weights or $TTT3R_WEIGHTS) the full model runs. Without one the demo says so
loudly and runs the tiny model with random weights: every output is then labelled as a plumbing check.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import cv2

from ..atomic_io import atomic_write
from ..engine import exports
from ..engine.synthetic import make_sequence
from ..session.build import PLUMBING_LABEL, WEIGHTS_ENV, SessionError, checkpoint_help, resolve_weights
from ..session.settings import DEFAULT_MODEL_CONFIG, DEFAULTS, DEVICE_HELP, PRECISION_CHOICES, setting_info
from .errors import OfflineInputError
from .eval_command import evaluate_files
from .make_bag_command import make_bag

TINY_PRESET = "tiny"
# The rendered sequence's clock starts here (a plausible epoch): header stamp 0 means "unset" to ROS tools, so a
# sequence starting at 0 s would replay badly with `ros2 bag play`.
SEQUENCE_START_S = 1_700_000_000.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="ttt3r_demo", help="output folder (default ./ttt3r_demo)")
    parser.add_argument("--weights", default=None, help=f"checkpoint; default ${WEIGHTS_ENV}; without one: "
                                                        "plumbing check with untrained tiny weights")
    parser.add_argument("--model-config", default=None,
                        help=f"model preset/JSON (default: {DEFAULT_MODEL_CONFIG} with weights, tiny without)")
    parser.add_argument("--frames", type=int, default=None, help="frames to render (default 30; 10 untrained)")
    parser.add_argument("--height", type=int, default=None, help="image height (default 240; 48 untrained)")
    parser.add_argument("--width", type=int, default=None, help="image width (default 320; 64 untrained)")
    parser.add_argument("--image-size", type=int, default=None,
                        help=f"model input long side (default {DEFAULTS.image_size}; 64 untrained)")
    parser.add_argument("--fps", type=float, default=10.0, help="frame rate of the rendered sequence")
    parser.add_argument("--device", default=DEFAULTS.device, help=DEVICE_HELP)
    parser.add_argument("--precision", choices=PRECISION_CHOICES, default=DEFAULTS.precision,
                        help=setting_info("precision").description)
    parser.add_argument("--no-bag", action="store_true", help="do not write the sequence as a rosbag2 too")
    parser.add_argument("--no-progress", action="store_true")


def write_sequence(folder: Path, n_frames: int, height: int, width: int, fps: float) -> dict[str, Any]:
    """Renders the synthetic room into folder/rgb/*.png + folder/rgb.txt (TUM layout), ground truth and camera."""
    sequence = make_sequence(n_frames=n_frames, h=height, w=width, fps=fps)
    timestamps = SEQUENCE_START_S + sequence.timestamps
    rgb_dir = folder / "rgb"
    rgb_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# timestamp filename (synthetic box room, ttt3r-ros demo)"]
    for index, (image, stamp) in enumerate(zip(sequence.images, timestamps)):
        name = f"{index:06d}.png"
        ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if not ok:
            raise RuntimeError("OpenCV could not encode a PNG")
        atomic_write(rgb_dir / name, lambda handle, data=encoded: handle.write(data.tobytes()))
        lines.append(f"{stamp:.6f} rgb/{name}")
    text = "\n".join(lines) + "\n"
    atomic_write(folder / "rgb.txt", lambda handle: handle.write(text.encode()))
    gt_path = folder / "groundtruth.tum"
    exports.write_tum(gt_path, timestamps, sequence.camera_to_world)
    k = sequence.intrinsics
    camera_yaml = (f"image_width: {width}\nimage_height: {height}\ncamera_name: synthetic\n"
                   f"camera_matrix:\n  rows: 3\n  cols: 3\n  data: {[float(v) for v in k.reshape(-1)]}\n"
                   "distortion_model: plumb_bob\ndistortion_coefficients:\n  rows: 1\n  cols: 5\n"
                   "  data: [0.0, 0.0, 0.0, 0.0, 0.0]\n")
    atomic_write(folder / "camera.yaml", lambda handle: handle.write(camera_yaml.encode()))
    return {"folder": folder, "groundtruth": gt_path, "intrinsics": k, "camera_yaml": folder / "camera.yaml",
            "frames": n_frames}


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    from . import map_command

    out = Path(args.out)
    # a checkpoint from --weights or $TTT3R_WEIGHTS; without one, the demo is a plumbing check (random weights)
    trained = bool(args.weights or os.environ.get(WEIGHTS_ENV))
    weights = resolve_weights(args.weights, random_weights=not trained, environment=os.environ)
    frames = args.frames or (30 if trained else 10)
    height = args.height or (240 if trained else 48)
    width = args.width or (320 if trained else 64)
    image_size = args.image_size or (DEFAULTS.image_size if trained else 64)
    # the model package's tiny preset (the parity_tiny.json sizes): no file from ../shared needed
    model_config = args.model_config or (DEFAULT_MODEL_CONFIG if trained else TINY_PRESET)
    if not trained:
        banner = "!" * 100
        print(f"{banner}\n{PLUMBING_LABEL}\nNo checkpoint found (--weights or ${WEIGHTS_ENV}). {checkpoint_help()}\n"
              f"The demo now runs the whole pipeline with a tiny UNTRAINED model so you can check that "
              f"everything is installed; its trajectory, map and errors mean nothing.\n{banner}", file=sys.stderr)

    sequence = write_sequence(out / "sequence", frames, height, width, args.fps)
    print(f"rendered {frames} frames ({width}x{height}) of the synthetic room into {sequence['folder']}")
    bag_path = None
    if not args.no_bag:
        bag_path = out / "sequence_bag"
        make_bag(sequence["folder"] / "rgb", bag_path, storage="mcap", intrinsics=sequence["intrinsics"],
                 overwrite=True, progress=False)

    options = map_command.MapOptions(
        input=str(sequence["folder"] / "rgb"), out=str(out / "map"), model_config=model_config,
        image_size=image_size, device=args.device, precision=args.precision,
        camera_yaml=str(sequence["camera_yaml"]), checkpoint_every=0, result_bag=str(out / "map" / "result_bag"),
        overwrite=True, no_progress=args.no_progress,
        weights=str(weights.path) if trained else None, random_weights=not trained,
        # an untrained model's confidences sit near their floor of 1: keep every point so the plumbing shows
        confidence_threshold=DEFAULTS.confidence_threshold if trained else 1.0)
    summary = map_command.map_input(options)
    if summary.status != "completed":
        raise RuntimeError(f"mapping {summary.status}: {summary.error}")

    report = evaluate_files(sequence["groundtruth"], out / "map" / "trajectory.tum", out / "eval",
                            align="sim3", label=None if trained else PLUMBING_LABEL)
    return {"sequence": sequence, "bag": bag_path, "map": summary.run_json, "eval": report, "trained": trained,
            "out": out}


def run(args: argparse.Namespace) -> int:
    try:
        result = run_demo(args)
    except (OfflineInputError, SessionError) as err:
        print(f"ttt3r-ros demo: error: {err}", file=sys.stderr)
        return 2
    out: Path = result["out"]
    print("\n".join([
        "",
        "demo outputs:",
        f"  sequence (images + rgb.txt): {result['sequence']['folder']}",
        f"  ground truth:                {result['sequence']['groundtruth']}",
        *([f"  same sequence as a rosbag2:  {result['bag']}"] if result["bag"] else []),
        f"  trajectory:                  {out / 'map' / 'trajectory.tum'}",
        f"  map:                         {out / 'map' / 'map.ply'}",
        f"  run report:                  {out / 'map' / 'run.json'}",
        f"  result bag (for RViz):       {out / 'map' / 'result_bag'}",
        f"  evaluation:                  {out / 'eval' / 'eval.json'}",
        f"  plot:                        {out / 'eval' / 'trajectory.png'}",
        f"  ATE RMSE (Sim3): {result['eval']['ate_rmse_m']:.4f} m over {result['eval']['matched_poses']} poses",
    ]))
    if not result["trained"]:
        print(f"\n{PLUMBING_LABEL}\n{checkpoint_help()}", file=sys.stderr)
    return 0
