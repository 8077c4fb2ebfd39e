"""The one training module: backbone + two heads + an instance branch (NPID, MoCo, SimCLR, BYOL) + the optional CLD term."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import lightning.pytorch as pl
import torch

from ..config import Config, backbone_kwargs, compile_mode, lr_milestones, peak_lr
from ..distributed import any_rank
from ..errors import CrossLevelError, warn
from ..losses import CrossLevelLoss
from ..models import TwoHeads, build_backbone
from ..models.view_norm import per_view_batchnorm, stacked_views
from .branch import InstanceBranch
from .byol import BYOLBranch
from .jigsaw import JigsawHead, jigsaw_patches
from .moco import MoCoBranch
from .npid import NPIDBranch
from .simclr import SimCLRBranch


MIN_LR = 1e-6  # the reference's cosine floor (CosineAnnealingLR eta_min)


# ``instance=`` → the branch's constructor from (cfg, num_train, backbone, heads): a new method is one
# file with an InstanceBranch and one line here (and its name in the config's choices).
BRANCHES = {
    "npid": NPIDBranch.from_config,
    "moco": MoCoBranch.from_config,
    "simclr": SimCLRBranch.from_config,
    "byol": BYOLBranch.from_config,
}


def _warmup(step: int, warmup: int, start: float) -> float:
    """The warm-up's LR factor at ``step`` < ``warmup``: ``(step + 1) / warmup`` with ``start = 0``, or --
    the reference's GradualWarmupScheduler, ``start = 0.01`` -- ``start + (1 − start)·step / warmup``."""
    return start + (1.0 - start) * step / warmup if start > 0 else (step + 1) / warmup


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.0, start: float = 0.0) -> float:
    """LR factor at ``step``: linear warm-up over ``warmup`` steps (:func:`_warmup`), then cosine from 1
    to ``floor`` at ``total`` (floor = MIN_LR / peak, the reference's eta_min)."""
    if step < warmup:
        return _warmup(step, warmup, start)
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def warmup_step_decay(step: int, warmup: int, milestones: Sequence[int], gamma: float, start: float = 0.0) -> float:
    """LR factor at ``step``: the warm-up of :func:`warmup_cosine`, then ``gamma`` to the power of the
    ``milestones`` reached (``step >= m``, as torch's MultiStepLR; one inside the warm-up applies when
    it ends; the original NPID's CIFAR script: milestones 120, 160 epochs, gamma 0.1)."""
    if step < warmup:
        return _warmup(step, warmup, start)
    return gamma ** sum(step >= milestone for milestone in milestones)


class ContrastiveModule(pl.LightningModule):
    """NPID, CLD, MoCo, CLDm, SimCLR, BYOL (each ± CLD): one backbone, two heads, an instance branch
    and the optional CLD term.

    A batch is ``(views, indices)`` with ``num_views(cfg)`` views. The query encoder (backbone +
    heads) sees the *query views*: all but the branch's last ``key_views`` (NPID: every view, two
    or one with ``npid_views=1``; MoCo: all but the key view; SimCLR, BYOL: both). Each view has its own forward pass,
    as in the reference: BatchNorm statistics never mix views (a joint pass would leak them, the
    leak MoCo's shuffle-BN avoids); ``fused_views`` stacks the views into one pass whose BatchNorm
    layers still normalise each view apart (:mod:`~crosslevel.models.view_norm`). Then

        loss = branch.loss(f_I of the query views) + λ · cld_loss(f_G(view 1), f_G(view 2))

    and after the optimiser step ``branch.after_step`` (NPID: bank update; MoCo: EMA + enqueue; BYOL:
    EMA). The branch is ``BRANCHES[cfg.instance]`` (:mod:`.npid`, :mod:`.moco`, :mod:`.simclr`, :mod:`.byol`).

    The k-means and the losses run in float32 even under bf16/fp16 autocast.

    Args:
        cfg: the run's config.
        num_train: N, the size of the training set (rows of the NPID bank).
        in_channels: image channels (1 for digits, 3 otherwise).
        image_size: side of the views; sizes the backbones that need it (timm ViTs), 0: their default.
    """

    def __init__(self, cfg: Config, num_train: int, in_channels: int = 3, image_size: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters(
            {"cfg": dataclasses.asdict(cfg), "num_train": num_train, "in_channels": in_channels, "image_size": image_size}
        )
        self.cfg = cfg
        self.backbone = build_backbone(
            cfg.backbone, in_channels, cfg.width, cfg.pool_window, cfg.conv_init, image_size, backbone_kwargs(cfg.backbone_args)
        )
        self.heads = TwoHeads(self.backbone.out_dim, cfg.feature_dim, cfg.normlinear, cfg.mlp, cfg.mlp_bn, cfg.mlp_shared)
        if cfg.channels_last:  # before the key encoder copies the backbone, so that both are NHWC
            self.backbone.to(memory_format=torch.channels_last)
        self.branch: InstanceBranch = BRANCHES[cfg.instance](cfg, num_train, self.backbone, self.heads)
        # fused_views: after the branch copied the encoder (its key / target networks see one view at a time)
        self._view_norms = per_view_batchnorm(self.backbone) + per_view_batchnorm(self.heads) if cfg.fused_views else []
        self.jigsaw = JigsawHead(self.backbone.out_dim, cfg.feature_dim, cfg.normlinear, cfg.mlp) if cfg.jigsaw_weight > 0 else None
        self._register_load_state_dict_pre_hook(_rename_old_branch_keys)
        # DDP would broadcast the N×D bank (or the queue) from rank 0 before every forward; every rank
        # applies the same gathered updates instead, so they are left out of DDP's buffer sync. Without
        # the CLD term (NPID, MoCo) f_G gets no gradient, and DDP must not wait for one.
        unused = [f"heads.{name}" for name in self.heads.group_parameter_names()] if cfg.cld_weight == 0 else []
        shared = [f"branch.{name}" for name in self.branch.ddp_ignore()]
        self._ddp_params_and_buffers_to_ignore = [*shared, *unused]
        mode = compile_mode(cfg)
        # in place: parameter names and checkpoints stay those of the plain modules; dynamic=False: one static
        # graph per shape (2B fused queries, B keys, the eval batch), never a dynamic-shape recompile
        if mode is not None:
            self.backbone.compile(mode=mode, dynamic=False)
            self.heads.compile(mode=mode, dynamic=False)
            self.branch.compile_encoders(mode)
        # k-means + CLD are ~80 small kernels per step: compiled, they fuse into a few (launch-bound on GPUs)
        self.cld = CrossLevelLoss(
            cfg.num_groups, cfg.cld_temperature, cfg.kmeans_iters, cfg.grouping, cfg.kmeans_scope, cfg.ncuts_eigenvectors, mode or False
        )
        self._skip_step = False
        self._nonfinite_steps: torch.Tensor | None = None  # cuda_graphs: non-finite steps not yet read on the host
        self._total_steps = 1  # set when training starts: the branch reads progress = step / total
        self.skipped_steps = 0
        self._epoch_sums: torch.Tensor | None = None  # batch-weighted sums of the loss and its parts this epoch
        self._epoch_names: list[str] = []
        self._epoch_images = 0
        self._embed_size = 0  # the largest evaluation batch so far (compiled: smaller ones are padded to it)

    def setup(self, stage: str) -> None:
        self.branch.check(self.cfg, self.trainer.world_size)
        device = self.trainer.strategy.root_device.type
        if self.cfg.cuda_graphs and device != "cuda":
            warn(f"cuda_graphs=true needs a CUDA GPU (this run trains on {device}): compiled without CUDA graphs")

    def on_train_start(self) -> None:
        self._total_steps = int(self.trainer.estimated_stepping_batches)  # for the branch's progress

    def _layout(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` in the backbone's memory format (NHWC with ``channels_last``)."""
        return images.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else images

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """B×C×H×W → (pooled f B×d, instance f_I B×D, group f_G B×D); heads are unit-norm."""
        pooled = self.backbone(self._layout(images))
        instance, group = self.heads(pooled)
        return pooled, instance, group

    @torch.no_grad()
    def embed(self, images: torch.Tensor, feature: str = "f_I") -> torch.Tensor:
        """Evaluation features of a batch: ``f`` (pooled, L2-normalised), ``f_I`` or ``f_G``. Compiled and in
        eval mode (each image on its own), a batch smaller than the largest so far -- a data set's last --
        is padded to that size and its rows cut off again: one compiled shape, no recompiling (~30 s a
        shape) and no second CUDA graph for the last batch of every pass."""
        count = len(images)
        if compile_mode(self.cfg) is not None and not self.training:
            self._embed_size = max(self._embed_size, count)
            if count < self._embed_size:
                images = torch.cat([images, images.new_zeros((self._embed_size - count, *images.shape[1:]))])
        if self.cfg.cuda_graphs:  # a new graph replay would overwrite the outputs of the last one
            torch.compiler.cudagraph_mark_step_begin()
        pooled, instance, group = self(images)
        pooled, instance, group = pooled[:count], instance[:count], group[:count]
        chosen = {"f": torch.nn.functional.normalize(pooled.float(), dim=1), "f_I": instance, "f_G": group}[feature]
        return chosen.float().clone() if self.cfg.cuda_graphs else chosen.float()

    def objective(
        self,
        instance_views: Sequence[torch.Tensor],
        group_views: Sequence[torch.Tensor],
        indices: torch.Tensor,
        targets: torch.Tensor | None = None,
        jigsaw: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one local batch and its parts.

        Args:
            instance_views: V tensors B×D, f_I of each query view.
            group_views: V tensors B×D, f_G of each query view; CLD uses the first two
                (grouped on this device's batch, or the gathered global one: ``kmeans_scope``).
            indices: B data-set indices of the images (the NPID bank rows).
            targets: what the branch compares the queries with (MoCo: B×D keys; BYOL: 2×B×D target
                projections), from ``branch.targets``; None for NPID and SimCLR.
            jigsaw: B×D jigsaw queries (``jigsaw_weight`` > 0), scored by ``branch.query_loss``.
        """
        with torch.autocast(self.device.type, enabled=False):  # instance loss, k-means and CLD in float32
            loss_inst = self.branch.loss([v.float() for v in instance_views], indices, targets)
            loss = loss_inst
            logs = {"loss_inst": loss_inst}
            if jigsaw is not None:
                loss_jigsaw = self.branch.query_loss(jigsaw.float(), indices, targets)
                loss = (1 - self.cfg.jigsaw_weight) * loss_inst + self.cfg.jigsaw_weight * loss_jigsaw
                logs["loss_jigsaw"] = loss_jigsaw
            if self.cfg.cld_weight > 0:
                group_a, group_b = (group.float() for group in group_views[:2])
                loss_cld = self.cld(group_a, group_b)
                if self.cfg.cuda_graphs:  # a graph's output: the next replay overwrites it, the logs keep it
                    loss_cld = loss_cld.clone()
                loss = loss + self.cfg.cld_weight * loss_cld
                logs["loss_cld"] = loss_cld
        return loss, logs

    def step_loss(self, views: Sequence[torch.Tensor], indices: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one batch and its parts: V views B×C×H×W of the images ``indices`` (B)
        through the query encoder (:meth:`_query_passes`), the branch's targets and :meth:`objective`.
        Tensor work only: nothing here reads a value back to the host."""
        split = len(views) - self.branch.key_views
        jigsaw = None
        if self.jigsaw is not None:  # the last view before the key views is cut into patches
            split -= 1
            jigsaw = self.jigsaw(self.backbone(self._layout(jigsaw_patches(views[split]))))
        outputs = self._query_passes(views[:split])
        targets = self.branch.targets(views)
        return self.objective([o[1] for o in outputs], [o[2] for o in outputs], indices, targets, jigsaw)

    def _query_passes(self, views: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(f, f_I, f_G) of each query view: one pass per view, or (``fused_views``) one pass over the
        stacked views with per-view BatchNorm statistics. Either way BN never mixes views."""
        if not self.cfg.fused_views or len(views) == 1:
            return [self(view) for view in views]
        with stacked_views(self._view_norms, len(views)):
            stacked = self(torch.cat(list(views)))
        return list(zip(*(part.chunk(len(views)) for part in stacked)))

    def training_step(self, batch: tuple[list[torch.Tensor], torch.Tensor], batch_idx: int) -> torch.Tensor:
        views, indices = batch
        loss, logs = self.step_loss(views, indices)
        nonfinite = ~torch.isfinite(loss.detach())
        if self.cfg.cuda_graphs:  # no host sync: counted on the device, read by _check_deferred
            self._nonfinite_steps = nonfinite.long() if self._nonfinite_steps is None else self._nonfinite_steps + nonfinite
        else:
            self._skip_step = any_rank(nonfinite)
            if self._skip_step:
                self.branch.discard()
                self._on_nonfinite(loss)
        if not self._skip_step:  # a skipped step (skip_nonfinite) stays out of the epoch's means
            self._add_to_epoch({"loss_epoch": loss, **logs}, len(indices))
        if self._writes_logs():  # self.log costs ~0.5 ms a value: only where Lightning writes; this rank's value, no
            # collective (the branch may differ between ranks when something sets trainer.should_stop on one)
            self.log("loss_step", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=len(indices))
            self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=len(indices))
        return loss

    def _writes_logs(self) -> bool:
        """Whether Lightning writes this step's logged values (every ``log_every_n_steps``; every step when
        this Lightning does not say)."""
        connector = getattr(self.trainer, "_logger_connector", None)
        return bool(getattr(connector, "should_update_logs", True))

    def _add_to_epoch(self, values: dict[str, torch.Tensor], batch_size: int) -> None:
        """Add a step's scalar ``values`` × ``batch_size`` to the epoch's sums, on the device (no host sync)."""
        stacked = torch.stack([value.detach().float() for value in values.values()]) * batch_size
        self._epoch_sums = stacked if self._epoch_sums is None else self._epoch_sums + stacked
        self._epoch_names, self._epoch_images = list(values), self._epoch_images + batch_size

    def on_train_epoch_end(self) -> None:
        """The epoch's batch-weighted means of the loss (``loss_epoch``) and its parts (``loss_inst``,
        ``loss_cld``, ``loss_jigsaw``), averaged over the ranks: what ``self.log(..., on_epoch=True)`` at
        every step would log, for one ``self.log`` per value and epoch (after a resume in the middle
        of an epoch: that epoch's steps since the resume)."""
        if self._epoch_sums is None:
            return
        means = dict(zip(self._epoch_names, (self._epoch_sums / self._epoch_images).unbind()))
        self.log("loss_epoch", means.pop("loss_epoch"), prog_bar=True, on_epoch=True, sync_dist=True)
        self.log_dict(means, on_epoch=True, sync_dist=True)
        self._epoch_sums, self._epoch_images = None, 0

    def _on_nonfinite(self, loss: torch.Tensor) -> None:
        """A NaN/inf loss on some rank: stop with a clear error, or (``skip_nonfinite``) skip the step."""
        step, epoch = self.trainer.global_step, self.current_epoch + 1  # epochs counted from 1, as metrics.csv
        if not self.cfg.skip_nonfinite:
            last = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or "none yet (first epoch): nothing to resume, rerunning starts afresh"
            raise CrossLevelError(
                f"the loss became non-finite ({loss.item()} on this device) at step {step} (epoch {epoch}); "
                "training stopped before this step "
                f"changed the weights or the bank. Last good checkpoint: {last}. Lower base_lr, or set "
                "skip_nonfinite=true to skip such steps"
            )
        self.skipped_steps += 1
        warn(f"non-finite loss ({loss.item()}) at step {step} (epoch {epoch}): step skipped, bank unchanged")

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Drop the gradients of a skipped step: SGD and AdamW leave parameters without a gradient untouched."""
        if self._skip_step:
            optimizer.zero_grad(set_to_none=True)

    def _check_deferred(self, collective: bool = True) -> None:
        """``cuda_graphs``: stop with a clear error if any step since the start had a non-finite loss
        (one host sync; ``collective``: all ranks must call it together, and any rank's counts)."""
        if self._nonfinite_steps is None:
            return
        found = self._nonfinite_steps > 0
        if not (any_rank(found) if collective else bool(found)):
            return
        last = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or "none yet (first epoch): nothing to resume, rerunning starts afresh"
        raise CrossLevelError(
            f"the loss became non-finite before step {self.trainer.global_step} (epoch {self.current_epoch + 1}); "
            f"cuda_graphs=true checks it every {self.trainer.log_every_n_steps} steps and before every checkpoint, "
            f"so no checkpoint holds those steps. Last good checkpoint: {last}. Lower base_lr, or train without "
            "cuda_graphs (which checks every step and can skip such steps with skip_nonfinite=true)"
        )

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        """After the optimiser step: the branch's update (NPID: bank rows; MoCo: EMA, then enqueue; BYOL: EMA);
        with ``cuda_graphs``, the deferred non-finite check every log interval and at the end of the epoch."""
        progress = self.trainer.global_step / max(1, self._total_steps)
        self.branch.after_step(self.backbone, self.heads, progress)
        if self.cfg.cuda_graphs and (
            self.trainer.global_step % self.trainer.log_every_n_steps == 0 or batch_idx + 1 >= self.trainer.num_training_batches
        ):
            self._check_deferred()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """``cuda_graphs``: a checkpoint is never written after a non-finite step (this rank's count)."""
        self._check_deferred(collective=False)

    def configure_optimizers(self) -> dict:
        world = self.trainer.world_size if self._trainer is not None else 1
        optimizer = build_optimizer(self, self.cfg, peak_lr(self.cfg, world))
        if self.cfg.schedule_interval == "epoch":
            total, warmup = self.cfg.epochs, self.cfg.warmup_epochs
        else:
            total = max(1, int(self.trainer.estimated_stepping_batches))
            warmup = int(total * self.cfg.warmup_epochs / self.cfg.epochs)
        start = self.cfg.warmup_start
        if self.cfg.lr_schedule == "step":  # milestone epochs in the schedule's unit, at epoch boundaries
            milestones = [epoch * total // self.cfg.epochs for epoch in lr_milestones(self.cfg)]
            factor = functools.partial(warmup_step_decay, warmup=warmup, milestones=milestones, gamma=self.cfg.lr_gamma, start=start)
        else:
            floor = min(1.0, MIN_LR / optimizer.param_groups[0]["lr"])
            factor = functools.partial(warmup_cosine, total=total, warmup=warmup, floor=floor, start=start)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": self.cfg.schedule_interval}}


def build_optimizer(module: torch.nn.Module, cfg: Config, lr: float) -> torch.optim.Optimizer:
    """The optimiser of ``module``'s trainable parameters (not a branch's frozen encoder) at ``lr``.

    ``sgd``: momentum ``sgd_momentum``, L2 ``weight_decay`` on every parameter (the reference's).
    ``adamw``: betas (0.9, 0.999), decoupled ``weight_decay`` on the weight matrices and kernels only:
    biases and norm scales/shifts (every parameter of one dimension) get none, as DINO does (a ViT's
    position embedding and class token are decayed; DeiT also exempts those).
    """
    trainable = [p for p in module.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay)
    decayed = [p for p in trainable if p.ndim > 1]
    undecayed = [p for p in trainable if p.ndim <= 1]
    groups = [{"params": decayed, "weight_decay": cfg.weight_decay}, {"params": undecayed, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


OLD_BRANCH_PREFIXES = ("bank.", "queue.", "key_encoder.")


def _rename_old_branch_keys(state_dict: dict, prefix: str, *args: object) -> None:
    """Checkpoints written before the branches were objects name ``bank.memory``, ``queue.keys``,
    ``key_encoder.*`` at the top level: load them as ``branch.*``."""
    for key in [k for k in state_dict if k[len(prefix) :].startswith(OLD_BRANCH_PREFIXES)]:
        state_dict[f"{prefix}branch.{key[len(prefix):]}"] = state_dict.pop(key)
