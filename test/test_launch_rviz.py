"""RViz as live.launch.py starts it (through the launch stand-ins, support/launch_standins.py) and the RViz
configuration it loads."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from support.launch_standins import REPO, LaunchRun


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
