"""Devices in one place: parsed and normalised once, compared only normalised.

``torch.device("cuda") == torch.device("cuda:0")`` is False, while every tensor on the first
GPU reports ``cuda:0``; so a device name is turned into a device with its index filled in
(:func:`resolve`) where a command starts, and code compares the results of that function
only. Under ``torchrun`` a bare ``cuda`` means this process's GPU, ``cuda:$LOCAL_RANK``; a GPU
named by its index is refused when torchrun starts several processes on the machine (they would
all take it).

The CUDA settings a run depends on are set here too (:func:`configure`): fp32 means IEEE
fp32 (no TF32 in cuDNN convolutions and RNNs nor in matmuls, so GPU "fp32" features and
losses match the CPU's and do not vary with the batch size), and cuDNN picks its fastest
algorithms for the fixed shapes of extraction (``benchmark``).
"""
from __future__ import annotations

import contextlib
import os
from typing import Optional, Tuple, Union

import torch

from s2vt.runtime.errors import ConfigError

DeviceLike = Union[str, torch.device]


def local_rank() -> Optional[int]:
    """This process's GPU index under torchrun (``LOCAL_RANK``), else None."""
    value = os.environ.get("LOCAL_RANK")
    if value is None:
        return None
    try:
        rank = int(value)
    except ValueError:
        raise ConfigError(f"LOCAL_RANK={value!r} (set by torchrun) must be an integer")
    if rank < 0:
        raise ConfigError(f"LOCAL_RANK={value} (set by torchrun) must be >= 0")
    return rank


def torchrun_world() -> Optional[Tuple[int, int]]:
    """(RANK, WORLD_SIZE) as torchrun sets them (both); None otherwise. ConfigError when they are not
    integers with 0 <= RANK < WORLD_SIZE."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    r, w = os.environ["RANK"], os.environ["WORLD_SIZE"]
    try:
        rank, world = int(r), int(w)
    except ValueError:
        raise ConfigError(f"RANK={r!r} and WORLD_SIZE={w!r} (set by torchrun) must be integers")
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={r} WORLD_SIZE={w} (set by torchrun): need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE")
    return rank, world


def local_world_size() -> int:
    """Processes of this run on this machine (``LOCAL_WORLD_SIZE`` under torchrun), else 1."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    except ValueError:
        raise ConfigError(f"LOCAL_WORLD_SIZE={os.environ['LOCAL_WORLD_SIZE']!r} (set by torchrun) must be an integer")


def normalize(device: DeviceLike) -> torch.device:
    """``device`` with its index filled in (``cuda`` -> ``cuda:LOCAL_RANK`` or ``cuda:0``); no checks."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", local_rank() or 0)
    if dev.type == "cpu":
        return torch.device("cpu")
    return dev


def resolve(device: DeviceLike, flag: str = "--device") -> torch.device:
    """The normalised device named ``device`` (a name or a torch.device), or ConfigError saying what this
    machine has."""
    if not isinstance(device, (str, torch.device)):  # torch.device(5) would be cuda:5, None a page of overloads
        raise ConfigError(f"{flag} must be a device name (a str such as 'cpu', 'cuda' or 'cuda:1', or a "
                          f"torch.device), not {type(device).__name__}")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"{flag} {device!r} is not a device name (cpu, cuda, cuda:1, ...): "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{flag} {device}: no CUDA GPU is available here; use {flag} cpu")
        if dev.index is not None and local_world_size() > 1:  # every process would take that one GPU
            raise ConfigError(f"{flag} {device}: torchrun runs {local_world_size()} processes on this machine and "
                              f"each takes its own GPU, cuda:LOCAL_RANK; pass {flag} cuda")
        dev = normalize(dev)
        count = torch.cuda.device_count()
        if dev.index >= count:
            why = " (LOCAL_RANK, set by torchrun)" if torch.device(device).index is None else ""
            raise ConfigError(f"{flag} {device}: device cuda:{dev.index}{why} does not exist; "
                              f"this machine has {count} CUDA device(s)")
        return dev
    if dev.type not in ("cpu", "mps"):
        raise ConfigError(f"{flag} {device}: unsupported device type {dev.type!r} (cpu or cuda)")
    return normalize(dev)


def same(a: DeviceLike, b: DeviceLike) -> bool:
    """Whether ``a`` and ``b`` name the same device (``cuda`` and ``cuda:0`` do)."""
    return normalize(a) == normalize(b)


def synchronize(device: DeviceLike) -> None:
    """Wait for the work queued on ``device`` (that device's, not the current one's); no-op on the CPU."""
    dev = normalize(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def name(device: DeviceLike) -> str:
    """A device's name for benchmark output: the GPU's model, or the CPU with its thread count."""
    dev = normalize(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({torch.get_num_threads()} threads)"


def configure(device: DeviceLike, fp32: bool = True, benchmark: bool = False) -> None:
    """Set the CUDA switches a run on ``device`` depends on (nothing on the CPU).

    ``fp32``: float32 work stays IEEE float32: TF32 off for matmuls and for cuDNN's
    convolutions and RNNs (cuDNN uses TF32 by default). ``benchmark``: let cuDNN time its
    algorithms once per input shape (extraction's shapes are fixed)."""
    if normalize(device).type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = not fp32
    torch.backends.cudnn.allow_tf32 = not fp32
    torch.backends.cudnn.benchmark = benchmark


@contextlib.contextmanager
def ieee_fp32():
    """float32 work inside is IEEE float32 (TF32 off for matmuls and cuDNN) whatever :func:`configure`
    set for the rest of the run (``--precision bf16`` allows TF32); the switches are restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def cuda_settings() -> dict:
    """The switches :func:`configure` sets, as recorded next to GPU results."""
    return {"matmul_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
            "cudnn_tf32": bool(torch.backends.cudnn.allow_tf32),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark)}
