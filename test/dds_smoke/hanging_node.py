"""A stuck rclpy process for testing the test helpers: creates a node, reports ready, then never exits on SIGINT."""
from __future__ import annotations

import signal
import time

import rclpy
from sensor_msgs.msg import Image

rclpy.init()
node = rclpy.create_node("dds_smoke_hanging")
publisher = node.create_publisher(Image, "smoke/hanging", 1)
signal.signal(signal.SIGINT, signal.SIG_IGN)  # a process stuck so badly that only SIGKILL ends it
print("READY", flush=True)
while True:
    time.sleep(0.1)
