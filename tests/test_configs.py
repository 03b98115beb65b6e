"""Every YAML in conf/ composes and instantiates; bad keys and values are refused up front."""

from __future__ import annotations

from importlib.util import find_spec

import hydra
import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from lit_ft.config import compose, config_dir
from lit_ft.errors import ConfigError
from lit_ft.model.precision import resolve_precision
from lit_ft.model.strategy import strategy_problems
from lit_ft.validate import validate_config

CONF = config_dir()
GROUP_FILES = sorted(
    (path.parent.name, path.stem)
    for path in CONF.glob("*/*.yaml")
    if path.parent.name != "hydra"  # Hydra's own settings; composed with every config below
)


def _overrides_for(group: str, name: str, tmp_path) -> list[str]:
    overrides = [f"{group}={name}", f"paths.output_dir={tmp_path}"]
    if group == "data" and name == "text_files":
        overrides.append(f"data.data_files={tmp_path / 'any.txt'}")  # the one mandatory key
    if group == "trainer" and name in ("gpu", "deepspeed"):
        import torch

        if not torch.cuda.is_available():  # the rest of the GPU config still instantiates
            overrides.append("trainer.accelerator=cpu")
    return overrides


@pytest.mark.parametrize(("group", "name"), GROUP_FILES, ids=[f"{g}/{n}" for g, n in GROUP_FILES])
def test_every_config_composes_and_instantiates(group, name, tmp_path):
    cfg = compose(_overrides_for(group, name, tmp_path))
    OmegaConf.resolve(cfg)  # every interpolation resolves

    refusals = strategy_problems(cfg.trainer.strategy, cfg.trainer.accelerator)
    if refusals:  # a strategy this machine cannot run (FSDP/DeepSpeed without CUDA): refused
        with pytest.raises(ConfigError) as info:
            validate_config(cfg)
        assert all(r in info.value.problems for r in refusals)
        if "deepspeed" not in cfg.trainer.strategy._target_.lower() or find_spec("deepspeed"):
            assert hydra.utils.instantiate(cfg.trainer.strategy) is not None
    else:
        precision, _ = resolve_precision(cfg.trainer.precision, cfg.trainer.accelerator)
        trainer = hydra.utils.instantiate(
            cfg.trainer, precision=precision, logger=False, enable_checkpointing=False
        )
        if not cfg.trainer.get("fast_dev_run"):  # which sets max_epochs=1 itself
            assert trainer.max_epochs == cfg.trainer.max_epochs
    for node in [*cfg.callbacks.values(), *cfg.logger.values()]:
        made = hydra.utils.instantiate(node)
        # The progress factory returns None exactly when the Trainer's progress bar is off.
        assert made is not None or (node.get("enabled") is False)
    if cfg.get("peft"):
        assert hydra.utils.instantiate(cfg.peft).r == cfg.peft.r

    import torch

    optimizer = hydra.utils.instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(2))])
    assert optimizer.defaults["lr"] == cfg.optimizer.lr
    scheduler = hydra.utils.instantiate(cfg.scheduler)(optimizer, num_training_steps=10)
    assert scheduler.get_last_lr()


def _compose_with_hydra(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("config", overrides=overrides, return_hydra_config=True)


HYDRA_GROUP_FILES = sorted((path.parent.name, path.stem) for path in CONF.glob("hydra/*/*.yaml"))


@pytest.mark.parametrize(
    ("group", "name"),
    [*HYDRA_GROUP_FILES, ("launcher", "submitit_slurm")],
    ids=[f"hydra/{g}/{n}" for g, n in [*HYDRA_GROUP_FILES, ("launcher", "submitit_slurm")]],
)
def test_hydra_plugin_configs_compose_and_instantiate(group, name, tmp_path):
    """conf/hydra/<group>/*.yaml and the plugin's own SLURM launcher (composition only here)."""
    cfg = _compose_with_hydra([f"hydra/{group}={name}", f"paths.output_dir={tmp_path}"])
    node = cfg.hydra[group]
    assert hydra.utils.instantiate(node) is not None
    if name == "slurm":
        assert node.tasks_per_node == cfg.trainer.devices


def test_optuna_search_config_instantiates_its_sweeper(tmp_path):
    cfg = _compose_with_hydra(["hparams_search=optuna", f"paths.output_dir={tmp_path}"])
    sweeper = cfg.hydra.sweeper
    assert sweeper.n_trials == 20 and sweeper.direction == "minimize"
    assert set(sweeper.params) == {
        "optimizer.lr",
        "scheduler.warmup_ratio",
        "optimizer.weight_decay",
        "data.batch_size",
    }
    assert hydra.utils.instantiate(sweeper) is not None


def test_qlora_is_refused_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="QLoRA.*needs a CUDA GPU"):
        validate_config(compose(["peft=qlora", f"paths.output_dir={tmp_path}"]))


def test_hydra_run_dir_is_the_run_output_dir(tmp_path):
    cfg = compose([f"paths.output_dir={tmp_path}"])
    assert cfg.paths.checkpoint_dir == f"{tmp_path}/checkpoints"
    assert cfg.callbacks.resumable_checkpoint.dirpath == f"{tmp_path}/checkpoints"


def test_default_config_is_valid():
    validate_config(compose())


def test_gpt2_wikitext_is_the_hub_job():
    cfg = compose(["model=gpt2", "data=wikitext"])
    assert cfg.model.name_or_path == "gpt2"
    assert (cfg.data.path, cfg.data.name) == ("wikitext", "wikitext-2-raw-v1")
    assert compose(["experiment=gpt2_wikitext"]).model.name_or_path == "gpt2"


def test_offline_default_experiment_is_the_default():
    assert compose(["experiment=default_offline"]) == compose()


def test_tuned_hyperparameters_follow_model_and_data():
    assert compose().optimizer.lr == 2e-3  # tuned/tiny_gpt2_python_reference.yaml
    assert compose(["model=gpt2", "data=wikitext"]).optimizer.lr == 5e-5  # HF Trainer's
    assert compose(["model=gpt2"]).optimizer.lr == 5e-5  # no tuned file: plain defaults
    assert compose(["optimizer.lr=1e-4"]).optimizer.lr == 1e-4  # the command line wins


def test_unknown_override_key_fails():
    with pytest.raises(ConfigCompositionException, match="optimizer.learning_rate"):
        compose(["optimizer.learning_rate=1e-4"])


def test_every_problem_is_reported_at_once(tmp_path):
    cfg = compose(
        [
            "data.block_size=0",
            "data.batch_size=abc",
            "optimizer.lr=-1",
            "scheduler.name=triangle",
            "scheduler.warmup_steps=10",
            "scheduler.warmup_ratio=1.5",  # with warmup_steps set too: steps win, both allowed
            "trainer.precision=fp8",
            "trainer.max_epochs=-1",
            "trainer.max_steps=-1",
            f"ckpt_path={tmp_path / 'missing.ckpt'}",
            "data.corpus=shakespeare",
        ]
    )
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    message = str(info.value)
    for key in (
        "data.block_size",
        "data.batch_size",
        "optimizer.lr",
        "scheduler.name",
        "scheduler.warmup_ratio must be in [0, 1)",
        "trainer.precision",
        "trainer.max_steps",
        "ckpt_path",
        "data.corpus='shakespeare' is unknown",
    ):
        assert key in message
    assert len(info.value.problems) == 9


def test_missing_data_file_is_named(tmp_path):
    missing = tmp_path / "nope.txt"
    cfg = compose(["data=text_files", f"data.data_files={missing}"])
    with pytest.raises(ConfigError, match="nope.txt' does not exist"):
        validate_config(cfg)
