"""DDS smoke test, process 2: receive the publisher's images and status messages, check them, print a JSON report.

Signals "ready" once both readers have matched a writer (so nothing is published before we listen), then
collects until `--count` of each arrived or `--timeout-s` passed. The checks that need the expected content run
here (the pixels never leave this process); the test asserts on the JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import rclpy
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import String

from ttt3r_ros.msg import Status

import smoke_common as sc


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--timeout-s", type=float, default=20.0)
    args = parser.parse_args()

    rclpy.init()
    node = rclpy.create_node("dds_smoke_subscriber")
    images: list[tuple[float, Image]] = []
    statuses: list[Status] = []
    reliable = QoSProfile(depth=sc.QOS_DEPTH, reliability=ReliabilityPolicy.RELIABLE)
    image_sub = node.create_subscription(Image, sc.IMAGE_TOPIC, lambda m: images.append((time.monotonic(), m)),
                                         reliable)
    status_sub = node.create_subscription(Status, sc.STATUS_TOPIC, statuses.append, reliable)
    ready_pub = node.create_publisher(String, sc.READY_TOPIC,
                                      QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))

    deadline = time.monotonic() + args.timeout_s
    ready_sent = False
    while time.monotonic() < deadline and (len(images) < args.count or len(statuses) < args.count):
        if not ready_sent and image_sub.get_publisher_count() and status_sub.get_publisher_count():
            ready_pub.publish(String(data="ready"))
            ready_sent = True
        rclpy.spin_once(node, timeout_sec=0.05)

    expected_stamps = [list(sc.stamp_of(k)) for k in range(args.count)]
    image_stamps = [[m.header.stamp.sec, m.header.stamp.nanosec] for _, m in images]
    pixel_mismatches = []
    for index, (_, msg) in enumerate(images):
        expected = np.frombuffer(sc.image_bytes(index), dtype=np.uint8)
        received = np.frombuffer(msg.data, dtype=np.uint8)  # msg.data is array('B'): zero-copy view
        layout_ok = (msg.height, msg.width, msg.encoding, msg.step, msg.header.frame_id) == \
            (sc.HEIGHT, sc.WIDTH, "rgb8", sc.WIDTH * 3, sc.FRAME_ID)
        if not layout_ok or received.shape != expected.shape or not np.array_equal(received, expected):
            pixel_mismatches.append(index)
    receive_times = [t for t, _ in images]
    report = {
        "ready_sent": ready_sent,
        "images": len(images),
        "statuses": len(statuses),
        "image_stamps_match": image_stamps == expected_stamps,
        "status_stamps_match": [[s.header.stamp.sec, s.header.stamp.nanosec] for s in statuses] == expected_stamps,
        "status_frame_indices": [s.frame_index for s in statuses],
        "status_fields_ok": all(s.tracking_state == Status.TRACKING_OK and s.message == f"frame {s.frame_index}"
                                and abs(s.inference_latency_ms - 0.5 * s.frame_index) < 1e-6
                                and s.header.frame_id == sc.FRAME_ID for s in statuses),
        "pixel_mismatch_frames": pixel_mismatches,
        "receive_span_s": receive_times[-1] - receive_times[0] if len(receive_times) > 1 else 0.0,
        "median_receive_interval_ms": 1e3 * float(np.median(np.diff(receive_times))) if len(images) > 2 else None,
    }
    print("SMOKE_REPORT " + json.dumps(report), flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
