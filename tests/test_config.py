"""The config schema: defaults, extends, overrides, and errors that name the key and the fix."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from conftest import REPO, run_main, train_inproc
from dcgan_dist import config
from dcgan_dist.config import ConfigError


def write(path, text):
    path.write_text(text)
    return path


def test_defaults_and_derived_run_dir(tmp_path):
    cfg = config.load(write(tmp_path / "faces.yaml", "model:\n  resolution: 64\n"))
    assert cfg.run.name == "faces" and cfg.run.dir == "runs/faces"
    assert cfg.resume == "auto" and cfg.seed == 0 and cfg.train.kimg == 100.0
    assert cfg.optim.g_lr == 2e-4 and cfg.optim.g_beta1 == 0.5 and cfg.optim.d_beta1 == 0.5


def test_extends_chain_and_overrides_win(tmp_path):
    write(tmp_path / "base.yaml", "train:\n  kimg: 10\n  batch: 32\nmodel:\n  z_dim: 64\n")
    write(tmp_path / "mid.yaml", "extends: base.yaml\ntrain:\n  kimg: 20\n")
    child = write(tmp_path / "child.yaml", "extends: mid.yaml\nmodel:\n  resolution: 32\n")
    cfg = config.load(child, ["train.batch=8", "seed=3"])
    assert (cfg.train.kimg, cfg.train.batch, cfg.model.z_dim, cfg.model.resolution, cfg.seed) == (20, 8, 64, 32, 3)
    assert cfg.run.name == "child"


def test_extends_cycle_is_reported(tmp_path):
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        config.load(tmp_path / "a.yaml")


@pytest.mark.parametrize("where", ["file", "override"])
def test_typo_names_the_key_and_suggests(tmp_path, where):
    text, overrides = ("train:\n  kimgg: 5\n", []) if where == "file" else ("{}\n", ["train.kimgg=5"])
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path / "c.yaml", text), overrides)
    assert "train.kimgg" in str(e.value) and "Did you mean: 'kimg'" in str(e.value)


def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"'train.batch'.*could not be converted"):
        config.load(None, ["train.batch=lots"])


@pytest.mark.parametrize("override, key", [
    ("model.channels=2", "model.channels"), ("train.kimg=0", "train.kimg"),
    ("loss.real_label=1.5", "loss.real_label"), ("train.mixed_precision=fp8", "train.mixed_precision"),
    ("checkpoint.keep=0", "checkpoint.keep"), ("model.d_dropout=1.0", "model.d_dropout"),
    ("loss.kind=wgan", "loss.kind"), ("loss.label_flip=0.6", "loss.label_flip"),
    ("model.d_norm=instance", "model.d_norm"), ("optim.schedule=linear", "optim.schedule"),
    ("optim.d_beta2=1.0", "optim.d_beta2"), ("augment.policy=color,blur", "augment.policy"),
    ("ema.half_life_kimg=-1", "ema.half_life_kimg"), ("model.num_classes=-2", "model.num_classes"),
    ("train.minutes=-5", "train.minutes"),
    ("data.workers=-1", "data.workers must be auto or a number"), ("data.workers=many", "data.workers must be auto"),
])
def test_semantic_checks_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        config.load(None, [override])


@pytest.mark.parametrize("overrides,fix", [
    (["loss.kind=wgan-gp"], "model.d_norm=layer"),
    (["loss.kind=hinge", "loss.real_label=0.9"], "loss.real_label=1.0"),
    (["loss.kind=wgan-gp", "model.d_norm=none", "train.mixed_precision=fp16"], "bf16"),
])
def test_combinations_that_cannot_work_are_refused_with_the_fix(overrides, fix):
    with pytest.raises(ConfigError, match=fix):
        config.load(None, overrides)


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        config.load(None, ["--train.kimg=3"])
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        config.load(write(tmp_path / "list.yaml", "- 1\n- 2\n"))


def test_resolved_config_round_trips(tmp_path):
    cfg = config.load(REPO / "configs" / "quickstart.yaml", ["train.kimg=7"])
    again = config.load(write(tmp_path / "quickstart.yaml", config.to_yaml(cfg)))
    assert config.to_dict(again) == config.to_dict(cfg)


def test_every_key_has_help():
    lines = config.describe_keys().splitlines()
    flat = OmegaConf.to_container(OmegaConf.structured(config.Config))
    n_keys = sum(len(v) if isinstance(v, dict) else 1 for v in flat.values())
    assert len(lines) == n_keys
    assert all(len(line.split(None, 2)) == 3 for line in lines), "a key without a help line"


def test_cli_help_dry_run_and_errors(capsys):
    """`python -m dcgan_dist.train ...` as the shell sees it (exit status, stdout, stderr), in-process."""
    from dcgan_dist import train

    assert run_main(train.main, ["--help"]) == 0
    out = capsys.readouterr().out
    assert "train.kimg" in out and "--dry-run" in out

    assert train_inproc("configs/quickstart.yaml", ["train.kimg=12", "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert OmegaConf.create(out).train.kimg == 12, err

    assert train_inproc("configs/quickstart.yaml", ["optim.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "optim.lrr" in err and "Traceback" not in err


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = config.load(path)
    assert cfg.run.name == path.stem and cfg.data.shards
    assert path.read_text().lstrip().startswith("#"), "each shipped config starts with a comment saying what it is"


def test_yaml_boolean_words_stay_words_for_string_keys():
    # YAML 1.1 reads `no` as false: without care `train.mixed_precision=no` became the string "False".
    cfg = config.load(None, ["train.mixed_precision=no", "data.hflip=yes", "data.cache=memory"])
    assert cfg.train.mixed_precision == "no" and cfg.data.hflip is True
    assert config.load(None, ["data.hflip=off"]).data.hflip is False


def test_an_empty_override_of_a_text_key_is_the_empty_string():
    # `augment.policy=` turns augmentation off, as an empty `policy:` in YAML would.
    cfg = config.load(None, ["augment.policy=color", "augment.policy="])
    assert cfg.augment.policy == ""
    # An optional key's empty value means unset, not a path or a number called "".
    cfg = config.load(None, ["eval.ref_num=", "eval.inception="])
    assert cfg.eval.ref_num is None and cfg.eval.inception is None
    with pytest.raises(ConfigError, match="train.kimg"):  # a number still needs a number
        config.load(None, ["train.kimg="])


def test_allowed_values_come_from_the_modules_that_use_them():
    from dcgan_dist import augment, losses, models, optim, runtime, step
    from dcgan_dist.data import cache
    from dcgan_dist.metrics import inception

    owners = {"model.d_norm": models.D_NORMS, "loss.kind": losses.LOSSES, "optim.schedule": optim.SCHEDULES,
              "data.cache": cache.MODES, "train.compile": step.COMPILE_MODES,
              "train.mixed_precision": runtime.MIXED_PRECISION, "eval.preprocess": inception.PREPROCESS_MODES}
    assert set(losses.LOSSES) == set(losses.D_LOSSES) == set(losses.G_LOSSES)
    for key, allowed in owners.items():
        for value in allowed:
            config.load(None, [f"{key}={value}"] + (["model.d_norm=layer"] if value == "wgan-gp" else []))
        with pytest.raises(ConfigError, match=f"{key} must be one of {', '.join(allowed)}"):
            config.load(None, [f"{key}=bogus"])
    with pytest.raises(ConfigError, match=", ".join(augment.POLICIES)):
        config.load(None, ["augment.policy=color,bogus"])


def test_eval_metrics_are_validated_with_the_names_of_their_owner_module():
    from dcgan_dist.metrics import kid, suite

    cfg = config.load(None)
    assert cfg.eval.metrics == suite.DEFAULT_METRICS == "fid,kid"
    assert (cfg.eval.kid_subsets, cfg.eval.kid_subset_size) == (kid.KID_SUBSETS, kid.KID_SUBSET_SIZE) == (100, 1000)
    assert config.load(None, ["eval.metrics=pr, FID,kid"]).eval.metrics == "pr, FID,kid"  # any order, case, spaces
    for overrides, message in (
            (["eval.metrics=fid,is"], "eval.metrics='fid,is': unknown 'is'; give a comma list of fid, kid, pr"),
            (["eval.metrics="], "eval.metrics='': no metric named"),
            (["eval.metrics=kid,pr"], "add fid, by which checkpoints/best/ is chosen"),
            (["eval.metrics=fid,pr", "eval.num=3"], "eval.metrics with pr .* needs eval.num > 3"),
            (["eval.kid_subsets=0"], "eval.kid_subsets must be >= 1"),
            (["eval.kid_subset_size=1"], "eval.kid_subset_size >= 2")):
        with pytest.raises(ConfigError, match=message):
            config.load(None, overrides)
    assert suite.METRICS == ("fid", "kid", "pr")


def test_every_command_line_tool_is_an_installed_command():
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts") if e.name.startswith("dcgan-")}
    assert scripts == {f"dcgan-{n}": f"dcgan_dist.{n}:main" for n in
                       ("train", "prepare", "evaluate", "sample", "sweep", "report")}
