"""One node per fully-qualified name: a second ttt3r_node started under a name already in the ROS graph ends itself.

Two nodes with the same name both publish `odom`, `/tf` and `status` and answer the same services, which ROS 2
allows silently and which corrupts everything downstream. At start the node watches the graph for
`STARTUP_DISCOVERY_WINDOW_S` (10 s; discovery of the existing participants takes a moment, so one look is not enough);
if another node has its fully-qualified name in that window, it logs an error and shuts down, and `main` exits
with status 1. The node already running is not disturbed: it stopped looking long ago.

Race (documented, not solved): two nodes started within the same window see each other and both exit; start
them again one after the other. Names are checked, not identities: an unrelated node that happens to carry the name
(e.g. a `ros2 lifecycle` client named ttt3r_node) counts too.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

# Longer than three of Fast DDS's 3 s participant re-announcement periods: when the first announcements are lost
# (a loaded 2-core machine dropped them in CI) the next one still lands inside the window.
STARTUP_DISCOVERY_WINDOW_S = 10.0
_POLL_S = 0.1
GUARD_DONE_MESSAGE = "name check done"   # logged when the window ends clean (tests wait for it)


def _fully_qualified(namespace: str, name: str) -> str:
    return f"{namespace.rstrip('/')}/{name}"


def nodes_named_like(node: Any) -> int:
    """How many nodes of the graph (this one included) carry this node's fully-qualified name."""
    mine = node.get_fully_qualified_name()
    return sum(1 for name, namespace in node.get_node_names_and_namespaces()
               if _fully_qualified(namespace, name) == mine)


class DuplicateNameGuard:
    """Watches the graph in a background thread for `window_s`; on a duplicate calls `on_duplicate()` once (the
    node's shutdown) after logging. `found` says whether it did."""

    def __init__(self, node: Any, on_duplicate: Callable[[], Any], window_s: float = STARTUP_DISCOVERY_WINDOW_S,
                 is_running: Callable[[], bool] = lambda: True) -> None:
        self.node, self.on_duplicate, self.window_s, self.is_running = node, on_duplicate, window_s, is_running
        self.found = False
        self._thread = threading.Thread(target=self._watch, name="ttt3r_name_guard", daemon=True)

    def start(self) -> "DuplicateNameGuard":
        self._thread.start()
        return self

    def _watch(self) -> None:
        deadline = time.monotonic() + self.window_s
        while time.monotonic() < deadline and self.is_running():
            try:
                count = nodes_named_like(self.node)
            except Exception:   # the context shut down meanwhile: nothing to guard any more
                return
            if count > 1:
                self.found = True
                name = self.node.get_fully_qualified_name()
                self.node.get_logger().error(
                    f"another node named {name} is already running in this ROS domain: exiting (two nodes with one "
                    "name publish the same odometry and TF and answer the same services). Stop the other one or "
                    "start this one in another namespace (-r __ns:=/robot2) or with another name (-r __node:=...)")
                self.on_duplicate()
                return
            time.sleep(_POLL_S)
        if self.is_running():
            self.node.get_logger().info(f"{GUARD_DONE_MESSAGE}: no other node named "
                                        f"{self.node.get_fully_qualified_name()} within {self.window_s:g} s")
