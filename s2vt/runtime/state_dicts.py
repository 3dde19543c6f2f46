"""Loading a state dict into a network, with a one-line account of why it does not fit.

``torch.nn.Module.load_state_dict`` reports a mismatch over many lines, the first of which
("Error(s) in loading state_dict for ResNet:") says nothing; :func:`load_exactly` checks
the keys, shapes and dtypes first and names the first few that differ. Weights as people save
them differ from a network's own names in known ways: :func:`fitting_state` tries the prefixes
that wrapping or taking a tower out of a larger model adds or removes (``visual.``, ``module.``,
``model.``), and :func:`prefix_hint` names any other prefix that would make the names fit.
"""
from __future__ import annotations

import warnings
from collections import Counter
from typing import Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple

import torch
from torch import nn

from s2vt.runtime.errors import S2VTError


def load_tensors(path, map_location="cpu"):
    """``torch.load`` of plain tensors and types only (``weights_only``: a pickle that would run code is
    refused); torch's own warning about a refused pickle is left out, its error is the caller's to word."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location=map_location, weights_only=True)


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


# prefixes a state dict gains or loses as people save it: an open_clip model's image tower
# (``model.visual``), DistributedDataParallel / DataParallel (``module.``), training wrappers (``model.``)
PREFIXES = ("visual.", "module.", "model.")


def with_unused(net: nn.Module, state: dict, unused: Sequence[str]) -> dict:
    """``state`` with the network's own tensors under the ``unused`` key prefixes (a classifier the
    features never reach): a file without them (timm's ``num_classes=0``), or with another number of
    classes, loads."""
    if not unused or not isinstance(state, dict):
        return state
    want = net.state_dict()
    out = {k: v for k, v in state.items() if k in want or not k.startswith(tuple(unused))}
    for k, v in want.items():
        if k.startswith(tuple(unused)) and (k not in out or getattr(out[k], "shape", None) != v.shape):
            out[k] = v
    return out


def _renamed(state: dict) -> Iterator[Tuple[str, dict]]:
    """(how, state renamed so) for each known prefix added to every name, or removed where present."""
    for p in PREFIXES:
        if any(k.startswith(p) for k in state):
            yield f"with the prefix {p!r} removed", {k[len(p):] if k.startswith(p) else k: v for k, v in state.items()}
        yield f"with the prefix {p!r} added", {p + k: v for k, v in state.items()}


def fitting_state(net: nn.Module, state: dict, adapt: Optional[Callable[[dict, nn.Module], dict]] = None,
                  unused: Sequence[str] = ()) -> Tuple[Optional[dict], str, Optional[Exception]]:
    """(state that loads into ``net`` exactly, how it was renamed ("" when as saved), None) when ``state``
    as saved, or renamed by one known prefix (:data:`PREFIXES`), fits after ``adapt`` (a library's
    conversion of published names) and with the ``unused`` tensors optional; else (None, "", the
    error ``adapt`` raised on the state as saved, if any)."""
    first_error = None
    for how, cand in [("", state), *_renamed(state)]:
        try:
            cand = adapt(cand, net) if adapt is not None else cand
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, S2VTError) as e:
            first_error = first_error if how else e
            continue
        cand = with_unused(net, cand, unused)
        if mismatch(net, cand) is None:
            return cand, how, None
    return None, "", first_error


def prefix_hint(want: Iterable[str], have: Iterable[str]) -> Optional[str]:
    """How the names ``have`` would become the network's ``want``: "with the prefix 'backbone.' removed"
    (or added), when one prefix makes at least half of the network's names match; else None."""
    want, have = list(want), list(have)
    wanted, had = set(want), set(have)
    counts: Counter = Counter()
    for keys, other, how in ((have, wanted, "removed"), (want, had, "added")):
        for k in keys:
            parts = k.split(".")
            i = next((i for i in range(1, len(parts)) if ".".join(parts[i:]) in other), None)
            if i is not None:
                counts[(".".join(parts[:i]) + ".", how)] += 1
    if not counts:
        return None
    (prefix, how), n = counts.most_common(1)[0]
    return f"with the prefix {prefix!r} {how}" if n >= max(1, len(want) // 2) else None


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
