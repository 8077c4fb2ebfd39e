"""MoCo's instance branch: a momentum (EMA) copy of the encoder and a queue of negative keys
(He et al. 2020); with the CLD term this is the paper's CLDm."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..distributed import gather, world_size
from ..errors import CrossLevelError
from ..losses import moco_loss
from .branch import InstanceBranch


class KeyQueue(nn.Module):
    """A ring buffer of K×D keys (a buffer, so it is checkpointed) and its write pointer.

    ``enqueue`` writes keys at the pointer and wraps around the end, so a batch need not divide
    K and a last partial batch is fine; the pointer then advances by the number of keys written.
    Initialised, as MoCo does, with random unit vectors.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return self.keys.shape[0]

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write this rank's B×D ``keys``, gathered from all ranks (rank order), over the oldest entries."""
        keys = gather(keys.detach().to(self.keys.dtype))
        if len(keys) > len(self):
            raise CrossLevelError(
                f"{len(keys)} keys in one step do not fit a queue of {len(self)}: raise queue_size to at least "
                "the global batch (batch_size × devices)"
            )
        slots = (self.pointer + torch.arange(len(keys), device=keys.device)) % len(self)
        self.keys.index_copy_(0, slots, keys)
        self.pointer.copy_((self.pointer + len(keys)) % len(self))


@torch.no_grad()
def momentum_update(key: nn.Module, query: nn.Module, momentum: float) -> None:
    """``θ_key ← m·θ_key + (1 − m)·θ_query`` for every parameter.

    Buffers (BN running statistics) are not copied: the key encoder keeps its own.
    """
    key_params = list(key.parameters())
    query_params = [p.detach() for p in query.parameters()]
    torch._foreach_lerp_(key_params, query_params, 1.0 - momentum)


@torch.no_grad()
def _shuffle_across_devices(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle-BN, step 1 (MoCo): give every rank a random slice of the global batch.

    Returns this rank's shuffled images and the permutation that undoes the shuffle.
    """
    everything = gather(images)
    order = torch.randperm(len(everything), device=images.device)
    dist.broadcast(order, src=0)
    mine = order.view(world_size(), -1)[dist.get_rank()]
    return everything[mine], order.argsort()


@torch.no_grad()
def _unshuffle_across_devices(features: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
    """Shuffle-BN, step 2: return to every rank the features of its own images, in its own order."""
    return gather(features)[restore.view(world_size(), -1)[dist.get_rank()]]


class MomentumEncoder(nn.Module):
    """The key encoder of MoCo (BYOL's target network): a frozen deep copy of (backbone, heads),
    moved by EMA only.

    Keys are the copy's instance-head output f_I. With ``shuffle`` and several devices the key batch
    is computed with shuffle-BN (BN statistics over a random slice of the global batch, as MoCo
    does); on one device shuffle-BN is a no-op and is off (no split-BN emulation): key BN
    statistics are those of the key batch. ``channels_last``: images are laid out NHWC, as the
    copied backbone's weights.
    """

    def __init__(self, backbone: nn.Module, heads: nn.Module, momentum: float, shuffle: bool = True, channels_last: bool = False) -> None:
        super().__init__()
        self.backbone = copy.deepcopy(backbone)
        self.heads = copy.deepcopy(heads)
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.momentum = momentum
        self.shuffle = shuffle
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    @torch.no_grad()
    def update(self, backbone: nn.Module, heads: nn.Module) -> None:
        """One EMA step towards the query encoder ``(backbone, heads)``."""
        momentum_update(self.backbone, backbone, self.momentum)
        momentum_update(self.heads, heads, self.momentum)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """B×C×H×W → B×D unit-norm keys (f_I of the key encoder)."""
        images = images.contiguous(memory_format=self.memory_format)
        shuffled = self.shuffle and world_size() > 1
        if shuffled:
            images, restore = _shuffle_across_devices(images)
        keys, _ = self.heads(self.backbone(images))
        return _unshuffle_across_devices(keys, restore) if shuffled else keys


class MoCoBranch(InstanceBranch):
    """The key encoder embeds the last view into keys; each query view's f_I is classified against
    its own key (positive) and the queue (negatives) at temperature T. After the step the key
    encoder takes its EMA step towards the query encoder -- the same keys as MoCo's EMA at the start
    of the next step, and a skipped step moves nothing -- and the keys of all ranks are enqueued.
    """

    key_views = 1

    def __init__(
        self,
        backbone: nn.Module,
        heads: nn.Module,
        queue_size: int,
        dim: int,
        temperature: float,
        momentum: float,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.key_encoder = MomentumEncoder(backbone, heads, momentum, channels_last=channels_last)
        self.queue = KeyQueue(queue_size, dim)
        self.temperature = temperature
        self._pending: torch.Tensor | None = None

    @classmethod
    def from_config(cls, cfg: Config, num_train: int, backbone: nn.Module, heads: nn.Module) -> MoCoBranch:
        return cls(backbone, heads, cfg.queue_size, cfg.feature_dim, cfg.instance_temperature, cfg.ema_momentum, cfg.channels_last)

    def check(self, cfg: Config, world_size: int) -> None:
        if len(self.queue) < cfg.batch_size * world_size:
            raise CrossLevelError(
                f"queue_size={len(self.queue)} is smaller than the global batch "
                f"({cfg.batch_size} × {world_size} devices): the queue must hold one step's keys"
            )

    def ddp_ignore(self) -> list[str]:
        return ["queue.keys", "queue.pointer"]

    def compile_encoders(self, mode: str) -> None:
        self.key_encoder.backbone.compile(mode=mode, dynamic=False)
        self.key_encoder.heads.compile(mode=mode, dynamic=False)

    def targets(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.key_encoder(views[-1]).float()

    def loss(self, queries: Sequence[torch.Tensor], indices: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        self._pending = targets
        return torch.stack([self.query_loss(q, indices, targets) for q in queries]).mean()

    def query_loss(self, query: torch.Tensor, indices: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
        if targets is None:
            raise ValueError("MoCo's loss needs the keys of the key view (targets)")
        return moco_loss(query, targets, self.queue.keys, self.temperature)

    def after_step(self, backbone: nn.Module, heads: nn.Module, progress: float) -> None:
        if self._pending is not None:
            self.key_encoder.update(backbone, heads)
            self.queue.enqueue(self._pending)
        self._pending = None

    def discard(self) -> None:
        self._pending = None
