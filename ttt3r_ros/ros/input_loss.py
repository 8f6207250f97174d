"""Counting the images that never reached the node's callback.

Two sources, both per input subscription:
- gaps in the publisher's sequence numbers (``MessageInfo['publication_sequence_number']``, per publisher GID): every
  message the camera published after the first one seen and that this subscription never took, wherever it was lost
  (the subscription's KEEP_LAST history overwritten while the callback was busy, or the network). Fast DDS reports
  history overwrites only this way;
- the RMW's message-lost event (``SubscriptionEventCallbacks(message_lost=...)``): samples the DDS reader itself
  knows it lost (best-effort samples lost on the wire). These are usually also gaps; they are reported separately.
"""
from __future__ import annotations

import threading
from typing import Any, Mapping


class InputLossCounter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_sequence: dict[bytes, int] = {}
        self.sequence_gaps = 0          # messages the publishers sent that this subscription never took
        self.dds_lost_events = 0        # samples the DDS reader reported lost (message-lost event)

    def note(self, info: Mapping[str, Any] | None) -> int:
        """One message taken, with its MessageInfo; returns how many of its publisher's messages were skipped
        since the previous one (0 when the RMW gives no sequence number)."""
        identity = _publisher_sequence(info)
        if identity is None:
            return 0
        key, sequence = identity
        with self._lock:
            last = self._last_sequence.get(key)
            self._last_sequence[key] = max(sequence, last or 0)
            if last is None or sequence <= last:   # first message of this publisher, or a reordered one
                return 0
            skipped = sequence - last - 1
            self.sequence_gaps += skipped
            if len(self._last_sequence) > 1024:     # publishers come and go: keep the newest entries only
                self._last_sequence = {key: self._last_sequence[key]}
            return skipped

    def skip_to(self, info: Mapping[str, Any] | None) -> int:
        """The publisher's messages before this one were dropped on purpose (keep-latest: a newer one replaced them
        in the subscription's history): advance past them without counting a gap; returns how many there were."""
        identity = _publisher_sequence(info)
        if identity is None:
            return 0
        key, sequence = identity
        with self._lock:
            last = self._last_sequence.get(key)
            if last is None or sequence <= last + 1:
                return 0
            self._last_sequence[key] = sequence - 1
            return sequence - last - 1

    def on_message_lost(self, event: Any) -> None:
        """rclpy message-lost event callback (QoSMessageLostInfo)."""
        with self._lock:
            self.dds_lost_events += int(getattr(event, "total_count_change", 0))

    def reset(self) -> None:
        """Forget the publishers (a new subscription: its first message is not a gap)."""
        with self._lock:
            self._last_sequence.clear()


def _publisher_sequence(info: Mapping[str, Any] | None) -> tuple[bytes, int] | None:
    """(publisher GID, publication sequence number) of a MessageInfo, or None when the RMW gives none."""
    if not info:
        return None
    sequence = info.get("publication_sequence_number")
    gid = info.get("publisher_gid")
    if not sequence or gid is None:
        return None
    return (bytes(gid.get("data", b"")) if isinstance(gid, Mapping) else bytes(gid)), int(sequence)
