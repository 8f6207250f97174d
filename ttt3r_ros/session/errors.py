"""Errors of the session layer (no dependencies: the codecs import this without loading torch)."""
from __future__ import annotations


class SessionError(ValueError):
    """A session cannot be opened as configured (weights, device, precision, model config); the message says why
    and what to do. Front ends show it as one line (the node: configure fails; the commands: exit status 2)."""


class FrameDecodeError(ValueError):
    """One message or file could not be turned into an image; the frame is skipped and counted with this reason."""
