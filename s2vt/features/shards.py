"""Extraction split across processes: rank I of N takes every N-th video into its own shard file
(torchrun's RANK / WORLD_SIZE, or ``--shard I/N``); ``s2vt merge-features`` joins them."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

from s2vt.runtime.devices import torchrun_world
from s2vt.runtime.errors import S2VTError


def check_shard(rank: int, world: int) -> Tuple[int, int]:
    """(rank, world) when 0 <= rank < world; else S2VTError."""
    ints = all(isinstance(x, int) and not isinstance(x, bool) for x in (rank, world))
    if not ints or world < 1 or not 0 <= rank < world:
        raise S2VTError(f"--shard {rank}/{world}: need integers with N >= 1 and 0 <= I < N")
    return rank, world


def shard_items(items: Sequence, rank: int, world: int) -> list:
    """Every ``world``-th item starting at ``rank`` (items sorted by id first)."""
    check_shard(rank, world)
    return sorted(items)[rank::world]


def shard_path(out, rank: int, world: int) -> Path:
    check_shard(rank, world)
    out = Path(out)
    return out.with_name(f"{out.stem}.shard{rank}of{world}{out.suffix}") if world > 1 else out


def env_shard() -> Optional[Tuple[int, int]]:
    """(rank, world size) set by torchrun, if any."""
    return torchrun_world()


def parse_shard(text: str) -> Tuple[int, int]:
    """``--shard I/N`` as (I, N), checked by :func:`check_shard`."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise S2VTError(f"--shard {text!r}: expected I/N with integers, e.g. 0/4")
    return check_shard(i, n)
