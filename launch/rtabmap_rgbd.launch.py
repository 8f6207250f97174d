"""ttt3r_node as the RGB-D sensor and odometry of rtabmap (loop closure, occupancy grid) with a monocular camera.

    ros2 launch ttt3r_ros rtabmap_rgbd.launch.py image_topic:=/camera/color/image_raw \
        camera_info_topic:=/camera/color/camera_info weights:=/models/cut3r_512_dpt_4_64.safetensors

Needs rtabmap_ros (ROS 2 packages rtabmap_sync and rtabmap_slam). Everything of live.launch.py is here too (the
same launch arguments and params_file rules, RViz with rviz:=true); added, in the node's namespace:
  rgbd_sync  rgb/image + depth/image + rgb/camera_info -> rgbd_image. ttt3r_node publishes `rgb/image` (the colour
             image at model resolution), `depth/image` and `depth/camera_info` with the same stamp, size and
             frame_id, so they are one registered RGB-D frame: approx_sync is false (exact stamps) and
             rgb/camera_info is depth/camera_info (one camera model for both);
  rtabmap    subscribe_rgbd, its odometry from ttt3r_node's `odom` topic (same stamps as the images: exact sync),
             frame_id = ttt3r_node's base_frame. rtabmap broadcasts map -> odom_frame; ttt3r_node keeps
             odom_frame -> base_frame (publish_tf true), and the camera mount base_frame -> camera optical frame
             comes from the URDF (or camera_is_base:=true, which makes ttt3r_node publish it).
The depth is the model's (its scale is the model's metric estimate), so rtabmap's map is as metric as TTT3R is.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any

from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from ttt3r_ros.ros.parameters import SPECS

_HERE = os.path.dirname(os.path.abspath(__file__))


def _live_launch() -> Any:
    """live.launch.py as a module (the launch/ folder is not a Python package)."""
    spec = importlib.util.spec_from_file_location("ttt3r_live_launch", os.path.join(_HERE, "live.launch.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


LIVE = _live_launch()
# ttt3r_node's topics (relative: they resolve in the shared namespace) feeding rgbd_sync's inputs.
RGBD_SYNC_REMAPPINGS = [("rgb/image", "rgb/image"), ("depth/image", "depth/image"),
                        ("rgb/camera_info", "depth/camera_info"), ("rgbd_image", "rgbd_image")]
RTABMAP_REMAPPINGS = [("rgbd_image", "rgbd_image"), ("odom", "odom")]


def _resolved(context: LaunchContext, name: str, default: Any) -> Any:
    """The value ttt3r_node will use for parameter `name`: the given launch argument, else the params file, else
    `default` (live.launch.py's rule)."""
    given = LIVE.given_parameters(context)
    if name in given:
        return given[name]
    namespace = context.launch_configurations["namespace"]
    node_fqn = "/" + "/".join(p for p in (*namespace.split("/"), LIVE.NODE_NAME) if p)
    from_file = LIVE.params_file_value(LaunchConfiguration("params_file").perform(context), node_fqn, name)
    return from_file if from_file is not None else default


def _rtabmap_nodes(context: LaunchContext) -> list[Node]:
    namespace = context.launch_configurations["namespace"]
    use_sim_time = bool(_resolved(context, "use_sim_time", False))   # rtabmap follows the node's clock
    sync = Node(
        package="rtabmap_sync", executable="rgbd_sync", name="rgbd_sync", namespace=namespace, output="screen",
        parameters=[{"approx_sync": False, "use_sim_time": use_sim_time}],
        remappings=RGBD_SYNC_REMAPPINGS)
    rtabmap = Node(
        package="rtabmap_slam", executable="rtabmap", name="rtabmap", namespace=namespace, output="screen",
        parameters=[{
            "subscribe_rgbd": True,
            "subscribe_depth": False,
            "subscribe_rgb": False,
            "approx_sync": False,
            # no odom_frame_id (rtabmap's default, empty): odometry from the `odom` topic, with its covariance,
            # not from TF
            "frame_id": str(_resolved(context, "base_frame", SPECS["base_frame"].default)),
            "map_frame_id": context.launch_configurations["map_frame"],
            "use_sim_time": use_sim_time,
            # rtabmap's own parameters are strings
            "Grid/FromDepth": "true",
        }],
        remappings=RTABMAP_REMAPPINGS,
        arguments=["-d"] if context.launch_configurations["delete_db_on_start"] == "true" else [])
    return [sync, rtabmap]


def generate_launch_description() -> LaunchDescription:
    # live.launch.py's own entities (arguments, ttt3r_node, RViz) in this description's scope, so the launch
    # configurations they declare are the ones _rtabmap_nodes reads.
    args = [
        DeclareLaunchArgument("map_frame", default_value="map", description="rtabmap's map frame (map -> odom)"),
        DeclareLaunchArgument("delete_db_on_start", default_value="true", choices=["true", "false"],
                              description="start rtabmap with an empty database (~/.ros/rtabmap.db)"),
    ]
    return LaunchDescription([*LIVE.generate_launch_description().entities, *args,
                              OpaqueFunction(function=_rtabmap_nodes)])
