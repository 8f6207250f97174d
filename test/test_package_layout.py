"""The package as both install paths see it: package.xml, CMakeLists.txt, the venv build, the colcon-style build.

What can break here, and is checked:
- package.xml misses a rosdep key, or drifts from setup.py's version;
- an interface in msg/ or srv/ uses a package CMakeLists.txt does not list, or the venv holds a stale build of it;
- the generated interfaces shadow the editable source package (`import ttt3r_ros` must be the repository's);
- model / engine / offline start needing rclpy;
- the tf2_msgs shim's wire hash drifts from upstream Kilted's;
- the CMakeLists.txt build for a ROS 2 workspace (what colcon runs) stops installing a working package.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

import ttt3r_ros

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.prefix) / "bin"
REBUILD_HINT = "the venv's generated interfaces are stale: re-run scripts/setup.sh"

REQUIRED_ROSDEP_KEYS = {
    "ament_cmake", "ament_cmake_python", "rosidl_default_generators", "rosidl_default_runtime", "rclpy",
    "builtin_interfaces", "std_msgs", "sensor_msgs", "nav_msgs", "geometry_msgs", "tf2_msgs", "tf2_ros", "std_srvs",
    "diagnostic_msgs", "lifecycle_msgs", "python3-numpy", "python3-pytest", "launch_ros", "launch_testing",
    "launch_testing_ros", "rviz2", "ros2bag",
}
DEPENDENCY_TAGS = ("depend", "build_depend", "buildtool_depend", "exec_depend", "test_depend", "build_export_depend")


@pytest.fixture
def setup_sh_venv() -> Path:
    """sys.prefix, when it is a venv built by scripts/setup.sh (not, e.g., `colcon test` on a ROS machine)."""
    pkg_file = next(Path(sys.prefix).glob("lib/python3*/site-packages/ttt3r_ros.pkg"), None)
    if pkg_file is None:
        pytest.skip(f"{sys.prefix} is not a venv built by scripts/setup.sh (no site-packages/ttt3r_ros.pkg)")
    return Path(sys.prefix)


def _package_xml() -> ET.Element:
    return ET.parse(REPO / "package.xml").getroot()


def _cmake_interface_dependencies() -> set[str]:
    match = re.search(r"set\(_ttt3r_interface_dependencies([^)]*)\)", (REPO / "CMakeLists.txt").read_text())
    assert match, "CMakeLists.txt no longer sets _ttt3r_interface_dependencies"
    return set(match.group(1).split())


def _interface_files() -> list[Path]:
    return sorted((REPO / "msg").glob("*.msg")) + sorted((REPO / "srv").glob("*.srv"))


def _parse_interface_section(text: str) -> tuple[list[str], list[str]]:
    """(field names, constant names) of one .msg or one half of a .srv, in file order."""
    fields, constants = [], []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        _type_name, rest = line.split(None, 1)
        # `TYPE NAME=VALUE` / `TYPE NAME = VALUE` is a constant; `TYPE name default` is a field with a default.
        name_tokens = rest.split("=", 1)[0].split()
        (constants if "=" in rest and len(name_tokens) == 1 else fields).append(name_tokens[0])
    return fields, constants


def test_package_xml_is_format_3_with_every_dependency() -> None:
    root = _package_xml()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "ttt3r_ros"
    assert root.findtext("version") == ttt3r_ros.__version__, "package.xml and ttt3r_ros.__version__ differ"
    setup_version = re.search(r'version="([^"]+)"', (REPO / "setup.py").read_text())
    assert setup_version and setup_version.group(1) == ttt3r_ros.__version__, "setup.py version differs"
    declared = {element.text for tag in DEPENDENCY_TAGS for element in root.iter(tag)}
    assert REQUIRED_ROSDEP_KEYS <= declared, f"missing rosdep keys: {sorted(REQUIRED_ROSDEP_KEYS - declared)}"
    assert [e.text for e in root.iter("member_of_group")] == ["rosidl_interface_packages"]
    assert root.find("export/build_type").text == "ament_cmake"
    # Every package the interfaces are generated against must be a build+run dependency.
    both_ways = {e.text for e in root.iter("depend")}
    assert _cmake_interface_dependencies() <= both_ways


def test_interfaces_only_use_packages_cmake_lists() -> None:
    allowed = _cmake_interface_dependencies() | {"ttt3r_ros"}
    for path in _interface_files():
        used = set(re.findall(r"^\s*([a-z][a-z0-9_]*)/[A-Z]\w*", path.read_text(), flags=re.MULTILINE))
        assert used <= allowed, (f"{path.name} uses {sorted(used - allowed)}: add it to _ttt3r_interface_dependencies "
                                 "in CMakeLists.txt and as <depend> in package.xml")


def test_generated_interfaces_match_the_sources() -> None:
    import ttt3r_ros.msg
    import ttt3r_ros.srv

    assert _interface_files(), "no interfaces in msg/ or srv/"
    for path in _interface_files():
        module = ttt3r_ros.msg if path.suffix == ".msg" else ttt3r_ros.srv
        assert hasattr(module, path.stem), f"{path.name} has no generated class: {REBUILD_HINT}"
        generated = getattr(module, path.stem)
        sections = path.read_text().split("\n---")
        classes = [generated] if path.suffix == ".msg" else [generated.Request, generated.Response]
        assert len(sections) == len(classes), f"{path.name}: unexpected number of '---' sections"
        for section, cls in zip(sections, classes):
            fields, constants = _parse_interface_section(section)
            assert list(cls.get_fields_and_field_types()) == fields, f"{path.name} fields differ: {REBUILD_HINT}"
            missing = [c for c in constants if not hasattr(cls, c)]
            assert not missing, f"{path.name} constants {missing} not generated: {REBUILD_HINT}"


def test_import_resolves_to_the_source_tree_and_interfaces_join_it(setup_sh_venv: Path) -> None:
    import ttt3r_ros.msg

    assert Path(ttt3r_ros.__file__).resolve() == REPO / "ttt3r_ros" / "__init__.py"
    assert setup_sh_venv.resolve() in Path(ttt3r_ros.msg.__file__).resolve().parents, ttt3r_ros.msg.__file__
    # A `ttt3r_ros` folder in any other sys.path entry would shadow the editable source package.
    shadows = [p for p in sys.path if p and Path(p).resolve() != REPO and (Path(p) / "ttt3r_ros").is_dir()]
    assert not shadows, f"these sys.path entries hold a ttt3r_ros folder that shadows the sources: {shadows}"


def test_model_engine_offline_import_without_rclpy() -> None:
    # Block every ROS Python package, then import all modules of the ROS-free layers and build every command
    # parser (`add_arguments`) they define: the offline tools must work without ROS.
    probe = textwrap.dedent("""
        import argparse, importlib, pkgutil, sys
        class BlockRos:
            def find_spec(self, name, path=None, target=None):
                top = name.split(".")[0]
                if top in ("rclpy", "rosidl_runtime_py", "rosidl_parser") or top.endswith(("_msgs", "_srvs")) \\
                        or name in ("ttt3r_ros.msg", "ttt3r_ros.srv"):
                    raise ImportError(f"{name} is ROS; the layer importing it must not need it")
        sys.meta_path.insert(0, BlockRos())
        import ttt3r_ros, ttt3r_ros.cli
        names = ["ttt3r_ros.cli"]
        for layer in ("model", "engine", "session", "offline"):
            package = importlib.import_module("ttt3r_ros." + layer)
            names += [info.name for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
        for name in names:
            module = importlib.import_module(name)
            if hasattr(module, "add_arguments"):
                module.add_arguments(argparse.ArgumentParser())
        print(len(names), "modules imported without ROS")
    """)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_console_scripts_and_cli_help(setup_sh_venv: Path) -> None:
    from ttt3r_ros import cli

    for script in ("ttt3r-ros", "ttt3r_node"):
        assert os.access(VENV_BIN / script, os.X_OK), f"{script} not installed in {VENV_BIN}"
    result = subprocess.run([str(VENV_BIN / "ttt3r-ros"), "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for name in cli._available():
        assert name in result.stdout, f"`ttt3r-ros --help` does not list {name}"


def _generated_type_hash(prefix: Path, package: str, interface: str) -> str:
    description = json.loads((prefix / "share" / package / "msg" / f"{interface}.json").read_text())
    hashes = {h["type_name"]: h["hash_string"] for h in description["type_hashes"]}
    return hashes[f"{package}/msg/{interface}"]


def test_tf2_msgs_shim_and_status_hashes_match_rosbags(setup_sh_venv: Path) -> None:
    # Equal RIHS01 hashes mean equal wire types: rclpy nodes built against the shim talk to upstream tf2 nodes,
    # and bags that `rosbags` writes with these types replay into real ROS 2.
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    import tf2_msgs.msg  # noqa: F401  (fails if the shim was not built)

    store = get_typestore(Stores.ROS2_KILTED)
    for interface in ("TFMessage", "TF2Error"):
        assert _generated_type_hash(setup_sh_venv, "tf2_msgs", interface) == \
            store.hash_rihs01(f"tf2_msgs/msg/{interface}"), f"tf2_msgs/{interface} differs from upstream Kilted"
    for path in sorted((REPO / "msg").glob("*.msg")):
        store.register(get_types_from_msg(path.read_text(), f"ttt3r_ros/msg/{path.stem}"))
        assert _generated_type_hash(setup_sh_venv, "ttt3r_ros", path.stem) == \
            store.hash_rihs01(f"ttt3r_ros/msg/{path.stem}"), f"{path.name}: {REBUILD_HINT}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ros_workspace_build_installs_a_working_package(tmp_path: Path, setup_sh_venv: Path) -> None:
    """What `colcon build` does with this package on a ROS 2 machine: cmake with the default options."""
    if shutil.which("cmake") is None:
        pytest.fail("cmake is missing: scripts/setup.sh installs it")
    # A workspace-like copy: the venv lives inside the repository, and CMake refuses to export include paths that
    # lie in the source tree (on a ROS machine the Python/numpy headers are system paths).
    source = tmp_path / "src" / "ttt3r_ros"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    source.mkdir(parents=True)
    for name in ("CMakeLists.txt", "package.xml", "msg", "srv", "ttt3r_ros", "launch", "config", "rviz", "resource"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=ignore)
        elif (REPO / name).is_file():
            shutil.copy2(REPO / name, source / name)
    build, prefix, venv = tmp_path / "build", tmp_path / "install", Path(sys.prefix)
    env = dict(os.environ, PATH=f"{venv / 'bin'}:{os.environ['PATH']}", AMENT_PREFIX_PATH=str(venv))
    for command in (
        ["cmake", "-S", str(source), "-B", str(build), f"-DCMAKE_INSTALL_PREFIX={prefix}",
         f"-DCMAKE_PREFIX_PATH={venv}", "-DBUILD_TESTING=OFF", f"-DPython3_EXECUTABLE={sys.executable}"],
        ["cmake", "--build", str(build), f"-j{os.cpu_count() or 2}"],
        ["cmake", "--install", str(build)],
    ):
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=540)
        assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"

    site_packages = next(prefix.glob("lib/python3*/site-packages"))
    installed = site_packages / "ttt3r_ros"
    # The real __init__.py, not rosidl's empty one, and the whole source package beside the generated modules.
    assert (installed / "__init__.py").read_text() == (REPO / "ttt3r_ros" / "__init__.py").read_text()
    for source_file in (REPO / "ttt3r_ros").rglob("*.py"):
        assert (installed / source_file.relative_to(REPO / "ttt3r_ros")).is_file(), f"{source_file} not installed"
    node_exe = prefix / "lib" / "ttt3r_ros" / "ttt3r_node"
    assert os.access(node_exe, os.X_OK) and "ttt3r_ros.ros.node" in node_exe.read_text()
    assert os.access(prefix / "bin" / "ttt3r-ros", os.X_OK)
    assert (prefix / "share" / "ttt3r_ros" / "package.xml").is_file()
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "ttt3r_ros").is_file()
    for share_dir in ("launch", "config", "rviz"):
        for data_file in (REPO / share_dir).rglob("*") if (REPO / share_dir).is_dir() else ():
            if data_file.is_file() and "__pycache__" not in data_file.parts:
                assert (prefix / "share" / "ttt3r_ros" / data_file.relative_to(REPO)).is_file(), data_file

    # Import from the install space as a sourced workspace would (PYTHONPATH, LD_LIBRARY_PATH), and round-trip a
    # message through rclpy's serializer (loads the C typesupport libraries of this prefix).
    probe = textwrap.dedent("""
        import sys, ttt3r_ros, ttt3r_ros.msg, ttt3r_ros.srv
        from rclpy.serialization import deserialize_message, serialize_message
        prefix = sys.argv[1]
        assert ttt3r_ros.__file__.startswith(prefix), ttt3r_ros.__file__
        assert ttt3r_ros.msg.__file__.startswith(prefix), ttt3r_ros.msg.__file__
        status = ttt3r_ros.msg.Status(frame_index=7, message="installed")
        back = deserialize_message(serialize_message(status), ttt3r_ros.msg.Status)
        assert (back.frame_index, back.message) == (7, "installed")
        print("ok")
    """)
    run_env = dict(env, PYTHONPATH=str(site_packages),
                   LD_LIBRARY_PATH=f"{prefix / 'lib'}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    result = subprocess.run([sys.executable, "-c", probe, str(prefix)], env=run_env, capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)  # not the repo: `python -c` puts the cwd first on sys.path
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stdout + result.stderr
