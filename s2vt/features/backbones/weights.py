"""Weight files: read (``.safetensors`` or plain-tensor torch files, never code), loaded into a network
exactly (every tensor named when one does not fit) as people save them (a classifier the features do
not use may be left out; a known prefix may be added or removed), named by the user, fetched on
request (``--download``) and identified by digest in a feature signature."""
from __future__ import annotations

import hashlib
import logging
import socket
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

from torch import nn

from s2vt.runtime.errors import WeightsNotFound
from s2vt.runtime.inputs import check_input_file
from s2vt.runtime.state_dicts import fitting_state, load_tensors, load_exactly, mismatch, prefix_hint, with_unused


def read_state(path: Path, name: str) -> dict:
    """The tensors of a ``.safetensors`` or torch (``.pth``/``.bin``) weights file, unwrapped from a
    training checkpoint's ``state_dict`` / ``model`` key; WeightsNotFound naming the file otherwise."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = load_tensors(path)
    except Exception as e:  # pickles that would run code, damaged files, text files
        raise WeightsNotFound(f"{path} is not a plain-tensor {name} weights file (damaged, not a torch or safetensors "
                              f"file, or holding objects that would run code when loaded; {type(e).__name__})")
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsNotFound(f"{path} holds a {type(state).__name__}, not a {name} state dict")
    return state


def load_state(net: nn.Module, path, name: str, remap: Optional[Callable[[dict, nn.Module], dict]] = None,
               unused: Sequence[str] = ()) -> None:
    """Load a weights file into ``net``; WeightsNotFound naming the file when it is not one that fits.

    ``remap``: the library's conversion of published names to the network's; ``unused``: key prefixes
    of tensors the features never reach (a classifier), which the file may lack. A file whose names
    fit once a known prefix is added or removed loads, with a warning that says so; otherwise the
    error names the prefix that would make the names fit, where one would."""
    state = read_state(Path(path), name)
    what = f"{path} does not fit {name} ({type(net).__name__})"
    fits, how, error = fitting_state(net, state, remap, unused)
    if fits is not None:
        load_exactly(net, fits, WeightsNotFound, what)
        if how:
            warnings.warn(f"{path}: loaded into {name} {how} (its names otherwise differ from the network's)",
                          stacklevel=2)
        return
    if error is not None:
        raise WeightsNotFound(f"{what}: {' '.join(str(error).split())[:300]}")
    state = with_unused(net, remap(state, net) if remap is not None else state, unused)
    hint = prefix_hint(net.state_dict(), state)
    raise WeightsNotFound(f"{what}: {mismatch(net, state)}" + (f"; the names would fit {hint}" if hint else ""))


def given_weights(weights: str, flag: str) -> Path:
    """The weights file a user named with ``flag``; WeightsNotFound when it is missing, and the
    kind of file when it is not a regular one (a FIFO, socket, device or folder is never opened)."""
    p = Path(weights).expanduser()
    if not p.is_file():
        if p.exists():
            check_input_file(p, flag, max_bytes=None)
        raise WeightsNotFound(f"{flag}: weights file not found: {p}")
    return p


def fetch_weights(fetch: Callable[[], None], name: str, flag: str = "--weights") -> None:
    """``--download``: run the library's own loader (it writes to a temporary name and renames, so a
    failed download leaves nothing that a later run would take for the file); one line when it fails,
    naming ``flag``, the option that supplies the file instead."""
    hub_log = logging.getLogger("huggingface_hub")  # its retry warnings: a line per try, a minute offline
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)
    try:
        fetch()
    except KeyboardInterrupt:
        raise
    except Exception as e:  # no network, a proxy, a missing file on the hub: the library's own error types
        why = " ".join(str(e).split())[:200] or type(e).__name__
        raise WeightsNotFound(f"--download could not fetch the weights of {name} ({type(e).__name__}: {why}); check "
                              f"this machine's internet access, or pass the weights file with {flag}") from None
    finally:
        hub_log.setLevel(level)


def check_reachable(url: str, timeout: float = 5.0) -> None:
    """ConnectionError at once when ``url``'s host cannot be reached directly (its name does not
    resolve, no route, refused), before a library's loader retries for a minute. Nothing is checked
    when a proxy is configured for it: the loader goes through the proxy."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    if not host or (urllib.request.getproxies() and not urllib.request.proxy_bypass(host)):
        return
    try:
        socket.create_connection((host, parts.port or (443 if parts.scheme == "https" else 80)), timeout).close()
    except OSError as e:
        raise ConnectionError(f"cannot reach {host}: {e.strerror or e}") from None


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]
