"""The offline tools work without ROS: importing every offline module (and building its command's parser) loads
no rclpy and no ROS message package."""
from __future__ import annotations

import subprocess
import sys

CHECK = """
import importlib, pkgutil, sys
import ttt3r_ros.offline as offline
import argparse
for info in pkgutil.iter_modules(offline.__path__):
    module = importlib.import_module(f"ttt3r_ros.offline.{info.name}")
    if hasattr(module, "add_arguments"):
        module.add_arguments(argparse.ArgumentParser())
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("rclpy", "sensor_msgs", "nav_msgs", "tf2_msgs",
                                                               "rosidl_runtime_py", "rclpy_message_converter"))
print(loaded)
raise SystemExit(1 if loaded else 0)
"""


def test_offline_modules_import_no_ros():
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
