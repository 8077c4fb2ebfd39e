"""Presets carry the official settings; overrides are typed and validated."""

from __future__ import annotations

import dataclasses

import pytest

from crosslevel.config import Config, apply_overrides, check_groups, load_config, load_preset, peak_lr, preset_names, save_config
from crosslevel.errors import CrossLevelError

REQUIRED = {"digits-cld", "digits-npid", "cifar10-npid", "cifar10-cld", "cifar100-npid", "cifar100-cld"}


def test_required_presets_exist() -> None:
    assert REQUIRED <= set(preset_names())


@pytest.mark.parametrize("name,groups", [("cifar10-cld", 128), ("cifar100-cld", 200)])
def test_official_cifar_settings(name: str, groups: int) -> None:
    cfg = load_preset(name)
    assert (cfg.batch_size, cfg.base_lr, cfg.weight_decay, cfg.sgd_momentum) == (256, 0.03, 7e-4, 0.9)
    assert (cfg.warmup_epochs, cfg.epochs, cfg.num_groups, cfg.kmeans_iters) == (5, 200, groups, 5)
    assert (cfg.cld_weight, cfg.instance_temperature, cfg.cld_temperature) == (1.0, 0.1, 0.2)
    assert (cfg.backbone, cfg.feature_dim, cfg.knn_k, cfg.knn_temperature) == ("resnet18_cifar", 128, 200, 0.1)
    assert peak_lr(cfg, world_size=1) == pytest.approx(0.06)


@pytest.mark.parametrize("name", ["digits-npid", "cifar10-npid", "cifar100-npid"])
def test_npid_presets_are_cld_without_the_term(name: str) -> None:
    npid = load_preset(name)
    cld = load_preset(name.replace("npid", "cld"))
    assert npid.cld_weight == 0.0
    assert dataclasses.replace(npid, cld_weight=cld.cld_weight, preset=cld.preset, description=cld.description) == cld


def test_overrides_are_typed() -> None:
    cfg = apply_overrides(load_preset("digits-cld"), ["epochs=3", "base_lr=0.1", "normlinear=true", "name=x"])
    assert (cfg.epochs, cfg.base_lr, cfg.normlinear, cfg.name) == (3, 0.1, True, "x")


@pytest.mark.parametrize(
    "override,message",
    [
        ("epohcs=3", "unknown config key 'epohcs' (did you mean 'epochs'?)"),
        ("epochs=three", "'epochs' expects a int"),
        ("epochs=2.5", "'epochs' expects a int"),
        ("normlinear=maybe", "'normlinear' expects a bool"),
        ("epochs", "not of the form key=value"),
        ("backbone=vgg", "'backbone' must be one of"),
        ("epochs=0", "'epochs' must be >= 1"),
        ("num_groups=128", "num_groups (k=128) must be smaller than the per-device batch"),
        ("bank_momentum=1.5", "bank_momentum"),
        ("devices=abc", "devices must be a count (1, 4), -1 or auto (all), or device indices like 0,1; got 'abc'"),
        ("devices=0", "got '0'"),
        ("workers=-1", "config key 'workers' must be >= 0, got -1"),
        ("precision=fp17", "'precision' must be one of 32-true, 16-mixed, bf16-mixed"),
        ("strategy=foo", "'strategy' must be one of auto, ddp"),
        ("accelerator=tpu", "'accelerator' must be one of auto, cpu, gpu, cuda, mps; got 'tpu'"),
    ],
)
def test_bad_overrides_are_clear_errors(override: str, message: str) -> None:
    with pytest.raises(CrossLevelError) as err:
        apply_overrides(load_preset("digits-cld"), [override])
    assert message in str(err.value)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["num_groups=100", "batch_size=64"], "smaller than the per-device batch (batch_size=64): with k >= batch"),
        (["num_groups=100", "batch_size=64"], "kmeans_scope=global groups the global batch instead"),
        (["kmeans_scope=global", "num_groups=128", "batch_size=64", "devices=2"], "must be smaller than the global batch (batch_size=64 × 2 devices = 128)"),
        (["kmeans_scope=global", "num_groups=130", "batch_size=32", "devices=0,1", "num_nodes=2"], "(batch_size=32 × 4 devices = 128)"),
        (["kmeans_scope=global", "num_groups=64", "batch_size=64"], "global batch (batch_size=64 × 1 device = 64)"),
        (["grouping=spectral"], "'grouping' must be one of kmeans, ncuts"),
        (["kmeans_scope=node"], "'kmeans_scope' must be one of local, global"),
        (["grouping=ncuts", "ncuts_eigenvectors=0"], "'ncuts_eigenvectors' must be >= 1"),
    ],
)
def test_groups_are_checked_against_the_batch_they_group(overrides: list[str], message: str) -> None:
    with pytest.raises(CrossLevelError) as err:
        apply_overrides(load_preset("digits-cld"), overrides)
    assert message in str(err.value)


def test_global_scope_allows_more_groups_than_one_device_holds() -> None:
    cfg = apply_overrides(load_preset("digits-cld"), ["kmeans_scope=global", "num_groups=100", "batch_size=64", "devices=2"])
    assert cfg.num_groups == 100 and cfg.kmeans_scope == "global"
    capped = apply_overrides(load_preset("digits-cld"), ["kmeans_scope=global", "num_groups=200", "batch_size=64", "groups_above_batch=cap"])
    check_groups(capped, 2)  # the reference's arithmetic, asked for
    unknown = apply_overrides(load_preset("digits-cld"), ["kmeans_scope=global", "num_groups=100", "batch_size=64", "devices=auto"])
    check_groups(unknown, 2)  # devices=auto: checked once the trainer knows the count
    with pytest.raises(CrossLevelError, match="global batch"):
        check_groups(unknown, 1)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["lr_schedule=step"], "lr_schedule=step needs lr_milestones=F1,F2,...: increasing fractions of the epochs between 0 and 1"),
        (["lr_schedule=step", "lr_milestones=120,160"], "got '120,160'"),
        (["lr_schedule=step", "lr_milestones=0.8,0.6"], "got '0.8,0.6'"),
        (["lr_schedule=step", "lr_milestones=half"], "got 'half'"),
        (["lr_milestones=0.6"], "lr_milestones=0.6 are read with lr_schedule=step only (got lr_schedule=cosine); with another schedule clear them too: lr_milestones="),
        (["lr_schedule=exponential"], "'lr_schedule' must be one of cosine, step"),
        (["lr_schedule=step", "lr_milestones=0.5", "lr_gamma=2"], "'lr_gamma' must be <= 1"),
        (["flip=1.5"], "'flip' must be <= 1"),
    ],
)
def test_the_step_schedule_and_flip_are_checked(overrides: list[str], message: str) -> None:
    with pytest.raises(CrossLevelError) as err:
        apply_overrides(load_preset("digits-cld"), overrides)
    assert message in str(err.value)


def test_milestones_are_epochs_of_the_run_never_its_first() -> None:
    from crosslevel.config import lr_milestones

    npid = ["data=unused"]
    assert lr_milestones(apply_overrides(load_preset("cifar10-npid-1view"), npid)) == [120, 160]
    assert lr_milestones(apply_overrides(load_preset("cifar10-npid-1view"), [*npid, "epochs=10"])) == [6, 8]
    assert lr_milestones(apply_overrides(load_preset("cifar10-npid-1view"), [*npid, "epochs=3"])) == [2, 2]  # both at the last epoch
    assert lr_milestones(apply_overrides(load_preset("cifar10-npid-1view"), [*npid, "epochs=20", "lr_milestones=0.01"])) == [1]
    cosine = apply_overrides(load_preset("cifar10-npid-1view"), [*npid, "lr_schedule=cosine", "lr_milestones="])
    assert lr_milestones(cosine) == []


@pytest.mark.parametrize("devices", ["auto", "-1", "1", "4", "0,1", "1,", "0,1,"])
def test_device_forms_lightning_accepts(devices: str) -> None:
    assert apply_overrides(load_preset("digits-cld"), [f"devices={devices}"]).devices == devices


def test_lightning_choices_are_names_lightning_knows() -> None:
    import typing

    from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT_STR
    from lightning.pytorch.strategies import StrategyRegistry

    from crosslevel.config import CHOICES

    assert set(CHOICES["precision"]) <= set(typing.get_args(_PRECISION_INPUT_STR))
    assert set(CHOICES["strategy"]) - {"auto"} <= set(StrategyRegistry.available_strategies())


def test_npid_allows_any_k() -> None:
    cfg = apply_overrides(load_preset("digits-npid"), ["num_groups=500"])
    assert cfg.num_groups == 500


def test_unknown_preset_names_the_closest() -> None:
    with pytest.raises(CrossLevelError, match="unknown preset 'cifar10-clx'.*cifar10-cld"):
        load_preset("cifar10-clx")


def test_cifar_preset_needs_a_path() -> None:
    with pytest.raises(CrossLevelError, match="needs a path"):
        apply_overrides(load_preset("cifar10-cld"), [])


def test_config_round_trip(tmp_path) -> None:
    cfg = apply_overrides(load_preset("cifar10-cld"), ["data=/x", "resume=none"])
    save_config(cfg, tmp_path / "config.json")
    assert load_config(tmp_path / "config.json") == cfg
    assert Config().resume is None


def test_every_key_says_what_it_means_and_choices_come_from_its_type() -> None:
    from crosslevel.config import CHOICES, FIELDS

    assert all(spec.metadata.get("help") for spec in FIELDS.values())
    assert CHOICES["instance"] == ("npid", "moco", "simclr", "byol") and CHOICES["precision"][0] == "32-true"
    with pytest.raises(CrossLevelError, match="'instance' must be one of npid, moco, simclr, byol"):
        apply_overrides(load_preset("digits-cld"), ["instance=swav"])


@pytest.mark.parametrize(
    "override,message",
    [("blur=1.5", "'blur' must be <= 1"), ("bank_momentum=1", "'bank_momentum' must be < 1"),
     ("cld_temperature=0", "'cld_temperature' must be > 0"), ("workers=-1", "'workers' must be >= 0")],
)  # fmt: skip
def test_bounds_live_with_their_keys(override: str, message: str) -> None:
    with pytest.raises(CrossLevelError, match=message):
        apply_overrides(load_preset("digits-cld"), [override])


def test_earlier_names_and_the_papers_symbols_are_accepted(tmp_path) -> None:  # noqa: ANN001
    cfg = apply_overrides(load_preset("digits-cld"), ["temperature=0.2", "momentum=0.8", "lambda=0.5", "T_G=0.3", "subset=x"])
    assert (cfg.instance_temperature, cfg.sgd_momentum, cfg.cld_weight, cfg.cld_temperature, cfg.class_subset) == (0.2, 0.8, 0.5, 0.3, "x")
    old = tmp_path / "config.json"  # a run directory written before the renames
    old.write_text('{"temperature": 0.07, "momentum": 0.9, "subset": "imagenet100"}')
    loaded = load_config(old)
    assert (loaded.instance_temperature, loaded.class_subset) == (0.07, "imagenet100")
