"""DDS smoke test, process 1: publish sensor_msgs/Image at 30 Hz plus one ttt3r_ros/Status per image.

Waits for the subscriber's "ready" message (sent once its readers have matched our writers), publishes
`--count` frames, then waits until every sample is acknowledged. Exit 0 on success.
"""
from __future__ import annotations

import argparse
import array
import sys
import time

import rclpy
from rclpy.duration import Duration
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import String

from ttt3r_ros.msg import Status

import smoke_common as sc


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--handshake-timeout-s", type=float, default=15.0)
    args = parser.parse_args()

    rclpy.init()
    node = rclpy.create_node("dds_smoke_publisher")
    reliable = QoSProfile(depth=sc.QOS_DEPTH, reliability=ReliabilityPolicy.RELIABLE)
    image_pub = node.create_publisher(Image, sc.IMAGE_TOPIC, reliable)
    status_pub = node.create_publisher(Status, sc.STATUS_TOPIC, reliable)
    ready: list[str] = []
    node.create_subscription(String, sc.READY_TOPIC, lambda m: ready.append(m.data),
                             QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))

    deadline = time.monotonic() + args.handshake_timeout_s
    while not (ready and image_pub.get_subscription_count() and status_pub.get_subscription_count()):
        if time.monotonic() > deadline:
            print(f"no subscriber handshake within {args.handshake_timeout_s} s", file=sys.stderr)
            return 1
        rclpy.spin_once(node, timeout_sec=0.05)

    # Prepared up front, as array('B') (the message's fast path, no per-byte check): publishing keeps the 30 Hz beat.
    images = [array.array("B", sc.image_bytes(k)) for k in range(args.count)]
    start = time.perf_counter()
    for k in range(args.count):
        sec, nanosec = sc.stamp_of(k)
        image = Image(height=sc.HEIGHT, width=sc.WIDTH, encoding="rgb8", is_bigendian=0, step=sc.WIDTH * 3)
        image.header.stamp.sec, image.header.stamp.nanosec = sec, nanosec
        image.header.frame_id = sc.FRAME_ID
        image.data = images[k]
        image_pub.publish(image)
        status = Status(frame_index=k, tracking_state=Status.TRACKING_OK, inference_latency_ms=0.5 * k,
                        frames_received=k + 1, frames_processed=k + 1, message=f"frame {k}")
        status.header = image.header
        status_pub.publish(status)
        time.sleep(max(0.0, start + (k + 1) / sc.RATE_HZ - time.perf_counter()))
    acked = image_pub.wait_for_all_acked(Duration(seconds=5.0)) and \
        status_pub.wait_for_all_acked(Duration(seconds=5.0))
    print(f"published {args.count} frames in {time.perf_counter() - start:.2f} s, all acked: {acked}", flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return 0 if acked else 1


if __name__ == "__main__":
    sys.exit(main())
