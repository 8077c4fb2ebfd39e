"""The training sampler and loader: a seeded shuffle per epoch, sharded over devices, resumable mid-epoch."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.utils.data import DataLoader, Sampler

from ..distributed import rank, world_size

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class ResumableSampler(Sampler[int]):
    """Indices of one epoch: ``randperm(N)`` seeded by ``(seed, epoch)``, dealt round-robin to the ranks.

    * The order depends only on ``seed`` and the epoch, never on the global RNG, so a resumed
      run sees the same images in the same order as an uninterrupted one.
    * Rank ``r`` of ``W`` gets ``perm[r::W]`` cut to ``N // W`` indices: every rank has the same
      number of batches and no image appears twice in a global batch (the last ``N mod W``
      images of the permutation sit out that epoch). With ``drop_last=True`` in the DataLoader
      the global batch at step ``s`` is the ``W`` local batches ``s`` in rank order.
    * :meth:`fast_forward` skips the images already trained on in a partly finished epoch.

    Rank and world size are read when the sampler is used, so it can be built before the
    distributed processes start.
    """

    def __init__(self, count: int, seed: int = 0) -> None:
        self.count = count
        self.seed = seed
        self.epoch = 0
        self.skip = 0  # images of this rank's share of ``epoch`` already consumed

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer before every epoch; a new epoch starts from its first image."""
        if epoch != self.epoch:
            self.epoch, self.skip = epoch, 0

    def fast_forward(self, epoch: int, consumed: int) -> None:
        """Continue ``epoch`` after the first ``consumed`` images of this rank's share."""
        self.epoch, self.skip = epoch, consumed

    def permutation(self, epoch: int) -> torch.Tensor:
        """The global order of ``epoch`` (N long indices), the same on every rank."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.count, generator=generator)

    def __len__(self) -> int:
        """This rank's share of a whole epoch (constant, also while fast-forwarded)."""
        return self.count // world_size()

    def __iter__(self) -> Iterator[int]:
        world = world_size()
        share = self.permutation(self.epoch)[rank() :: world][: self.count // world]
        return iter(share[self.skip :].tolist())


def leave_stops_to_the_trainer(worker_id: int) -> None:
    """A loader worker's ``worker_init_fn``: leave a stop to the training process, which stops at a
    step boundary, writes its checkpoint and then ends its workers itself (a worker stopped first
    fails the loader, and the checkpoint with it).

    * SIGINT, which a terminal's Ctrl-C sends to the whole process group, is ignored.
    * SIGTERM is blocked and read by a thread: sent by the process that started the worker (the loader
      ending its workers, or ``multiprocessing`` at exit) it ends the worker as before; sent by anyone else (a
      scheduler signalling every process of a job, ``kill -TERM -PGID``) it is left to the parent,
      which receives it too.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # (one pending since the worker started is discarded)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the training process's handler, which a fork passes on
    signal.pthread_sigmask(signal.SIG_SETMASK, {signal.SIGTERM})  # threads started from here on inherit the mask
    threading.Thread(target=_end_on_sigterm_from_parent, name="sigterm-from-parent", daemon=True).start()


def _end_on_sigterm_from_parent() -> None:
    """Wait for SIGTERMs; end the process on the first one sent by the process that started it."""
    creators = {os.getppid(), getattr(multiprocessing.parent_process(), "pid", None)}  # under forkserver: not the parent
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid not in creators:
        pass
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # in this thread, with the default action
    os.kill(os.getpid(), signal.SIGTERM)  # killed by SIGTERM, as an unprotected worker would be


@contextmanager
def stops_blocked() -> Iterator[None]:
    """SIGINT and SIGTERM blocked in this thread (pending until unblocked) for the duration, and in the
    threads and forked processes it starts meanwhile, which inherit the mask: a signal that reaches a new
    loader worker before its ``worker_init_fn`` waits for it instead of killing it (and failing the loader).
    (``spawn`` and ``forkserver`` start their processes with no signal blocked.)"""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


class ResumableLoader(DataLoader):
    """A DataLoader over a :class:`ResumableSampler`; its ``state_dict`` / ``load_state_dict`` tell
    Lightning that it resumes mid-epoch. The position itself (epoch, images consumed) needs the
    trainer's progress, so :class:`~crosslevel.checkpointing.ResumeState` saves and restores it
    through the sampler; Lightning's share of the loader state is empty."""

    def _get_iterator(self) -> Iterator:
        """A new iterator, which starts the worker processes (once, with persistent workers); the (forked)
        workers start with the stop signals blocked (:func:`stops_blocked`; :func:`leave_stops_to_the_trainer`
        takes over in each). An epoch of persistent workers does not block them (its reset waits on the workers)."""
        with stops_blocked():
            return super()._get_iterator()

    def state_dict(self) -> dict[str, object]:
        return {}

    def load_state_dict(self, state_dict: dict[str, object]) -> None:
        """Nothing to load: the sampler's position is restored by ``ResumeState``."""
