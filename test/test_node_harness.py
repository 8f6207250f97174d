"""Shared helpers for the node tests (no tests here): tiny weights, node subprocesses, a probe node over DDS.

Every rclpy process gets ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and the run's ROS_DOMAIN_ID (conftest.py).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import reference_data

# test/conftest.py already sets these for pytest runs; repeated here so the helpers are safe on their own.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", "27")
_LOG_DIR = Path(tempfile.mkdtemp(prefix="ttt3r_node_ros_logs_"))
os.environ.setdefault("ROS_LOG_DIR", str(_LOG_DIR))

_WEIGHTS_DIR = Path(tempfile.mkdtemp(prefix="ttt3r_node_weights_"))


def tiny_config() -> Path:
    """parity_tiny.json; skips (or fails under TTT3R_REQUIRE_REFERENCE=1) when the reference data is missing."""
    return reference_data.tiny_config_file()


def tiny_weights(_unused_tmp: Path | None = None) -> Path:
    """The parity tiny model's weights as a plain .safetensors checkpoint (written once per test session)."""
    out = _WEIGHTS_DIR / "parity_tiny_model.safetensors"
    if out.is_file():
        return out
    from safetensors.torch import load_file

    from ttt3r_ros.model.checkpoint import save_safetensors

    tensors = load_file(str(reference_data.parity_file()))
    state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    assert state, "parity_tiny.safetensors has no model/ tensors"
    save_safetensors(state, out)
    return out


def node_env() -> dict[str, str]:
    env = dict(os.environ)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["OMP_NUM_THREADS"] = env.get("OMP_NUM_THREADS", "2")
    return env


def start_node(ros_args: list[str], log_path: Path, executable: list[str] | None = None,
               extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ttt3r_node (`python -m ttt3r_ros.ros.node`, or the given executable) with its output in log_path."""
    log = open(log_path, "wb")
    exe = executable or [sys.executable, "-m", "ttt3r_ros.ros.node"]
    return subprocess.Popen([*exe, *ros_args], stdout=log, stderr=subprocess.STDOUT,
                            env={**node_env(), **(extra_env or {})}, cwd=str(log_path.parent))


SLOW_CONFIGURE_NODE = Path(__file__).resolve().parent / "support" / "slow_configure_node.py"


def start_slow_configure_node(ros_args: list[str], log_path: Path, gate: Path) -> subprocess.Popen:
    """ttt3r_node whose configure blocks until `gate` exists (test/support/slow_configure_node.py); it writes
    `<gate>.loading` when the load starts."""
    return start_node(ros_args, log_path, executable=[sys.executable, str(SLOW_CONFIGURE_NODE)],
                      extra_env={"TTT3R_TEST_LOAD_GATE": str(gate)})


def tiny_node_args(weights: Path, *extra: str) -> list[str]:
    return ["--ros-args", "-p", f"weights:={weights}", "-p", f"model_config:={tiny_config()}",
            "-p", "image_size:=64", "-p", "device:=cpu", "-p", "warmup_frames:=1", *extra]


def stop(proc: subprocess.Popen, timeout_s: float = 15.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    return proc.returncode


def log_tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "<no log>"


def wait_for(predicate: Callable[[], Any], timeout_s: float, proc: subprocess.Popen | None = None,
             period_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return bool(predicate())
        time.sleep(period_s)
    return bool(predicate())


class Probe:
    """An rclpy node in its own context, spun by a background thread; collects messages, calls services."""

    def __init__(self, name: str) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._lock = threading.Lock()
        self.messages: dict[str, list[tuple[float, Any]]] = {}
        self._stop = False
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:
                if self._stop:
                    return
                raise

    def subscribe(self, topic: str, msg_type: Any, qos: Any = 10) -> list[tuple[float, Any]]:
        """List of (wall receive time, message), appended as messages arrive."""
        box: list[tuple[float, Any]] = []
        with self._lock:
            self.messages[topic] = box

        def cb(msg: Any) -> None:
            box.append((time.time(), msg))
        self.node.create_subscription(msg_type, topic, cb, qos)
        return box

    def call(self, srv_type: Any, name: str, request: Any, timeout_s: float = 20.0, idempotent: bool = False,
             resend_after_s: float = 5.0) -> Any:
        """One service call. `idempotent`: send the request again every `resend_after_s` until an answer comes.
        Fast DDS can drop a response sent before the server has discovered the client's response reader
        (`failed to send response (timeout)` in the server's log), even though wait_for_service succeeded: only a
        query that may be repeated (get_state) is repeated; a reset or a save is sent once."""
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout_s):
                raise TimeoutError(f"service {name} not available")
            deadline = time.monotonic() + timeout_s
            while True:
                answered = threading.Event()
                future = client.call_async(request)
                future.add_done_callback(lambda _: answered.set())   # runs in the spin thread when the answer arrives
                remaining = deadline - time.monotonic()
                if answered.wait(min(remaining, resend_after_s) if idempotent else remaining) or future.done():
                    return future.result()
                if not idempotent or time.monotonic() >= deadline:
                    raise TimeoutError(f"service {name} did not answer in {timeout_s} s")
        finally:
            self.node.destroy_client(client)

    def lifecycle_state(self, node_fqn: str, timeout_s: float = 30.0) -> str:
        from lifecycle_msgs.srv import GetState

        return self.call(GetState, f"{node_fqn}/get_state", GetState.Request(), timeout_s,
                         idempotent=True).current_state.label

    def autostart_outcome(self, node_fqn: str, timeout_s: float = 60.0) -> str:
        """The lifecycle state once an autostarting node has finished starting: 'active', or 'unconfigured' after a
        failed configure (the node answers while configuring: ttt3r_node spins before it configures); the last
        state seen on timeout."""
        deadline = time.monotonic() + timeout_s
        state = self.lifecycle_state(node_fqn, timeout_s)
        while state not in ("active", "unconfigured") and time.monotonic() < deadline:
            time.sleep(0.05)
            state = self.lifecycle_state(node_fqn, max(1.0, deadline - time.monotonic()))
        return state

    def close(self) -> None:
        import rclpy

        self._stop = True
        self._thread.join(timeout=2.0)
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


# --------------------------------------------------------------------------------------------- test camera
def synthetic_frames(n: int, h: int = 96, w: int = 128) -> tuple[Any, Any]:
    """(images [n,h,w,3] uint8, K 3x3) rendered from the engine's textured box room along a smooth path."""
    from ttt3r_ros.engine import synthetic

    seq = synthetic.make_sequence(n_frames=n, h=h, w=w)
    return seq.images, seq.intrinsics


def image_msg(rgb: Any, stamp_s: float, frame_id: str, encoding: str = "rgb8") -> Any:
    from sensor_msgs.msg import Image

    from ttt3r_ros.ros import conversions as conv

    msg = conv.numpy_to_image(rgb, encoding, conv.Header(stamp=conv.seconds_to_stamp(stamp_s), frame_id=frame_id))
    assert isinstance(msg, Image)
    return msg


def jpeg_msg(rgb: Any, stamp_s: float, frame_id: str) -> Any:
    import cv2
    from sensor_msgs.msg import CompressedImage

    from ttt3r_ros.ros import conversions as conv

    ok, buf = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    msg = CompressedImage(format="jpeg")
    msg.header = conv.Header(stamp=conv.seconds_to_stamp(stamp_s), frame_id=frame_id)
    msg.data = buf.tobytes()
    return msg


def camera_info_msg(k: Any, h: int, w: int, stamp_s: float, frame_id: str) -> Any:
    from ttt3r_ros.ros import conversions as conv

    return conv.camera_info_from_intrinsics(k, h, w, conv.Header(stamp=conv.seconds_to_stamp(stamp_s),
                                                                  frame_id=frame_id))


def stamp_s(header: Any) -> float:
    return round(header.stamp.sec + header.stamp.nanosec * 1e-9, 6)
