"""Typed configuration: the one place where defaults live.

A config is read in three layers: these dataclass defaults, then a YAML file, then command-line
overrides. Unknown keys and invalid values raise :class:`ConfigError` naming the key and what is
allowed. The resolved config is written next to every output (:func:`save_config`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


def _f(default: Any, help: str, choices: tuple | None = None, lo=None, hi=None, joins=False, **kw):
    """A dataclass field carrying its help text and its allowed values.

    ``joins``: a str field that also takes a YAML list, stored comma-joined (a search
    categorical needs one plain value per choice).
    """
    meta = {"help": help, "choices": choices, "lo": lo, "hi": hi, "joins": joins}
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class DataConfig:
    source: str = _f(
        "phantom", "where the real images come from", ("phantom", "imagefolder", "npz")
    )
    path: str | None = _f(None, "image-folder root or .npz file (phantom: where it is written)")
    classes: list[str] | None = _f(
        None, "class folders to use, in label order (default: all found)"
    )
    synthetic_class: str | None = _f(None, "class that receives synthetic images (default: first)")
    image_size: int = _f(32, "images are resized to image_size x image_size", lo=8, hi=1024)
    channels: int = _f(1, "1 = grayscale, 3 = RGB", (1, 3))
    max_per_class: int | None = _f(None, "cap on real training images per class", lo=1)
    val_fraction: float = _f(
        0.2, "share of train carved out as val when val is tiny/missing", lo=0.01, hi=0.9
    )
    min_val_per_class: int = _f(20, "a val split with fewer images per class is replaced", lo=0)
    skip_bad_images: bool = _f(False, "skip unreadable images (and count them) instead of failing")
    seed: int = _f(0, "seed for the val split and the phantom data")
    phantom_n_per_class: int = _f(100, "phantom: real training images per class", lo=2)
    phantom_val_per_class: int = _f(300, "phantom: validation images per class", lo=2)
    phantom_test_per_class: int = _f(500, "phantom: test images per class", lo=2)


@dataclass
class TrainConfig:
    r: float = _f(0.0, "synthetic-to-real ratio of the synthetic class", lo=0.0, hi=1.0)
    mode: str = _f(
        "replace",
        "replace: class size fixed; augment: synthetic added on top",
        ("replace", "augment"),
    )
    arch: str = _f(
        "simple", "classifier: simple (the study's CNN) or resnet (a small residual network)",
        ("simple", "resnet"),
    )  # fmt: skip
    # Which classes receive synthetic images; R applies to each of them (train/mixing.py).
    synthetic_classes: str = _f(
        "default",
        "classes mixed with synthetic images: default (data.synthetic_class), all, "
        "or a comma-separated list of class names",
        joins=True,
    )
    # A judge trained on the real training split only scores each pool image (its intended
    # class's probability); the trial draws from the top fraction. 1.0 keeps the whole pool.
    filter_top: float = _f(
        1.0, "keep this top fraction of a pool by judge confidence (1.0: no filter)",
        lo=0.01, hi=1.0,
    )  # fmt: skip
    epochs: int = _f(30, "training epochs", lo=1)
    batch_size: int = _f(128, "batch size (the study's)", lo=1)
    lr: float = _f(1e-3, "Adam learning rate (the study's)", lo=0.0)
    seed: int = _f(0, "seed for mixing, initialisation and shuffling")
    device: str = _f("auto", "auto, cpu, cuda or cuda:N")
    # CPU kernels sum in a thread-count-dependent order, so bit-exact repeats need the same count.
    threads: int = _f(
        0, "torch CPU threads (0: torch's default); a search trial uses its CPU share", lo=0
    )
    # The study's CNN is 16/32/64 conv channels + 128 hidden units; tests shrink it to stay fast.
    widths: list[int] = _f([16, 32, 64], "classifier conv channels per block", lo=1)
    fc: int = _f(128, "classifier hidden units", lo=1)
    # k > 1 trains seed, seed+1, ..., seed+k-1 together (train/multi.py) and reports their mean;
    # a search trial takes k from its space's search.seeds_per_trial.
    n_seeds: int = _f(
        1, "seeds trained together (seed, seed+1, ...); metrics are their mean", lo=1, hi=64
    )
    # Validation costs about as much as training here (600 val images against 200-300 training
    # images per epoch): a search that needs only the final number validates less often. The
    # weights, and so the final metrics, do not depend on it.
    val_every: int = _f(
        1, "validate (and report, checkpoint) after every N-th epoch and the last", lo=1
    )


@dataclass
class FinetuneConfig:
    backend: str = _f("tiny", "diffusion backend", ("tiny", "stable-diffusion"))
    from_scratch: bool = _f(False, "tiny: train without the bundled base model")
    base_model: str | None = _f(None, "stable-diffusion: local diffusers pipeline folder")
    # 600: from the task-naive base, the tiny generator's CNV images reach the 0.9 judge-called
    # share at guidance 2 there (400: 0.890; base_model/TRAINING.md "More fine-tune steps").
    max_steps: int = _f(600, "optimisation steps", lo=1)
    batch_size: int = _f(32, "batch size (stable-diffusion default: 8)", lo=1)
    lr: float = _f(2e-4, "AdamW learning rate (stable-diffusion default: 1e-4)", lo=0.0)
    ema_decay: float = _f(0.995, "EMA decay of the saved weights", lo=0.0, hi=1.0)
    null_class_prob: float = _f(
        0.1, "class-label dropout for classifier-free guidance", lo=0.0, hi=1.0
    )
    checkpoint_every: int = _f(100, "steps between resumable checkpoints", lo=1)
    # Not in the model hash: each saved step is a model of its own (generate.finetune_steps).
    save_steps: list[int] = _f(
        [], "also save the generator at these steps, each a model with its own hash", lo=1
    )
    # A task-naive base: "many unlabelled scans, few labelled ones" (the bundled base is one).
    unconditional: bool = _f(
        False, "tiny: train without labels (every image is the null class), e.g. for a base model"
    )
    prompt: str = _f("OCT scan showing {cls}", "stable-diffusion: prompt template per class")
    resolution: int | None = _f(
        None, "training resolution (default: tiny = image_size, SD = 512)", lo=8
    )
    seed: int = _f(0, "seed of the fine-tune")
    device: str = _f("auto", "auto, cpu, cuda or cuda:N")
    # Not in the model hash (diffusion/tiny.py HASHED_FIELDS): only the speed depends on it.
    threads: int = _f(0, "torch CPU threads (0: the cores this job may use)", lo=0)


@dataclass
class GenerateConfig:
    guidance: float = _f(2.0, "classifier-free guidance scale", lo=0.0)
    steps: int = _f(25, "sampling steps", lo=1)
    scheduler: str = _f("ddim", "sampler", ("ddim", "dpm-solver++"))
    n: int = _f(200, "images per pool", lo=1)
    seed: int = _f(0, "seed of the pool")
    # A generator checkpoint is a model of its own (own hash, own pools): finetune.save_steps.
    finetune_steps: int = _f(
        0, "generator checkpoint: the fine-tune's weights after this many steps (0: final)", lo=0
    )
    postprocess: str = _f("none", "intensity postprocessing", ("none", "histogram-match"))
    batch_size: int = _f(64, "images per forward pass", lo=1)
    device: str = _f("auto", "auto, cpu, cuda or cuda:N")
    # Not a pool field (POOL_FIELDS): image i is the same at any thread count up to rounding.
    threads: int = _f(0, "torch CPU threads (0: the cores this job may use)", lo=0)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)


# The GenerateConfig fields that pick a trial's pool of generated images.
POOL_FIELDS = ("guidance", "steps", "scheduler", "postprocess", "finetune_steps")
# Flat trial-config names that are not the field's own name.
_FLAT_ALIASES = {"pool_size": ("generate", "n"), "pool_seed": ("generate", "seed")}


@dataclass
class TrialConfig:
    """One trial's whole configuration: how its classifier trains and which pool it draws from.

    Search trials, confirmation runs and ``best.yaml`` all describe a trial with this record.
    Its flat form (:meth:`to_flat`, :meth:`from_flat`) is what ``trials.jsonl`` stores.
    """

    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    @classmethod
    def from_flat(cls, flat: dict[str, Any], base: Config | None = None) -> TrialConfig:
        """Validate a flat ``{"r": .., "guidance": .., "widths": .., "pool_size": ..}`` dict.

        Keys are TrainConfig fields, the pool fields (:data:`POOL_FIELDS`), ``pool_size`` and
        ``pool_seed``; unknown keys raise ConfigError. Missing keys come from ``base``.
        """
        base = base or Config()
        out = cls(
            train=dataclasses.replace(base.train), generate=dataclasses.replace(base.generate)
        )
        train_fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
        gen_fields = {f.name: f for f in dataclasses.fields(GenerateConfig)}
        for key, value in flat.items():
            if key in train_fields:
                section, name, fields = "train", key, train_fields
            elif key in POOL_FIELDS:
                section, name, fields = "generate", key, gen_fields
            elif key in _FLAT_ALIASES:
                section, name = _FLAT_ALIASES[key]
                fields = gen_fields
            else:
                allowed = ", ".join([*train_fields, *POOL_FIELDS, *_FLAT_ALIASES])
                raise ConfigError(f"trial config: unknown key {key!r}; allowed: {allowed}")
            if value is None and key in ("widths", "fc"):
                continue  # "not given": the default CNN
            setattr(getattr(out, section), name, _check_value(section, fields[name], value))
        return out

    def to_flat(self) -> dict[str, Any]:
        """The flat dict of this trial (inverse of :meth:`from_flat`)."""
        flat = dataclasses.asdict(self.train)
        flat.update({k: getattr(self.generate, k) for k in POOL_FIELDS})
        flat["pool_size"] = self.generate.n
        flat["pool_seed"] = self.generate.seed
        return flat


SECTIONS = {
    "data": DataConfig,
    "train": TrainConfig,
    "finetune": FinetuneConfig,
    "generate": GenerateConfig,
}


def _check_value(section: str, f: dataclasses.Field, value: Any) -> Any:
    """Validate and coerce one value against its field; raise ConfigError naming the key."""
    key = f"{section}.{f.name}"
    meta = f.metadata
    if value is None:
        if "None" in str(f.type):
            return None
        raise ConfigError(f"{key}: must not be empty")
    typ = str(f.type)
    try:
        if typ.startswith("bool"):
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                value = value.lower() in ("true", "1", "yes")
            elif not isinstance(value, bool):
                raise ValueError
        elif typ.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            value = int(value)
        elif typ.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
        elif typ.startswith("list[int]"):
            empty_ok = f.default_factory is not dataclasses.MISSING and not f.default_factory()
            if not isinstance(value, list | tuple) or not (value or empty_ok):
                raise ValueError
            if any(isinstance(v, bool) or not isinstance(v, int) for v in value):
                raise ValueError
            value = [int(v) for v in value]
            lo, hi = meta.get("lo"), meta.get("hi")
            if any(lo is not None and v < lo or hi is not None and v > hi for v in value):
                raise ConfigError(f"{key}: every value must be in [{lo}, {hi or 'inf'}]")
            return value
        elif typ.startswith("list"):
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list | tuple) or not value:
                raise ValueError
            value = [str(v) for v in value]
        elif typ.startswith("str"):
            if meta.get("joins") and isinstance(value, list | tuple) and value:
                value = ",".join(str(v) for v in value)
            if not isinstance(value, str | int | float):
                raise ValueError
            value = str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {typ.split(' |')[0]}, got {value!r}") from None
    if meta.get("choices") and value not in meta["choices"]:
        allowed = ", ".join(str(c) for c in meta["choices"])
        raise ConfigError(f"{key}: {value!r} is not one of: {allowed}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and value < lo or hi is not None and value > hi:
        rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
        raise ConfigError(f"{key}: {value!r} is outside {rng}")
    return value


def _apply(cfg: Config, updates: dict[str, Any], origin: str) -> None:
    if not isinstance(updates, dict):
        raise ConfigError(f"{origin}: expected a mapping of sections ({', '.join(SECTIONS)})")
    for section, values in updates.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"{origin}: unknown section {section!r}; allowed: {', '.join(SECTIONS)}"
            )
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: section {section!r} must be a mapping")
        obj = getattr(cfg, section)
        fields = {f.name: f for f in dataclasses.fields(obj)}
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(
                    f"{origin}: unknown key {section}.{key}; allowed: {', '.join(fields)}"
                )
            setattr(obj, key, _check_value(section, fields[key], value))


def read_yaml(path: str | os.PathLike) -> Any:
    """Read a YAML file with ``yaml.safe_load``; errors become ConfigError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML ({str(e).splitlines()[0]})") from None


def load_config(
    path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None
) -> Config:
    """Defaults, then the YAML file at ``path``, then ``overrides`` (``{"train.r": 0.5}`` or nested)."""
    cfg = Config()
    if path is not None:
        doc = read_yaml(path) or {}
        _apply(cfg, doc, str(path))
    if overrides:
        nested: dict[str, dict[str, Any]] = {}
        for k, v in overrides.items():
            if v is None:
                continue
            if isinstance(v, dict):
                nested.setdefault(k, {}).update(v)
                continue
            if "." not in k:
                raise ConfigError(f"override {k!r} must be section.key")
            s, key = k.split(".", 1)
            nested.setdefault(s, {})[key] = v
        _apply(cfg, nested, "command line")
    return cfg


def config_from_dict(doc: dict[str, Any]) -> Config:
    """Build a validated Config from a plain dict (as saved by :func:`config_to_dict`)."""
    cfg = Config()
    _apply(cfg, doc, "config")
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-safe dict of a config (or of one section)."""
    return dataclasses.asdict(cfg)


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write the resolved config as YAML (next to the outputs it produced)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return p
