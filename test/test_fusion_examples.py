"""The shipped examples for using ttt3r_node with other ROS packages, checked statically (those packages are not
installed here): config/robot_localization_ekf.yaml (robot_localization's EKF) and launch/rtabmap_rgbd.launch.py
(rtabmap's RGB-D input), played through the launch stand-ins of support/launch_standins.py."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from support.launch_standins import REPO, LaunchRun
from ttt3r_ros.ros.parameters import SPECS

# robot_localization's 15-entry sensor config vector, in its order
RL_STATE = ("x", "y", "z", "roll", "pitch", "yaw", "vx", "vy", "vz", "vroll", "vpitch", "vyaw", "ax", "ay", "az")


def _fused(config: list[bool]) -> set[str]:
    assert len(config) == 15 and all(isinstance(v, bool) for v in config)
    return {name for name, on in zip(RL_STATE, config) if on}


def test_robot_localization_example_fuses_ttt3r_differentially_in_the_node_frames() -> None:
    doc = yaml.safe_load((REPO / "config" / "robot_localization_ekf.yaml").read_text())
    params = doc["ekf_filter_node"]["ros__parameters"]
    # the EKF's frames are ttt3r_node's defaults: its odom message is in odom_frame with base_frame as child
    assert params["odom_frame"] == params["world_frame"] == SPECS["odom_frame"].default
    assert params["base_link_frame"] == SPECS["base_frame"].default
    assert params["publish_tf"] is True   # the EKF owns odom -> base_link: ttt3r_node runs with publish_tf false
    # which source is ttt3r: the one named like the node's odom topic; fused as relative motion (its pose drifts,
    # holds while lost and restarts on ~/reset_odometry)
    sources = {k: v for k, v in params.items() if k[:-1] in ("odom", "imu") and k[-1].isdigit()}
    (ttt3r,) = [k for k, topic in sources.items() if topic.rstrip("/").endswith("/odom")]
    assert params[f"{ttt3r}_differential"] is True and params[f"{ttt3r}_relative"] is False
    assert _fused(params[f"{ttt3r}_config"]) == {"x", "y", "yaw"}
    # the other sources give what they measure: velocities (wheels), rates and accelerations (IMU), never poses
    for name in sources:
        if name != ttt3r:
            fused = _fused(params[f"{name}_config"])
            assert fused and not fused & {"x", "y", "z", "roll", "pitch", "yaw"}, name
            assert params[f"{name}_differential"] is False
    text = (REPO / "config" / "robot_localization_ekf.yaml").read_text()
    assert "publish_tf: false" in text   # the comment tells the user what to set on ttt3r_node


def test_rtabmap_launch_pairs_ttt3r_outputs_with_rgbd_sync_and_rtabmap(launch_api: Any, tmp_path: Path) -> None:
    run = LaunchRun("rtabmap_rgbd.launch.py", {"weights": "/models/w.safetensors", "namespace": "r1"})
    ttt3r, sync, rtabmap = run.node(), run.node("rgbd_sync"), run.node("rtabmap")
    assert (sync.package, rtabmap.package) == ("rtabmap_sync", "rtabmap_slam")
    namespaces = {run.text(n.namespace) for n in (ttt3r, sync, rtabmap)}
    assert namespaces == {"r1"}   # relative topics meet in the node's namespace
    _, sync_params, sync_remaps, _ = run.node_command(sync)
    # rgbd_sync's inputs are ttt3r_node's registered RGB-D outputs (one camera model: depth/camera_info)
    assert sync_remaps == {"rgb/image": "rgb/image", "depth/image": "depth/image",
                           "rgb/camera_info": "depth/camera_info", "rgbd_image": "rgbd_image"}
    assert sync_params["approx_sync"] is False   # identical stamps
    _, params, remaps, _ = run.node_command(rtabmap)
    assert params["subscribe_rgbd"] is True and params["subscribe_depth"] is False and params["approx_sync"] is False
    assert remaps == {"rgbd_image": "rgbd_image", "odom": "odom"}   # ttt3r_node's `odom` topic
    assert "odom_frame_id" not in params   # rtabmap's default: the odom topic, not TF
    assert params["frame_id"] == SPECS["base_frame"].default and params["use_sim_time"] is False
    assert run.node_command(rtabmap)[0] and rtabmap.arguments == ["-d"]
    # everything of live.launch.py is still there: the params file, the given arguments
    _, ttt3r_params, _, files = run.node_command(ttt3r)
    assert files == [str(REPO / "config" / "live.yaml")] and ttt3r_params == {"weights": "/models/w.safetensors"}

    # rtabmap's frame and clock follow the node's, from a params file or from the launch arguments
    own = tmp_path / "own.yaml"
    own.write_text("/**:\n  ros__parameters:\n    base_frame: robot_body\n    use_sim_time: true\n")
    run = LaunchRun("rtabmap_rgbd.launch.py", {"params_file": str(own), "delete_db_on_start": "false"})
    _, params, _, _ = run.node_command(run.node("rtabmap"))
    assert params["frame_id"] == "robot_body" and params["use_sim_time"] is True
    assert run.node("rtabmap").arguments == []
    run = LaunchRun("rtabmap_rgbd.launch.py", {"params_file": str(own), "base_frame": "chassis"})
    assert run.node_command(run.node("rtabmap"))[1]["frame_id"] == "chassis"
