"""Live camera -> ttt3r_node (odometry, TF, clouds, depth), optionally RViz.

    ros2 launch ttt3r_ros live.launch.py image_topic:=/camera/color/image_raw \
        camera_info_topic:=/camera/color/camera_info weights:=/models/cut3r_512_dpt_4_64.safetensors

Compressed input: image_transport:=compressed subscribes to <image_topic>/compressed.
The camera mount (base_frame -> camera optical frame) must be in TF (URDF / static_transform_publisher), or
camera_is_base:=true when the camera is the robot body.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

# name -> (default, description); strings are passed with value_type=str so '' or 'cpu' stay strings.
STRING_ARGS = {
    "image_topic": ("/camera/image_raw", "input image topic (raw base topic; compressed uses <topic>/compressed)"),
    "camera_info_topic": ("/camera/camera_info", "CameraInfo topic (used when calibrated, K[0] != 0)"),
    "image_transport": ("raw", "raw or compressed"),
    "weights": ("", "checkpoint path (.safetensors or .pth)"),
    "model_config": ("cut3r_512_dpt_4_64", "model preset or JSON config path"),
    "device": ("auto", "auto, cpu, cuda or cuda:N"),
    "namespace": ("", "namespace of the node and its topics"),
    "odom_frame": ("odom", "odometry frame"),
    "base_frame": ("base_link", "robot body frame"),
    "camera_frame": ("", "camera optical frame (empty: the image header frame_id)"),
}
BOOL_ARGS = {
    "camera_is_base": ("false", "the camera is the robot body (no base->camera TF)"),
    "publish_tf": ("true", "broadcast odom_frame -> base_frame"),
    "use_sim_time": ("false", "follow /clock (bag replay, simulation)"),
    "process_all_frames": ("false", "process every frame in order instead of keep-latest"),
    "autostart": ("true", "configure and activate the lifecycle node by itself"),
    "rviz": ("false", "start RViz with config/ttt3r.rviz"),
}


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare("ttt3r_ros")
    choices = {"image_transport": ["raw", "compressed"]}
    args = [DeclareLaunchArgument(name, default_value=d, description=h, **({"choices": choices[name]}
                                                                          if name in choices else {}))
            for name, (d, h) in STRING_ARGS.items()]
    args += [DeclareLaunchArgument(name, default_value=d, description=h, choices=["true", "false"])
             for name, (d, h) in BOOL_ARGS.items()]
    args.append(DeclareLaunchArgument("params_file", default_value=PathJoinSubstitution([share, "config", "live.yaml"]),
                                      description="node parameters (defaults: config/live.yaml)"))

    def lc(name: str) -> LaunchConfiguration:
        return LaunchConfiguration(name)

    overrides = {name: ParameterValue(lc(name), value_type=str)
                 for name in ("image_transport", "weights", "model_config", "device", "odom_frame", "base_frame",
                              "camera_frame")}
    overrides.update({name: ParameterValue(lc(name), value_type=bool)
                      for name in ("camera_is_base", "publish_tf", "use_sim_time", "process_all_frames",
                                   "autostart")})
    node = Node(
        package="ttt3r_ros",
        executable="ttt3r_node",
        name="ttt3r_node",
        namespace=lc("namespace"),
        output="screen",
        emulate_tty=True,
        parameters=[lc("params_file"), overrides],
        remappings=[
            ("image", lc("image_topic")),
            ("image/compressed", [lc("image_topic"), "/compressed"]),
            ("camera_info", lc("camera_info_topic")),
        ],
    )
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="rviz2",
        arguments=["-d", PathJoinSubstitution([share, "config", "ttt3r.rviz"])],
        parameters=[{"use_sim_time": ParameterValue(lc("use_sim_time"), value_type=bool)}],
        condition=IfCondition(lc("rviz")),
    )
    return LaunchDescription(args + [node, rviz])
