"""bag.launch.py through the launch stand-ins (support/launch_standins.py): the bag check before anything starts,
the player started once when the node is active, the error when the node exits; and over DDS, a real node process
that launch's bring-up configures (or fails to) and that saves when the player exits."""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from support.launch_standins import REPO, LaunchRun, MissingArgument, load_module


def test_bag_launch_requires_an_existing_bag_before_starting_anything(launch_api: Any, tmp_path: Path) -> None:
    with pytest.raises(MissingArgument, match="'bag'"):
        LaunchRun("bag.launch.py", {"weights": "w.safetensors"})
    with pytest.raises(RuntimeError, match="does not exist"):
        LaunchRun("bag.launch.py", {"bag": str(tmp_path / "missing")})
    # the check raises from the OpaqueFunction placed before the node: nothing was started
    from launch.actions import OpaqueFunction

    description = load_module(REPO / "launch" / "bag.launch.py").generate_launch_description()
    kinds = [type(e).__name__ for e in description.entities]
    first_check = next(i for i, e in enumerate(description.entities) if isinstance(e, OpaqueFunction))
    assert first_check < kinds.index("IncludeLaunchDescription")


def _bag_run(tmp_path: Path, **arguments: str) -> LaunchRun:
    bag = tmp_path / "bag"
    bag.mkdir(exist_ok=True)
    return LaunchRun("bag.launch.py", {"bag": str(bag), **arguments})


def _start_node_process(run: LaunchRun, node_name: str) -> Any:
    """The node's process starts: launch asks for configure + activate (an async action). The ttt3r_node action
    and that action."""
    from launch.events.process import ProcessStarted

    node = run.node()
    node.node_name = node_name   # set by the real LifecycleNode when it runs
    assert run.emit(ProcessStarted(node)) == 1
    (bring_up,) = run.coroutines
    assert bring_up.args == [node_name] and not run.processes, "the player must wait for the node to be active"
    return node, bring_up


def _play(run: LaunchRun, action: Any, ros_node: Any) -> list[Any]:
    """Run an OpaqueCoroutine action as LaunchService does, with `ros_node` as launch_ros' node; the events it
    emitted."""
    emitted: list[Any] = []

    async def play() -> None:
        async def emit_event(event: Any) -> None:
            emitted.append(event)
        run.context.asyncio_loop = asyncio.get_running_loop()
        run.context.emit_event = emit_event
        run.context.ros_node = ros_node
        await action.coroutine(run.context, *action.args, **action.kwargs)
    asyncio.run(play())
    return emitted


def test_bag_launch_starts_the_player_once_when_the_node_is_active(launch_api: Any, tmp_path: Path) -> None:
    from launch_ros.events.lifecycle import StateTransition

    run = _bag_run(tmp_path, rate="0.5")
    _, params, _, _ = run.node_command(run.node())
    # bag replay: bag time, every frame in order, and launch (not the node) drives the lifecycle
    assert params == {"use_sim_time": True, "process_all_frames": True, "input_qos_depth": 100, "autostart": False}
    node, _ = _start_node_process(run, "/ttt3r_node")
    run.emit(StateTransition(action=node, start_state="configuring", goal_state="inactive"))
    assert not run.processes
    assert run.emit(StateTransition(action=node, start_state="activating", goal_state="active")) == 1
    (player,) = run.processes
    cmd = [run.text(c) for c in player.cmd]
    assert cmd == ["ros2", "bag", "play", str(tmp_path / "bag"), "--clock", "--rate", "0.5",
                   "--remap", "/tf:=/bag/tf"]   # --remap swallows what follows it: last
    # deactivate + activate: the same ExecuteProcess must not run again ("executed more than once")
    run.emit(StateTransition(action=node, start_state="active", goal_state="deactivating"))
    run.emit(StateTransition(action=node, start_state="deactivating", goal_state="inactive"))
    assert run.emit(StateTransition(action=node, start_state="activating", goal_state="active")) == 0
    assert len(run.processes) == 1
    # bag_tf_topic:=/tf plays the bag's /tf beside the node's, for those who want it
    run = _bag_run(tmp_path, bag_tf_topic="/tf")
    node, _ = _start_node_process(run, "/ttt3r_node")
    run.emit(StateTransition(action=node, start_state="activating", goal_state="active"))
    assert run.text(run.processes[0].cmd[-1]) == "/tf:=/tf"


def test_bag_launch_stops_with_an_error_when_the_node_exits(launch_api: Any, tmp_path: Path) -> None:
    from launch.events.process import ProcessExited

    run = _bag_run(tmp_path)
    with pytest.raises(RuntimeError, match="exited"):
        run.emit(ProcessExited(run.node(), returncode=1))
    run.context.is_shutdown = True   # the node stopping because launch stops is no error
    assert run.emit(ProcessExited(run.node(), returncode=0)) == 1


def _start_bag_node(run: LaunchRun, tmp_path: Path) -> tuple[Any, Any]:
    import test_node_harness as h

    ros_args, _, _, _ = run.node_command(run.node())
    proc = h.start_node(ros_args, tmp_path / "node.log", executable=[str(Path(sys.executable).parent / "ttt3r_node")])
    return proc, h.Probe("bag_launch_probe")


def test_bag_launch_stops_when_configure_fails_over_dds(launch_api: Any, tmp_path: Path) -> None:
    """No weights: configure fails at once. Launch learns it from the change_state answer (the real run showed the
    transition events of so quick a failure can pass before launch is matched) and stops with an error."""
    import test_node_harness as h

    run = _bag_run(tmp_path, model_config=str(h.tiny_config()), device="cpu")
    proc, probe = _start_bag_node(run, tmp_path)
    try:
        _, bring_up = _start_node_process(run, "/ttt3r_node")
        with pytest.raises(RuntimeError, match="/ttt3r_node failed to configure"):
            _play(run, bring_up, probe.node)
        assert probe.lifecycle_state("/ttt3r_node") == "unconfigured", h.log_tail(tmp_path / "node.log")
        assert "configure failed" in h.log_tail(tmp_path / "node.log")
        assert not run.processes
    finally:
        probe.close()
        h.stop(proc)


def test_bag_launch_brings_the_node_up_and_saves_when_the_player_exits(launch_api: Any, tmp_path: Path) -> None:
    """The node as bag.launch.py starts it waits unconfigured; launch's bring-up configures and activates it over
    DDS; the player's exit calls ~/save_map and ~/save_trajectory, then shuts launch down."""
    import test_node_harness as h
    from launch.events import Shutdown
    from launch.events.process import ProcessExited
    from launch_ros.events.lifecycle import StateTransition

    params_file = tmp_path / "tiny.yaml"
    params_file.write_text(f"/**:\n  ros__parameters:\n    image_size: 64\n    warmup_frames: 0\n"
                           f"    default_map_path: {tmp_path / 'map.ply'}\n"
                           f"    default_trajectory_path: {tmp_path / 'trajectory.tum'}\n"
                           f"    save_directory: {tmp_path}\n")
    run = _bag_run(tmp_path, params_file=str(params_file), weights=str(h.tiny_weights(tmp_path)),
                   model_config=str(h.tiny_config()), device="cpu", namespace="r1", save_on_exit="true")
    proc, probe = _start_bag_node(run, tmp_path)
    try:
        # autostart false: the node waits for launch instead of racing launch's discovery
        assert probe.lifecycle_state("/r1/ttt3r_node", timeout_s=60) == "unconfigured"
        node, bring_up = _start_node_process(run, "/r1/ttt3r_node")
        assert _play(run, bring_up, probe.node) == []
        assert probe.lifecycle_state("/r1/ttt3r_node") == "active", h.log_tail(tmp_path / "node.log")
        run.emit(StateTransition(action=node, start_state="activating", goal_state="active"))
        (player,) = run.processes
        assert run.emit(ProcessExited(player, returncode=0)) == 1
        (_, finish) = run.coroutines
        emitted = _play(run, finish, probe.node)
        assert (tmp_path / "trajectory.tum").is_file()   # no frame was played: an empty trajectory, the map refused
        assert "save_map failed" in h.log_tail(tmp_path / "node.log")   # asked, and answered
        assert len(emitted) == 1 and isinstance(emitted[0], Shutdown) and "player exited" in emitted[0].reason
    finally:
        probe.close()
        h.stop(proc)
