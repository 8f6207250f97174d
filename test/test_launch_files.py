"""The real launch files, checked where ROS 2 `launch` / `launch_ros` are not installable (pip-wheel ROS).

Static: minimal stand-ins for the launch API are put on sys.path *only inside this test* (they record their
arguments), the real launch/*.launch.py files are imported and their nodes, parameters and remappings asserted.
Dynamic: the recorded ttt3r_node action is turned into the command line `ros2 launch` would run
(`--ros-args -r __node:= -r __ns:= --params-file ... -p k:=v -r from:=to`) and started as a real process; a
probe checks over DDS that it comes up with that name, namespace and remapped topics.
On a full ROS 2 install, test_launch_live_ros.py runs the same launch file through launch_testing.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

_STUBS = {
    "launch/__init__.py": '''
class LaunchDescription:
    def __init__(self, entities=None):
        self.entities = list(entities or [])
''',
    "launch/actions.py": '''
class DeclareLaunchArgument:
    def __init__(self, name, default_value=None, description="", choices=None, **extra):
        self.name, self.default_value, self.description, self.choices, self.extra = (
            name, default_value, description, choices, extra)

class ExecuteProcess:
    def __init__(self, *, cmd, **extra):
        self.cmd, self.extra = cmd, extra

class RegisterEventHandler:
    def __init__(self, event_handler):
        self.event_handler = event_handler
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

class PathJoinSubstitution:
    def __init__(self, substitutions):
        self.substitutions = list(substitutions)
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
    "launch_ros/event_handlers.py": '''
class OnStateTransition:
    def __init__(self, *, target_lifecycle_node, goal_state=None, start_state=None, entities=None, **extra):
        self.target_lifecycle_node, self.goal_state, self.start_state = target_lifecycle_node, goal_state, start_state
        self.entities, self.extra = list(entities or []), extra
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


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name.replace(".", "_"), REPO / "launch" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.generate_launch_description()


class Resolver:
    """Evaluates the recorded substitutions like `ros2 launch` would, for given launch arguments."""

    def __init__(self, description: Any, arguments: dict[str, str]) -> None:
        from launch.actions import DeclareLaunchArgument

        declared = [e for e in description.entities if isinstance(e, DeclareLaunchArgument)]
        self.config: dict[str, str] = {}
        for arg in declared:
            self.config[arg.name] = self.text(arg.default_value) if arg.default_value is not None else None
        unknown = set(arguments) - set(self.config)
        assert not unknown, f"launch arguments not declared: {unknown}"
        for arg in declared:
            if arg.name in arguments:
                if arg.choices:
                    assert arguments[arg.name] in arg.choices, (arg.name, arguments[arg.name], arg.choices)
                self.config[arg.name] = arguments[arg.name]

    def text(self, value: Any) -> str:
        from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
        from launch_ros.substitutions import FindPackageShare

        if isinstance(value, str):
            return value
        if isinstance(value, LaunchConfiguration):
            got = self.config.get(value.variable_name)
            assert got is not None, f"launch argument {value.variable_name} has no value"
            return got
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

        if isinstance(value, ParameterValue):
            raw = self.text(value.value)
            if value.value_type is bool:
                assert raw in ("true", "false"), raw
                return raw == "true"
            if value.value_type is str:
                return raw
            raise AssertionError(f"unexpected value_type {value.value_type}")
        if isinstance(value, (bool, int, float, str)):
            return value
        raise AssertionError(f"unexpected parameter value {value!r}")

    def node_command(self, node: Any) -> tuple[list[str], dict[str, Any], list[tuple[str, str]], list[str]]:
        """(ros-args, parameter dict, remappings, params files) of a launch_ros Node."""
        params: dict[str, Any] = {}
        files: list[str] = []
        for entry in node.parameters:
            if isinstance(entry, dict):
                params.update({k: self.parameter_value(v) for k, v in entry.items()})
            else:
                files.append(self.text(entry))
        remaps = [(self.text(a), self.text(b)) for a, b in node.remappings]
        args = ["--ros-args", "-r", f"__node:={node.name}"]
        ns = self.text(node.namespace) if node.namespace is not None else ""
        if ns:
            args += ["-r", f"__ns:={ns if ns.startswith('/') else '/' + ns}"]
        for f in files:
            args += ["--params-file", f]
        for k, v in params.items():
            args += ["-p", f"{k}:={json.dumps(v)}"]   # JSON scalars are valid YAML: strings stay strings
        for a, b in remaps:
            args += ["-r", f"{a}:={b}"]
        return args, params, remaps, files


def _nodes(description: Any) -> list[Any]:
    from launch_ros.actions import Node

    return [e for e in description.entities if isinstance(e, Node)]


def test_live_launch_declares_arguments_node_and_remaps(launch_api: Any) -> None:
    ld = _load("live.launch.py")
    from launch.actions import DeclareLaunchArgument

    names = {e.name for e in ld.entities if isinstance(e, DeclareLaunchArgument)}
    required = {"image_topic", "camera_info_topic", "image_transport", "weights", "device", "params_file",
                "namespace", "odom_frame", "base_frame", "camera_frame", "camera_is_base", "publish_tf",
                "use_sim_time", "rviz"}
    assert required <= names, required - names
    ttt3r, rviz = _nodes(ld)
    assert (ttt3r.package, ttt3r.executable, ttt3r.name) == ("ttt3r_ros", "ttt3r_node", "ttt3r_node")
    assert not ttt3r.extra and not rviz.extra
    r = Resolver(ld, {"image_topic": "/cam/color/image_raw", "camera_info_topic": "/cam/color/camera_info",
                      "namespace": "robot1", "device": "cpu", "use_sim_time": "true", "camera_is_base": "true"})
    _, params, remaps, files = r.node_command(ttt3r)
    assert files == [str(REPO / "config" / "live.yaml")] and Path(files[0]).is_file()
    assert dict(remaps) == {"image": "/cam/color/image_raw", "image/compressed": "/cam/color/image_raw/compressed",
                            "camera_info": "/cam/color/camera_info"}
    assert params["device"] == "cpu" and params["use_sim_time"] is True and params["camera_is_base"] is True
    assert params["weights"] == "" and isinstance(params["camera_frame"], str)
    assert params["publish_tf"] is True and params["process_all_frames"] is False
    # the RViz node exists, is conditional on rviz:=true and points at the shipped config
    assert rviz.executable == "rviz2" and r.text(rviz.condition.predicate) == "false"
    rviz_cfg = r.text(rviz.arguments[1])
    assert rviz.arguments[0] == "-d" and Path(rviz_cfg) == REPO / "config" / "ttt3r.rviz" and Path(rviz_cfg).is_file()


def test_bag_launch_plays_with_clock_and_processes_all_frames(launch_api: Any) -> None:
    ld = _load("bag.launch.py")
    from launch.actions import ExecuteProcess

    from launch.actions import RegisterEventHandler
    from launch_ros.actions import LifecycleNode
    from launch_ros.event_handlers import OnStateTransition

    assert not [e for e in ld.entities if isinstance(e, ExecuteProcess)], "the player must wait for the node"
    (handler,) = [e.event_handler for e in ld.entities if isinstance(e, RegisterEventHandler)]
    ttt3r = _nodes(ld)[0]
    # the bag starts playing when the node is active (subscribed), not while the weights load
    assert isinstance(handler, OnStateTransition) and isinstance(ttt3r, LifecycleNode)
    assert handler.target_lifecycle_node is ttt3r and handler.goal_state == "active"
    (player,) = [e for e in handler.entities if isinstance(e, ExecuteProcess)]
    r = Resolver(ld, {"bag": "/data/run1", "rate": "0.5"})
    cmd = [r.text(c) for c in player.cmd]
    assert cmd[:4] == ["ros2", "bag", "play", "/data/run1"] and "--clock" in cmd
    assert cmd[cmd.index("--rate") + 1] == "0.5"
    _, params, remaps, _ = r.node_command(ttt3r)
    assert params["use_sim_time"] is True and params["process_all_frames"] is True
    assert params["input_qos_depth"] == 100
    assert dict(remaps)["image"] == "/camera/image_raw"


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


def test_rviz_config_shows_map_cloud_path_tf() -> None:
    yaml = pytest.importorskip("yaml")
    cfg = yaml.safe_load((REPO / "config" / "ttt3r.rviz").read_text())
    displays = cfg["Visualization Manager"]["Displays"]
    by_class: dict[str, list[dict]] = {}
    for d in displays:
        by_class.setdefault(d["Class"], []).append(d)
    assert "rviz_default_plugins/TF" in by_class
    topics = {d["Topic"]["Value"]: d for d in displays if "Topic" in d}
    assert {"/map_points", "/points", "/path"} <= set(topics)
    assert topics["/map_points"]["Topic"]["Durability Policy"] == "Transient Local"
    assert topics["/path"]["Topic"]["Durability Policy"] == "Transient Local"
    assert cfg["Visualization Manager"]["Global Options"]["Fixed Frame"] == "odom"


def test_live_launch_command_starts_node_over_dds(launch_api: Any, tmp_path: Path) -> None:
    """Start ttt3r_node with exactly the arguments live.launch.py would give it and find it on the graph."""
    import test_node_harness as h

    weights = h.tiny_weights(tmp_path)
    # a params file of our own (the tiny model needs a small input size) proves --params-file is honoured
    params_file = tmp_path / "tiny.yaml"
    params_file.write_text("/**:\n  ros__parameters:\n    image_size: 64\n    warmup_frames: 0\n"
                           "    path_max_length: 77\n    device: cuda\n")
    ld = _load("live.launch.py")
    r = Resolver(ld, {"image_topic": "/cam_driver/image_raw", "camera_info_topic": "/cam_driver/camera_info",
                      "namespace": "robot1", "device": "cpu", "weights": str(weights), "params_file": str(params_file),
                      "model_config": str(h.tiny_config()), "camera_is_base": "true"})
    ros_args, params, _, files = r.node_command(_nodes(ld)[0])
    assert files == [str(params_file)]
    # the launch file's console script must exist where `ros2 run` / launch_ros would look for it
    script = Path(sys.executable).parent / "ttt3r_node"
    assert script.is_file(), f"console script {script} missing (setup.py entry point; pip install -e .)"
    proc = h.start_node(ros_args, tmp_path / "node.log", executable=[str(script)])
    probe = h.Probe("launch_probe")
    try:
        assert h.wait_for(lambda: ("ttt3r_node", "/robot1") in probe.node.get_node_names_and_namespaces(), 30,
                          proc), h.log_tail(tmp_path / "node.log")
        assert probe.lifecycle_state("/robot1/ttt3r_node", timeout_s=60) == "active", h.log_tail(tmp_path / "node.log")

        def subscribed() -> bool:
            return any(n.node_name == "ttt3r_node" and n.node_namespace == "/robot1"
                       for n in probe.node.get_subscriptions_info_by_topic("/cam_driver/image_raw"))
        assert h.wait_for(subscribed, 10, proc)
        topics = dict(probe.node.get_topic_names_and_types())
        assert topics.get("/robot1/odom") == ["nav_msgs/msg/Odometry"]
        assert "/robot1/status" in topics
        from rcl_interfaces.srv import GetParameters

        got = probe.call(GetParameters, "/robot1/ttt3r_node/get_parameters",
                         GetParameters.Request(names=["path_max_length", "device", "camera_is_base", "image_size"]))
        values = [v.integer_value if v.type == 2 else v.string_value if v.type == 4 else v.bool_value
                  for v in got.values]
        # file value, launch override beating the file (device), launch argument (camera_is_base)
        assert values == [77, "cpu", True, 64], values
    finally:
        probe.close()
        h.stop(proc)
