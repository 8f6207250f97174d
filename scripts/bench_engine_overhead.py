#!/usr/bin/env python3
"""Per-frame host-side overhead of the streaming engine: everything but the network.

Feeds 640x480 uint8 frames of the synthetic box room (-> 512x384 model images) through StreamingReconstructor with
the stand-in network (exact point maps, no neural network), reads every per-frame output a node would publish
(pose, intrinsics incl. the Weiszfeld focal, depth, confidence, colour, world points) and times it. The stand-in's
own step time is measured separately and subtracted. Prints one JSON line.

    .venv/bin/python scripts/bench_engine_overhead.py [--frames 60] [--threads 1] [--map-stride K]
        [--focal-stride K] [--no-map]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "test"))  # the stand-in network lives in the tests' support package

from support.oracle import OracleNetwork  # noqa: E402
from ttt3r_ros.engine import StreamingReconstructor, geometry  # noqa: E402
from ttt3r_ros.engine.preprocess import preprocess_pil  # noqa: E402
from ttt3r_ros.engine.synthetic import BoxRoom, camera_path, pinhole  # noqa: E402


class TimedNetwork:
    """Wraps the stand-in and records how long its step takes (subtracted from the engine's time)."""

    def __init__(self, net: OracleNetwork) -> None:
        self.net, self.device, self.last_ms = net, net.device, 0.0

    def initial_state(self, batch_size: int = 1):
        return self.net.initial_state(batch_size)

    def step(self, *args, **kwargs):
        t = time.perf_counter()
        out = self.net.step(*args, **kwargs)
        self.last_ms += (time.perf_counter() - t) * 1e3
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=60, help="timed frames")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--distinct", type=int, default=24, help="distinct rendered frames (cycled)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave torch's default)")
    ap.add_argument("--input", default="640x480", help="input WxH")
    ap.add_argument("--map-max-points", type=int, default=2_000_000)
    ap.add_argument("--voxel-size", type=float, default=0.02)
    ap.add_argument("--no-map", action="store_true", help="do not accumulate the voxel map")
    ap.add_argument("--map-stride", type=int, default=1, help="EngineConfig.map_pixel_stride")
    ap.add_argument("--focal-stride", type=int, default=1,
                    help="EngineConfig.focal_pixel_stride (1 = the reference's exact estimate)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    w_in, h_in = (int(v) for v in args.input.lower().split("x"))

    room = BoxRoom()
    k_in = pinhole(0.9 * w_in, h_in, w_in)
    poses = camera_path(args.distinct)
    frames = [room.render(k_in, h_in, w_in, p)[0] for p in poses]
    pre = [preprocess_pil(f) for f in frames]
    rc = pre[0].transform
    k_model = geometry.intrinsics_input_to_model(k_in, rc)
    pts = np.stack([room.render(k_model, rc.model_h, rc.model_w, p)[2] for p in poses])
    net = TimedNetwork(OracleNetwork(torch.cat([p.images for p in pre]), pts, poses))
    eng = StreamingReconstructor(net, build_map=not args.no_map, map_max_points=args.map_max_points,
                                 voxel_size=args.voxel_size, map_pixel_stride=args.map_stride,
                                 focal_pixel_stride=args.focal_stride)

    overhead, phases = [], {"preprocess": [], "post_incl_map": [], "outputs_and_focal": []}
    for i in range(args.warmup + args.frames):
        net.last_ms = 0.0
        t0 = time.perf_counter()
        r = eng.step(frames[i % len(frames)], i / 30.0)
        t1 = time.perf_counter()
        _ = (r.camera_to_world, r.base_in_odom, r.intrinsics_model, r.intrinsics_input, r.depth, r.confidence,
             r.colour, r.points_world, r.gate_mean)
        t2 = time.perf_counter()
        if i >= args.warmup:
            overhead.append((t2 - t0) * 1e3 - net.last_ms)
            phases["preprocess"].append(r.timings_ms["preprocess"])
            phases["post_incl_map"].append(r.timings_ms["post"])
            phases["outputs_and_focal"].append((t2 - t1) * 1e3)
    result = {
        "bench": "engine_host_overhead", "input": f"{w_in}x{h_in}", "model_input": f"{rc.model_w}x{rc.model_h}",
        "frames": args.frames, "torch_threads": torch.get_num_threads(), "map": not args.no_map, "map_stride": args.map_stride,
        "focal_stride": args.focal_stride,
        "map_points": len(eng.voxel_map), "overhead_ms_median": round(statistics.median(overhead), 3),
        "overhead_ms_mean": round(statistics.fmean(overhead), 3),
        "overhead_ms_p90": round(float(np.percentile(overhead, 90)), 3),
        "phases_ms_median": {k: round(statistics.median(v), 3) for k, v in phases.items()},
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
