"""The real launch files, checked where ROS 2 `launch` / `launch_ros` are not installable (pip-wheel ROS).

Static: minimal stand-ins for the launch API are put on sys.path *only inside this test*. They record their
arguments and reproduce the few behaviours of the real API these files rely on, as scripts/probe_launch_real.py
observed them with the real ros2/launch 3.7 + launch_ros 0.28 sources:
- `ros2 launch` includes the file with the command line's arguments, and IncludeLaunchDescription refuses a
  declared argument without default that was not given before anything of the file runs;
- launch_ros writes a `parameters` dict after the params file (later entries win);
- OnStateTransition matches on the transition's state labels, handle_once unregisters the handler after its first
  match; the transition events of a configure that fails at once can be published before launch is matched to
  the node (seen with the real run: launch then waited forever), so bag.launch.py judges configure and activate
  by the change_state service's answer;
- OnProcessStart/OnProcessExit take an action or a predicate on actions as target;
- an exception raised by an OpaqueFunction makes launch log it, stop every process and exit 1;
- `ros2 bag play --remap` takes the rest of the command line (nargs='+').
`LaunchRun` below plays a launch file through these stand-ins like the real LaunchService would: declarations,
OpaqueFunctions, includes, event handlers, and events the test emits.
Dynamic: the ttt3r_node action is turned into the command line launch_ros would run and started as a real process;
a probe checks over DDS what the launch file promises (parameters, lifecycle, save services).
On a full ROS 2 install, test_launch_live_ros.py runs live.launch.py through launch_testing.
"""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

_STUBS = {
    "launch/__init__.py": '''
class LaunchDescription:
    def __init__(self, entities=None):
        self.entities = list(entities or [])

class LaunchContext:
    pass
''',
    "launch/logging.py": '''
import logging

def get_logger(name):
    return logging.getLogger(name)
''',
    "launch/actions.py": '''
import asyncio

class DeclareLaunchArgument:
    def __init__(self, name, default_value=None, description="", choices=None, **extra):
        self.name, self.default_value, self.description, self.choices, self.extra = (
            name, default_value, description, choices, extra)

class ExecuteProcess:
    def __init__(self, *, cmd, name=None, **extra):
        self.cmd, self.name, self.extra = cmd, name, extra

class RegisterEventHandler:
    def __init__(self, event_handler):
        self.event_handler = event_handler

class OpaqueFunction:
    def __init__(self, *, function, args=None, kwargs=None):
        self.function, self.args, self.kwargs = function, list(args or []), dict(kwargs or {})

class OpaqueCoroutine:
    def __init__(self, *, coroutine, args=None, kwargs=None):
        if not asyncio.iscoroutinefunction(coroutine):   # the real one refuses anything else
            raise TypeError("OpaqueCoroutine expected a coroutine function")
        self.coroutine, self.args, self.kwargs = coroutine, list(args or []), dict(kwargs or {})

class EmitEvent:
    def __init__(self, *, event):
        self.event = event

class LogInfo:
    def __init__(self, *, msg):
        self.msg = msg

class IncludeLaunchDescription:
    def __init__(self, launch_description_source, launch_arguments=None):
        self.source, self.launch_arguments = launch_description_source, list(launch_arguments or [])
''',
    "launch/conditions.py": '''
class IfCondition:
    def __init__(self, predicate):
        self.predicate = predicate
''',
    "launch/substitutions.py": '''
class LaunchConfiguration:
    def __init__(self, variable_name, default=None):
        self.variable_name, self.default = variable_name, default

    def perform(self, context):
        return context.launch_configurations[self.variable_name]

class PathJoinSubstitution:
    def __init__(self, substitutions):
        self.substitutions = list(substitutions)
''',
    "launch/launch_description_sources.py": '''
class PythonLaunchDescriptionSource:
    def __init__(self, launch_file_path):
        self.location = launch_file_path
''',
    "launch/events/__init__.py": '''
class Shutdown:
    def __init__(self, *, reason="reason not given", due_to_sigint=False):
        self.reason, self.due_to_sigint = reason, due_to_sigint
''',
    "launch/events/process.py": '''
class ProcessStarted:
    def __init__(self, action):
        self.action = action

class ProcessExited:
    def __init__(self, action, returncode):
        self.action, self.returncode = action, returncode
''',
    "launch/event_handlers.py": '''
from launch.events.process import ProcessExited, ProcessStarted

class _OnProcessEvent:
    event_class = None

    def __init__(self, *, target_action=None, handle_once=False, **on_event):
        (self.on_event,) = on_event.values()
        self.target_action, self.handle_once = target_action, handle_once

    def matches(self, event):
        if not isinstance(event, self.event_class):
            return False
        if self.target_action is None:
            return True
        if callable(self.target_action):   # a predicate on the action (actions are not callable)
            return self.target_action(event.action)
        return event.action is self.target_action

    def entities(self, event, context):
        return self.on_event(event, context) if callable(self.on_event) else list(self.on_event)

class OnProcessStart(_OnProcessEvent):
    event_class = ProcessStarted

class OnProcessExit(_OnProcessEvent):
    event_class = ProcessExited
''',
    "launch_ros/__init__.py": "",
    "launch_ros/actions.py": '''
class Node:
    def __init__(self, *, package, executable, name=None, namespace=None, parameters=None, remappings=None,
                 arguments=None, condition=None, output=None, emulate_tty=False, **extra):
        self.package, self.executable, self.name, self.namespace = package, executable, name, namespace
        self.parameters, self.remappings, self.arguments = parameters or [], remappings or [], arguments or []
        self.condition, self.output, self.extra = condition, output, extra

class LifecycleNode(Node):
    def __init__(self, *, name, namespace, **kwargs):   # launch_ros requires both for lifecycle nodes
        super().__init__(name=name, namespace=namespace, **kwargs)
''',
    "launch_ros/events/__init__.py": "",
    "launch_ros/events/lifecycle.py": '''
class ChangeState:
    def __init__(self, *, lifecycle_node_matcher, transition_id):
        self.lifecycle_node_matcher, self.transition_id = lifecycle_node_matcher, transition_id

class StateTransition:
    def __init__(self, *, action, start_state, goal_state):
        self.action, self.start_state, self.goal_state = action, start_state, goal_state
''',
    "launch_ros/event_handlers.py": '''
from launch_ros.events.lifecycle import StateTransition

class OnStateTransition:
    def __init__(self, *, entities, target_lifecycle_node=None, start_state=None, goal_state=None, matcher=None,
                 handle_once=False, **extra):
        self.target_lifecycle_node, self.start_state, self.goal_state = target_lifecycle_node, start_state, goal_state
        self.on_event, self.handle_once, self.extra = list(entities), handle_once, extra
        # as launch_ros: a given matcher replaces the other conditions
        self.matches = matcher or (lambda e: isinstance(e, StateTransition)
                                   and target_lifecycle_node in (None, e.action)
                                   and start_state in (None, e.start_state) and goal_state in (None, e.goal_state))

    def entities(self, event, context):
        return list(self.on_event)
''',
    "launch_ros/descriptions.py": '''
class ParameterValue:
    def __init__(self, value, *, value_type=None):
        self.value, self.value_type = value, value_type
''',
    "launch_ros/substitutions.py": '''
class FindPackageShare:
    def __init__(self, package):
        self.package = package
''',
    "launch_ros/ros_adapters.py": '''
def get_ros_node(context):
    return context.ros_node   # the real one: launch_ros' own rclpy node of this launch
''',
}


@pytest.fixture
def launch_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in ("launch", "launch_ros"):
        spec = importlib.util.find_spec(name)
        # the repository's own launch/ folder is a namespace package named `launch` (no origin): not ROS launch
        if spec is not None and spec.origin is not None:
            pytest.skip(f"a real `{name}` is importable here ({spec.origin}); test_launch_live_ros.py covers it")
    for rel, text in _STUBS.items():
        path = tmp_path / "stubs" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path / "stubs"))
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in ("launch", "launch_ros")}
    for k in saved:
        del sys.modules[k]
    yield
    for k in [k for k in sys.modules if k.split(".")[0] in ("launch", "launch_ros")]:
        del sys.modules[k]
    sys.modules.update(saved)


def _load_module(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(path.name.replace(".", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class MissingArgument(RuntimeError):
    pass


class LaunchRun:
    """`ros2 launch ttt3r_ros FILE name:=value ...` played through the stand-ins: what it declares and starts, and
    what the registered event handlers do with the events a test emits."""

    def __init__(self, launch_file: str, arguments: dict[str, str]) -> None:
        self.context = SimpleNamespace(launch_configurations={}, locals=SimpleNamespace(), is_shutdown=False,
                                       asyncio_loop=None, ros_node=None)
        self.declared: dict[str, Any] = {}
        self.nodes: list[Any] = []           # launch_ros Node actions (with their condition)
        self.processes: list[Any] = []       # ExecuteProcess actions started
        self.events: list[Any] = []          # events emitted by EmitEvent
        self.coroutines: list[Any] = []      # OpaqueCoroutine actions started
        self.handlers: list[Any] = []
        self._include(str(REPO / "launch" / launch_file), dict(arguments))

    def _include(self, path: str, arguments: dict[str, str]) -> None:
        from launch.actions import DeclareLaunchArgument

        description = _load_module(Path(path)).generate_launch_description()
        for entity in description.entities:   # IncludeLaunchDescription's check, before anything of the file runs
            if isinstance(entity, DeclareLaunchArgument) and entity.default_value is None and \
                    entity.name not in arguments and entity.name not in self.context.launch_configurations:
                raise MissingArgument(f"Included launch description missing required argument '{entity.name}'")
        self.context.launch_configurations.update(arguments)
        self.visit(description.entities)

    def visit(self, entities: list[Any] | None) -> None:
        from launch.actions import (DeclareLaunchArgument, EmitEvent, ExecuteProcess, IncludeLaunchDescription,
                                    LogInfo, OpaqueCoroutine, OpaqueFunction, RegisterEventHandler)
        from launch_ros.actions import Node

        configs = self.context.launch_configurations
        for entity in entities or []:
            if isinstance(entity, DeclareLaunchArgument):
                self.declared[entity.name] = entity
                if entity.name not in configs:
                    configs[entity.name] = self.text(entity.default_value)
                if entity.choices is not None:
                    assert configs[entity.name] in entity.choices, (entity.name, configs[entity.name])
            elif isinstance(entity, OpaqueFunction):
                self.visit(entity.function(self.context, *entity.args, **entity.kwargs))
            elif isinstance(entity, IncludeLaunchDescription):
                self._include(entity.source.location, {self.text(k): self.text(v) for k, v in entity.launch_arguments})
            elif isinstance(entity, RegisterEventHandler):
                self.handlers.append(entity.event_handler)
            elif isinstance(entity, Node):
                self.nodes.append(entity)
            elif isinstance(entity, ExecuteProcess):
                self.processes.append(entity)
            elif isinstance(entity, EmitEvent):
                self.events.append(entity.event)
            elif isinstance(entity, OpaqueCoroutine):
                self.coroutines.append(entity)
            elif not isinstance(entity, LogInfo):
                raise AssertionError(f"unexpected launch entity {entity!r}")

    def emit(self, event: Any) -> int:
        """Dispatch `event` to the matching handlers (as LaunchService does); the number that handled it."""
        handled = 0
        for handler in list(self.handlers):
            if handler.matches(event):
                handled += 1
                if handler.handle_once:
                    self.handlers.remove(handler)
                self.context.locals.event = event
                self.visit(handler.entities(event, self.context))
        return handled

    def text(self, value: Any) -> str:
        from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
        from launch_ros.substitutions import FindPackageShare

        if isinstance(value, str):
            return value
        if isinstance(value, LaunchConfiguration):
            return value.perform(self.context)
        if isinstance(value, FindPackageShare):
            assert value.package == "ttt3r_ros"
            return str(REPO)   # the source tree has the install share layout (config/, launch/)
        if isinstance(value, PathJoinSubstitution):
            return os.path.join(*[self.text(v) for v in value.substitutions])
        if isinstance(value, (list, tuple)):
            return "".join(self.text(v) for v in value)
        raise AssertionError(f"unexpected substitution {value!r}")

    def parameter_value(self, value: Any) -> Any:
        from launch_ros.descriptions import ParameterValue

        if isinstance(value, ParameterValue):   # a substitution typed by launch_ros
            text = self.text(value.value)
            return {bool: lambda t: t == "true", int: int, str: str}[value.value_type](text)
        assert isinstance(value, (bool, int, float, str)), value
        return value

    def node(self, executable: str = "ttt3r_node") -> Any:
        (node,) = [n for n in self.nodes if n.executable == executable]
        return node

    def node_command(self, node: Any) -> tuple[list[str], dict[str, Any], dict[str, str], list[str]]:
        """(ros-args, parameter dict, remappings, params files) of a launch_ros Node, in launch_ros' order."""
        params: dict[str, Any] = {}
        files: list[str] = []
        for entry in node.parameters:
            if isinstance(entry, dict):
                params.update({k: self.parameter_value(v) for k, v in entry.items()})
            else:
                files.append(self.text(entry))
        remaps = {self.text(a): self.text(b) for a, b in node.remappings}
        args = ["--ros-args", "-r", f"__node:={node.name}"]
        ns = self.text(node.namespace) if node.namespace is not None else ""
        if ns:
            args += ["-r", f"__ns:={ns if ns.startswith('/') else '/' + ns}"]
        for f in files:   # launch_ros: the files, then the dict (written to a temporary file), in list order
            args += ["--params-file", f]
        for k, v in params.items():
            args += ["-p", f"{k}:={json.dumps(v)}"]   # JSON scalars are valid YAML: strings stay strings
        for a, b in remaps.items():
            args += ["-r", f"{a}:={b}"]
        return args, params, remaps, files


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


def test_live_launch_rviz_follows_namespace_and_odom_frame(launch_api: Any, tmp_path: Path) -> None:
    def rviz_of(arguments: dict[str, str]) -> tuple[Any, LaunchRun]:
        run = LaunchRun("live.launch.py", arguments)
        return run.node("rviz2"), run

    rviz, run = rviz_of({})
    assert run.text(rviz.condition.predicate) == "false"   # only with rviz:=true
    config = run.text(rviz.arguments[rviz.arguments.index("-d") + 1])
    assert Path(config) == REPO / "config" / "ttt3r.rviz" and Path(config).is_file()
    from ttt3r_ros.ros.parameters import SPECS

    assert rviz.arguments[rviz.arguments.index("-f") + 1] == SPECS["odom_frame"].default
    assert rviz.parameters == [{"use_sim_time": False}]

    # the fixed frame and clock come from the params file when not given, from the argument when given
    own = tmp_path / "r1.yaml"
    own.write_text("/**:\n  ros__parameters:\n    use_sim_time: true\n"
                   "/r1/ttt3r_node:\n  ros__parameters:\n    odom_frame: r1/odom\n"
                   "/r2/ttt3r_node:\n  ros__parameters:\n    odom_frame: r2/odom\n")
    rviz, run = rviz_of({"params_file": str(own), "namespace": "r1", "rviz": "true"})
    assert run.text(rviz.condition.predicate) == "true"
    assert run.text(rviz.namespace) == run.text(run.node().namespace) == "r1"   # relative topics resolve there
    assert rviz.arguments[rviz.arguments.index("-f") + 1] == "r1/odom"
    assert rviz.parameters == [{"use_sim_time": True}]
    rviz, _ = rviz_of({"params_file": str(own), "namespace": "r1", "odom_frame": "world", "use_sim_time": "false"})
    assert rviz.arguments[rviz.arguments.index("-f") + 1] == "world"
    assert rviz.parameters == [{"use_sim_time": False}]


def test_bag_launch_requires_an_existing_bag_before_starting_anything(launch_api: Any, tmp_path: Path) -> None:
    with pytest.raises(MissingArgument, match="'bag'"):
        LaunchRun("bag.launch.py", {"weights": "w.safetensors"})
    with pytest.raises(RuntimeError, match="does not exist"):
        LaunchRun("bag.launch.py", {"bag": str(tmp_path / "missing")})
    # the check raises from the OpaqueFunction placed before the node: nothing was started
    from launch.actions import OpaqueFunction

    description = _load_module(REPO / "launch" / "bag.launch.py").generate_launch_description()
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


def test_live_yaml_matches_declared_defaults() -> None:
    yaml = pytest.importorskip("yaml")
    pytest.importorskip("rclpy", reason="rclpy not installed")
    from ttt3r_ros.ros.parameters import PARAMETERS

    doc = yaml.safe_load((REPO / "config" / "live.yaml").read_text())
    values = doc["/**"]["ros__parameters"]
    for spec in PARAMETERS:
        assert spec.name in values, f"config/live.yaml lacks {spec.name}"
        assert values[spec.name] == spec.default and type(values[spec.name]) is type(spec.default), spec.name
    assert set(values) - {p.name for p in PARAMETERS} == {"use_sim_time"}


def test_rviz_config_uses_relative_topics() -> None:
    yaml = pytest.importorskip("yaml")
    cfg = yaml.safe_load((REPO / "config" / "ttt3r.rviz").read_text())
    displays = cfg["Visualization Manager"]["Displays"]
    by_class: dict[str, list[dict]] = {}
    for d in displays:
        by_class.setdefault(d["Class"], []).append(d)
    assert "rviz_default_plugins/TF" in by_class
    topics = {d["Topic"]["Value"]: d for d in displays if "Topic" in d}
    # relative: RViz runs in the node's namespace (namespace:=r1 -> /r1/points)
    assert set(topics) == {"map_points", "points", "path", "odom", "depth/image"}
    assert topics["map_points"]["Topic"]["Durability Policy"] == "Transient Local"
    assert topics["path"]["Topic"]["Durability Policy"] == "Transient Local"


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
        assert probe.autostart_outcome("/robot1/ttt3r_node", timeout_s=60) == "active", h.log_tail(tmp_path / "node.log")

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
