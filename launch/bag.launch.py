"""Replay a rosbag2 into ttt3r_node on the bag's clock, processing every frame in order.

    ros2 launch ttt3r_ros bag.launch.py bag:=/data/run1 image_topic:=/camera/color/image_raw weights:=model.safetensors

`ros2 bag play --clock` publishes /clock, the node runs with use_sim_time and process_all_frames, so outputs carry
the bag's stamps. The player starts only once the node is active (model loaded, subscribed), so the first frames
are not lost while the weights load. The node's queue applies back-pressure only to its own callback; the player
keeps its pace, so choose `rate` at or below what the model sustains (status: frames_dropped must stay 0).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, RegisterEventHandler
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.descriptions import ParameterValue
from launch_ros.event_handlers import OnStateTransition
from launch_ros.substitutions import FindPackageShare

STRING_ARGS = {
    "bag": ("", "rosbag2 folder or file to play"),
    "rate": ("1.0", "playback rate of ros2 bag play"),
    "image_topic": ("/camera/image_raw", "image topic in the bag"),
    "camera_info_topic": ("/camera/camera_info", "CameraInfo topic in the bag"),
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
    overrides.update({name: ParameterValue(lc(name), value_type=bool) for name in ("camera_is_base", "publish_tf")})
    # Bag replay: bag time, every frame in order.
    # A deep input history absorbs the player's bursts while the worker is busy (back-pressure on our callback).
    overrides.update({"use_sim_time": True, "process_all_frames": True, "input_qos_depth": 100})
    player = ExecuteProcess(cmd=["ros2", "bag", "play", lc("bag"), "--clock", "--rate", lc("rate")], output="screen")
    node = LifecycleNode(
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
        parameters=[{"use_sim_time": True}],
        condition=IfCondition(lc("rviz")),
    )
    # Play once the node reports `active` (autostart configures and activates it): a player started with the node
    # would publish while the weights load, before the image subscription exists, and those frames are lost.
    start_player = RegisterEventHandler(OnStateTransition(target_lifecycle_node=node, goal_state="active",
                                                          entities=[player]))
    return LaunchDescription(args + [node, start_player, rviz])
