"""Stand-ins for ROS 2 `launch` / `launch_ros`, and `LaunchRun`, which plays a launch file of this package through
them; for the launch tests (test_launch_live.py, test_launch_bag.py, test_launch_rviz.py, test_fusion_examples.py)
where `launch` and `launch_ros` are not installable (pip-wheel ROS: PyPI's `launch` is an unrelated project).

The stand-ins are put on sys.path *only inside a test* (conftest.py's `launch_api` fixture calls `install`). They
record their arguments and reproduce the few behaviours of the real API these files rely on, as
scripts/probe_launch_real.py observed them with the real ros2/launch 3.7 + launch_ros 0.28 sources:
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
`LaunchRun` plays a launch file through these stand-ins like the real LaunchService would: declarations,
OpaqueFunctions, includes, event handlers, and events the test emits.
On a full ROS 2 install, test_launch_live_ros.py runs live.launch.py through launch_testing instead.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
_ROS_LAUNCH_PACKAGES = ("launch", "launch_ros")

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


def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Put the stand-ins first on sys.path for one test (a generator: the fixture's body), then restore whatever
    `launch` / `launch_ros` modules were imported before. Skips where the real packages are importable."""
    for name in _ROS_LAUNCH_PACKAGES:
        spec = importlib.util.find_spec(name)
        # the repository's own launch/ folder is a namespace package named `launch` (no origin): not ROS launch
        if spec is not None and spec.origin is not None:
            pytest.skip(f"a real `{name}` is importable here ({spec.origin}); test_launch_live_ros.py covers it")
    for rel, text in _STUBS.items():
        path = tmp_path / "stubs" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path / "stubs"))
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in _ROS_LAUNCH_PACKAGES}
    for k in saved:
        del sys.modules[k]
    yield
    for k in [k for k in sys.modules if k.split(".")[0] in _ROS_LAUNCH_PACKAGES]:
        del sys.modules[k]
    sys.modules.update(saved)


def load_module(path: Path) -> Any:
    """Import a launch file (its name has dots: not importable by name) as a fresh module."""
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

        description = load_module(Path(path)).generate_launch_description()
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
