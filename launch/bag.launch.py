"""Replay a rosbag2 into ttt3r_node on the bag's clock, processing every frame in order, then stop.

    ros2 launch ttt3r_ros bag.launch.py bag:=/data/run1 image_topic:=/camera/color/image_raw \
        weights:=model.safetensors save_on_exit:=true

Everything live.launch.py offers applies (it is included: params_file, weights, frames, namespace, rviz, ...);
this file fixes use_sim_time, process_all_frames and a deep input history (input_qos_depth) for replay, and drives
the node's lifecycle itself (autostart false): configure, activate, then `ros2 bag play --clock`, so no frame is
published while the weights load.
- `bag` is required: launch stops with an error before anything starts when it is missing or does not exist.
- A failed configure or activate (or the node exiting) stops launch with an error (exit code 1) instead of waiting
  for a player that would never start.
- When the player exits (the bag ended), launch stops; with `save_on_exit:=true` it first calls the node's
  ~/save_map and ~/save_trajectory with an empty path, i.e. the node's default_map_path / default_trajectory_path
  (relative paths are relative to the directory launch was started in). Ctrl-C stops without saving.
- The bag's own /tf is played on `bag_tf_topic` (default /bag/tf) so that it does not mix with the node's
  odom -> base_link; the bag's /tf_static (the camera mount) is played as is.
The node's queue applies back-pressure only to its own callback; the player keeps its pace, so choose `rate` at or
below what the model sustains (status: frames_dropped must stay 0).
"""
from __future__ import annotations

import os
import threading
from typing import Any

from launch import LaunchContext, LaunchDescription
from launch.actions import (DeclareLaunchArgument, ExecuteProcess, IncludeLaunchDescription, LogInfo,
                            OpaqueCoroutine, OpaqueFunction, RegisterEventHandler)
from launch.event_handlers import OnProcessExit, OnProcessStart
from launch.events import Shutdown
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from lifecycle_msgs.msg import Transition

# What bag replay needs of the node, given to live.launch.py as launch arguments (they beat the params file).
# A deep input history absorbs the player's bursts while the worker is busy (back-pressure on our callback).
REPLAY_PARAMETERS = {"use_sim_time": "true", "process_all_frames": "true", "input_qos_depth": "100",
                     "autostart": "false"}
SAVE_SERVICES = ("save_map", "save_trajectory")
# Loading a 3 GB checkpoint and warming up takes tens of seconds; writing a map of millions of points, seconds.
# The bounds only keep a hung node from hanging launch.
TRANSITION_TIMEOUT_S = 600.0
SAVE_TIMEOUT_S = 120.0


def _is_ttt3r_node(action: Any) -> bool:
    """The node live.launch.py starts (created there, so matched by kind: it is this launch's only lifecycle node)."""
    return isinstance(action, LifecycleNode)


def _check_bag(context: LaunchContext) -> None:
    bag = LaunchConfiguration("bag").perform(context)
    if not os.path.exists(bag):
        raise RuntimeError(f"bag:={bag!r} does not exist (a rosbag2 folder or file)")


def _fail(reason: str) -> OpaqueFunction:
    """Stop launch with `reason` as an error: an exception makes `ros2 launch` log it, shut every process down and
    exit with code 1, so scripts and CI see the failure."""
    def fail(context: LaunchContext) -> None:
        if not context.is_shutdown:   # not, e.g., the node exiting because launch is already stopping
            raise RuntimeError(reason)
    return OpaqueFunction(function=fail)


def _call(context: LaunchContext, srv_type: Any, service: str, request: Any, timeout_s: float) -> Any:
    """Call `service` from launch_ros' own node (blocking: run it in an executor thread). None when the service
    did not come up or answer in time, or launch is stopping."""
    from launch_ros.ros_adapters import get_ros_node

    ros_node = get_ros_node(context)
    client = ros_node.create_client(srv_type, service)
    try:
        while not client.wait_for_service(timeout_sec=1.0):   # the node may still be importing torch
            if context.is_shutdown:
                return None
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout_s):
            future.cancel()
            return None
        return future.result()
    finally:
        ros_node.destroy_client(client)


async def _configure_and_activate(context: LaunchContext, node_name: str) -> None:
    """Bring the node up through its change_state service, judging each step by the service's answer. The
    transition events are not enough: launch may not yet be matched to the node's transition_event publisher when
    a configure that fails at once publishes them, and launch would wait forever."""
    from lifecycle_msgs.srv import ChangeState

    for transition_id, verb in ((Transition.TRANSITION_CONFIGURE, "configure"),
                                (Transition.TRANSITION_ACTIVATE, "activate")):
        request = ChangeState.Request()
        request.transition.id = transition_id
        response = await context.asyncio_loop.run_in_executor(
            None, _call, context, ChangeState, f"{node_name}/change_state", request, TRANSITION_TIMEOUT_S)
        if context.is_shutdown:
            return
        if response is None or not response.success:
            # raised from an async action: launch logs it, stops every process and exits with code 1
            raise RuntimeError(f"{node_name} failed to {verb} (its log above says why): the bag is not played")


def _save_line(response: Any, service: str) -> str:
    if response is None:
        return f"{service}: no answer within {SAVE_TIMEOUT_S:.0f} s"
    return f"{service}: {'ok' if response.success else 'FAILED'}: {response.message}"


async def _save_then_shutdown(context: LaunchContext, node_name: str, returncode: int) -> None:
    import launch.logging
    from ttt3r_ros.srv import SaveToFile

    logger = launch.logging.get_logger("bag.launch")
    save = LaunchConfiguration("save_on_exit").perform(context) == "true"
    if save and returncode != 0:
        logger.error(f"the player failed (exit code {returncode}): not saving")
    elif save and not context.is_shutdown:
        for service in (f"{node_name}/{name}" for name in SAVE_SERVICES):
            # an empty path: the node's default_map_path / default_trajectory_path
            response = await context.asyncio_loop.run_in_executor(
                None, _call, context, SaveToFile, service, SaveToFile.Request(path=""), SAVE_TIMEOUT_S)
            line = _save_line(response, service)
            (logger.info if response is not None and response.success else logger.error)(line)
    await context.emit_event(Shutdown(reason=f"the bag player exited (code {returncode})"))


def _start_player(context: LaunchContext) -> list[Any]:
    """Once the node is active: the player, and what its exit does. The event names the node that became active."""
    node_name = context.locals.event.action.node_name   # fully qualified, e.g. /r1/ttt3r_node
    lc = LaunchConfiguration
    player = ExecuteProcess(
        name="bag_player", output="screen",
        # --remap takes the rest of the command line, so it comes last
        cmd=["ros2", "bag", "play", lc("bag"), "--clock", "--rate", lc("rate"),
             "--remap", ["/tf:=", lc("bag_tf_topic")]])

    def on_exit(event: Any, _context: LaunchContext) -> list[Any]:
        return [OpaqueCoroutine(coroutine=_save_then_shutdown, args=[node_name, event.returncode])]
    return [LogInfo(msg=f"{node_name} is active: playing the bag"), player,
            RegisterEventHandler(OnProcessExit(target_action=player, on_exit=on_exit))]


def _bring_up(event: Any, _context: LaunchContext) -> list[Any]:
    return [OpaqueCoroutine(coroutine=_configure_and_activate, args=[event.action.node_name])]


def generate_launch_description() -> LaunchDescription:
    here = os.path.dirname(os.path.abspath(__file__))
    args = [
        DeclareLaunchArgument("bag", description="rosbag2 folder or file to play (required)"),
        DeclareLaunchArgument("rate", default_value="1.0", description="playback rate of ros2 bag play"),
        DeclareLaunchArgument("bag_tf_topic", default_value="/bag/tf",
                              description="topic the bag's own /tf is played on ('/tf' mixes it with the node's)"),
        DeclareLaunchArgument("save_on_exit", default_value="false", choices=["true", "false"],
                              description="when the bag ends, call ~/save_map and ~/save_trajectory (node defaults)"
                                          " before stopping"),
    ]
    node = IncludeLaunchDescription(PythonLaunchDescriptionSource(os.path.join(here, "live.launch.py")),
                                    launch_arguments=REPLAY_PARAMETERS.items())
    handlers = [
        # launch drives the lifecycle (autostart false): configure and activate once the process runs
        OnProcessStart(target_action=_is_ttt3r_node, on_start=_bring_up, handle_once=True),
        # The activation event is reliably seen: the configure answer came back on a reader that launch_ros created
        # after its transition_event reader, so the node has discovered that one too.
        # handle_once: a second activation (deactivate + activate by a user) must not start the player again.
        OnStateTransition(goal_state="active", entities=[OpaqueFunction(function=_start_player)], handle_once=True),
        OnProcessExit(target_action=_is_ttt3r_node, on_exit=[_fail("ttt3r_node exited before the bag ended")]),
    ]
    # the handlers are registered before the node starts, so none of its events can pass unseen
    return LaunchDescription([*args, OpaqueFunction(function=_check_bag),
                              *[RegisterEventHandler(h) for h in handlers], node])
