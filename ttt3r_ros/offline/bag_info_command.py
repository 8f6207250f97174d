"""`ttt3r-ros bag-info BAG`: storage, duration, and per topic the type, message count and rate (no ROS needed)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .bag_io import open_bag, storage_identifier, summarise_topics
from .errors import OfflineInputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bag", help="rosbag2 folder, or a single .db3 / .mcap file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def bag_info(path: str | Path) -> dict[str, Any]:
    reader = open_bag(path)
    try:
        topics = summarise_topics(reader, measure_rates=True)
        count = reader.message_count
        duration_s = (reader.end_time - reader.start_time) * 1e-9 if count else 0.0
        return {
            "path": str(path),
            "storage": storage_identifier(reader),
            "messages": count,
            "duration_s": duration_s,
            "start_s": reader.start_time * 1e-9 if count else None,
            "end_s": reader.end_time * 1e-9 if count else None,
            "topics": [{"topic": t.topic, "type": t.msgtype, "count": t.count, "rate_hz": t.rate_hz}
                       for t in topics],
        }
    finally:
        reader.close()


def format_info(info: dict[str, Any]) -> str:
    lines = [f"bag:       {info['path']}", f"storage:   {info['storage']}",
             f"duration:  {info['duration_s']:.3f} s", f"messages:  {info['messages']}"]
    if info["start_s"] is not None:
        lines.append(f"start/end: {info['start_s']:.6f} / {info['end_s']:.6f} s")
    rows = [(t["topic"], t["type"], str(t["count"]), f"{t['rate_hz']:.2f}" if t["rate_hz"] else "-")
            for t in info["topics"]]
    header = ("topic", "type", "count", "rate [Hz]")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(4)]
    lines.append("")
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        info = bag_info(args.bag)
    except OfflineInputError as err:
        print(f"ttt3r-ros bag-info: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0
