"""Live camera -> ttt3r_node (odometry, TF, clouds, depth), optionally RViz.

    ros2 launch ttt3r_ros live.launch.py image_topic:=/camera/color/image_raw \
        camera_info_topic:=/camera/color/camera_info weights:=/models/cut3r_512_dpt_4_64.safetensors

Parameters: `params_file` (default config/live.yaml) sets every node parameter. The launch arguments named like a
parameter (weights, device, odom_frame, autostart, ...) default to '' = "not given": only those given on the
command line (or by an including launch file) override the params file, so a params file of your own can set all
of them. An empty value cannot be given this way; set it in the params file.

Lifecycle: ttt3r_node is a managed node, started as a launch_ros LifecycleNode (launch sees its state transitions).
With `autostart` true (config/live.yaml) it configures and activates itself. With `autostart:=false` it waits,
unconfigured, for a lifecycle manager (nav2_lifecycle_manager's node_names) or for you:
`ros2 lifecycle set /ttt3r_node configure`, then `activate`.

Compressed input: image_transport:=compressed subscribes to <image_topic>/compressed.
Several cameras, one model: cameras:=front,back (or `cameras` in the params file) subscribes to front/image and
front/camera_info, back/image and back/camera_info in the node's namespace (remap them in a launch file of your own,
or let the drivers publish there); image_topic and camera_info_topic then do not apply. The primary (first) camera
gives odometry and TF; every camera's mount must be in TF.
The camera mount (base_frame -> camera optical frame) must be in TF (URDF / static_transform_publisher), or
camera_is_base:=true when the camera is the robot body.
RViz (rviz:=true) runs in the node's namespace (config/ttt3r.rviz uses relative topics) with the node's odom_frame
as fixed frame (`-f`), so `namespace:=r1 odom_frame:=r1/odom` shows that robot.
bag.launch.py includes this file.
"""
from __future__ import annotations

from typing import Any

import yaml
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.substitutions import FindPackageShare

from ttt3r_ros.ros.parameters import SPECS

NODE_NAME = "ttt3r_node"
# Launch argument value meaning "not given": the parameter then comes from params_file.
NOT_GIVEN = ""
# Node parameters that are also launch arguments, with the type their text is converted to. Their defaults and
# descriptions are the node's (ttt3r_ros.ros.parameters); use_sim_time is ROS' own.
PARAMETER_ARGUMENTS: dict[str, type] = {
    "weights": str, "model_config": str, "device": str, "image_transport": str,
    "odom_frame": str, "base_frame": str, "camera_frame": str, "camera_is_base": bool, "publish_tf": bool,
    "use_sim_time": bool, "process_all_frames": bool, "input_qos_depth": int, "autostart": bool,
    "cameras": list,
}
_USE_SIM_TIME_HELP = "follow /clock (bag replay, simulation)"
# Launch-only arguments: name -> (default, description).
LAUNCH_ARGUMENTS = {
    "image_topic": ("/camera/image_raw", "input image topic (raw base topic; compressed uses <topic>/compressed)"),
    "camera_info_topic": ("/camera/camera_info", "CameraInfo topic (used when calibrated, K[0] != 0)"),
    "namespace": ("", "namespace of the node, its topics and RViz"),
    "rviz": ("false", "start RViz with config/ttt3r.rviz"),
}


def _parameter_argument(name: str, kind: type) -> DeclareLaunchArgument:
    spec = SPECS.get(name)
    help_text = spec.description if spec is not None else _USE_SIM_TIME_HELP
    choices = None
    if kind is bool:
        choices = [NOT_GIVEN, "true", "false"]
    elif spec is not None and spec.choices:
        choices = [NOT_GIVEN, *spec.choices]
    return DeclareLaunchArgument(name, default_value=NOT_GIVEN, choices=choices,
                                 description=f"{help_text} (not given: from params_file)")


def _typed(name: str, text: str, kind: type) -> Any:
    if kind is bool:
        return text == "true"   # the declared choices allow only '', 'true', 'false'
    if kind is list:
        # cameras:=front,back or cameras:="[front, back]": a string array (the node's topics name the cameras)
        names = [n.strip().strip("'\"") for n in text.strip().removeprefix("[").removesuffix("]").split(",")]
        return [n for n in names if n]
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise RuntimeError(f"launch argument {name}:={text!r} is not an integer") from None
    return text


def given_parameters(context: LaunchContext) -> dict[str, Any]:
    """The node parameters whose launch arguments were given, typed: they override params_file."""
    given = {}
    for name, kind in PARAMETER_ARGUMENTS.items():
        text = context.launch_configurations.get(name, NOT_GIVEN)
        if text != NOT_GIVEN:
            given[name] = _typed(name, text, kind)
    return given


def _node_key_matches(key: str, node_fqn: str) -> bool:
    """Whether a params-file key (`/**`, `ttt3r_node`, `/r1/ttt3r_node`, `/*/ttt3r_node`) names the node, as rcl
    matches it: `**` any number of name parts, `*` one."""
    parts = [p for p in key.split("/") if p]
    names = [p for p in node_fqn.split("/") if p]
    if not key.startswith("/") and parts != ["**"]:
        parts = ["**", *parts]   # a relative key matches the node name in any namespace

    def match(i: int, j: int) -> bool:
        if i == len(parts):
            return j == len(names)
        if parts[i] == "**":
            return any(match(i + 1, k) for k in range(j, len(names) + 1))
        return j < len(names) and parts[i] in ("*", names[j]) and match(i + 1, j + 1)
    return match(0, 0)


def params_file_value(path: str, node_fqn: str, name: str) -> Any:
    """The value the params file gives the node for `name` (the last matching section wins), or None."""
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f) or {}
    value = None
    for key, section in doc.items():
        params = (section or {}).get("ros__parameters", {})
        if _node_key_matches(str(key), node_fqn) and name in params:
            value = params[name]
    return value


def _nodes(context: LaunchContext) -> list[Node]:
    given = given_parameters(context)
    namespace = context.launch_configurations["namespace"]
    params_file = LaunchConfiguration("params_file").perform(context)
    node = LifecycleNode(
        package="ttt3r_ros",
        executable="ttt3r_node",
        name=NODE_NAME,
        namespace=namespace,
        output="screen",
        emulate_tty=True,
        # later entries win: the params file, then only the launch arguments that were given
        parameters=[params_file, given],
        remappings=[
            ("image", LaunchConfiguration("image_topic")),
            ("image/compressed", [LaunchConfiguration("image_topic"), "/compressed"]),
            ("camera_info", LaunchConfiguration("camera_info_topic")),
        ],
    )

    node_fqn = "/" + "/".join(p for p in (*namespace.split("/"), NODE_NAME) if p)

    def resolved(name: str, default: Any) -> Any:
        """What the node will use: the given launch argument, else the params file, else its default."""
        if name in given:
            return given[name]
        from_file = params_file_value(params_file, node_fqn, name)
        return from_file if from_file is not None else default

    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        namespace=namespace,   # the config's relative topics resolve in the node's namespace
        arguments=["-d", PathJoinSubstitution([FindPackageShare("ttt3r_ros"), "config", "ttt3r.rviz"]),
                   "-f", str(resolved("odom_frame", SPECS["odom_frame"].default))],
        # RViz follows the node's clock (use_sim_time is ROS' own parameter, false unless set)
        parameters=[{"use_sim_time": bool(resolved("use_sim_time", False))}],
        condition=IfCondition(LaunchConfiguration("rviz")),
    )
    return [node, rviz]


def generate_launch_description() -> LaunchDescription:
    args = [_parameter_argument(name, kind) for name, kind in PARAMETER_ARGUMENTS.items()]
    for name, (default, help_text) in LAUNCH_ARGUMENTS.items():
        choices = ["true", "false"] if default in ("true", "false") else None
        args.append(DeclareLaunchArgument(name, default_value=default, description=help_text, choices=choices))
    args.append(DeclareLaunchArgument(
        "params_file", default_value=PathJoinSubstitution([FindPackageShare("ttt3r_ros"), "config", "live.yaml"]),
        description="node parameters (default config/live.yaml, the node's defaults)"))
    return LaunchDescription([*args, OpaqueFunction(function=_nodes)])
