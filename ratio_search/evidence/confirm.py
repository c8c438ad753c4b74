"""Multi-seed confirmation of a finished search, the held-out test split, the usable ratio.

A search ranks its trials by one run each, and its best trial was *selected* for looking good:
its value is biased upwards (the winner's curse). So before anything is reported:

1. The top ``k`` distinct configurations of the search and the R = 0 baseline are re-trained with
   ``S`` new seeds (distinct from every seed the search used). Each configuration gets the mean
   and 95 % t-interval of every validation metric, and the paired difference to R = 0 with its
   interval (paired by seed: the same seed gives both arms the same initial weights and batch
   order, so their difference is far less noisy than either).
2. The configuration with the best *confirmed* mean is chosen (which may be R = 0 itself: then
   synthetic data did not help, and that is the answer).
3. Only then is the test split touched, once: the S models of the chosen configuration and of
   the baseline are evaluated on it (mean ± CI, and the paired difference).
4. The usable synthetic ratio (:func:`ratio_search.stats.usable_ratio`) is computed from the
   search's trials plus every confirmation run. While the R it names rests on a single trial,
   that R is confirmed too (at most ``usable_rounds`` times), so the headline number is backed by
   ``S`` seeds; extra R values can be asked for with ``confirm_r``.

Every confirmation run is cached under ``<run dir>/confirm/`` (its validation metrics as JSON
and its weights as safetensors, keyed by a hash of the trial config, seed and data key), so an
interrupted export resumes where it stopped and a second export re-trains nothing.

The trial itself is :func:`ratio_search.trial.run_trial`, the function the search's trainable
calls, so a confirmation run is the same computation as a trial with another seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import RatioSearchError, SearchError
from .home import Home
from .stats import mean_ci, paired_difference, usable_ratio

# Metric names of a trial's result as the search reports them, and their key in run_trial's output.
METRICS = {
    "val_accuracy": "accuracy",
    "val_f1": "f1",
    "val_precision": "precision",
    "val_recall": "recall",
    "val_roc_auc": "roc_auc",
    "val_loss": "val_loss",
}
# The parameters that make two trials the same configuration (the seed is not one of them).
CONFIG_KEYS = (
    "r",
    "guidance",
    "steps",
    "scheduler",
    "postprocess",
    "mode",
    "epochs",
    "batch_size",
    "lr",
)
# The parameters that pick the pool of generated images (and so the group of a usable-ratio row).
GEN_KEYS = ("guidance", "steps", "scheduler", "postprocess", "mode")
# Confirmation seeds start here, far from the seeds a search uses (its fixed seed, usually 0).
SEED_BASE = 1000

ProgressFn = Callable[[str], None]


# ----------------------------------------------------------------------------- configurations


def _num(v: Any) -> Any:
    return round(float(v), 6) if isinstance(v, int | float) and not isinstance(v, bool) else v


def config_signature(config: Mapping[str, Any]) -> tuple:
    """What makes two trial configs the same configuration: :data:`CONFIG_KEYS`, rounded.

    At R = 0 no generated image is used, so the generation settings are dropped from it.
    """
    r0 = float(config.get("r", 0.0)) == 0.0
    return tuple(
        (
            k,
            None
            if (r0 and k in ("guidance", "steps", "scheduler", "postprocess"))
            else _num(config.get(k)),
        )
        for k in CONFIG_KEYS
    )


def group_of(config: Mapping[str, Any]) -> str:
    """The generation settings of a config as a label (``"real only"`` at R = 0)."""
    if float(config.get("r", 0.0)) == 0.0:
        return "real only"
    return ", ".join(f"{k}={config.get(k)}" for k in GEN_KEYS if config.get(k) is not None)


def label_of(config: Mapping[str, Any]) -> str:
    """A short human label: ``R=0.40 guidance=2.0 steps=25``."""
    r = float(config.get("r", 0.0))
    if r == 0.0:
        return "R=0 (real only)"
    parts = [f"R={r:.2f}"]
    parts += [f"{k}={config[k]}" for k in ("guidance", "steps") if config.get(k) is not None]
    return " ".join(parts)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", text).strip("_")


@dataclass
class Candidate:
    """One configuration to confirm: its complete trial config and where it came from."""

    label: str
    config: dict[str, Any]
    role: str  # "top" (one of the search's top k), "baseline" (R = 0), "usable" / "extra" (an R)
    trial_id: str | None = None
    trial_value: float | None = None
    pool_key: str | None = None
    seeds: list[int] = field(default_factory=list)
    val: list[dict[str, float]] = field(default_factory=list)  # per seed
    weights: list[str] = field(default_factory=list)  # per seed: safetensors path
    test: list[dict[str, float]] = field(default_factory=list)
    mlflow_run_id: str | None = None


def _metric_value(rec: Mapping[str, Any], metric: str) -> float | None:
    v = (rec.get("metrics") or {}).get(metric)
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def select_candidates(
    trials: Mapping[str, Mapping[str, Any]],
    full_config: Callable[[Mapping[str, Any]], dict[str, Any]],
    metric: str,
    mode: str,
    top_k: int,
) -> tuple[list[Candidate], Candidate]:
    """The ``top_k`` best distinct configurations with R > 0 of the finished trials, and R = 0.

    ``trials`` are trials.jsonl records (the last per trial id); ``full_config(params)`` turns a
    trial's params into its complete config. Configurations are compared by
    :func:`config_signature`; a configuration tried twice counts once, with its best trial. The
    baseline is the best trial's config with R = 0 (so it differs from the best in R alone); it
    is always confirmed, and never takes one of the ``top_k`` places.
    """
    sign = 1.0 if mode == "max" else -1.0
    done = []
    for tid, rec in trials.items():
        value = _metric_value(rec, metric)
        if rec.get("state") == "TERMINATED" and value is not None:
            cfg = full_config(rec.get("params") or {})
            done.append((sign * value, str(tid), rec, value, cfg))
    if not done:
        raise SearchError(f"no finished trial with a finite {metric}: nothing to confirm")
    done.sort(key=lambda t: (-t[0], t[1]))
    base_cfg = dict(done[0][4], r=0.0)
    base = Candidate(label_of(base_cfg), base_cfg, "baseline")
    base_sig = config_signature(base_cfg)
    seen: set[tuple] = {base_sig}
    top: list[Candidate] = []
    for _, tid, rec, value, cfg in done:
        sig = config_signature(cfg)
        if sig == base_sig and base.trial_id is None:  # the search's own R = 0 trial
            base.trial_id, base.trial_value = tid, value
        if sig in seen:
            continue
        seen.add(sig)
        if len(top) < top_k:
            top.append(
                Candidate(label_of(cfg), cfg, "top", tid, value, rec.get("pool_key") or None)
            )
    return top, base


def confirmation_seeds(n: int, used: set[int]) -> list[int]:
    """``n`` seeds from :data:`SEED_BASE` on, skipping every seed in ``used`` (the search's)."""
    seeds, s = [], SEED_BASE
    while len(seeds) < n:
        if s not in used:
            seeds.append(s)
        s += 1
    return seeds


# ------------------------------------------------------------------------------ the trainer


class RunContext:
    """Re-runs trials of one search outside Ray: its dataset, its pools, its trial configs.

    Loaded lazily from the run folder: the resolved ``config.yaml`` (dataset), ``run.json`` (the
    space, data key, model path). Pools are read by the trial's ``pool_key`` when still cached,
    else generated again (same key, same images) with the run's diffusion model.
    """

    def __init__(self, home: Home, run_folder: Path, info: Mapping[str, Any]) -> None:
        self.home = home
        self.run_folder = Path(run_folder)
        self.info = dict(info)
        self._data = None
        self._space = None
        self._model = None
        self._pools: dict[str, np.ndarray] = {}

    # -- the search's definitions
    @property
    def space(self):
        if self._space is None:
            from .space import load_space, parse_space

            if isinstance(self.info.get("space"), dict):
                self._space = parse_space(
                    self.info["space"], origin=f"{self.run_folder}/run.json space"
                )
            else:
                self._space = load_space(self.run_folder / "space.yaml")
        return self._space

    def full_config(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The complete trial config of sampled ``params`` (fixed values and defaults added)."""
        return self.space.trial_config(dict(params))

    @property
    def data(self):
        if self._data is None:
            from .config import load_config
            from .data import load_dataset

            cfg_path = self.run_folder / "config.yaml"
            cfg = load_config(cfg_path if cfg_path.is_file() else None)
            data_cfg = self.space.data_config(cfg.data) if not cfg_path.is_file() else cfg.data
            self._data = load_dataset(data_cfg, self.home)
            want = self.info.get("data_key")
            if want and self._data.key != want:
                raise SearchError(
                    f"the dataset of run {self.run_folder.name} has changed since the search "
                    f"(data key {self._data.key}, the search used {want}); confirmation would "
                    "compare runs on different data"
                )
        return self._data

    # -- one run
    def pool_images(self, config: Mapping[str, Any], pool_key: str | None) -> np.ndarray | None:
        """The generated images a trial with ``config`` mixes in (None at R = 0)."""
        if float(config.get("r", 0.0)) == 0.0:
            return None
        n = self.pool_n(config)
        from . import pools

        if pool_key:
            cache_key = f"{pool_key}:{n}"
            if cache_key not in self._pools:
                try:
                    self._pools[cache_key] = pools.load_pool(self.home, pool_key, n=n).images
                except RatioSearchError:
                    pass
            if cache_key in self._pools:
                return self._pools[cache_key]
        return self._generate(config)

    def pool_n(self, config: Mapping[str, Any]) -> int | None:
        """Images per pool as the search's trials used them: run.json's ``pool_n`` (the first n
        images of a pool), else the space's ``pool_size``."""
        n = self.info.get("pool_n") or config.get("pool_size")
        return int(n) if n else None

    def _generate(self, config: Mapping[str, Any]) -> np.ndarray:
        from . import pools
        from .config import GenerateConfig
        from .diffusion import load_model

        if self._model is None:
            path = self.info.get("model_path")
            if not path:
                raise SearchError(
                    f"run.json of {self.run_folder.name} names no model_path to regenerate a pool"
                )
            self._model = load_model(path, self.home)
        gen = GenerateConfig(
            guidance=float(config["guidance"]),
            steps=int(config["steps"]),
            scheduler=str(config.get("scheduler", "ddim")),
            postprocess=str(config.get("postprocess", "none")),
        )
        if config.get("pool_seed") is not None:
            gen.seed = int(config["pool_seed"])
        n = self.pool_n(config) or gen.n
        # As the search's trainable asks for it, so that the key (and the images) are the same.
        reference = (
            pools.class_reference(self.data) if gen.postprocess == "histogram-match" else None
        )
        pool = pools.get_pool(
            self.home,
            self._model,
            gen,
            n,
            reference=reference,
            synthetic_class_index=int(self.data.synthetic_label),
            progress=False,
        )
        return pool.images

    def _model_kwargs(self, config: Mapping[str, Any]) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if config.get("widths") is not None:
            kw["widths"] = tuple(int(w) for w in config["widths"])
        if config.get("fc") is not None:
            kw["fc"] = int(config["fc"])
        return kw

    def train(
        self, config: Mapping[str, Any], seed: int, pool_key: str | None
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """Train one trial of ``config`` with ``seed``: (validation metrics, model state dict)."""
        from .config import TrainConfig
        from .trial import run_trial

        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        cfg = TrainConfig(**{k: v for k, v in config.items() if k in fields})
        cfg.seed = int(seed)
        last: dict[str, Any] = {}

        def keep_state(epoch: int, metrics: dict[str, Any], state: dict[str, Any]) -> None:
            last["state"] = state["model"]  # the weights after the last epoch

        out = run_trial(
            cfg,
            self.data,
            self.pool_images(config, pool_key),
            report=keep_state,
            **self._model_kwargs(config),
        )
        return _val_metrics(out["metrics"]), last["state"]

    def test(self, config: Mapping[str, Any], state: Mapping[str, Any]) -> dict[str, float]:
        """Metrics on the test split of a model trained with ``config`` (its state dict)."""
        from .trainer import SimpleCNN, evaluate

        data = self.data
        kw = {"widths": (16, 32, 64), "fc": 128, **self._model_kwargs(config)}
        c, h, w = data.train_x.shape[1:]
        model = SimpleCNN(c, len(data.class_names), (h, w), kw["widths"], kw["fc"])
        model.load_state_dict(dict(state))
        m = evaluate(model, data.test_x, data.test_y, positive_label=data.synthetic_label)
        return _test_metrics(m)

    @property
    def n_test(self) -> int:
        return int(len(self.data.test_y))

    @property
    def data_key(self) -> str:
        return str(self.info.get("data_key") or self.data.key)


def _val_metrics(m: Mapping[str, Any]) -> dict[str, float]:
    """run_trial's metrics under the search's names (``val_accuracy``...), numbers only."""
    return {name: float(m[key]) for name, key in METRICS.items() if _finite(m.get(key))}


def _test_metrics(m: Mapping[str, Any]) -> dict[str, float]:
    out = {
        f"test_{k}": float(m[k])
        for k in ("accuracy", "f1", "precision", "recall", "roc_auc")
        if _finite(m.get(k))
    }
    if _finite(m.get("val_loss")):
        out["test_loss"] = float(m["val_loss"])  # evaluate() names the loss on any split val_loss
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


# --------------------------------------------------------------------------- the cache


def _run_key(config: Mapping[str, Any], seed: int, data_key: str) -> str:
    doc = {"config": {k: config[k] for k in sorted(config)}, "seed": int(seed), "data": data_key}
    return hashlib.sha1(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _train_cached(
    ctx: Any, cand: Candidate, seed: int, folder: Path, progress: ProgressFn | None
) -> None:
    """Train (or read from the cache) one confirmation run; append it to ``cand``."""
    from safetensors.torch import save_file

    sub = folder / _slug(cand.label)
    key = _run_key(cand.config, seed, ctx.data_key)
    meta_path, weights = sub / f"seed-{seed}-{key}.json", sub / f"seed-{seed}-{key}.safetensors"
    if meta_path.is_file() and weights.is_file():
        val = json.loads(meta_path.read_text())["val"]
        if progress:
            progress(f"confirm {cand.label} seed {seed}: cached")
    else:
        if progress:
            progress(f"confirm {cand.label} seed {seed}: training")
        val, state = ctx.train(cand.config, seed, cand.pool_key)
        sub.mkdir(parents=True, exist_ok=True)
        tmp = weights.with_name(weights.name + ".tmp")
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
        tmp.replace(weights)
        doc = {"config": cand.config, "seed": seed, "data_key": ctx.data_key, "val": val}
        tmp = meta_path.with_name(meta_path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2, default=str))
        tmp.replace(meta_path)  # written last: a cache entry is complete or absent
    cand.seeds.append(seed)
    cand.val.append(val)
    cand.weights.append(str(weights))


def _load_state(path: str) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(path)


# --------------------------------------------------------------------------- summaries


def summarise(
    per_seed: list[dict[str, float]], confidence: float = 0.95
) -> dict[str, dict[str, Any]]:
    """``{metric: interval dict}`` over seeds, for every metric all seeds have."""
    if not per_seed:
        return {}
    keys = [k for k in per_seed[0] if all(_finite(m.get(k)) for m in per_seed)]
    return {k: mean_ci([m[k] for m in per_seed], confidence).as_dict() for k in keys}


def paired(
    a: Candidate, b: Candidate, attr: str = "val", confidence: float = 0.95
) -> dict[str, dict[str, Any]]:
    """Paired (by seed) differences ``a - b`` of every metric both have, with intervals."""
    by_seed_b = dict(zip(b.seeds, getattr(b, attr), strict=True))
    pairs = [
        (m, by_seed_b[s]) for s, m in zip(a.seeds, getattr(a, attr), strict=True) if s in by_seed_b
    ]
    if not pairs:
        return {}
    keys = [
        k for k in pairs[0][0] if all(_finite(x.get(k)) and _finite(y.get(k)) for x, y in pairs)
    ]
    return {
        k: paired_difference(
            [x[k] for x, _ in pairs], [y[k] for _, y in pairs], confidence
        ).as_dict()
        for k in keys
    }


def _cand_dict(c: Candidate, base: Candidate, metric: str, confidence: float) -> dict[str, Any]:
    d = {
        "label": c.label,
        "role": c.role,
        "params": {k: c.config.get(k) for k in CONFIG_KEYS if c.config.get(k) is not None},
        "group": group_of(c.config),
        "trial_id": c.trial_id,
        "trial_value": c.trial_value,
        "pool_key": c.pool_key,
        "seeds": list(c.seeds),
        "per_seed": [dict(v) for v in c.val],
        "val": summarise(c.val, confidence),
        "diff_vs_baseline": {} if c is base else paired(c, base, "val", confidence),
        "mlflow_run_id": c.mlflow_run_id,
    }
    if c.val and metric in d["val"]:
        d["mean"] = d["val"][metric]["mean"]
    return d


# ------------------------------------------------------------------------------ the driver


def confirm(
    home: Home,
    name: str,
    *,
    top_k: int = 3,
    n_seeds: int = 5,
    tolerance: float = 0.01,
    confirm_r: list[float] | None = None,
    usable_rounds: int = 2,
    confidence: float = 0.95,
    context: Any = None,
    track: bool = True,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Confirm a finished search (see the module docstring); return the ``confirm`` block of best.yaml.

    ``context`` replaces the :class:`RunContext` (tests pass a small fake with ``full_config``,
    ``train``, ``test``, ``n_test`` and ``data_key``). ``track``: log one ``confirm`` child run
    per configuration under the search's MLflow parent run, when run.json names one.

    The returned dict (YAML-safe) holds ``metric``, ``mode``, ``seeds``, ``configurations`` (per
    configuration: params, per-seed metrics, mean/CI per metric, paired difference to R = 0),
    ``chosen``, ``test`` (chosen and baseline on the test split, and their paired difference)
    and ``usable_ratio``.
    """
    from .search.runs import find_run, read_run_json, read_trials

    if top_k < 1:
        raise SearchError(f"--top-k: {top_k} must be >= 1")
    if n_seeds < 2:
        raise SearchError(f"--confirm-seeds: {n_seeds} must be >= 2 (one seed has no interval)")
    folder = find_run(home, name)
    info = read_run_json(folder)
    metric, mode = info.get("metric", "val_accuracy"), info.get("mode", "max")
    if metric not in METRICS:
        raise SearchError(
            f"run {name}: metric {metric!r} cannot be confirmed (known: {', '.join(METRICS)})"
        )
    trials = read_trials(folder)
    ctx = context if context is not None else RunContext(home, folder, info)
    top, base = select_candidates(trials, ctx.full_config, metric, mode, top_k)

    used = set()
    for rec in trials.values():
        s = ctx.full_config(rec.get("params") or {}).get("seed")
        if isinstance(s, int | float):
            used.add(int(s))
    if isinstance(info.get("seed"), int):
        used.add(int(info["seed"]))
    seeds = confirmation_seeds(n_seeds, used)
    cache = folder / "confirm"

    def run(cand: Candidate) -> None:
        for s in seeds:
            _train_cached(ctx, cand, s, cache, progress)

    everyone: list[Candidate] = []
    for cand in [base, *top]:
        run(cand)
        everyone.append(cand)

    # Chosen: the best confirmed mean; ties go to the baseline, then to the better-ranked trial.
    sign = 1.0 if mode == "max" else -1.0

    def mean_of(c: Candidate) -> float:
        return float(np.mean([v[metric] for v in c.val]))

    chosen = max(everyone, key=lambda c: (sign * mean_of(c), c is base))

    # Extra R values asked for, at the chosen configuration's generation settings.
    gen_source = chosen if chosen is not base else (top[0] if top else base)
    for r in confirm_r or []:
        cfg = dict(gen_source.config, r=float(r))
        if any(config_signature(c.config) == config_signature(cfg) for c in everyone):
            continue
        cand = Candidate(label_of(cfg), cfg, "extra", pool_key=gen_source.pool_key)
        run(cand)
        everyone.append(cand)

    # The usable ratio: trials + confirmations; confirm the answer while it rests on one trial.
    def table() -> list[dict[str, Any]]:
        rows = []
        for rec in trials.values():
            value = _metric_value(rec, metric)
            if rec.get("state") != "TERMINATED" or value is None:
                continue
            cfg = ctx.full_config(rec.get("params") or {})
            rows.append(
                {"r": cfg.get("r", 0.0), "value": value, "confirmed": False, "group": group_of(cfg)}
            )
        for c in everyone:
            for v in c.val:
                rows.append(
                    {
                        "r": c.config.get("r", 0.0),
                        "value": v[metric],
                        "confirmed": True,
                        "group": group_of(c.config),
                    }
                )
        return rows

    usable = usable_ratio(table(), tolerance, mode, confidence=confidence)
    for _ in range(max(0, usable_rounds)):
        if usable.confirmed:
            break
        cfg, pool_key = _trial_config_at(trials, ctx, usable, metric, mode)
        cand = Candidate(label_of(cfg), cfg, "usable", pool_key=pool_key)
        if any(config_signature(c.config) == config_signature(cfg) for c in everyone):
            break  # already confirmed in another group; nothing new to learn
        run(cand)
        everyone.append(cand)
        usable = usable_ratio(table(), tolerance, mode, confidence=confidence)

    # The test split, once, for the chosen configuration and the baseline.
    if progress:
        progress(f"test split: {chosen.label} and {base.label}")
    for cand in {id(chosen): chosen, id(base): base}.values():
        cand.test = [ctx.test(cand.config, _load_state(w)) for w in cand.weights]

    result: dict[str, Any] = {
        "metric": metric,
        "mode": mode,
        "confidence": confidence,
        "seeds": seeds,
        "top_k": top_k,
        "configurations": [_cand_dict(c, base, metric, confidence) for c in everyone],
        "baseline": base.label,
        "chosen": {
            "label": chosen.label,
            "params": {
                k: chosen.config.get(k) for k in CONFIG_KEYS if chosen.config.get(k) is not None
            },
            "config": dict(chosen.config),
            "pool_key": chosen.pool_key,
            "is_baseline": chosen is base,
        },
        "test": {
            "n_test": int(ctx.n_test),
            "chosen": summarise(chosen.test, confidence),
            "baseline": summarise(base.test, confidence),
            "diff": paired(chosen, base, "test", confidence) if chosen is not base else {},
            "per_seed": {"chosen": chosen.test, "baseline": base.test},
        },
        "usable_ratio": usable.as_dict(),
    }
    if track:
        result["mlflow"] = _track(info, folder, everyone, base, chosen, result)
    return _plain(result)


def _trial_config_at(
    trials: Mapping[str, Mapping[str, Any]], ctx: Any, usable: Any, metric: str, mode: str
) -> tuple[dict[str, Any], str | None]:
    """The config (and pool) of the best trial at the usable ratio's R within its group."""
    sign = 1.0 if mode == "max" else -1.0
    group = next(p.group for p in usable.points if p.r == usable.r)
    best = None
    for rec in trials.values():
        value = _metric_value(rec, metric)
        if rec.get("state") != "TERMINATED" or value is None:
            continue
        cfg = ctx.full_config(rec.get("params") or {})
        at_r = round(float(cfg.get("r", 0.0)), 3) == usable.r
        if at_r and group_of(cfg) == group and (best is None or sign * value > sign * best[0]):
            best = (value, cfg, rec.get("pool_key") or None)
    if best is None:  # cannot happen: an unconfirmed point comes from a trial
        raise SearchError(f"no trial at R={usable.r} to confirm")
    return best[1], best[2]


def _plain(obj: Any) -> Any:
    """YAML- and strict-JSON-safe: tuples to lists, numpy scalars to Python, NaN/inf to None
    (an interval of one run has no bounds; ``null`` says so in best.yaml and in ``--json``)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ------------------------------------------------------------------------------ tracking


def _track(
    info: Mapping[str, Any],
    folder: Path,
    everyone: list[Candidate],
    base: Candidate,
    chosen: Candidate,
    result: dict[str, Any],
) -> dict[str, Any] | None:
    """One ``confirm`` child run per configuration under the search's parent run.

    Metric names avoid the trials' ``val_*`` names (``val_accuracy_mean``, ``seed_val_accuracy``
    per seed as a history), so the parent's best-trial bookkeeping never mistakes a
    confirmation run for a trial. Returns ``{label: run_id}`` or ``{"error": ...}``; tracking
    problems never lose the confirmation itself.
    """
    ml = info.get("mlflow") or {}
    uri, parent = ml.get("tracking_uri"), ml.get("parent_run_id")
    if not uri or not parent:
        return None
    try:
        from . import tracking

        tracker = tracking.SearchTracker(uri, run_dir=folder)
        client = tracker.client
        exp_id = ml.get("experiment_id") or client.get_run(parent).info.experiment_id
        by_label = {c["label"]: c for c in result["configurations"]}
        ids: dict[str, str] = {}
        for cand in everyone:
            tags = {
                tracking.PARENT_TAG: parent,
                "ratio_search.kind": "confirm",
                "ratio_search.role": cand.role,
                "ratio_search.chosen": str(cand is chosen).lower(),
            }
            run = client.create_run(exp_id, tags=tags, run_name=f"confirm {cand.label}")
            run_id = run.info.run_id
            for k in CONFIG_KEYS:
                if cand.config.get(k) is not None:
                    client.log_param(run_id, k, str(cand.config[k]))
            client.log_param(run_id, "seeds", ",".join(map(str, cand.seeds)))
            for i, v in enumerate(cand.val):
                tracker.log_epoch(run_id, i, {f"seed_{k}": x for k, x in v.items()})
            summary = by_label[cand.label]
            flat: dict[str, float] = {}
            for k, iv in summary["val"].items():
                flat[f"{k}_mean"], flat[f"{k}_ci_low"], flat[f"{k}_ci_high"] = (
                    iv["mean"],
                    iv["low"],
                    iv["high"],
                )
            for k, iv in summary["diff_vs_baseline"].items():
                flat[f"diff_{k}_mean"], flat[f"diff_{k}_ci_low"], flat[f"diff_{k}_ci_high"] = (
                    iv["mean"],
                    iv["low"],
                    iv["high"],
                )
            side = "chosen" if cand is chosen else ("baseline" if cand is base else None)
            if side is not None:
                for k, iv in result["test"][side].items():
                    flat[f"{k}_mean"], flat[f"{k}_ci_low"], flat[f"{k}_ci_high"] = (
                        iv["mean"],
                        iv["low"],
                        iv["high"],
                    )
            tracker.log_epoch(run_id, 0, {k: v for k, v in flat.items() if _finite(v)})
            client.log_dict(run_id, _plain(summary), "confirm.json")
            tracker.end_child(run_id, "FINISHED")
            ids[cand.label] = run_id
            cand.mlflow_run_id = run_id
            summary["mlflow_run_id"] = run_id
        return ids
    except Exception as e:  # noqa: BLE001 - the numbers matter more than their copy in MLflow
        return {"error": f"{type(e).__name__}: {e}"}


# ------------------------------------------------------------------------------ for export


def read_trial_params(home: Home, name: str) -> dict[str, dict[str, Any]]:
    """``{trial_id: params}`` of run ``name`` (from trials.jsonl)."""
    from .search.runs import find_run, read_trials

    return {
        tid: dict(rec.get("params") or {}) for tid, rec in read_trials(find_run(home, name)).items()
    }


def export_with_confirmation(
    home: Home,
    name: str,
    trial_id: str | None = None,
    **confirm_kwargs: Any,
) -> dict[str, Any]:
    """``export.build_export`` plus the confirmation, as ``expected.confirm`` in best.yaml.

    Without an explicit ``trial_id``, the exported trial is the *chosen* configuration's trial
    (the best confirmed mean), which is not always the search's best single trial: a lucky trial
    that fails its confirmation is not exported. When the chosen configuration has no trial of
    its own (R = 0 that the search never ran), the best trial stays exported, with a note.
    """
    from .export import build_export

    doc = build_export(home, name, trial_id=trial_id)
    result = confirm(home, name, **confirm_kwargs)
    chosen = next(c for c in result["configurations"] if c["label"] == result["chosen"]["label"])
    exported = doc["expected"].get("trial_id")
    notes = doc["expected"].setdefault("notes", [])
    ctx = confirm_kwargs.get("context")
    if ctx is None:
        from .search.runs import find_run, read_run_json

        folder = find_run(home, name)
        ctx = RunContext(home, folder, read_run_json(folder))
    trials = read_trial_params(home, name)
    exported_cfg = ctx.full_config(trials.get(str(exported), {}))
    same = config_signature(exported_cfg) == config_signature(result["chosen"]["config"])
    if trial_id is None and chosen.get("trial_id") and not same:
        doc = build_export(home, name, trial_id=chosen["trial_id"])
        notes = doc["expected"].setdefault("notes", [])
        notes.append(
            f"exported trial {chosen['trial_id']} ({chosen['label']}), the best after confirmation, "
            f"instead of the best single trial {exported}"
        )
    elif trial_id is None and not chosen.get("trial_id") and not same:
        notes.append(
            f"the confirmation chose {chosen['label']}, which the search never ran as a trial; "
            f"the exported trial is the best single trial {exported}"
        )
    doc["expected"]["confirm"] = result
    return doc
