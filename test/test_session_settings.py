"""The one table of defaults (ttt3r_ros.session.settings) against everything that repeats it: the node's declared
parameters (a real rclpy node), config/live.yaml, the `ttt3r-ros map` flags and the launch files' arguments; and
the table's own validation."""
from __future__ import annotations

import argparse
import ast
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from ttt3r_ros.session import settings
from ttt3r_ros.session.settings import DEFAULTS, SessionConfig

REPO = Path(__file__).resolve().parents[1]
NODE_SETTINGS = [f.name for f in dataclasses.fields(SessionConfig) if f.metadata["setting"].node_parameter]


@pytest.fixture(scope="module")
def declared() -> dict[str, Any]:
    """name -> (value, descriptor) of every parameter a freshly constructed ttt3r_node declares."""
    import rclpy
    from rclpy.context import Context

    from ttt3r_ros.ros.node import Ttt3rNode

    context = Context()
    rclpy.init(context=context)
    try:
        node = Ttt3rNode(context=context)
        try:
            # rclpy's own parameters (use_sim_time, start_type_description_service) are not the node's
            rclpy_own = {"use_sim_time", "start_type_description_service"}
            names = [name for name in node.get_parameters_by_prefix("") if name not in rclpy_own]
            descriptors = node.describe_parameters(names)
            return {name: (node.get_parameter(name).value, d) for name, d in zip(names, descriptors)}
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_node_declares_every_node_setting_with_the_table_metadata(declared: dict[str, Any]) -> None:
    for name in NODE_SETTINGS:
        assert name in declared, f"the node does not declare the session setting {name}"
        value, descriptor = declared[name]
        default, info = settings.default_of(name), settings.setting_info(name)
        assert value == default and type(value) is type(default), name
        assert descriptor.description == info.description, name
        assert ("unconfigured" in descriptor.additional_constraints) == (not info.live), name
        ranges = list(descriptor.integer_range) + list(descriptor.floating_point_range)
        if info.min_value is not None:
            assert (ranges[0].from_value, ranges[0].to_value) == (info.min_value, info.max_value), name
        for choice in info.choices:
            assert choice in descriptor.additional_constraints, name
    assert "seed" not in declared   # offline-only: the node builds random weights with the table's seed


def test_live_yaml_equals_declared_parameters_and_table(declared: dict[str, Any]) -> None:
    values = yaml.safe_load((REPO / "config" / "live.yaml").read_text())["/**"]["ros__parameters"]
    assert set(values) - {"use_sim_time"} == set(declared)
    for name, (value, _) in declared.items():
        assert values[name] == value and type(values[name]) is type(value), name
    for name in NODE_SETTINGS:
        assert values[name] == settings.default_of(name), name


def _map_defaults() -> dict[str, Any]:
    from ttt3r_ros.offline import map_command

    parser = argparse.ArgumentParser()
    map_command.add_arguments(parser)
    return {action.dest: action.default for action in parser._actions}


def test_map_flags_take_defaults_and_help_from_the_table() -> None:
    from ttt3r_ros.offline import map_command

    parser = argparse.ArgumentParser()
    map_command.add_arguments(parser)
    actions = {action.dest: action for action in parser._actions}
    # flag dest -> setting (the map command's names; only --voxel-size differs)
    shared = {"model_config": "model_config", "update_rule": "update_rule", "reset_interval": "reset_interval",
              "device": "device", "precision": "precision", "image_size": "image_size", "seed": "seed",
              "confidence_threshold": "confidence_threshold", "voxel_size": "voxel_size_m",
              "map_max_points": "map_max_points", "path_max_length": "path_max_length",
              "odom_frame": "odom_frame", "base_frame": "base_frame"}
    for dest, name in shared.items():
        assert actions[dest].default == settings.default_of(name), dest
        assert settings.setting_info(name).description in actions[dest].help, dest
    # the one deliberate difference: offline images carry no frame id, so the map names the camera frame
    assert actions["camera_frame"].default == settings.OFFLINE_CAMERA_FRAME != DEFAULTS.camera_frame
    # MapOptions (what map_input takes) has the parser's defaults, and its session config is the table's
    options = map_command.options_from_args(parser.parse_args(["in", "--out", "o"]))
    assert options == map_command.MapOptions(input="in", out="o")
    config = options.session_config()
    assert dataclasses.replace(config, camera_frame="") == DEFAULTS


def _module_dicts(path: Path) -> dict[str, ast.Dict]:
    """The module-level dict literals of a launch file, by variable name (read without importing launch)."""
    found = {}
    for node in ast.parse(path.read_text()).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(getattr(node, "value", None), ast.Dict) and isinstance(target, ast.Name):
            found[target.id] = node.value
    return found


@pytest.mark.parametrize("launch_file", ["live.launch.py", "bag.launch.py"])
def test_launch_files_repeat_no_parameter_default(declared: dict[str, Any], launch_file: str) -> None:
    """A launch argument named like a node parameter must not carry a default of its own: it is either "not
    given" (the params file, i.e. the table, decides) or, in a (default, description) table, equal to the node's."""
    ros_own = {"use_sim_time"}
    named = 0
    for variable, table in _module_dicts(REPO / "launch" / launch_file).items():
        for key, value in zip(table.keys, table.values):
            if not isinstance(key, ast.Constant) or key.value not in declared.keys() | ros_own:
                continue
            named += 1
            if isinstance(value, ast.Tuple) and isinstance(value.elts[0], ast.Constant):
                node_default = declared[key.value][0] if key.value in declared else False
                text = str(node_default).lower() if isinstance(node_default, bool) else str(node_default)
                assert value.elts[0].value in ("", text), f"{launch_file} {variable}[{key.value!r}]"
    assert named, f"{launch_file}: no node parameter found among its argument tables"
    if launch_file == "live.launch.py":
        source = (REPO / "launch" / launch_file).read_text()
        # the parameter arguments take their descriptions and choices from the node's table
        assert "from ttt3r_ros.ros.parameters import SPECS" in source and 'NOT_GIVEN = ""' in source


def test_precision_choices_are_the_model_precision_table() -> None:
    from ttt3r_ros.model.fast import PRECISION_NAMES

    assert set(settings.PRECISION_CHOICES) == set(PRECISION_NAMES)


def test_model_name_is_one_constant() -> None:
    """The official preset's name is written once outside the model package (settings.DEFAULT_MODEL_CONFIG)."""
    from ttt3r_ros.model import PRESETS

    assert settings.DEFAULT_MODEL_CONFIG in PRESETS
    holders = [p.relative_to(REPO) for p in (REPO / "ttt3r_ros").rglob("*.py")
               if p.parent.name != "model" and f'"{settings.DEFAULT_MODEL_CONFIG}"' in p.read_text()]
    assert holders == [Path("ttt3r_ros/session/settings.py")]


def test_defaults_validate_and_problems_are_readable() -> None:
    assert DEFAULTS.validate() == []
    bad = SessionConfig(image_size=520, tracking_lost_fraction=0.5, tracking_degraded_fraction=0.2,
                        update_rule="nope", device="gpu", precision="fp8", voxel_size_m=-1.0, odom_frame="/")
    problems = bad.validate()
    text = "\n".join(problems)
    assert "image_size=520 must be a multiple of 16" in text
    assert "tracking_lost_fraction (0.5) must be <= tracking_degraded_fraction (0.2)" in text
    assert "update_rule='nope' is not one of" in text and "ttt3r" in text
    assert "device='gpu'" in text and "precision='fp8' is not one of" in text
    assert "voxel_size_m=-1.0 outside" in text and "odom_frame must not be empty" in text
    assert len(problems) == 7
    assert SessionConfig(image_size=16).validate() == [
        "image_size=16 outside [32, 4096]: the model cannot run it (a 4:3 frame at 16 px leaves a short side below "
        "one 16 px patch)"]
    assert "unknown model config 'nope'" in SessionConfig(model_config="nope").validate()[0]
    assert SessionConfig.from_values({"image_size": 64, "queue_size": 3}).image_size == 64  # non-settings ignored
