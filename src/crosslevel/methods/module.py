"""The one training module: backbone + two heads + NPID instance branch + optional CLD term."""

from __future__ import annotations

import dataclasses
import math

import lightning.pytorch as pl
import torch

from ..config import Config, peak_lr
from ..losses import bank_softmax_loss, cld_loss
from ..models import TwoHeads, build_backbone
from .memory_bank import MemoryBank


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR factor at ``step``: linear warm-up over ``warmup`` steps, then cosine to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class ContrastiveModule(pl.LightningModule):
    """NPID (``cld_weight = 0``) or CLD on NPID.

    Loss per step, for a batch of two views (paper eq. 3):
    ``L = ½ [C(f_I(x), bank) + C(f_I(x'), bank)] + λ · cld_loss(f_G(x), f_G(x'))``.
    After the optimiser step the bank rows of the batch are updated with each view's f_I.

    Args:
        cfg: the run's config.
        num_train: N, the size of the training set (rows of the bank).
        in_channels: image channels (1 for digits, 3 otherwise).
    """

    def __init__(self, cfg: Config, num_train: int, in_channels: int = 3) -> None:
        super().__init__()
        self.save_hyperparameters({"cfg": dataclasses.asdict(cfg), "num_train": num_train, "in_channels": in_channels})
        self.cfg = cfg
        self.backbone = build_backbone(cfg.backbone, in_channels, cfg.width)
        self.heads = TwoHeads(self.backbone.out_dim, cfg.feature_dim, cfg.normlinear, cfg.mlp)
        self.bank = MemoryBank(num_train, cfg.feature_dim, cfg.bank_momentum)
        self._pending_update: tuple[torch.Tensor, list[torch.Tensor]] | None = None

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """B×C×H×W → (pooled f B×d, instance f_I B×D, group f_G B×D); heads are unit-norm."""
        pooled = self.backbone(images)
        instance, group = self.heads(pooled)
        return pooled, instance, group

    @torch.no_grad()
    def embed(self, images: torch.Tensor, feature: str = "f_I") -> torch.Tensor:
        """Evaluation features of a batch: ``f`` (pooled, L2-normalised), ``f_I`` or ``f_G``."""
        pooled, instance, group = self(images)
        return {"f": torch.nn.functional.normalize(pooled.float(), dim=1), "f_I": instance, "f_G": group}[feature].float()

    def training_step(self, batch: tuple[list[torch.Tensor], torch.Tensor], batch_idx: int) -> torch.Tensor:
        views, indices = batch
        _, instance, group = self(torch.cat(list(views)))
        instance_views = instance.float().chunk(len(views))
        loss_inst = torch.stack(
            [bank_softmax_loss(v, self.bank.memory, indices, self.cfg.temperature) for v in instance_views]
        ).mean()
        loss = loss_inst
        logs = {"loss_inst": loss_inst}
        if self.cfg.cld_weight > 0:
            group_a, group_b = group.float().chunk(len(views))[:2]
            loss_cld = cld_loss(group_a, group_b, self.cfg.num_groups, self.cfg.cld_temperature, self.cfg.kmeans_iters)
            loss = loss + self.cfg.cld_weight * loss_cld
            logs["loss_cld"] = loss_cld
        self._pending_update = (indices, [v.detach() for v in instance_views])
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(indices))
        self.log_dict(logs, on_step=False, on_epoch=True, batch_size=len(indices))
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=len(indices))
        return loss

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        """Update the bank after the optimiser step, one view after the other (as the reference)."""
        if self._pending_update is not None:
            indices, instance_views = self._pending_update
            for features in instance_views:
                self.bank.update(indices, features)
            self._pending_update = None

    def configure_optimizers(self) -> dict:
        world = self.trainer.world_size if self._trainer is not None else 1
        optimizer = torch.optim.SGD(
            self.parameters(), lr=peak_lr(self.cfg, world), momentum=self.cfg.momentum, weight_decay=self.cfg.weight_decay
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(total * self.cfg.warmup_epochs / self.cfg.epochs)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, total, warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
