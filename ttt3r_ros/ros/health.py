"""The /diagnostics summary of ttt3r_node. Tracking state and odometry covariance come from
``ttt3r_ros.session.odometry`` (pure numpy, shared with the offline result bag)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from std_msgs.msg import Header

from ttt3r_ros.session.odometry import TRACKING_DEGRADED, TRACKING_INITIALIZING, TRACKING_LOST, TRACKING_NAMES

SESSION_FRESH = "fresh"   # the `session` value of a node that did not resume a snapshot (ros/session_io.py)


@dataclass
class HealthSummary:
    """What status and /diagnostics both report (kept in one object so they cannot disagree)."""
    tracking_state: int = TRACKING_INITIALIZING
    frame_index: int = 0
    frames_received: int = 0
    frames_processed: int = 0
    frames_dropped: int = 0
    frames_rejected: int = 0
    frames_invalid: int = 0             # the network gave a non-finite pose/output: counted, not published
    frames_lost_before_node: int = 0    # gaps in the camera's sequence numbers (DDS history overflow or network)
    frames_refused: int = 0             # process_all_frames: refused by the full queue
    dds_message_lost: int = 0           # samples the DDS reader reported lost (message-lost event)
    outputs_skipped: int = 0            # frames whose dense outputs (points/depth/confidence) a newer frame replaced
    map_frames_skipped: int = 0         # frames a newer one replaced before the map update took them
    inference_latency_ms: float = 0.0
    end_to_end_latency_ms: float = 0.0
    queue_wait_ms: float = 0.0          # callback -> worker start of the last processed frame
    confident_fraction: float = 0.0
    confidence_mean: float = 0.0
    gate_mean: float = 0.0
    resets: int = 0
    map_points: int = 0
    paused: bool = False
    input_stale: str = ""               # non-empty while no image arrived for input_timeout_s (says what to check)
    device: str = ""
    focal_disagreement: float = float("nan")   # |f_network / f_calibrated - 1| (session.focal_health); NaN: none
    message: str = "waiting for images"
    session: str = SESSION_FRESH        # or "resumed from PATH (after frame N, saved UTC)": resume_session

    def level(self) -> bytes:
        if self.tracking_state == TRACKING_LOST:
            return DiagnosticStatus.ERROR
        if self.tracking_state in (TRACKING_DEGRADED, TRACKING_INITIALIZING) or self.paused or self.input_stale:
            return DiagnosticStatus.WARN
        return DiagnosticStatus.OK


_STATUS_FIELDS_FROM_SUMMARY = (
    "frame_index", "tracking_state", "inference_latency_ms", "end_to_end_latency_ms", "frames_received",
    "frames_processed", "frames_dropped", "frames_rejected", "frames_lost_before_node", "frames_refused", "gate_mean",
    "confidence_mean", "confident_fraction", "resets", "map_points", "message", "focal_disagreement")


def status_message(status_type: Any, summary: HealthSummary, header: Header, gate_min: float, gate_max: float,
                   resumed: bool = False) -> Any:
    """The per-frame ttt3r_ros/Status from the same summary /diagnostics reports (single- and multi-camera node).
    `status_type` is passed in so this module imports no generated interface at import time."""
    st = status_type()
    st.header = header
    for name in _STATUS_FIELDS_FROM_SUMMARY:   # Status fields of the same name and meaning as the summary's
        setattr(st, name, getattr(summary, name))
    st.gate_min = float(gate_min)
    st.gate_max = float(gate_max)
    st.resumed = bool(resumed)
    return st


def diagnostics(summary: HealthSummary, header: Header, node_name: str) -> DiagnosticArray:
    status = DiagnosticStatus()
    status.level = summary.level()
    status.name = f"{node_name}: odometry"
    status.hardware_id = summary.device
    state = TRACKING_NAMES[summary.tracking_state]
    status.message = (f"tracking {state}" + (" (paused)" if summary.paused else "")
                      + f": {summary.input_stale or summary.message}")
    pairs = {
        "tracking_state": state, "frame_index": summary.frame_index, "frames_received": summary.frames_received,
        "frames_processed": summary.frames_processed, "frames_dropped": summary.frames_dropped,
        "frames_rejected": summary.frames_rejected, "frames_invalid": summary.frames_invalid,
        "frames_lost_before_node": summary.frames_lost_before_node,
        "frames_refused": summary.frames_refused, "dds_message_lost": summary.dds_message_lost,
        "outputs_skipped": summary.outputs_skipped, "map_frames_skipped": summary.map_frames_skipped,
        "inference_latency_ms": f"{summary.inference_latency_ms:.1f}",
        "end_to_end_latency_ms": f"{summary.end_to_end_latency_ms:.1f}",
        "queue_wait_ms": f"{summary.queue_wait_ms:.1f}",
        "confident_fraction": f"{summary.confident_fraction:.3f}", "confidence_mean": f"{summary.confidence_mean:.3f}",
        "gate_mean": f"{summary.gate_mean:.3f}", "resets": summary.resets, "map_points": summary.map_points,
        "paused": summary.paused, "device": summary.device,
        "focal_disagreement": f"{summary.focal_disagreement:.3f}", "session": summary.session,
    }
    status.values = [KeyValue(key=k, value=str(v)) for k, v in pairs.items()]
    array = DiagnosticArray()
    array.header = header
    array.status = [status]
    return array


def lifecycle_diagnostics(lifecycle_state: str, configure_error: str, header: Header, node_name: str,
                          device: str = "") -> DiagnosticArray:
    """/diagnostics while the node is not active (the per-frame summary exists only while active): ERROR with the
    reason after a failed configure, WARN while unconfigured or inactive (no odometry is produced)."""
    status = DiagnosticStatus()
    status.name = f"{node_name}: odometry"
    status.hardware_id = device
    if configure_error:
        status.level = DiagnosticStatus.ERROR
        status.message = f"{lifecycle_state}: configure failed: {configure_error}"
    else:
        status.level = DiagnosticStatus.WARN
        waiting = {"unconfigured": "waiting for configure (lifecycle)", "inactive": "configured, waiting for activate",
                   "finalized": "shut down"}.get(lifecycle_state, "not active")
        status.message = f"{lifecycle_state}: {waiting}; no odometry"
    status.values = [KeyValue(key="lifecycle_state", value=lifecycle_state),
                     KeyValue(key="configure_error", value=configure_error)]
    array = DiagnosticArray()
    array.header = header
    array.status = [status]
    return array
