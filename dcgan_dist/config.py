"""The one home of every training default, and `load()` that turns YAML + overrides into a checked config.

A config file is YAML whose keys mirror the dataclasses below. It may name a parent with
`extends: other.yaml` (a path relative to the file); the child's keys win. Command-line
overrides are `key=value` dot-lists (`train.kimg=50 optim.g_lr=1e-4`) and win over both.
Every key is checked against this schema, so a typo or a wrong type fails at start-up with
the key's name (OmegaConf adds a "Did you mean" suggestion).
"""

from __future__ import annotations

import dataclasses
import math
import operator
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .data.workers import check_setting as check_workers
from .errors import UserError


def opt(default: Any, help: str) -> Any:
    """A schema field with its one-line help; `--help` prints these."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class RunCfg:
    dir: Optional[str] = opt(None, "output directory; default runs/<config file name>")
    name: Optional[str] = opt(None, "run name shown in logs; default the config file name")


@dataclass
class DataCfg:
    shards: str = opt("data/digits32/digits-{000000..000007}.tar",
                      "webdataset shards: a local glob, a brace pattern or any URL webdataset opens")
    workers: Union[int, str] = opt("auto", "DataLoader worker processes per rank (each reads its own shards); auto = "
                                           "on a GPU the rank's share of the node's cores less one, at most 8; on a CPU 2")
    shuffle_buffer: int = opt(512, "samples held in each worker's shuffle buffer")
    hflip: bool = opt(False, "random horizontal flips (faces, fruits; not for digits)")
    prefetch: int = opt(4, "batches each worker prepares ahead")
    cache: str = opt("none", "none = decode in the loader's worker processes while streaming; memory = decode the "
                             "whole set once per rank into RAM and build batches in the training process (same "
                             "order, no per-batch hand-over; for sets that fit in memory)")


@dataclass
class ModelCfg:
    resolution: int = opt(64, "image side in pixels: base * 2**n with base 4..7 (28, 32, 64, 128, ...)")
    channels: int = opt(3, "image channels: 1 (gray) or 3 (RGB)")
    z_dim: int = opt(100, "latent vector size")
    g_width: int = opt(64, "generator width: channels of G's last hidden layer (ngf)")
    d_width: int = opt(64, "discriminator width: channels of D's first layer (ndf)")
    max_channels: int = opt(1024, "cap on any layer's channel count")
    d_dropout: float = opt(0.0, "dropout after each LeakyReLU in D (0 = off)")
    d_norm: str = opt("batch", "normalisation in D's hidden layers: batch | layer | none (wgan-gp needs layer or none)")
    d_spectral: bool = opt(False, "spectral normalisation of every D weight (Miyato et al., 2018)")
    num_classes: int = opt(0, "0 = unconditional; N = conditional DCGAN on the data's N class labels "
                              "(one-hot into G, projection in D)")


@dataclass
class LossCfg:
    kind: str = opt("nonsaturating", "GAN loss: nonsaturating (BCE with logits) | hinge | lsgan | wgan-gp")
    real_label: float = opt(1.0, "target for real images; < 1 is one-sided label smoothing (e.g. 0.9); "
                                 "nonsaturating and lsgan only")
    label_flip: float = opt(0.0, "probability of swapping a sample's real/fake target in the D step (label noise); "
                                 "nonsaturating and lsgan only")
    gp_weight: float = opt(10.0, "wgan-gp: weight of the gradient penalty (Gulrajani et al., 2017)")
    r1_gamma: float = opt(0.0, "R1 penalty on the reals (Mescheder et al., 2018): adds r1_gamma/2 * E||grad D(x)||^2 "
                               "to D's loss, with any loss.kind; 0 = off")


@dataclass
class OptimCfg:
    g_lr: float = opt(2e-4, "generator Adam learning rate")
    d_lr: float = opt(2e-4, "discriminator Adam learning rate (TTUR: often larger than g_lr)")
    g_beta1: float = opt(0.5, "generator Adam beta1 (Radford: 0.5)")
    g_beta2: float = opt(0.999, "generator Adam beta2")
    d_beta1: float = opt(0.5, "discriminator Adam beta1")
    d_beta2: float = opt(0.999, "discriminator Adam beta2")
    schedule: str = opt("constant", "learning-rate schedule on the image counter: constant | exp | cosine")
    decay_start_kimg: float = opt(0.0, "exp/cosine: the learning rates stay constant until this kimg")
    half_life_kimg: float = opt(100.0, "exp: the learning rates halve every this many kimg after decay_start_kimg")
    min_lr_ratio: float = opt(0.0, "exp/cosine: floor of the learning rates, as a fraction of g_lr/d_lr")


@dataclass
class TrainCfg:
    kimg: float = opt(100.0, "training length in thousands of real images shown to D (all ranks together)")
    minutes: float = opt(0.0, "a time budget: training ends (final samples, evaluation and checkpoint, state complete) "
                              "at the first tick past this many minutes of training, summed over resumes and "
                              "saved in checkpoints, or at train.kimg, whichever comes first; 0 = no time limit")
    batch: int = opt(64, "global batch size (all ranks together); must divide by the number of processes")
    mixed_precision: str = opt("auto", "no | bf16 | fp16 | auto (= the accelerate launch config's setting)")
    tick_kimg: float = opt(1.0, "maintenance cadence: stats, logs and the progress line every this many kimg")
    sample_every_kimg: float = opt(5.0, "write a fixed-noise sample grid every this many kimg (rounded to ticks)")
    sample_grid: int = opt(64, "number of images in the sample grid (conditional: rounded to whole rows per class)")
    loss_limit: float = opt(1e4, "stop the run like a NaN when |Loss/D| or |Loss/G| (tick means) stays above this "
                                 "for train.loss_limit_ticks ticks in a row: finite but exploding; 0 = never")
    loss_limit_ticks: int = opt(3, "ticks in a row above train.loss_limit before the run is stopped")
    collapse_threshold: float = opt(0.25, "warn of mode collapse when the diversity of generated batches falls below "
                                          "this fraction of the real batches' (Diversity/ratio); 0 = never warn")
    compile: str = opt("off", "torch.compile G and D for the training step: off | default | reduce-overhead (CUDA "
                              "graphs on a GPU) | max-autotune | max-autotune-no-cudagraphs; DDP only")


@dataclass
class AugmentCfg:
    policy: str = opt("", "DiffAugment (Zhao et al., 2020) on every image D sees, real and fake: a comma list of "
                          "color, translation, cutout; empty = off")
    translation: float = opt(0.125, "translation: largest shift as a fraction of the image side")
    cutout: float = opt(0.5, "cutout: side of the erased square as a fraction of the image side")
    adaptive: bool = opt(False, "adaptive augmentation (StyleGAN2-ADA): each op of augment.policy reaches each "
                                "image with a probability p, raised while D is too sure of the reals and lowered "
                                "otherwise; p starts at 0")
    target: float = opt(0.6, "adaptive: the target of E[sign(D(real))], D's overfitting signal (ADA: 0.6)")
    speed_kimg: float = opt(100.0, "adaptive: kimg for p to move from 0 to 1 when the signal stays on one side")


@dataclass
class EmaCfg:
    half_life_kimg: float = opt(10.0, "exponential moving average of G's weights, used for samples, FID and "
                                      "generator.safetensors: its half-life in kimg; 0 = off")
    rampup: float = opt(0.05, "early in training the half-life is at most this fraction of the images seen "
                              "(so the average forgets the random start); 0 = no ramp-up")
    bn_batches: int = opt(8, "before sampling, re-estimate the averaged G's BatchNorm statistics from this many "
                             "batches of noise (its weights moved, so G's own statistics do not fit); 0 = copy G's")


@dataclass
class CheckpointCfg:
    every_kimg: float = opt(10.0, "save a checkpoint every this many kimg (rounded to ticks); one is always saved at the end")
    keep: int = opt(3, "keep the newest this many checkpoints (older ones are deleted)")
    make_room: bool = opt(False, "when the disk clearly lacks the space for the next checkpoint, delete the oldest "
                                 "kept ones first (never the newest, never best/); false = stop with an error instead")


@dataclass
class EvalCfg:
    every_kimg: float = opt(0.0, "evaluate eval.metrics (and IS when the weights have logits) every this many kimg, "
                                 "rounded to ticks, and at the end; 0 = off")
    metrics: str = opt("fid,kid", "comma list of fid, kid (x 10^3), pr (precision/recall); fid picks checkpoints/best/")
    kid_subsets: int = opt(100, "KID: random subsets (StyleGAN, torch-fidelity: 100; ~1 s each of 1000 on 2 CPU cores)")
    kid_subset_size: int = opt(1000, "KID: samples per subset (StyleGAN, torch-fidelity: 1000; fewer samples: all)")
    num: int = opt(10000, "generated samples per evaluation, all ranks together (50000 to compare with papers)")
    ref_num: Optional[int] = opt(None, "real images in the cached reference statistics; default the whole training set")
    batch: int = opt(64, "images per Inception batch on each rank")
    inception: Optional[str] = opt(None, "FID Inception weights (pytorch-fid .pth or TorchScript); default "
                                         "$DCGAN_DIST_INCEPTION, else pytorch-fid's file, downloaded once")
    preprocess: str = opt("tf1", "tf1 = torch-fidelity / StyleGAN numbers; pytorch-fid = pytorch-fid's numbers")


@dataclass
class Config:
    run: RunCfg = field(default_factory=RunCfg)
    data: DataCfg = field(default_factory=DataCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    loss: LossCfg = field(default_factory=LossCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    augment: AugmentCfg = field(default_factory=AugmentCfg)
    ema: EmaCfg = field(default_factory=EmaCfg)
    checkpoint: CheckpointCfg = field(default_factory=CheckpointCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    resume: str = opt("auto", "auto (newest complete checkpoint in run.dir, if any) | a checkpoint path | none")
    seed: int = opt(0, "seed for weights, noise, data order and sample grids")


class ConfigError(UserError, ValueError):
    """A config problem worth a one-paragraph message, not a traceback."""


EXTENDS_KEY = "extends"


def _load_yaml_chain(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """Load `path`, recursively merged over the file it `extends`."""
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"config files extend each other in a cycle: {chain}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        node = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and friends: say which file
        raise ConfigError(f"cannot parse {path}: {e}") from e
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path} must hold a mapping of config keys, not a {type(node).__name__}")
    parent = node.pop(EXTENDS_KEY, None)
    if parent is None:
        return node
    base = _load_yaml_chain(path.parent / str(parent), (*seen, path))
    return OmegaConf.merge(base, node)


def _explain(e: OmegaConfBaseException, where: str) -> ConfigError:
    key = getattr(e, "full_key", None)
    msg = str(e).splitlines()[0]
    hint = "run `python -m dcgan_dist.train --help` for every key, its type and default"
    return ConfigError(f"bad config key{f' {key!r}' if key else ''} in {where}: {msg}\n  ({hint})")


# YAML 1.1 reads these as booleans, which would turn `train.mixed_precision=no` into the string
# "False"; quoted, a str key keeps the word and a bool key still converts it.
_YAML_BOOL_WORDS = {"no", "yes", "on", "off", "y", "n"}


def _quote_yaml_words(override: str) -> str:
    """Keep a value as the user typed it where YAML would read it as something else: the boolean
    words, and an empty value of a text key (`augment.policy=` means "", not null; an optional key
    such as `eval.ref_num=` stays null, i.e. unset)."""
    key, _, value = override.partition("=")
    if value.strip().lower() in _YAML_BOOL_WORDS or (value == "" and _key_type(key) == "str"):
        return f"{key}='{value}'"
    return override


def _key_type(key: str) -> Optional[str]:
    """The annotation of a dotted schema key ("str", "Optional[str]", ...), None for an unknown key."""
    cls: Any = Config
    for part in key.split("."):
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        if part not in fields:
            return None
        f = fields[part]
        cls = f.default_factory if dataclasses.is_dataclass(f.default_factory) else f.type
    return cls if isinstance(cls, str) else None


def load(path: str | os.PathLike | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Schema defaults <- YAML file (with `extends`) <- `key=value` overrides, then validated."""
    merged = OmegaConf.structured(Config)
    name = "defaults"
    if path is not None:
        name = Path(path).stem
        try:
            merged = OmegaConf.merge(merged, _load_yaml_chain(Path(path)))
        except OmegaConfBaseException as e:
            raise _explain(e, str(path)) from None
    bad = [o for o in overrides if "=" not in o or o.startswith("-")]
    if bad:
        raise ConfigError(f"overrides must look like key=value (e.g. train.kimg=50); got {bad}")
    try:
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([_quote_yaml_words(o) for o in overrides]))
    except OmegaConfBaseException as e:
        raise _explain(e, "the command-line overrides") from None
    cfg: Config = OmegaConf.to_object(merged)  # type: ignore[assignment]
    if cfg.run.name is None:
        cfg.run.name = name
    if cfg.run.dir is None:
        cfg.run.dir = str(Path("runs") / cfg.run.name)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Checks the schema's types cannot express; each message names the key and the fix."""
    problems = [f"{key} must be a finite number (got {value})" for key, value in _numbers(cfg) if not math.isfinite(value)]

    def need(ok: bool, msg: str) -> None:
        if not ok:
            problems.append(msg)

    if problems:  # every comparison below would be meaningless on inf/nan
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))

    need(cfg.train.kimg > 0, f"train.kimg must be > 0 (got {cfg.train.kimg})")
    need(cfg.train.minutes >= 0, f"train.minutes must be >= 0 (0 = no time limit; got {cfg.train.minutes})")
    need(cfg.train.batch > 0, f"train.batch must be > 0 (got {cfg.train.batch})")
    need(cfg.train.tick_kimg > 0, f"train.tick_kimg must be > 0 (got {cfg.train.tick_kimg})")
    need(cfg.train.sample_every_kimg > 0, "train.sample_every_kimg must be > 0")
    need(cfg.train.sample_grid > 0, "train.sample_grid must be > 0")
    need(cfg.checkpoint.every_kimg > 0, "checkpoint.every_kimg must be > 0")
    need(cfg.checkpoint.keep >= 1, f"checkpoint.keep must be >= 1 (got {cfg.checkpoint.keep})")
    need(_resolution_ok(cfg.model.resolution),
         f"model.resolution={cfg.model.resolution} cannot be built: it must be base * 2**k with base 4..7 and at least "
         "16 (e.g. 28, 32, 48, 64, 96, 128); resize the data with `python -m dcgan_dist.prepare --resolution N`")
    need(cfg.model.channels in (1, 3), f"model.channels must be 1 or 3 (got {cfg.model.channels})")
    need(cfg.model.z_dim > 0 and cfg.model.g_width > 0 and cfg.model.d_width > 0,
         "model.z_dim, model.g_width and model.d_width must be > 0")
    need(0.0 <= cfg.model.d_dropout < 1.0, f"model.d_dropout must be in [0, 1) (got {cfg.model.d_dropout})")
    _validate_training_options(cfg, need)
    workers_problem = check_workers(cfg.data.workers)
    need(workers_problem is None, workers_problem or "")
    need(cfg.data.shuffle_buffer >= 1, f"data.shuffle_buffer must be >= 1 (got {cfg.data.shuffle_buffer})")
    need(cfg.data.prefetch >= 1, f"data.prefetch must be >= 1 (got {cfg.data.prefetch})")
    need(bool(cfg.data.shards), "data.shards must name the training shards (see `python -m dcgan_dist.prepare --help`)")
    need(cfg.resume in ("auto", "none") or bool(cfg.resume), "resume must be auto, none or a checkpoint path")
    need(cfg.eval.every_kimg >= 0, f"eval.every_kimg must be >= 0 (0 = off; got {cfg.eval.every_kimg})")
    need(cfg.eval.num >= 2 and cfg.eval.batch >= 1, "eval.num must be >= 2 and eval.batch >= 1")
    need(cfg.eval.ref_num is None or cfg.eval.ref_num >= 2, "eval.ref_num must be >= 2 (or unset: all images)")
    need(cfg.eval.kid_subsets >= 1 and cfg.eval.kid_subset_size >= 2,
         "eval.kid_subsets must be >= 1 and eval.kid_subset_size >= 2")
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))


def _validate_training_options(cfg: Config, need) -> None:
    """Model, loss, optimizer, augmentation and EMA keys, and the combinations that cannot work.
    Each key's accepted values are listed once, by the module that uses them (imported here, not at
    the top: those modules import this one)."""
    from .augment import POLICIES
    from .data.cache import MODES as CACHE_MODES
    from .losses import LOSSES
    from .metrics.inception import PREPROCESS_MODES
    from .metrics.suite import training_problems
    from .models import D_NORMS
    from .optim import SCHEDULES
    from .runtime import MIXED_PRECISION
    from .step import COMPILE_MODES

    for key, allowed in (("model.d_norm", D_NORMS), ("loss.kind", LOSSES), ("optim.schedule", SCHEDULES),
                         ("data.cache", CACHE_MODES), ("train.compile", COMPILE_MODES),
                         ("train.mixed_precision", MIXED_PRECISION), ("eval.preprocess", PREPROCESS_MODES)):
        value = operator.attrgetter(key)(cfg)
        need(value in allowed, f"{key} must be one of {', '.join(allowed)} (got {value!r})")
    for problem in training_problems(cfg.eval.metrics, cfg.eval.num, "eval"):  # eval.metrics' names: suite.METRICS
        need(False, problem)
    m, loss, o, a = cfg.model, cfg.loss, cfg.optim, cfg.augment
    need(m.num_classes >= 0, f"model.num_classes must be >= 0 (0 = unconditional; got {m.num_classes})")
    need(0.0 < loss.real_label <= 1.0, f"loss.real_label must be in (0, 1] (got {loss.real_label})")
    need(0.0 <= loss.label_flip < 0.5, f"loss.label_flip must be in [0, 0.5) (got {loss.label_flip})")
    need(loss.gp_weight >= 0, f"loss.gp_weight must be >= 0 (got {loss.gp_weight})")
    need(loss.r1_gamma >= 0, f"loss.r1_gamma must be >= 0 (0 = off; got {loss.r1_gamma})")
    need(loss.r1_gamma == 0 or cfg.train.mixed_precision != "fp16",
         "loss.r1_gamma with train.mixed_precision=fp16: the penalty's gradient is not loss-scaled; use bf16 or no")
    if loss.kind in ("hinge", "wgan-gp"):
        need(loss.real_label == 1.0 and loss.label_flip == 0.0,
             f"loss.real_label and loss.label_flip are targets of the nonsaturating and lsgan losses; loss.kind="
             f"{loss.kind} has no targets: set loss.real_label=1.0 loss.label_flip=0")
    if loss.kind == "wgan-gp":
        need(m.d_norm != "batch", "loss.kind=wgan-gp penalises each sample's gradient, which BatchNorm in D mixes "
                                  "across the batch: set model.d_norm=layer (or none)")
        need(cfg.train.mixed_precision != "fp16", "loss.kind=wgan-gp with train.mixed_precision=fp16: the gradient "
                                                  "penalty's gradient is not loss-scaled; use bf16 or no")
    need(o.g_lr > 0 and o.d_lr > 0, "optim.g_lr and optim.d_lr must be > 0")
    for key in ("g_beta1", "g_beta2", "d_beta1", "d_beta2"):
        need(0.0 <= getattr(o, key) < 1.0, f"optim.{key} must be in [0, 1) (got {getattr(o, key)})")
    need(o.half_life_kimg > 0, f"optim.half_life_kimg must be > 0 (got {o.half_life_kimg})")
    need(0.0 <= o.min_lr_ratio <= 1.0, f"optim.min_lr_ratio must be in [0, 1] (got {o.min_lr_ratio})")
    need(o.decay_start_kimg >= 0, f"optim.decay_start_kimg must be >= 0 (got {o.decay_start_kimg})")
    unknown = [p for p in augment_policy(a.policy) if p not in POLICIES]
    need(not unknown, f"augment.policy: unknown {unknown}; use a comma list of {', '.join(POLICIES)} (or empty)")
    need(0.0 < a.translation < 1.0 and 0.0 < a.cutout < 1.0, "augment.translation and augment.cutout must be in (0, 1)")
    if a.adaptive:
        need(bool(augment_policy(a.policy)), "augment.adaptive=true steers the ops of augment.policy, which is empty: "
                                             "set augment.policy=color,translation,cutout (or augment.adaptive=false)")
        need(0.0 < a.target < 1.0 and a.speed_kimg > 0,
             "augment.target must be in (0, 1) and augment.speed_kimg > 0")
    need(cfg.ema.half_life_kimg >= 0 and cfg.ema.rampup >= 0 and cfg.ema.bn_batches >= 0,
         "ema.half_life_kimg, ema.rampup and ema.bn_batches must be >= 0")
    need(cfg.train.loss_limit >= 0 and cfg.train.loss_limit_ticks >= 1,
         "train.loss_limit must be >= 0 (0 = off) and train.loss_limit_ticks >= 1")
    need(cfg.train.collapse_threshold >= 0, "train.collapse_threshold must be >= 0 (0 = never warn)")


def _numbers(cfg: Config, prefix: str = ""):
    """(key, value) of every float-valued key: inf and nan parse as floats and pass every `> 0` test."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            yield from _numbers(value, f"{prefix}{f.name}.")
        elif isinstance(value, float):
            yield prefix + f.name, value


def _resolution_ok(resolution: int) -> bool:
    from .models import stage_plan  # the owner of the rule

    try:
        stage_plan(resolution)
    except ValueError:
        return False
    return True


def augment_policy(policy: str) -> list[str]:
    """`"color, translation"` -> `["color", "translation"]`."""
    return [p.strip() for p in policy.split(",") if p.strip()]


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def describe_keys() -> str:
    """Every key with its default and help line, for `--help`."""
    lines = []

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.default_factory):  # a section: RunCfg, DataCfg, ...
                walk(f.default_factory, f"{prefix}{f.name}.")
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {prefix + f.name:<26} {default!s:<12} {f.metadata.get('help', '')}")

    walk(Config, "")
    return "\n".join(lines)
