#!/usr/bin/env python3
"""Run launch/live.launch.py and launch/bag.launch.py through the REAL ROS 2 `launch` / `launch_ros` (not CI).

CI checks the launch files with stand-ins for the launch API (test/support/launch_standins.py, used by
test/test_launch_live.py and test/test_launch_bag.py), because `launch` and `launch_ros` have no wheels (PyPI's
`launch` is an unrelated project). This probe runs them the way `ros2 launch ttt3r_ros <file> k:=v ...` does
(ros2launch.api.launch_a_launch_file), against an install prefix built by the package's own CMakeLists.txt, with
the tiny model on the CPU, and checks:
  live-params-file   a params file with `weights:` (and no weights launch argument) configures and activates the node
  live-override      a launch argument given on the command line (device:=cpu) beats the params file (device: cuda)
  live-namespace     namespace:=r1 puts the node at /r1/ttt3r_node with its topics remapped
  bag-no-bag         bag.launch.py without `bag` fails at once, before any process starts
  bag-missing-bag    bag:=<a path that does not exist> fails at once too
  bag-bad-configure  a failed configure (no weights) shuts launch down with the reason instead of waiting forever
  bag-plays-saves    configure -> activate -> player (a stand-in `ros2` on PATH that records its command line) ->
                     its exit -> ~/save_map + ~/save_trajectory (save_on_exit:=true) -> shutdown; a second
                     activation while it plays does not start the player again (handle_once)

Getting the sources (pure Python, Apache-2.0), into the git-ignored .dev/ folder:
  - clone the GitHub repositories ros2/launch (tested at 3.7.1, commit 02595baf) and ros2/launch_ros (0.28.0,
    commit f9ab9371) into .dev/launch_src/launch and .dev/launch_src/launch_ros;
  - .venv/bin/pip install --target .dev/launch_deps osrf_pycommon lark   (not into the venv's pinned set);
  - ament_index_python, rclpy, lifecycle_msgs come from the venv. composition_interfaces (imported by launch_ros
    for composable nodes, which these launch files do not use) has no wheel: this probe writes an empty stand-in
    into .dev/launch_stubs.
Then:  .venv/bin/python scripts/probe_launch_real.py [-k NAME] [--verbose]
It builds (incrementally) .dev/probe_ws/install with cmake, runs each case in its own process group on
ROS_DOMAIN_ID 147 (localhost discovery), prints the key log lines and exits non-zero if a check fails.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
DEV = REPO / ".dev"
SOURCES = {"launch": DEV / "launch_src" / "launch", "launch_ros": DEV / "launch_src" / "launch_ros"}
DEPS = DEV / "launch_deps"
STUBS = DEV / "launch_stubs"
WORKSPACE = DEV / "probe_ws"
DOMAIN_ID = "147"
TINY = ["weights:=random", "model_config:=tiny"]   # the tiny preset with random weights: a CPU-fast model
# The tiny preset's input is 64 px; no warm-up keeps configure short.
TINY_PARAMS = "image_size: 64\n    warmup_frames: 0\n"

RUNNER = textwrap.dedent("""
    import sys
    from ros2launch.api import get_share_file_path_from_package, launch_a_launch_file
    path = get_share_file_path_from_package(package_name="ttt3r_ros", file_name=sys.argv[1])
    sys.exit(launch_a_launch_file(launch_file_path=path, launch_file_arguments=sys.argv[2:], noninteractive=True))
""")
# Stand-in for `ros2` (no ros2cli here): records its command line, plays nothing, exits after a while.
FAKE_ROS2 = textwrap.dedent("""\
    #!/usr/bin/env bash
    echo "$@" >> "$FAKE_ROS2_LOG"
    echo "[fake ros2] $*"
    sleep "${FAKE_ROS2_SECONDS:-1}"
""")


def build_prefix(launch_dir: Path) -> Path:
    """cmake configure/build/install of a workspace copy (as test_package_layout.py does); incremental.
    `launch_dir` replaces launch/ (e.g. an older revision's files, to see what the probe says about them)."""
    source = WORKSPACE / "src" / "ttt3r_ros"
    source.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("CMakeLists.txt", "package.xml", "msg", "srv", "ttt3r_ros", "launch", "config", "resource"):
        if (REPO / name).is_dir():
            shutil.rmtree(source / name, ignore_errors=True)
            shutil.copytree(launch_dir if name == "launch" else REPO / name, source / name, ignore=ignore)
        elif (REPO / name).is_file():
            shutil.copy2(REPO / name, source / name)
    build, prefix, venv = WORKSPACE / "build", WORKSPACE / "install", Path(sys.prefix)
    env = dict(os.environ, PATH=f"{venv / 'bin'}:{os.environ['PATH']}", AMENT_PREFIX_PATH=str(venv))
    for command in (
        ["cmake", "-S", str(source), "-B", str(build), f"-DCMAKE_INSTALL_PREFIX={prefix}",
         f"-DCMAKE_PREFIX_PATH={venv}", "-DBUILD_TESTING=OFF", f"-DPython3_EXECUTABLE={sys.executable}"],
        ["cmake", "--build", str(build), "-j2"],
        ["cmake", "--install", str(build)],
    ):
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return prefix


def write_stubs() -> None:
    package = STUBS / "composition_interfaces"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("# stand-in: launch_ros imports it for composable nodes only\n")
    (package / "srv.py").write_text(
        "class _Service:\n    class Request: ...\n    class Response: ...\n\n\n"
        "class LoadNode(_Service): ...\n\n\nclass UnloadNode(_Service): ...\n\n\nclass ListNodes(_Service): ...\n")


def environment(prefix: Path, tmp: Path) -> dict[str, str]:
    missing = [str(p) for p in (*SOURCES.values(), DEPS) if not p.is_dir()]
    if missing:
        sys.exit(f"missing {missing}: see this script's docstring for how to get the sources")
    site = next(prefix.glob("lib/python3*/site-packages"))
    venv = Path(sys.prefix)
    python_path = [site, STUBS, DEPS, SOURCES["launch"] / "launch", SOURCES["launch_ros"] / "launch_ros",
                   SOURCES["launch_ros"] / "ros2launch"]
    fake_bin = tmp / "bin"
    fake_bin.mkdir(exist_ok=True)
    (fake_bin / "ros2").write_text(FAKE_ROS2)
    (fake_bin / "ros2").chmod(0o755)
    return dict(
        os.environ, PYTHONPATH=":".join(map(str, python_path)), AMENT_PREFIX_PATH=f"{prefix}:{venv}",
        PATH=f"{fake_bin}:{venv / 'bin'}:{os.environ['PATH']}", ROS_DOMAIN_ID=DOMAIN_ID,
        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", RMW_IMPLEMENTATION="rmw_fastrtps_cpp",
        FASTDDS_DEFAULT_PROFILES_FILE=str(venv / "share" / "ttt3r_ros_dev" / "fastdds_localhost_shm.xml"),
        ROS_LOG_DIR=str(tmp / "ros_log"), FAKE_ROS2_LOG=str(tmp / "ros2_calls.txt"), PYTHONUNBUFFERED="1")


class Launch:
    """`ros2 launch ttt3r_ros FILE ARGS` in its own process group; output to a file."""

    def __init__(self, env: dict[str, str], tmp: Path, launch_file: str, args: list[str], name: str) -> None:
        self.log = tmp / f"{name}.log"
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-c", RUNNER, launch_file, *args], env=env, cwd=tmp,
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, needle: str, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if needle in self.text():
                return True
            if self.proc.poll() is not None:
                return needle in self.text()
            time.sleep(0.2)
        return False

    def wait_exit(self, timeout_s: float) -> int | None:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        children = descendants(self.proc.pid)   # launch puts its processes in their own process groups
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)   # what Ctrl-C does to `ros2 launch`
            if self.wait_exit(30) is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for pid in children:   # what a killed launch left behind
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        result = subprocess.run(["ps", "-o", "pid=", "--ppid", str(todo.pop())], capture_output=True, text=True)
        children = [int(p) for p in result.stdout.split()]
        found += children
        todo += children
    return found


def key_lines(text: str, needles: tuple[str, ...]) -> list[str]:
    return [line for line in text.splitlines() if any(n in line for n in needles)]


class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def check(self, ok: bool, what: str) -> None:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")
        if not ok:
            self.failed.append(what)


def query_node(env: dict[str, str], node: str, names: list[str]) -> str:
    """Lifecycle state and parameter values of `node`, read over DDS by a separate rclpy process."""
    code = textwrap.dedent("""
        import sys, rclpy
        from lifecycle_msgs.srv import GetState
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python
        rclpy.init()
        n = rclpy.create_node("probe_launch_query")
        def call(srv, name, req):
            c = n.create_client(srv, name)
            assert c.wait_for_service(timeout_sec=20), name
            f = c.call_async(req)
            rclpy.spin_until_future_complete(n, f, timeout_sec=20)
            return f.result()
        node = sys.argv[1]
        state = call(GetState, node + "/get_state", GetState.Request()).current_state.label
        values = call(GetParameters, node + "/get_parameters", GetParameters.Request(names=sys.argv[2:])).values
        print("state=" + state, *[f"{k}={parameter_value_to_python(v)!r}" for k, v in zip(sys.argv[2:], values)])
    """)
    result = subprocess.run([sys.executable, "-c", code, node, *names], env=env, capture_output=True, text=True,
                            timeout=60)
    return result.stdout.strip() or result.stderr.strip()[-500:]


def change_state(env: dict[str, str], node: str, transitions: list[int]) -> str:
    code = textwrap.dedent("""
        import sys, rclpy
        from lifecycle_msgs.srv import ChangeState
        rclpy.init()
        n = rclpy.create_node("probe_launch_change_state")
        c = n.create_client(ChangeState, sys.argv[1] + "/change_state")
        assert c.wait_for_service(timeout_sec=20)
        for t in sys.argv[2:]:
            req = ChangeState.Request(); req.transition.id = int(t)
            f = c.call_async(req); rclpy.spin_until_future_complete(n, f, timeout_sec=20)
            print(t, f.result().success)
    """)
    result = subprocess.run([sys.executable, "-c", code, node, *map(str, transitions)], env=env,
                            capture_output=True, text=True, timeout=60)
    return result.stdout.strip() or result.stderr.strip()[-500:]


# log lines worth printing
NEEDLES = ("ERROR", "error", "active", "exited", "hutdown", "fake ros2", "save_", "process started", "configure",
           "equired", "does not exist", "playing")


def case_live_params_file(env: dict[str, str], tmp: Path, c: Checks) -> str:
    params = tmp / "weights_only.yaml"
    params.write_text(f"/**:\n  ros__parameters:\n    weights: random\n    model_config: tiny\n    device: cpu\n"
                      f"    {TINY_PARAMS}")
    run = Launch(env, tmp, "live.launch.py", [f"params_file:={params}"], "live_params_file")
    try:
        c.check(run.wait_for("active: subscribed", 120),
                "a params file with weights (no launch argument) activates the node")
        got = query_node(env, "/ttt3r_node", ["weights", "model_config", "device"])
        print("   ", got)
        c.check(got == "state=active weights='random' model_config='tiny' device='cpu'", "the params file's values")
    finally:
        run.stop()
    return run.text()


def case_live_override(env: dict[str, str], tmp: Path, c: Checks) -> str:
    params = tmp / "cuda.yaml"
    params.write_text(f"/**:\n  ros__parameters:\n    weights: random\n    model_config: tiny\n    device: cuda\n"
                      f"    publish_tf: false\n    {TINY_PARAMS}")
    run = Launch(env, tmp, "live.launch.py", [f"params_file:={params}", "device:=cpu", "publish_tf:=true"],
                 "live_override")
    try:
        c.check(run.wait_for("active: subscribed", 120), "device:=cpu beats the file's device: cuda (no CUDA here)")
        got = query_node(env, "/ttt3r_node", ["device", "publish_tf", "model_config"])
        print("   ", got)
        c.check(got == "state=active device='cpu' publish_tf=True model_config='tiny'",
                "given launch arguments override, the others stay the file's")
    finally:
        run.stop()
    return run.text()


def case_live_namespace(env: dict[str, str], tmp: Path, c: Checks) -> str:
    params = tmp / "ns.yaml"
    params.write_text(f"/**:\n  ros__parameters:\n    device: cpu\n    {TINY_PARAMS}")
    run = Launch(env, tmp, "live.launch.py", [f"params_file:={params}", *TINY, "namespace:=r1",
                                              "image_topic:=/cam/image_raw"], "live_namespace")
    try:
        c.check(run.wait_for("active: subscribed", 120), "namespace:=r1 activates")
        got = query_node(env, "/r1/ttt3r_node", ["weights"])
        print("   ", got)
        c.check(got == "state=active weights='random'", "the node is /r1/ttt3r_node")
    finally:
        run.stop()
    return run.text()


def case_bag_no_bag(env: dict[str, str], tmp: Path, c: Checks) -> str:
    run = Launch(env, tmp, "bag.launch.py", [*TINY, "device:=cpu"], "bag_no_bag")
    code = run.wait_exit(60)
    run.stop()
    took = time.monotonic() - run.started
    c.check(code not in (None, 0), f"exits non-zero without bag (code {code}, {took:.1f} s)")
    c.check("'bag'" in run.text() and "process started" not in run.text(), "names the argument, starts nothing")
    return run.text()


def case_bag_missing_bag(env: dict[str, str], tmp: Path, c: Checks) -> str:
    run = Launch(env, tmp, "bag.launch.py", [*TINY, "device:=cpu", f"bag:={tmp / 'no_such_bag'}"], "bag_missing")
    code = run.wait_exit(60)
    run.stop()
    c.check(code not in (None, 0), f"exits non-zero for a bag that does not exist (code {code})")
    c.check("does not exist" in run.text() and "process started" not in run.text(), "says so, starts nothing")
    return run.text()


def case_bag_bad_configure(env: dict[str, str], tmp: Path, c: Checks) -> str:
    bag = tmp / "bag_dir"
    bag.mkdir(exist_ok=True)
    run = Launch(env, tmp, "bag.launch.py", ["model_config:=tiny", "device:=cpu", f"bag:={bag}"], "bag_bad_configure")
    code = run.wait_exit(120)
    run.stop()
    c.check(code not in (None, 0), f"launch ends by itself, failing, after a failed configure (code {code})")
    c.check("failed to configure" in run.text() and "fake ros2" not in run.text(), "says why; the bag is not played")
    return run.text()


def case_bag_plays_saves(env: dict[str, str], tmp: Path, c: Checks) -> str:
    bag = tmp / "bag_dir"
    bag.mkdir(exist_ok=True)
    params = tmp / "bag.yaml"
    params.write_text(f"/**:\n  ros__parameters:\n    {TINY_PARAMS}    default_map_path: {tmp / 'map.ply'}\n"
                      f"    default_trajectory_path: {tmp / 'trajectory.tum'}\n    save_directory: {tmp}\n")
    calls = Path(env["FAKE_ROS2_LOG"])
    calls.unlink(missing_ok=True)
    env_player = dict(env, FAKE_ROS2_SECONDS="6")   # long enough to re-activate the node while it plays
    run = Launch(env_player, tmp, "bag.launch.py", [*TINY, "device:=cpu", f"bag:={bag}", f"params_file:={params}",
                                             "rate:=0.5", "save_on_exit:=true", "namespace:=r1"],
                 "bag_plays_saves")
    try:
        c.check(run.wait_for("[fake ros2]", 120), "the player starts once the node is active")
        # deactivate + activate while the player runs: handle_once must keep the player from starting again
        answers = change_state(env, "/r1/ttt3r_node", [4, 3])
        c.check(answers.split() == ["4", "True", "3", "True"], f"deactivate + activate while playing: {answers!r}")
        code = run.wait_exit(120)
        c.check(code == 0, f"the player's exit shuts launch down (code {code})")
    finally:
        run.stop()
    recorded = calls.read_text().splitlines() if calls.exists() else []
    print("    player command lines:", recorded)
    c.check(recorded == [f"bag play {bag} --clock --rate 0.5 --remap /tf:=/bag/tf"], "played once, /tf remapped")
    c.check("save_map: " in run.text() and "save_trajectory: ok" in run.text(), "saved before stopping")
    c.check("executed more than once" not in run.text(), "no 'executed more than once'")
    return run.text()


CASES: dict[str, Callable[[dict[str, str], Path, Checks], str]] = {
    "live-params-file": case_live_params_file, "live-override": case_live_override,
    "live-namespace": case_live_namespace, "bag-no-bag": case_bag_no_bag, "bag-missing-bag": case_bag_missing_bag,
    "bag-bad-configure": case_bag_bad_configure, "bag-plays-saves": case_bag_plays_saves,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", action="append", help="run only the cases whose name contains this")
    parser.add_argument("--verbose", action="store_true", help="print each case's whole launch log")
    parser.add_argument("--launch-dir", type=Path, default=REPO / "launch",
                        help="launch files to install instead of launch/ (e.g. `git show REV:launch/...` copies)")
    options = parser.parse_args()
    write_stubs()
    prefix = build_prefix(options.launch_dir)
    checks = Checks()
    with tempfile.TemporaryDirectory(prefix="ttt3r_probe_launch_") as tmp_name:
        tmp = Path(tmp_name)
        env = environment(prefix, tmp)
        for name, case in CASES.items():
            if options.k and not any(k in name for k in options.k):
                continue
            print(f"== {name}")
            text = case(env, tmp, checks)
            for line in text.splitlines() if options.verbose else key_lines(text, NEEDLES):
                print("    |", line[:220])
    print("FAILED: " + "; ".join(checks.failed) if checks.failed else "all checks passed")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
