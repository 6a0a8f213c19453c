"""Data-parallel training under ``torchrun``: one process per rank, each computing a shard of every
batch; ``DistributedDataParallel`` averages the gradients (gloo on CPU, NCCL on GPU).

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment, or 1) everything here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import WgraphError


class DistributedError(WgraphError):
    """A data-parallel setup that cannot work (e.g. more GPU ranks than GPUs)."""


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    owns_group: bool = False  # this module started the process group (and ends it)

    @property
    def main(self) -> bool:
        """Rank 0: the only one that writes files and shows progress."""
        return self.rank == 0


def setup(device: str) -> tuple[Ranks, torch.device]:
    """The ranks of this process and its device (``"cpu"``, ``"cuda"`` or ``"cuda:N"``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise DistributedError(f"--device {device}: CUDA is not available on this machine")
    if world <= 1:
        return Ranks(), torch.device(device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        if local >= torch.cuda.device_count():
            raise DistributedError(
                f"rank {rank} has local rank {local} but this machine has {torch.cuda.device_count()} GPU(s): "
                "run at most one process per GPU (--nproc_per_node), or use --device cpu (gloo)"
            )
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device("cpu")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo")
    return Ranks(rank, world, owns), dev


def barrier(ranks: Ranks) -> None:
    if ranks.world > 1:
        dist.barrier()


def teardown(ranks: Ranks) -> None:
    if ranks.owns_group and dist.is_initialized():
        dist.destroy_process_group()
