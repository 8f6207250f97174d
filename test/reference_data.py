"""Where the tests find the reference data, and what happens when it is missing (the suite's one rule; no tests here).

The reference data (parity_tiny.safetensors, parity_tiny.json, the key manifest, SPEC.md) lives outside the repository:
  $TTT3R_PARITY_FILE        the parity vector file; the other reference files are looked up in its folder
  <repo>/../shared/reference  otherwise
A test that needs a file that is not there is skipped with the path and this rule in its reason, so a user's
`colcon test` in a workspace without the data passes; with TTT3R_REQUIRE_REFERENCE=1 (.ci/run sets it) it fails
instead, so CI can never go green by skipping the parity tests.

Test files call these functions directly or through the conftest.py fixtures of the same names.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE_DIR = REPO_ROOT.parent / "shared" / "reference"
PARITY_FILE_ENV = "TTT3R_PARITY_FILE"
REQUIRE_ENV = "TTT3R_REQUIRE_REFERENCE"
PARITY_FILE_NAME = "parity_tiny.safetensors"
TINY_CONFIG_NAME = "parity_tiny.json"


def reference_required() -> bool:
    """True when $TTT3R_REQUIRE_REFERENCE is 1. Any value other than unset, empty, 0 or 1 is an error: a typo must not
    turn the CI's failure into a quiet skip."""
    value = os.environ.get(REQUIRE_ENV, "")
    if value not in ("", "0", "1"):
        raise ValueError(f"{REQUIRE_ENV}={value!r}: use 1 (missing reference data fails) or 0/unset (it skips)")
    return value == "1"


def reference_dir() -> Path:
    """The reference folder by the rule above (not checked: use reference_file for a file a test needs)."""
    configured = os.environ.get(PARITY_FILE_ENV)
    return Path(configured).resolve().parent if configured else DEFAULT_REFERENCE_DIR


def missing_reference(path: Path, what: str) -> NoReturn:
    """Skip the calling test, or fail it when the reference data is required."""
    message = (f"{what} not found at {path}: reference data is read from ${PARITY_FILE_ENV}'s folder, else "
               f"{DEFAULT_REFERENCE_DIR}")
    if reference_required():
        pytest.fail(f"{message} ({REQUIRE_ENV}=1, so this fails instead of skipping)", pytrace=False)
    pytest.skip(f"{message} (set {REQUIRE_ENV}=1 to make this a failure)")


def reference_file(name: str, what: str | None = None) -> Path:
    """`name` in the reference folder; skips or fails the calling test when it is not there."""
    path = reference_dir() / name
    if not path.is_file():
        missing_reference(path, what or f"reference file {name}")
    return path


def parity_file() -> Path:
    """The parity vector file: $TTT3R_PARITY_FILE itself, else parity_tiny.safetensors in the reference folder."""
    configured = os.environ.get(PARITY_FILE_ENV)
    path = Path(configured) if configured else reference_dir() / PARITY_FILE_NAME
    if not path.is_file():
        missing_reference(path, "parity vector file")
    return path


def tiny_config_file() -> Path:
    """parity_tiny.json: the tiny model configuration the parity vectors were recorded with."""
    return reference_file(TINY_CONFIG_NAME, "tiny model configuration")
