"""Sharded evaluation: the points in fixed blocks, each seeded by its place, spread over processes.

    blocks = run_blocks(n=1000, size=256, seed=0, compute=evaluate_block,
                        shards=ShardDir(Path("runs/demo/shards/1a2b3c")), ctx=current())

The evaluated points are cut into blocks of ``size`` consecutive points (the last one may be
shorter). Block ``i`` runs with every random generator seeded from (``seed``, ``i``), so its
outcome depends on which points it holds and on nothing else: not on the number of
processes, which process runs it, the order of the blocks, or whether it ran in an earlier,
interrupted run. Under torchrun every process takes the blocks ``i`` with
``i % world_size == rank``; the finished blocks of every process are then gathered, in block
order, in every process (rank 0 writes the record). Each finished block is saved at once in
the :class:`ShardDir`, which a rerun reads back instead of recomputing.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustact.distributed import DistContext
from robustact.eval.config import BLOCK
from robustact.files import atomic_path, describe_os_error

__all__ = ["BLOCK", "ShardDir", "Span", "block_seed", "plan", "run_blocks", "seed_everything"]

Block = dict[str, Any]  # what ``compute`` returns for one block: tensors, numbers, strings


@dataclass(frozen=True)
class Span:
    index: int
    lo: int
    hi: int


def plan(n: int, size: int) -> list[Span]:
    """The blocks of ``n`` points, ``size`` each (the last one may be shorter)."""
    return [Span(i, lo, min(lo + size, n)) for i, lo in enumerate(range(0, n, size))]


def block_seed(seed: int, index: int) -> int:
    """A 63-bit seed for block ``index`` of an evaluation seeded with ``seed``."""
    digest = hashlib.sha256(f"robustact-block:{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and every GPU), numpy's and Python's global generators."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class ShardDir:
    """The finished blocks of one evaluation, one file each (``block-00003.pt``), written
    atomically as each block finishes; the folder's name should identify the evaluation
    (:func:`robustact.eval.checkpoint.shard_dir`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _file(self, index: int) -> Path:
        return self.path / f"block-{index:05d}.pt"

    def load(self, index: int) -> Block | None:
        """The saved block, or None when it is missing or unreadable (then it is rerun)."""
        path = self._file(index)
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged block file is recomputed, not trusted
            return None

    def save(self, index: int, block: Block) -> str | None:
        """Save a finished block; on an I/O failure (a full disk, a read-only folder) return
        why, in one line, instead of raising: the block stays in memory and the evaluation
        goes on (only resuming loses it)."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with atomic_path(self._file(index)) as tmp:
                torch.save(block, tmp)
        except (OSError, RuntimeError) as exc:  # torch.save reports a failed write as either
            reason = describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
            return reason.splitlines()[0] if reason else type(exc).__name__
        return None

    def saved(self) -> list[int]:
        return sorted(int(p.stem.split("-")[1]) for p in self.path.glob("block-*.pt"))

    def remove(self) -> None:
        """Delete the saved blocks (once the evaluation's record is safely written), and
        their parent folder when nothing else is left in it."""
        shutil.rmtree(self.path, ignore_errors=True)
        with contextlib.suppress(OSError):  # other evaluations' blocks, or already gone
            self.path.parent.rmdir()


def run_blocks(n: int, size: int, seed: int, compute: Callable[[Span], Block], *,
               shards: ShardDir | None = None, ctx: DistContext | None = None,
               log: Callable[[str], None] | None = None) -> list[Block]:
    """Every block's result, in block order, in every process (see the module docstring)."""
    ctx = ctx or DistContext()
    spans = plan(n, size)
    mine: dict[int, Block] = {}
    resumed = 0
    unsaved: str | None = None
    for span in spans[ctx.rank::ctx.world_size]:
        block = shards.load(span.index) if shards is not None else None
        if block is None:
            seed_everything(block_seed(seed, span.index))
            block = compute(span)
            failure = shards.save(span.index, block) if shards is not None else None
            if failure is not None and unsaved is None and log is not None:
                log(f"rank {ctx.rank}: could not save finished blocks for resuming "
                    f"({failure}); the evaluation goes on, a rerun would recompute them")
            unsaved = unsaved or failure
        else:
            resumed += 1
        mine[span.index] = block
    if resumed and log is not None:
        log(f"rank {ctx.rank}: {resumed} finished block(s) read back from {shards.path}")
    merged: dict[int, Block] = {}
    for part in ctx.gather(mine):
        merged.update(part)
    return [merged[span.index] for span in spans]
