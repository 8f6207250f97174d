"""Shared pytest set-up for ttt3r_ros.

At import time (before any test imports rclpy) this makes a plain `pytest` run as safe as scripts/test.sh:
DDS discovery stays on loopback, the run gets its own ROS_DOMAIN_ID unless one is set (50..99, the test range),
the venv's Fast DDS profile is used when scripts/setup.sh wrote one, and rcl log files go to a temp folder.

Fixtures for other test files:
  repo_root       the repository root (Path)
  parity_file, tiny_config_file
                  reference data files (reference_data.py owns the lookup rule): the test is skipped when the file is
                  missing, and fails instead when TTT3R_REQUIRE_REFERENCE=1 (as .ci/run sets)
  ros_env         a fresh dict of environment variables for subprocesses that use rclpy
  tiny_config, tiny_model
                  the tiny model's ModelConfig (from tiny_config_file) and that model built with seed 0 (one per test
                  module; read its weights, do not change them)
  box_room_seq    the standard synthetic box-room sequence of the engine tests (support/box_room.py; read-only)
  live_node, replay_node
                  ttt3r_node processes over DDS, one per test module (support/node_session.py: keep-latest raw-image
                  node at /live, in-order JPEG node at /replay)
  launch_api      stand-ins for ROS 2 `launch` / `launch_ros` on sys.path for one test (support/launch_standins.py;
                  skips where the real ones are importable); play a launch file with support.launch_standins.LaunchRun
  ros_scripts     starts Python scripts as separate processes with ros_env and a hard timeout:
                      proc = ros_scripts.start(path, "--arg", timeout_s=20)   # returns at once
                      result = proc.wait()      # ScriptResult(returncode, stdout, stderr, timed_out)
                      result = ros_scripts.run(path, timeout_s=20)          # start + wait
                  A process past its timeout gets SIGINT, then SIGKILL; every process still running at the end of
                  the test is stopped the same way. Fast DDS shared-memory files that appeared while it ran and that
                  no live process holds any more are removed.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

import reference_data
from support import launch_standins

REPO_ROOT = Path(__file__).resolve().parents[1]
FASTDDS_PROFILE = Path(sys.prefix) / "share" / "ttt3r_ros_dev" / "fastdds_localhost_shm.xml"
TEST_DOMAIN_ID_RANGE = range(50, 100)  # dev helpers use 11..49 by hand; test runs take 50..99


def _configure_ros_environment() -> None:
    # Forced, not defaulted: a developer shell with SYSTEM_DEFAULT must not make tests multicast out of the NIC.
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("ROS_DOMAIN_ID", str(TEST_DOMAIN_ID_RANGE.start + os.getpid() % len(TEST_DOMAIN_ID_RANGE)))
    if FASTDDS_PROFILE.is_file():
        os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(FASTDDS_PROFILE))
    os.environ.setdefault("ROS_LOG_DIR", str(Path(tempfile.gettempdir()) / "ttt3r_ros_pytest_ros_log"))


_configure_ros_environment()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def parity_file() -> Path:
    """The parity vector file; skips or fails when it is missing (reference_data.py)."""
    return reference_data.parity_file()


@pytest.fixture(scope="session")
def tiny_config_file() -> Path:
    """parity_tiny.json, the tiny model configuration; skips or fails when it is missing (reference_data.py)."""
    return reference_data.tiny_config_file()


@pytest.fixture(scope="module")
def tiny_config(tiny_config_file: Path) -> Any:
    from ttt3r_ros.model import load_model_config  # here, not at the top: the model loads torch

    return load_model_config(tiny_config_file)


@pytest.fixture(scope="module")
def tiny_model(tiny_config: Any) -> Any:
    from ttt3r_ros.model import build_model

    return build_model(tiny_config, seed=0)


@pytest.fixture(scope="module")
def box_room_seq() -> Any:
    from support.box_room import box_room_sequence  # here, not at the top: it loads torch, which most tests never need

    return box_room_sequence()


@pytest.fixture(scope="module")
def live_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from support import node_session  # here, not at the top: it needs rclpy, which a ROS-free install lacks

    yield from node_session.live_session(tmp_path_factory.mktemp("live"))


@pytest.fixture(scope="module")
def replay_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from support import node_session

    yield from node_session.replay_session(tmp_path_factory.mktemp("replay"))


@pytest.fixture
def launch_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    yield from launch_standins.install(tmp_path, monkeypatch)


@pytest.fixture
def ros_env() -> dict[str, str]:
    env = dict(os.environ)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["PYTHONUNBUFFERED"] = "1"  # a killed child's last lines still reach its log
    return env


# --- subprocess helper ---------------------------------------------------------------------------------------------

def fastdds_shm_files() -> set[str]:
    """Fast DDS shared-memory segments, port files and semaphores currently in /dev/shm."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return set()
    return {str(p) for p in shm.iterdir() if p.name.startswith(("fastdds_", "sem.fastdds_"))}


def shm_paths_in_use() -> set[str]:
    """/dev/shm paths that some live process has open or mapped (those we may read: ours at least)."""
    in_use: set[str] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("/dev/shm/"):
                    in_use.add(target)
            with open(proc / "maps", encoding="utf-8", errors="replace") as maps:
                for line in maps:
                    start = line.find("/dev/shm/")
                    if start >= 0:
                        in_use.add(line[start:].split()[0])
        except OSError:  # the process ended while we looked, or it is not ours to read
            continue
    return in_use


def _shm_base(path: str) -> str:
    """fastdds_port7411, its _el lock file and its sem.*_mutex semaphore share the base fastdds_port7411."""
    name = os.path.basename(path).removeprefix("sem.").removesuffix("_mutex")
    return name.removesuffix("_el")


def remove_unused_shm_files(candidates: set[str]) -> list[str]:
    """Remove those of `candidates` that no live process holds; return what was removed.

    A port's named semaphore is opened only while used, so it counts as held whenever its segment or lock is."""
    if not candidates:
        return []
    held_bases = {_shm_base(p) for p in shm_paths_in_use()}
    removed = []
    for path in sorted(p for p in candidates if _shm_base(p) not in held_bases):
        try:
            os.remove(path)
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


@dataclass
class ScriptResult:
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool

    def describe(self) -> str:
        """Everything needed to debug a failed child, for assertion messages."""
        return (f"returncode={self.returncode} timed_out={self.timed_out}\n--- stdout ---\n{self.stdout}"
                f"\n--- stderr ---\n{self.stderr}")


class RosScript:
    """One Python script running in its own process group, with output captured to files (no pipe deadlocks)."""

    def __init__(self, script: Path | str, args: tuple[str, ...], env: dict[str, str], timeout_s: float,
                 log_dir: Path) -> None:
        self.script = Path(script)
        self.deadline = time.monotonic() + timeout_s
        self._shm_before = fastdds_shm_files()
        stem = f"{self.script.stem}.{time.monotonic_ns()}"
        self._stdout_path, self._stderr_path = log_dir / f"{stem}.out", log_dir / f"{stem}.err"
        with open(self._stdout_path, "wb") as out, open(self._stderr_path, "wb") as err:
            self.process = subprocess.Popen([sys.executable, str(self.script), *args], env=env, stdout=out,
                                            stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
        self._result: ScriptResult | None = None

    def wait(self) -> ScriptResult:
        """Wait until the script ends or its deadline passes (then stop it); return its result."""
        if self._result is not None:
            return self._result
        timed_out = False
        try:
            self.process.wait(timeout=max(0.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            self.stop()
        self._result = ScriptResult(self.process.returncode, self._stdout_path.read_text(errors="replace"),
                                    self._stderr_path.read_text(errors="replace"), timed_out)
        return self._result

    def stop(self, grace_s: float = 3.0) -> None:
        """SIGINT (rclpy shuts down cleanly and frees its shared memory), then SIGKILL the whole group."""
        if self.process.poll() is None:
            for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(self.process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.process.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        remove_unused_shm_files(fastdds_shm_files() - self._shm_before)


class RosScriptLauncher:
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self._env = env
        self._log_dir = log_dir
        self.started: list[RosScript] = []

    def start(self, script: Path | str, *args: str, timeout_s: float = 30.0,
              env: dict[str, str] | None = None) -> RosScript:
        proc = RosScript(script, tuple(str(a) for a in args), env if env is not None else self._env, timeout_s,
                         self._log_dir)
        self.started.append(proc)
        return proc

    def run(self, script: Path | str, *args: str, timeout_s: float = 30.0,
            env: dict[str, str] | None = None) -> ScriptResult:
        return self.start(script, *args, timeout_s=timeout_s, env=env).wait()


@pytest.fixture
def ros_scripts(ros_env: dict[str, str], tmp_path: Path) -> Iterator[RosScriptLauncher]:
    launcher = RosScriptLauncher(ros_env, tmp_path)
    yield launcher
    for proc in launcher.started:
        proc.stop()
