"""live.launch.py through the launch stand-ins (support/launch_standins.py): which arguments reach the node and
how, and, over DDS, a real node process started with exactly the command line launch_ros would give it.

On a full ROS 2 install, test_launch_live_ros.py runs live.launch.py through launch_testing.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from support.launch_standins import REPO, LaunchRun


# The launch arguments the issue names: each must be settable by a params file alone.
PARAMETER_ARGUMENTS = ("weights", "model_config", "device", "odom_frame", "base_frame", "camera_frame",
                       "camera_is_base", "publish_tf", "image_transport", "use_sim_time", "process_all_frames",
                       "autostart")


def test_live_launch_passes_only_given_arguments_after_the_params_file(launch_api: Any, tmp_path: Path) -> None:
    from launch_ros.actions import LifecycleNode

    run = LaunchRun("live.launch.py", {})
    for name in PARAMETER_ARGUMENTS:
        assert run.declared[name].default_value == "", f"{name}: a default would beat the params file"
    ttt3r = run.node()
    assert isinstance(ttt3r, LifecycleNode) and (ttt3r.package, ttt3r.name) == ("ttt3r_ros", "ttt3r_node")
    _, params, remaps, files = run.node_command(ttt3r)
    assert files == [str(REPO / "config" / "live.yaml")] and params == {}, params
    assert remaps == {"image": "/camera/image_raw", "image/compressed": "/camera/image_raw/compressed",
                      "camera_info": "/camera/camera_info"}

    own = tmp_path / "own.yaml"
    own.write_text("/**:\n  ros__parameters:\n    weights: /models/w.safetensors\n")
    run = LaunchRun("live.launch.py", {"params_file": str(own), "device": "cpu", "autostart": "false",
                                       "camera_is_base": "true", "input_qos_depth": "7", "namespace": "r1",
                                       "image_topic": "/cam/color/image_raw"})
    _, params, remaps, files = run.node_command(run.node())
    assert files == [str(own)]
    # typed as the node declares them (a str "false" would be refused by a bool parameter)
    assert params == {"device": "cpu", "autostart": False, "camera_is_base": True, "input_qos_depth": 7}
    assert remaps["image/compressed"] == "/cam/color/image_raw/compressed"
    with pytest.raises(AssertionError):
        LaunchRun("live.launch.py", {"autostart": "no"})   # only '', 'true', 'false'


def test_live_launch_params_file_alone_configures_node_over_dds(launch_api: Any, tmp_path: Path) -> None:
    """Start ttt3r_node with exactly the arguments live.launch.py gives it: the weights only in the params file."""
    import test_node_harness as h

    weights = h.tiny_weights(tmp_path)
    params_file = tmp_path / "tiny.yaml"
    # device: cuda in the file, device:=cpu on the command line: the given argument wins (no CUDA needed)
    params_file.write_text(f"/**:\n  ros__parameters:\n    weights: {weights}\n    model_config: {h.tiny_config()}\n"
                           "    image_size: 64\n    warmup_frames: 0\n    path_max_length: 77\n    device: cuda\n")
    run = LaunchRun("live.launch.py", {"image_topic": "/cam_driver/image_raw", "namespace": "robot1",
                                       "camera_info_topic": "/cam_driver/camera_info", "device": "cpu",
                                       "params_file": str(params_file), "camera_is_base": "true"})
    ros_args, _, _, files = run.node_command(run.node())
    assert files == [str(params_file)]
    # the launch file's console script must exist where `ros2 run` / launch_ros would look for it
    script = Path(sys.executable).parent / "ttt3r_node"
    assert script.is_file(), f"console script {script} missing (setup.py entry point; pip install -e .)"
    proc = h.start_node(ros_args, tmp_path / "node.log", executable=[str(script)])
    probe = h.Probe("launch_probe")
    try:
        assert h.wait_for(lambda: ("ttt3r_node", "/robot1") in probe.node.get_node_names_and_namespaces(), 30,
                          proc), h.log_tail(tmp_path / "node.log")
        assert probe.autostart_outcome("/robot1/ttt3r_node", timeout_s=60) == "active", \
            h.log_tail(tmp_path / "node.log")

        def subscribed() -> bool:
            return any(n.node_name == "ttt3r_node" and n.node_namespace == "/robot1"
                       for n in probe.node.get_subscriptions_info_by_topic("/cam_driver/image_raw"))
        assert h.wait_for(subscribed, 10, proc)
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        names = ["weights", "path_max_length", "device", "camera_is_base", "image_size"]
        got = probe.call(GetParameters, "/robot1/ttt3r_node/get_parameters", GetParameters.Request(names=names))
        values = dict(zip(names, (parameter_value_to_python(v) for v in got.values)))
        # file values, the given launch argument beating the file (device), a launch argument (camera_is_base)
        assert values == {"weights": str(weights), "path_max_length": 77, "device": "cpu", "camera_is_base": True,
                          "image_size": 64}, values
    finally:
        probe.close()
        h.stop(proc)
