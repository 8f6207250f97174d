"""The `ttt3r-ros` command line.

Thin on purpose: each subcommand lives in its own module exposing ``add_arguments(parser)`` and
``run(args) -> int``; this file only finds them and dispatches. A subcommand whose module is not there is not
listed, so the help always shows what exists.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from typing import Sequence

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "map": ("ttt3r_ros.offline.map_command", "map a rosbag2, image folder or video: trajectory, map, run report"),
    "eval": ("ttt3r_ros.offline.eval_command", "evaluate a trajectory against ground truth with evo (ATE, RPE)"),
    "bag-info": ("ttt3r_ros.offline.bag_info_command", "list a rosbag2's topics, types, counts and rates"),
    "make-bag": ("ttt3r_ros.offline.make_bag_command", "write a rosbag2 from an image folder or video"),
    "demo": ("ttt3r_ros.offline.demo_command", "render a sample sequence, map it and evaluate it"),
    "convert-checkpoint": ("ttt3r_ros.model.convert_command", "convert the official .pth checkpoint to .safetensors"),
    "bench": ("ttt3r_ros.bench", "stream synthetic frames through the model and print timing/memory as JSON"),
}


def _available() -> dict[str, tuple[str, str]]:
    return {name: spec for name, spec in COMMANDS.items() if importlib.util.find_spec(spec[0]) is not None}


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """Every available subcommand is listed; only the one named in ``argv`` is imported and gets its options.

    Importing a subcommand pulls in its dependencies (rosbags and evo for the offline tools, torch for bench), so a
    machine that lacks one of them (a bare GPU box running `ttt3r-ros bench`) can still run the others.
    """
    parser = argparse.ArgumentParser(prog="ttt3r-ros", description="TTT3R monocular reconstruction tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    for name, (module_name, help_text) in _available().items():
        cmd = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(cmd)
            cmd.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"] and "--node" in argv[1:]:
        # `bench --node`: the ROS node end to end (ttt3r_ros.ros.node_bench), with its own options; imported only
        # here so a machine without rclpy still runs the model bench
        from ttt3r_ros.ros import node_bench
        return node_bench.main([a for a in argv[1:] if a != "--node"])
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except BrokenPipeError:
        # `ttt3r-ros bag-info x | head`: the reader left; stop quietly like other Unix tools instead of a traceback.
        # stdout is pointed at devnull so the interpreter's final flush does not raise a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
