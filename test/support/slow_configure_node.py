"""ttt3r_node whose weights load blocks until the test releases it (test-only): `python slow_configure_node.py
--ros-args ...` with $TTT3R_TEST_LOAD_GATE naming a file; configure writes `<gate>.loading` when the load starts and
waits until `<gate>` exists. Lets a test query the node while it is configuring, for as long as it needs."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ttt3r_ros.ros import node as node_module

GATE_ENV = "TTT3R_TEST_LOAD_GATE"


class SlowConfigureNode(node_module.Ttt3rNode):
    def _load_engine(self) -> None:
        gate = Path(os.environ[GATE_ENV])
        Path(f"{gate}.loading").write_text("configuring\n")
        while not gate.exists():   # a file, not an event: the test is another process
            time.sleep(0.02)
        super()._load_engine()


if __name__ == "__main__":
    sys.exit(node_module.main(node_factory=SlowConfigureNode))
