"""Loading a state dict into a network, with a one-line account of why it does not fit.

``torch.nn.Module.load_state_dict`` reports a mismatch over many lines, the first of which
("Error(s) in loading state_dict for ResNet:") says nothing; :func:`load_exactly` checks
the keys, shapes and dtypes first and names the first few that differ.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn


def _few(keys, n: int = 3) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def mismatch(net: nn.Module, state: Dict[str, object]) -> Optional[str]:
    """None when ``state`` loads into ``net`` exactly, else what differs, in one line."""
    want = net.state_dict()
    if not isinstance(state, dict):
        return f"holds a {type(state).__name__}, not a state dict"
    nontensor = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if nontensor:
        return f"{len(nontensor)} entries are not tensors ({_few(map(str, nontensor))})"
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [f"{k} {tuple(state[k].shape)} where the network has {tuple(v.shape)}"
              for k, v in want.items() if k in state and state[k].shape != v.shape]
    kinds = [f"{k} is {state[k].dtype} where the network has {v.dtype}" for k, v in want.items()
             if k in state and state[k].is_floating_point() != v.is_floating_point()]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing ({_few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_few(unexpected)})")
    if shapes:
        parts.append(f"{len(shapes)} of another shape ({_few(shapes, 2)})")
    if kinds:
        parts.append(f"{len(kinds)} of another kind ({_few(kinds, 2)})")
    return "; ".join(parts) or None


def load_exactly(net: nn.Module, state: dict, error, what: str) -> None:
    """Load ``state`` into ``net``, or raise ``error(f"{what} ...: <what differs>")``."""
    why = mismatch(net, state)
    if why is None:
        try:
            net.load_state_dict(state)
            return
        except (RuntimeError, ValueError, TypeError) as e:
            why = " ".join(str(e).split())[:300]
    raise error(f"{what}: {why}")
