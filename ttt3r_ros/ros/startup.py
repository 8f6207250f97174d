"""Process start of ttt3r_node: the persistent compile cache and the signals that end the node.

Compile cache: torch.compile (inductor) and Triton cache their kernels in TORCHINDUCTOR_CACHE_DIR /
TRITON_CACHE_DIR; their own default lives in /tmp, which a reboot empties, so every boot recompiled (tens of
seconds on a GPU). The node sets them, when the user has not, to a folder under the user's cache directory
(``$XDG_CACHE_HOME/ttt3r_ros/compile_cache``, else ``~/.cache/ttt3r_ros/compile_cache``) or the parameter
``compile_cache_dir``.

Signals: SIGINT, SIGTERM and SIGHUP (a closed terminal or ssh session) all become a context shutdown through one
Python handler (``route_signals``): the executor stops and ``main`` cleans up and returns 0.
Python runs signal handlers in the main thread between bytecodes only, so ``spin_until_shutdown`` spins in slices
(a thread blocked in the executor's C wait would otherwise never run the handler).
"""
from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, MutableMapping

INDUCTOR_ENV = "TORCHINDUCTOR_CACHE_DIR"
TRITON_ENV = "TRITON_CACHE_DIR"


def default_compile_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ttt3r_ros" / "compile_cache"


def apply_compile_cache(parameter_value: str, environ: MutableMapping[str, str] = os.environ) -> str:
    """Point the compile caches at a persistent folder unless the user already chose one; returns a line for the log.
    Called before the model is built (inductor reads the variables when it first compiles)."""
    if environ.get(INDUCTOR_ENV):
        return f"compile cache: {environ[INDUCTOR_ENV]} (from ${INDUCTOR_ENV})"
    folder = (Path(os.path.expanduser(parameter_value)) if parameter_value.strip()
              else default_compile_cache_dir(environ))
    folder.mkdir(parents=True, exist_ok=True)
    environ[INDUCTOR_ENV] = str(folder)
    environ.setdefault(TRITON_ENV, str(folder / "triton"))
    source = "parameter compile_cache_dir" if parameter_value.strip() else "default"
    return f"compile cache: {folder} ({source})"


ENDING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def route_signals(stop_requested: threading.Event) -> None:
    """Set ``stop_requested`` when SIGINT, SIGTERM or SIGHUP arrives; call from the main thread, with rclpy's own
    handlers off (``rclpy.init(signal_handler_options=SignalHandlerOptions.NO)``). rclpy's SIGINT handler chains to
    Python's, which raises KeyboardInterrupt wherever the main thread happens to be: one landing in the cleanup ended
    the process by the signal (exit -2, "process has died" in launch). The handler only sets the event: shutting the
    context down from inside the executor's wait-set construction (where the handler runs) raised RCLError there;
    ``spin_until_shutdown`` returns at its next slice and ``main`` shuts down, with status 0, for all three."""
    for signum in ENDING_SIGNALS:
        signal.signal(signum, lambda _signum, _frame: stop_requested.set())


SPIN_SLICE_S = 0.25   # longest delay before a signal is acted on


def spin_until_shutdown(executor: Any, is_running: Callable[[], bool],
                        stop_requested: threading.Event | None = None) -> None:
    """``executor.spin()`` in slices of SPIN_SLICE_S while ``is_running()`` and no stop is requested (see the module
    docstring)."""
    while is_running() and not (stop_requested is not None and stop_requested.is_set()):
        executor.spin_once(timeout_sec=SPIN_SLICE_S)
