"""JSON reports (run.json, eval.json) written atomically through the package's one writer, `ttt3r_ros.atomic_io`
(temporary file + fsync + rename), so a crash or Ctrl-C never leaves a half-written file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic_io import atomic_write


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_json_atomic(path: str | Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, default=_json_default, allow_nan=True) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode()))
