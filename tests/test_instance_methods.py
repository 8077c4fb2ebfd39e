"""SimCLR, BYOL, NPID's NCE and the jigsaw auxiliary: losses against naive loops and analytic values, a couple of training
steps each with and without CLD, the presets, and SimCLR's cross-device negatives on two processes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import fit_two_steps, free_port
from crosslevel.config import apply_overrides, load_preset, num_views, preset_summary
from crosslevel.data.datamodule import load_data
from crosslevel.errors import CrossLevelError
from crosslevel.losses import byol_loss, nce_loss, nce_normaliser, nt_xent_loss
from crosslevel.methods import BYOLBranch, ContrastiveModule, SimCLRBranch
from crosslevel.methods.byol import byol_momentum
from crosslevel.methods.jigsaw import JigsawHead, jigsaw_patches
from crosslevel.run_dir import open_run, read_run, resolve_resume
from crosslevel.training import train

TINY = ["batch_size=32", "num_groups=4", "epochs=1", "warmup_epochs=0", "limit_train_batches=2", "progress=false", "width=8", "feature_dim=16"]


def _unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def test_nt_xent_matches_a_naive_loop() -> None:
    a, b, t = _unit(5, 4, seed=0), _unit(5, 4, seed=1), 0.2
    z = torch.cat([a, b])
    expected = 0.0
    for i in range(10):
        partner = (i + 5) % 10
        others = sum(math.exp(float(z[i] @ z[j]) / t) for j in range(10) if j != i)
        expected += -math.log(math.exp(float(z[i] @ z[partner]) / t) / others) / 10
    assert nt_xent_loss(a, b, t).item() == pytest.approx(expected, rel=1e-12)


def test_nt_xent_analytic_value_for_orthogonal_images() -> None:
    """Two images, each view equal to its image's basis vector: positive cos 1, two negatives at cos 0."""
    a = b = torch.eye(2, dtype=torch.float64)
    t = 0.5
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2))
    assert nt_xent_loss(a, b, t).item() == pytest.approx(expected, rel=1e-12)


def test_byol_loss_analytic_values_and_gradient() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert byol_loss(x, x).item() == pytest.approx(0.0, abs=1e-7)  # same direction
    assert byol_loss(x, -x).item() == pytest.approx(4.0)  # opposite
    assert byol_loss(x, x.flip(1)).item() == pytest.approx(2.0)  # orthogonal
    predictions, targets = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    byol_loss(predictions, targets).backward()
    assert predictions.grad is not None and targets.grad is None


def test_nce_loss_matches_a_naive_loop() -> None:
    features, bank = _unit(3, 4, seed=2), _unit(7, 4, seed=3)
    indices, noise = torch.tensor([0, 4, 6]), torch.tensor([[1, 2], [0, 4], [5, 3]])
    t, z = 0.1, 11.0
    n, k = 7, 2
    expected = 0.0
    for b in range(3):
        p_pos = math.exp(float(features[b] @ bank[indices[b]]) / t) / z
        expected -= math.log(p_pos / (p_pos + k / n + 1e-7))
        for j in noise[b]:
            p_noise = math.exp(float(features[b] @ bank[j]) / t) / z
            expected -= math.log((k / n) / (p_noise + k / n + 1e-7))
    assert nce_loss(features, bank, indices, noise, t, z).item() == pytest.approx(expected / 3, rel=1e-10)
    rows = [[int(indices[b]), *noise[b].tolist()] for b in range(3)]  # the positive and the K noise rows
    mean_exp = sum(math.exp(float(features[b] @ bank[j]) / t) for b in range(3) for j in rows[b]) / 9
    assert nce_normaliser(features, bank, indices, noise, t).item() == pytest.approx(mean_exp * n, rel=1e-10)


def test_byol_momentum_schedule_runs_from_base_to_one() -> None:
    assert byol_momentum(0.99, 0.0) == pytest.approx(0.99)
    assert byol_momentum(0.99, 0.5) == pytest.approx(0.995)
    assert byol_momentum(0.99, 1.0) == pytest.approx(1.0)
    assert byol_momentum(0.99, 2.0) == pytest.approx(1.0)  # past the end (a longer resumed run): stays at 1



@pytest.mark.parametrize("cld_weight", [0.0, 1.0])
def test_simclr_steps_with_and_without_cld(cld_weight: float) -> None:
    cfg = apply_overrides(load_preset("digits-cld"), TINY + ["instance=simclr", "mlp=true", f"cld_weight={cld_weight}"])
    assert num_views(cfg) == 2
    data = load_data(cfg)
    module = ContrastiveModule(cfg, len(data.train), data.train.channels)
    assert isinstance(module.branch, SimCLRBranch) and not list(module.branch.buffers())
    before = [p.clone() for p in module.backbone.parameters()]
    logged = fit_two_steps(cfg, module, data).logged_metrics
    assert torch.isfinite(logged["loss_epoch"]) and ("loss_cld" in logged) == (cld_weight > 0)
    assert any(not torch.equal(a, b) for a, b in zip(before, module.backbone.parameters()))


@pytest.mark.parametrize("cld_weight", [0.0, 1.0])
def test_byol_steps_move_the_target_by_ema_and_train_the_predictor(cld_weight: float) -> None:
    cfg = apply_overrides(
        load_preset("digits-cld"), TINY + ["instance=byol", "predictor_hidden=32", "ema_momentum=0.9", f"cld_weight={cld_weight}"]
    )
    data = load_data(cfg)
    module = ContrastiveModule(cfg, len(data.train), data.train.channels)
    branch = module.branch
    assert isinstance(branch, BYOLBranch) and not any(p.requires_grad for p in branch.target.parameters())
    target_before = [p.clone() for p in branch.target.parameters()]
    predictor_before = [p.clone() for p in branch.predictor.parameters()]
    logged = fit_two_steps(cfg, module, data).logged_metrics
    assert torch.isfinite(logged["loss_epoch"]) and ("loss_cld" in logged) == (cld_weight > 0)
    assert 0 <= logged["loss_inst"] <= 4  # 2 − 2·cos
    assert any(not torch.equal(a, b) for a, b in zip(target_before, branch.target.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(predictor_before, branch.predictor.parameters()))
    assert branch.target.momentum == pytest.approx(byol_momentum(0.9, 2 / 2))  # the last of 2 steps: τ = 1
    online = list(module.backbone.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(online, branch.target.backbone.parameters()))


def test_byol_target_update_is_the_ema_of_the_online_network() -> None:
    cfg = apply_overrides(load_preset("digits-cld"), TINY + ["instance=byol", "predictor_hidden=8", "ema_momentum=0.5"])
    module = ContrastiveModule(cfg, 10, 1)
    with torch.no_grad():
        for p in module.backbone.parameters():
            p.add_(1.0)
    target = [p.clone() for p in module.branch.target.backbone.parameters()]
    module.branch._stepped = True
    module.branch.after_step(module.backbone, module.heads, progress=0.0)  # τ = 0.5
    for old, new, online in zip(target, module.branch.target.backbone.parameters(), module.backbone.parameters()):
        torch.testing.assert_close(new, 0.5 * old + 0.5 * online)


def test_npid_nce_estimates_its_normaliser_once_and_resumes_with_it(tmp_path) -> None:
    cfg = apply_overrides(
        load_preset("digits-npid"), TINY + ["nce_negatives=64", f"out={tmp_path}", "name=nce", "npid_views=1", "cld_weight=0"]
    )
    run_dir, knn = train(cfg)
    assert knn is not None
    _, module, _ = open_run(run_dir)
    normaliser = module.branch.nce_normaliser.item()
    assert normaliser > 0  # estimated on the first batch, saved in the checkpoint
    # a mid-run estimate would be N · mean exp(cos/T) of that batch: with unit rows it is within N·exp(±1/T)
    assert len(module.branch.bank.memory) * math.exp(-1 / cfg.instance_temperature) < normaliser
    resumed, _ = train(resolve_resume(apply_overrides(cfg, [f"resume={run_dir}", "epochs=2"]), ["epochs=2"])[0])
    _, module, _ = open_run(resumed)
    assert module.branch.nce_normaliser.item() == pytest.approx(normaliser)  # kept, not re-estimated


def test_nce_negatives_needs_npid() -> None:
    with pytest.raises(CrossLevelError, match="nce_negatives=16 is NPID's NCE: it needs instance=npid"):
        apply_overrides(load_preset("digits-cld"), ["instance=simclr", "nce_negatives=16"])


@pytest.mark.parametrize("name", ["cifar10-simclr", "cifar10-simclr-cld", "cifar10-byol", "cifar10-byol-cld"])
def test_plug_in_presets_are_valid_and_described(name: str) -> None:
    assert dict(preset_summary())[name]
    cfg = apply_overrides(load_preset(name), ["data=/somewhere"])
    assert cfg.instance == name.split("-")[1] and (cfg.cld_weight > 0) == name.endswith("-cld")
    assert num_views(cfg) == 2 and cfg.mlp and cfg.mlp_bn and cfg.num_groups < cfg.batch_size


def test_run_table_names_the_plug_in_methods(tmp_path) -> None:
    cfg = apply_overrides(load_preset("digits-cld"), TINY + ["instance=simclr", f"out={tmp_path}", "name=s"])
    run_dir, _ = train(cfg)
    assert read_run(run_dir).method == "simclr+cld"



def _simclr_rank(rank: int, port: int, views: tuple[torch.Tensor, torch.Tensor], out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    local = [view[4 * rank : 4 * rank + 4].clone().requires_grad_() for view in views]
    loss = SimCLRBranch(0.2).loss(local, torch.arange(4), None)
    loss.backward()
    torch.save({"loss": loss.detach(), "grads": [v.grad for v in local]}, f"{out}/{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_simclr_negatives_come_from_every_device(tmp_path) -> None:
    """Two gloo processes with 4 images each: the loss is the single-process loss of all 8 images, and
    each rank's gradient, averaged over the ranks as DDP does, is the single-process gradient."""
    views = (_unit(8, 6, seed=4).float(), _unit(8, 6, seed=5).float())
    torch.multiprocessing.spawn(_simclr_rank, args=(free_port(), views, str(tmp_path)), nprocs=2, join=True)
    whole = [view.clone().requires_grad_() for view in views]
    expected = nt_xent_loss(*whole, 0.2)
    expected.backward()
    for rank in range(2):
        result = torch.load(tmp_path / f"{rank}.pt")
        torch.testing.assert_close(result["loss"], expected.detach())
        for grad, full in zip(result["grads"], whole):
            torch.testing.assert_close(grad / 2, full.grad[4 * rank : 4 * rank + 4])  # DDP averages over 2 ranks


def test_jigsaw_patches_lie_inside_their_cells() -> None:
    """Each patch is the image's pixels at one place inside its own grid cell (naive search)."""
    images = torch.randn(2, 3, 12, 12)
    patches = jigsaw_patches(images, grid=3, crop_of_cell=0.5)  # cells of 4 px, patches of 2 px
    assert patches.shape == (18, 3, 2, 2)
    for b in range(2):
        for p in range(9):
            row, col = divmod(p, 3)
            found = [
                (top, left)
                for top in range(4 * row, 4 * row + 3)
                for left in range(4 * col, 4 * col + 3)
                if torch.equal(images[b, :, top : top + 2, left : left + 2], patches[9 * b + p])
            ]
            assert found, f"patch {p} of image {b} is not inside cell ({row}, {col})"


def test_jigsaw_patches_are_the_cells_when_they_fill_them() -> None:
    images = torch.arange(2 * 36.0).view(2, 1, 6, 6)
    patches = jigsaw_patches(images, grid=3, crop_of_cell=1.0)
    expected = images.unfold(2, 2, 2).unfold(3, 2, 2).permute(0, 2, 3, 1, 4, 5).reshape(18, 1, 2, 2)
    torch.testing.assert_close(patches, expected)


def test_jigsaw_head_concatenates_a_permutation_of_the_patch_features() -> None:
    """With a joint layer that sums its P input blocks the output cannot depend on the order: it is
    normalise(Σ_p projection(patch p)) for every random permutation."""
    head = JigsawHead(in_dim=5, out_dim=3, patches=4)
    with torch.no_grad():
        head.joint.weight.copy_(torch.eye(3).repeat(1, 4))
        head.joint.bias.zero_()
    features = torch.randn(2 * 4, 5)
    expected = F.normalize(head.per_patch(features).view(2, 4, 3).sum(dim=1), dim=1)
    for _ in range(3):
        torch.testing.assert_close(head(features), expected)


@pytest.mark.parametrize("instance", ["npid", "moco"])
def test_jigsaw_branch_trains_and_weighs_the_two_instance_losses(instance: str) -> None:
    cfg = apply_overrides(load_preset("digits-cld"), TINY + [f"instance={instance}", "queue_size=64", "jigsaw_weight=0.25"])
    assert num_views(cfg) == (4 if instance == "moco" else 3)
    data = load_data(cfg)
    module = ContrastiveModule(cfg, len(data.train), data.train.channels)
    queries = [F.normalize(torch.randn(8, 16), dim=1) for _ in range(2)]
    jigsaw = F.normalize(torch.randn(8, 16), dim=1)
    targets = F.normalize(torch.randn(8, 16), dim=1) if instance == "moco" else None
    indices = torch.arange(8)
    loss, logs = module.objective(queries, queries, indices, targets, jigsaw)
    expected = 0.75 * logs["loss_inst"] + 0.25 * logs["loss_jigsaw"] + logs["loss_cld"]
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logs["loss_jigsaw"], module.branch.query_loss(jigsaw, indices, targets))
    module.branch.discard()
    head_before = [p.clone() for p in module.jigsaw.parameters()]
    logged = fit_two_steps(cfg, module, data).logged_metrics
    assert torch.isfinite(logged["loss_jigsaw"])
    assert all(not torch.equal(a, b) for a, b in zip(head_before, module.jigsaw.parameters()))


def test_jigsaw_needs_a_bank_or_a_queue() -> None:
    with pytest.raises(CrossLevelError, match="jigsaw_weight=0.5 .* needs instance=npid or moco"):
        apply_overrides(load_preset("digits-cld"), ["instance=byol", "jigsaw_weight=0.5"])
    cfg = apply_overrides(load_preset("imagenet-cldm-jigsaw"), ["data=/somewhere"])
    assert cfg.jigsaw_weight == 0.5 and cfg.instance == "moco" and num_views(cfg) == 4


def test_the_plain_pytorch_example_trains_and_reports_knn() -> None:
    """examples/simclr_cld.py, the README's CLD-in-your-own-loop example, runs a few steps."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "simclr_cld.py"
    done = subprocess.run([sys.executable, str(script), "--steps", "3"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "step    0  loss" in done.stdout and "kNN top-1 on held-out digits:" in done.stdout


def test_mlp_bn_puts_batchnorm_in_the_projector_trunk() -> None:
    from torch import nn

    from crosslevel.models import TwoHeads

    heads = TwoHeads(8, 4, mlp=True, mlp_bn=True)
    assert [type(layer) for layer in heads.trunk] == [nn.Linear, nn.BatchNorm1d, nn.ReLU]
    instance, group = heads(torch.randn(5, 8))
    torch.testing.assert_close(instance.norm(dim=1), torch.ones(5))
    with pytest.raises(CrossLevelError, match="mlp_bn=true .* needs mlp=true"):
        apply_overrides(load_preset("digits-cld"), ["mlp_bn=true"])
    assert load_preset("cifar10-simclr").mlp_bn and load_preset("cifar10-byol-cld").mlp_bn


def test_mlp_shared_false_gives_the_group_head_its_own_trunk() -> None:
    from crosslevel.models import TwoHeads

    shared = TwoHeads(8, 4, mlp=True, mlp_bn=True)
    separate = TwoHeads(8, 4, mlp=True, mlp_bn=True, mlp_shared=False)
    # the default's parameter names (and so its checkpoints) are those it always had
    assert [name for name, _ in shared.named_parameters()] == [
        "trunk.0.weight", "trunk.0.bias", "trunk.1.weight", "trunk.1.bias",
        "instance.proj.weight", "instance.proj.bias", "group.proj.weight", "group.proj.bias",
    ]
    assert shared.group_trunk is None and shared.group_parameter_names() == ["group.proj.weight", "group.proj.bias"]
    names = dict(separate.named_parameters())
    own_trunk = [f"group_trunk.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")]
    assert set(names) - set(dict(shared.named_parameters())) == set(own_trunk)
    assert names["trunk.0.weight"] is not names["group_trunk.0.weight"]
    assert not torch.equal(names["trunk.0.weight"], names["group_trunk.0.weight"])  # two initialisations
    assert separate.group_parameter_names() == ["group.proj.weight", "group.proj.bias", *own_trunk]
    instance, group = separate(torch.randn(5, 8))
    assert instance.shape == group.shape == (5, 4)
    torch.testing.assert_close(group.norm(dim=1), torch.ones(5))
    # f_I does not depend on the group trunk, f_G does not depend on the instance trunk
    instance[:, 0].sum().backward(retain_graph=True)
    assert names["group_trunk.0.weight"].grad is None and names["trunk.0.weight"].grad.any()
    separate.zero_grad(set_to_none=True)
    group[:, 0].sum().backward()
    assert names["trunk.0.weight"].grad is None and names["group_trunk.0.weight"].grad.any()
    with pytest.raises(CrossLevelError, match="mlp_shared=false .* needs mlp=true"):
        apply_overrides(load_preset("digits-cld"), ["mlp_shared=false"])
    # two SimCLR + CLD steps train both trunks
    cfg = apply_overrides(load_preset("digits-cld"), TINY + ["instance=simclr", "mlp=true", "mlp_bn=true", "mlp_shared=false"])
    data = load_data(cfg)
    module = ContrastiveModule(cfg, len(data.train), data.train.channels)
    trunks = [module.heads.trunk[0].weight, module.heads.group_trunk[0].weight]
    before = [t.clone() for t in trunks]
    assert torch.isfinite(fit_two_steps(cfg, module, data).logged_metrics["loss_cld"])
    assert all(not torch.equal(a, b) for a, b in zip(before, trunks))
    assert load_preset("cifar10-simclr").mlp_shared


def test_resuming_with_or_without_the_jigsaw_head_is_a_clear_error(tmp_path) -> None:
    cfg = apply_overrides(load_preset("digits-cld"), TINY + [f"out={tmp_path}", "name=plain"])
    run_dir, _ = train(cfg)
    with pytest.raises(CrossLevelError, match="jigsaw_head=False .this run: True"):
        train(resolve_resume(apply_overrides(cfg, [f"resume={run_dir}", "epochs=2", "jigsaw_weight=0.5"]), ["epochs=2", "jigsaw_weight=0.5"])[0])


def test_resume_may_change_k_of_nce_but_not_switch_it_on(tmp_path) -> None:
    cfg = apply_overrides(load_preset("digits-npid"), TINY + [f"out={tmp_path}", "name=nce", "nce_negatives=32", "cld_weight=0"])
    run_dir, _ = train(cfg)
    more = ["epochs=2", "nce_negatives=64"]
    resumed, _ = train(resolve_resume(apply_overrides(cfg, [f"resume={run_dir}", *more]), more)[0])  # K may change
    assert open_run(resumed)[0].nce_negatives == 64
    off = ["epochs=3", "nce_negatives=0"]
    with pytest.raises(CrossLevelError, match="nce=True .this run: False"):
        train(resolve_resume(apply_overrides(cfg, [f"resume={run_dir}", *off]), off)[0])


def test_a_queue_smaller_than_the_global_batch_is_refused_before_any_data() -> None:
    with pytest.raises(CrossLevelError, match=r"queue_size=256 is smaller than batch_size=128 × 4 devices"):
        apply_overrides(load_preset("digits-cld"), ["instance=moco", "queue_size=256", "devices=4"])
    apply_overrides(load_preset("digits-cld"), ["instance=moco", "queue_size=256", "devices=2"])  # 256 keys fit
