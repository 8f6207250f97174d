"""State update rules, selected by name (SPEC §6).

A rule maps the view's gate [B, S] (sigmoid of the mean pre-softmax cross-attention logit) and the per-stream
`fresh` flags [B] to the per-token rate [B, S] at which the candidate state replaces the carried one, before the
`update` flag is applied. Fresh views (first view of a chunk) always use rate 1, under every rule. Rules are
elementwise tensor functions (no host synchronisation), so they can be captured in CUDA graphs.
The pose memory is never gated; it is replaced wherever update is True.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["UpdateRule", "UPDATE_RULES", "cut3r_rate", "ttt3r_rate", "get_update_rule"]

UpdateRule = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cut3r_rate(gate: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    """CUT3R: full replacement of the state by the candidate."""
    return torch.ones_like(gate)


def ttt3r_rate(gate: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    """TTT3R: each state token moves towards the candidate at its own gate; fresh views replace fully."""
    return torch.where(fresh[:, None], torch.ones_like(gate), gate)


# The default rule first: front ends list the names in this order.
UPDATE_RULES: dict[str, UpdateRule] = {
    "ttt3r": ttt3r_rate,
    "cut3r": cut3r_rate,
}


def get_update_rule(name: str) -> UpdateRule:
    try:
        return UPDATE_RULES[name]
    except KeyError:
        raise ValueError(f"unknown update rule {name!r}; known: {sorted(UPDATE_RULES)}") from None
