"""Does generated data pay? Each lever of a trial against R = 0, paired by seed, on the phantom.

For each real-data size (``--sizes``, real training images per class of the phantom, 32 px,
its 600 validation images), one generator is fine-tuned from the base model with the default
``FinetuneConfig`` (its weights are also kept half-way, for the ``finetune_steps`` lever), and
every arm below is trained at ``--seeds`` seeds together (``train_seeds``) at the R = 0-converged
budget of ``search_spaces/quick.yaml`` (16 epochs, batch 32, lr 2e-3; 32 epochs at 50/class,
where 16 had not converged: :data:`EPOCHS`). Every arm uses the same
seeds and the same validation images as its R = 0, so each difference is paired:

* replace R = 0.25 / 0.5, augment R = 0.25 / 0.5 (the synthetic class alone, guidance 2);
* augment 0.5 with every class synthetic (``synthetic_classes: all``);
* augment 0.5 with ``filter_top`` 0.8 / 0.5 (the top fraction of a pool by a judge trained on
  the real training split);
* augment 0.5 from the half-way generator checkpoint (``finetune_steps``);
* augment 0.5 at guidance 1 / 4;
* R = 0 and augment 0.5 with ``arch: resnet`` (paired with the resnet's own R = 0).

``--labelled-base`` repeats the main arms from the old class-conditional base (trained on 8,000
labelled phantom images per class) for contrast.

Everything goes through the project's own code: ``load_dataset``, ``finetune_checkpoints``,
``quality.selection.trial_synthetic`` (one ``TrialConfig`` per arm), ``train_seeds`` and the
evidence layer's ``paired_bootstrap`` (seeds and validation images resampled) and
``paired_difference`` (t over seeds). Models and pools are cached in ``--home``; each arm's
per-seed, per-image correctness is kept in the JSON, so a restart skips the arms already done
and the intervals can be recomputed from the file.

    .venv/bin/python benchmarks/payoff.py [--home /tmp/payoff_home] [--seeds 10]
        [--sizes 100 50] [--only n100] [--render-only]
        [--finetune-note TEXT] [--note TEXT ...] [--unmeasured MATCH WHY ...] [--clear-notes]

What the page says beyond the numbers (a note on the fine-tune, lines above the table, why some
planned arms have no result) is recorded in the JSON's meta with the plan's sizes
(:data:`RECORDED`), so ``--render-only`` rewrites payoff.md from payoff.json alone.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ratio_search._io import atomic_write_json, atomic_write_text, read_json, utc_now
from ratio_search.config import DataConfig, FinetuneConfig, TrainConfig, TrialConfig
from ratio_search.errors import ModelError
from ratio_search.home import Home

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
LABELLED_BASE = ROOT / "benchmarks" / "base_model_labelled"
NAIVE_BASE = ROOT / "ratio_search" / "base_model"
# The R = 0-converged budget of search_spaces/quick.yaml (benchmarks/r0_budget.py) at 100 real
# images per class; half the images make half the optimiser steps per epoch, and 16 epochs at
# 50/class left R = 0 short of converged (this script's own check, --converge-sizes): 32 there.
BUDGET = {"epochs": 16, "batch_size": 32, "lr": 0.002}
EPOCHS = {100: 16, 50: 32}

# The fine-tune every arm's generator comes from: the default FinetuneConfig's 400 steps when the
# committed results were measured (the default is 600 since; the arms' cache and payoff.md rest on 400).
FINETUNE_STEPS = 400


def epochs_for(n_class: int) -> int:
    """The classifier's epochs at ``n_class`` real images per class (:data:`EPOCHS`)."""
    return int(EPOCHS.get(int(n_class), BUDGET["epochs"]))


# The trainer's per-epoch validation only reports (it never steers training): it gets this many
# validation images per class, and the final models are scored on every validation image here.
EPOCH_VAL_PER_CLASS = 4


@dataclass(frozen=True)
class Arm:
    """One measured configuration: a data size, a base model, and the trial's flat settings."""

    n_class: int
    base: str  # "naive" | "labelled"
    lever: str  # the table's group
    label: str  # the table's row
    params: Mapping[str, Any] = field(default_factory=dict)  # TrialConfig.from_flat keys

    @property
    def r(self) -> float:
        return float(self.params.get("r", 0.0))

    @property
    def arch(self) -> str:
        return str(self.params.get("arch", "simple"))

    @property
    def id(self) -> str:
        p = ",".join(f"{k}={self.params[k]}" for k in sorted(self.params))
        base = "any" if self.r == 0 else self.base  # R = 0 never samples: one arm for both bases
        return f"n{self.n_class}/{base}/{p}"


def arms_for(n_class: int, base: str, half_step: int, resnet: bool = True) -> list[Arm]:
    """The arms of one data size and base, R = 0 first. ``half_step``: the checkpoint lever."""
    aug = {"r": 0.5, "mode": "augment"}
    out = [Arm(n_class, base, "R = 0", "R = 0 (simple CNN)", {"r": 0.0})]
    out += [
        Arm(n_class, base, "mixing", f"{m} R = {r:g}", {"r": r, "mode": m})
        for m in ("replace", "augment")
        for r in (0.25, 0.5)
    ]
    out += [
        Arm(
            n_class,
            base,
            "classes",
            "augment 0.5, all classes",
            {**aug, "synthetic_classes": "all"},
        ),
        Arm(n_class, base, "filter", "augment 0.5, filter_top 0.8", {**aug, "filter_top": 0.8}),
        Arm(n_class, base, "filter", "augment 0.5, filter_top 0.5", {**aug, "filter_top": 0.5}),
    ]
    out += [
        Arm(n_class, base, "finetune_steps", f"augment 0.5, generator at step {half_step}",
            {**aug, "finetune_steps": half_step}),
        Arm(n_class, base, "guidance", "augment 0.5, guidance 1", {**aug, "guidance": 1.0}),
        Arm(n_class, base, "guidance", "augment 0.5, guidance 4", {**aug, "guidance": 4.0}),
    ]  # fmt: skip
    if resnet and base != "labelled":  # the contrast: every lever but the second classifier
        out += [
            Arm(n_class, base, "arch", "R = 0, resnet", {"r": 0.0, "arch": "resnet"}),
            Arm(n_class, base, "arch", "augment 0.5, resnet", {**aug, "arch": "resnet"}),
        ]
    return out


# The order the arms run in (the table keeps arms_for's): the main questions first, so that a
# run cut short by its deadline misses the least of them.
PRIORITY = ("R = 0 (simple CNN)", "augment R = 0.5", "replace R = 0.5", "augment 0.5, all classes",
            "augment 0.5, filter_top 0.5", "augment 0.5, guidance 1", "augment 0.5, guidance 4",
            "augment 0.5, generator at step", "augment 0.5, filter_top 0.8", "augment R = 0.25",
            "replace R = 0.25")  # fmt: skip


def run_order(arm: Arm) -> tuple:
    """Sort key: the simple CNN before the resnet, the naive base first, then :data:`PRIORITY`."""
    rank = next((i for i, p in enumerate(PRIORITY) if arm.label.startswith(p)), len(PRIORITY))
    return (arm.arch != "simple", arm.base != "naive" and arm.r > 0, rank, arm.r > 0)


def reference_of(arm: Arm) -> Arm:
    """The R = 0 arm an arm is paired with: same data size, same seeds, same classifier."""
    params = {"r": 0.0} if arm.arch == "simple" else {"r": 0.0, "arch": arm.arch}
    return Arm(arm.n_class, arm.base, "R = 0", "R = 0", params)


def trial_config(arm: Arm, sample_steps: int, scheduler: str, threads: int) -> TrialConfig:
    """The arm's TrialConfig: the budget, one thread, the sampler settings, the arm's params."""
    flat = {**BUDGET, "epochs": epochs_for(arm.n_class), "threads": threads, "steps": sample_steps, "scheduler": scheduler,
            "guidance": 2.0, **arm.params}  # fmt: skip
    return TrialConfig.from_flat(flat)


def pool_size(trial: TrialConfig, n_class: int) -> int:
    """Images each synthetic class's pool must hold for this trial (just enough)."""
    from ratio_search.train.mixing import pool_needed

    t = trial.train
    return int(pool_needed(n_class, t.r, t.mode, t.filter_top))


# ------------------------------------------------------------------ per-image results, packed


def pack(correct: np.ndarray) -> list[str]:
    """Per-seed rows of 0/1 correctness as base64 bit strings (compact, exact)."""
    return [base64.b64encode(np.packbits(row.astype(bool)).tobytes()).decode() for row in correct]


def unpack(rows: Sequence[str], n_images: int) -> np.ndarray:
    """Inverse of :func:`pack`: a ``(seeds, n_images)`` float array of 0/1."""
    return np.stack(
        [np.unpackbits(np.frombuffer(base64.b64decode(r), np.uint8))[:n_images] for r in rows]
    ).astype(np.float64)


def epoch_val(data: Any, per_class: int = EPOCH_VAL_PER_CLASS) -> Any:
    """``data`` whose val split is its first ``per_class`` images of each class (see above)."""
    idx = np.concatenate(
        [np.flatnonzero(data.val_y == c)[:per_class] for c in np.unique(data.val_y)]
    )
    return dataclasses.replace(data, val_x=data.val_x[idx], val_y=data.val_y[idx])


def score_models(models: Iterable[Any], val_x: np.ndarray, val_y: np.ndarray) -> np.ndarray:
    """``(seeds, images)`` correctness of each trained classifier on the whole val split."""
    from ratio_search.train.loop import predict_proba

    return np.stack([predict_proba(m, val_x).argmax(axis=1) == val_y for m in models])


def train_arm(
    train: TrainConfig, data: Any, pool_images: Any, seeds: Sequence[int]
) -> dict[str, Any]:
    """Train ``train`` at ``seeds`` together and score every model on all of ``data``'s val."""
    from ratio_search.train.trial import train_seeds

    t0 = time.time()
    out = train_seeds(train, epoch_val(data), pool_images, list(seeds))
    correct = score_models([p["model"] for p in out["per_seed"]], data.val_x, data.val_y)
    return {
        "seeds": [int(s) for s in seeds],
        "accuracy": [float(a) for a in correct.mean(axis=1)],
        "correct": pack(correct),
        "n_val": int(correct.shape[1]),
        "n_real": out["n_real"],
        "n_synthetic": out["n_synthetic"],
        "train_seconds": round(time.time() - t0, 1),
    }


# ------------------------------------------------------------------ generators and pools


def base_info(path: Path) -> dict[str, Any]:
    """The base model's weights hash and what it was trained on (from its meta.json)."""
    meta = read_json(path / "meta.json")
    weights = path / "diffusion_pytorch_model.safetensors"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    cfg = meta.get("config") or {}
    return {
        "path": str(path),
        "weights_sha256": digest,
        "unconditional": bool(cfg.get("unconditional", False)),
        "command": meta.get("command"),
        "max_steps": (meta.get("stats") or {}).get("steps", cfg.get("max_steps")),
    }


def generators(
    home: Home, data: Any, base: Path, steps: Sequence[int], threads: int
) -> tuple[dict[int, Any], dict[str, Any]]:
    """The fine-tune of ``data`` from ``base`` (default FinetuneConfig) and its checkpoints,
    loaded: ``{0: final, s: checkpoint}``; plus what was fine-tuned, for the JSON."""
    from ratio_search.diffusion import load_model

    cfg = FinetuneConfig(base_model=str(base), threads=threads, max_steps=FINETUNE_STEPS)
    t0, separate = time.time(), False
    try:
        from ratio_search.diffusion import finetune_checkpoints
    except ImportError:  # before the checkpoints land: the final model alone (same hash)
        if steps:
            raise
        from ratio_search.diffusion import finetune

        infos = {0: finetune(data, cfg, home, resume=True, progress=False)}
    else:
        try:
            infos = finetune_checkpoints(data, cfg, home, [int(s) for s in steps], progress=False)
        except ModelError:
            # the final model was cached by a run without save_steps (another user of the home):
            # each asked step becomes a fine-tune of its own that many steps long
            from ratio_search.diffusion import finetune

            infos = finetune_checkpoints(data, cfg, home, [], progress=False)
            for s in steps:
                short = dataclasses.replace(cfg, max_steps=int(s))
                infos[int(s)] = finetune(data, short, home, resume=True, progress=False)
            separate = True
    models = {int(s): load_model(info.path) for s, info in infos.items()}
    return models, {
        "max_steps": cfg.max_steps,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "hashes": {str(s): info.hash for s, info in infos.items()},
        "steps_are": "separate shorter fine-tunes" if separate else "checkpoints of one run",
        "seconds": round(time.time() - t0, 1),
    }


def synthetic_for(
    home: Home, models: Mapping[int, Any], data: Any, trial: TrialConfig, n: int
) -> tuple[Any, dict[str, Any]]:
    """The arm's synthetic images (B's trial_synthetic), as ``train_seeds`` takes them: the
    default class alone as one array (exactly today's path), several classes as a mapping."""
    t0 = time.time()
    try:
        from ratio_search.quality.selection import trial_synthetic
    except ImportError:  # before trial_synthetic lands: the default class's plain pool only
        images, info = _plain_pool(home, models, data, trial, n)
    else:
        images, info = trial_synthetic(home, models, data, trial, n, progress=False)
    info = {**info, "pool_seconds": round(time.time() - t0, 1)}
    if set(images) == {data.synthetic_label}:
        return images[data.synthetic_label], info
    return dict(images), info


def _plain_pool(
    home: Home, models: Mapping[int, Any], data: Any, trial: TrialConfig, n: int
) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    """The default class's pool of the final model via pools.build.get_pool (no filter)."""
    from ratio_search.pools.build import get_pool, model_class_index

    t = trial.train
    if t.synthetic_classes != "default" or t.filter_top != 1.0 or trial.generate.finetune_steps:
        raise ImportError("quality.selection.trial_synthetic is not there yet")
    model = models[0]
    pool = get_pool(home, model, trial.generate, n, None, model_class_index(model, data), False)
    images = np.asarray(pool.images)[:n]
    name = data.class_names[data.synthetic_label]
    return {data.synthetic_label: images}, {"pool_keys": {name: pool.key}, "pool_n": n,
                                            "via": "get_pool"}  # fmt: skip


# ------------------------------------------------------------------ statistics and the table


def compare(arm: Mapping[str, Any], ref: Mapping[str, Any]) -> dict[str, Any]:
    """The arm's accuracy over seeds and its paired difference to R = 0, two ways."""
    from ratio_search.evidence.paired import paired_bootstrap
    from ratio_search.evidence.stats import mean_ci, paired_difference

    if arm["seeds"] != ref["seeds"]:
        raise ValueError("an arm and its R = 0 must share their seeds")
    a, b = unpack(arm["correct"], arm["n_val"]), unpack(ref["correct"], ref["n_val"])
    acc = mean_ci(arm["accuracy"])
    out: dict[str, Any] = {"mean": acc.mean, "sd": acc.sd, "n_seeds": acc.n}
    if arm is not ref:
        boot = paired_bootstrap(a, b)
        t = paired_difference(arm["accuracy"], ref["accuracy"])
        out.update(diff=boot.diff, boot_low=boot.low, boot_high=boot.high,
                   t_low=t.low, t_high=t.high)  # fmt: skip
    return out


def _fmt_diff(c: Mapping[str, Any]) -> tuple[str, str]:
    if "diff" not in c:
        return "", ""
    return (
        f"{c['diff']:+.3f} [{c['boot_low']:+.3f}, {c['boot_high']:+.3f}]",
        f"[{c['t_low']:+.3f}, {c['t_high']:+.3f}]",
    )


def _desc(kv: tuple[str, Any]) -> int:
    return -int(kv[0])


def _paren(note: str | None) -> str:
    return f"({note}) " if note else ""


# Why a planned arm has no result, unless the JSON's meta.unmeasured says otherwise.
NOT_MEASURED = "Not measured (did not finish in time)"


def missing_by_reason(
    missing: Sequence[Arm], reasons: Sequence[Mapping[str, str]]
) -> dict[str, list[Arm]]:
    """The missing arms grouped by why they are missing: the first of ``reasons``
    (``[{"match", "why"}]``, meta.unmeasured, set with ``--unmeasured``) whose ``match`` is part
    of the arm's id, else :data:`NOT_MEASURED`. Reasons in their recorded order, the default last."""
    out: dict[str, list[Arm]] = {r["why"]: [] for r in reasons}
    out[NOT_MEASURED] = []
    for arm in missing:
        why = next((r["why"] for r in reasons if r["match"] in arm.id), NOT_MEASURED)
        out[why].append(arm)
    return {why: arms for why, arms in out.items() if arms}


def render(doc: Mapping[str, Any], plan: Sequence[Arm]) -> str:
    """payoff.md: the header (regime, sizes, seeds, budget, interval, the recorded notes), one
    table, the missing arms (with why, from meta.unmeasured), and a closing sentence that says
    only what the numbers support."""
    m = doc["meta"]
    res = doc["arms"]
    lines = [
        "# Does generated data pay? (benchmarks/payoff.py)",
        "",
        f"- **Base model** (task-naive): {m['naive_regime']}",
        f"- **Contrast base** (labelled): {m['labelled_regime']}",
        f"- **Data**: the phantom, {' and '.join(str(s) for s in m['sizes'])} real training "
        f"images per class (32 px), scored on its validation split ({m['n_val']} images).",
        "- **Classifier budget**: simple CNN (resnet where stated), "
        + ", ".join(f"{e} epochs at {n}/class" for n, e in sorted(m["epochs"].items(), key=_desc))
        + ", batch "
        f"{m['budget']['batch_size']}, lr {m['budget']['lr']} (R = 0's convergence: below); "
        f"{m['n_seeds']} seeds ({m['seeds'][0]}..{m['seeds'][-1]}), every arm on the same seeds "
        "and images as its R = 0; torch on 1 CPU thread.",
        f"- **Generator**: fine-tuned {_paren(m.get('finetune_note'))}{m['finetune']} on the "
        "labelled training split only; pools "
        f"sampled with {m['sampler']}, guidance 2 unless stated, each just large enough for its "
        "arm (the filter's pool holds 1 / filter_top times what the trial uses).",
        "- **Accuracy**: mean ± sd over seeds. **Δ vs R = 0**: paired difference with its 95 % "
        "interval from the project's two-way paired bootstrap (evidence/paired.py: seeds *and* "
        "validation images resampled, 4000 replicates); the last column is the paired t-interval "
        "over seeds alone (validation images fixed). **n synthetic**: generated images in each "
        "seed's training set (all classes together). R = 0 samples nothing, so both bases share "
        "it; the resnet rows use the simple CNN's budget (their R = 0 convergence not checked) "
        "and pair with the resnet's own R = 0.",
    ]
    for key, g in sorted((m.get("generators") or {}).items()):
        n_key, base = key.split("/")[:2]
        for step in (s_ for s_ in g.get("hashes", {}) if s_ != "0"):
            how = ("a separate fine-tune that many steps long (the home held the final model "
                   "without its checkpoint)" if g.get("steps_are", "").startswith("separate")
                   else f"a checkpoint of the same {g.get('max_steps')}-step run")  # fmt: skip
            lines.append(f"- The generator at {step} steps ({n_key[1:]}/class, {base} base): "
                         f"{how}.")  # fmt: skip
    rn = sorted({a.n_class for a in plan if a.arch == "resnet"}, reverse=True)
    lb = sorted({a.n_class for a in plan if a.base == "labelled"}, reverse=True)
    lines.append(
        f"- Scope: the resnet at {', '.join(map(str, rn)) or 'no'} real images per class; the "
        f"labelled base at {', '.join(map(str, lb)) or 'no'} per class, with every lever but "
        "the resnet."
    )
    lines.append("")
    conv = doc.get("convergence") or {}
    for key, c in sorted(conv.items(), key=lambda kv: (-int(kv[0].split(":")[0]), kv[0])):
        n_class, e1, e2 = key.split(":")[0], c["e1"], c["e2"]
        lines.append(
            f"- R = 0 convergence at {n_class}/class: {e1} epochs {c['acc_e1']:.3f}, {e2} epochs "
            f"{c['acc_e2']:.3f}; {e2} − {e1} = {c['diff']:+.3f} [{c['boot_low']:+.3f}, "
            f"{c['boot_high']:+.3f}] (bootstrap), [{c['t_low']:+.3f}, {c['t_high']:+.3f}] (t, seeds)."
        )
    if conv:
        lines.append("")
    lines += [f"- {note}" for note in m.get("notes") or []]
    if m.get("notes"):
        lines.append("")
    lines += [
        "| real/class | base | lever | arm | n synthetic | accuracy | Δ vs R = 0 [95 %, seeds × images] | Δ [95 %, seeds] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    missing = []
    order = {a.id + a.base: i for i, a in enumerate(plan)}
    for arm in sorted(plan, key=lambda a: (-a.n_class, a.base != "naive", order[a.id + a.base])):
        rec = res.get(arm.id)
        if rec is None:
            missing.append(arm)
            continue
        ref = res.get(reference_of(arm).id)
        if ref is None:
            missing.append(arm)
            continue
        c = compare(rec, ref if reference_of(arm).id != arm.id else rec)
        d, t = _fmt_diff(c)
        base = "—" if arm.r == 0 else arm.base
        lines.append(
            f"| {arm.n_class} | {base} | {arm.lever} | {arm.label} | {rec['n_synthetic']} | "
            f"{c['mean']:.3f} ± {c['sd']:.3f} | {d} | {t} |"
        )
    for why, arms in missing_by_reason(missing, m.get("unmeasured") or []).items():
        lines += ["", f"{why}: " + "; ".join(f"{a.n_class}/class {a.base}: {a.label}" for a in arms) + "."]  # fmt: skip
    lines += ["", doc.get("takeaway") or takeaway(doc, plan), ""]
    return "\n".join(lines)


def takeaway(doc: Mapping[str, Any], plan: Sequence[Arm]) -> str:
    """One sentence from the numbers: which naive-base arms' intervals exclude 0, and how."""
    res = doc["arms"]
    up, down, n = [], [], 0
    for arm in plan:
        if arm.r == 0 or arm.base != "naive" or arm.id not in res:
            continue
        ref = res.get(reference_of(arm).id)
        if ref is None:
            continue
        c = compare(res[arm.id], ref)
        n += 1
        if c["boot_low"] > 0:
            up.append(f"{arm.label} at {arm.n_class}/class ({c['diff']:+.3f})")
        elif c["boot_high"] < 0:
            down.append(f"{arm.label} at {arm.n_class}/class ({c['diff']:+.3f})")
    if n == 0:
        return "No synthetic arm from the task-naive base was measured."
    if not up and not down:
        return (
            f"What to take from it: from a base that never saw a label, none of the {n} measured "
            "synthetic arms changed validation accuracy by more than the noise of seeds and "
            "images, so expect no gain from generated data here unless a search on your own "
            "data shows one."
        )
    parts = []
    if up:
        parts.append("helped: " + ", ".join(up))
    if down:
        parts.append("hurt: " + ", ".join(down))
    return (
        f"What to take from it: from a base that never saw a label, of {n} measured synthetic "
        f"arms only these moved accuracy beyond the noise of seeds and images — "
        f"{'; '.join(parts)}; the rest did not, so treat any gain as specific to the lever and "
        "data size, and confirm it on your own data."
    )


# ------------------------------------------------------------------ the run


def load_doc(path: Path) -> dict[str, Any]:
    if path.is_file():
        doc = read_json(path)
        conv = doc.get("convergence") or {}
        for key in [k for k in conv if ":" not in k]:  # the first runs' 16-vs-32 records
            c = conv.pop(key)
            c.update(e1=16, e2=32, acc_e1=c.pop("acc16"), acc_e2=c.pop("acc32"))
            c["accuracy_e2"], c["correct_e2"] = c.pop("accuracy32"), c.pop("correct32")
            conv[f"{key}:16"] = c
        return doc
    return {"meta": {}, "arms": {}, "convergence": {}}


def save(doc: dict[str, Any], plan: Sequence[Arm], json_path: Path, md_path: Path) -> None:
    doc["meta"]["updated"] = utc_now()
    atomic_write_json(json_path, doc)
    atomic_write_text(md_path, render(doc, plan))


def _ctx_key(base: dict[str, Any], n_class: int, args: argparse.Namespace) -> str:
    """What an arm's cached result depends on besides its params (a change re-runs it)."""
    doc = {"base": base.get("weights_sha256"), "n": n_class, "seeds": args.seeds,
           "budget": {**BUDGET, "epochs": epochs_for(n_class)}, "sampler": [args.sample_steps, args.scheduler]}  # fmt: skip
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


# Options that shape the plan or the page's text. Given, they are recorded in the JSON's meta;
# not given, the recorded value holds (else this default), so that a restart goes on with the
# same plan and --render-only reproduces the same payoff.md.
RECORDED: dict[str, Any] = {
    "sizes": [100, 50],
    "resnet_sizes": [50, 100],
    "labelled_sizes": [100],
    "naive_regime": "trained unconditionally (no labels) on 16,000 unlabelled phantom images; "
    "fine-tuned on the labelled training split only",
    "labelled_regime": "the old bundled base, trained class-conditionally on 8,000 labelled "
    "phantom images per class (80x the classifier's 100 real images per class)",
    "finetune_note": None,
    "notes": [],
    "unmeasured": [],
}
_NOTES = ("finetune_note", "notes", "unmeasured")  # what --clear-notes drops


def resolve_options(args: argparse.Namespace, meta: dict[str, Any]) -> None:
    """Fill each :data:`RECORDED` option not given from ``meta`` (else its default) and record
    the result in ``meta``. ``--clear-notes`` first drops the recorded notes."""
    if getattr(args, "clear_notes", False):
        for key in _NOTES:
            meta.pop(key, None)
    if args.unmeasured is not None:  # [[match, why], ...] from the command line
        args.unmeasured = [{"match": m, "why": w} for m, w in args.unmeasured]
    for name, default in RECORDED.items():
        if getattr(args, name) is None:
            setattr(args, name, meta.get(name, default))
        meta[name] = getattr(args, name)
    if meta["finetune_note"] is None:
        del meta["finetune_note"]


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    from ratio_search.data import load_dataset

    home = Home.resolve(args.home)
    seeds = list(range(args.seeds))
    json_path, md_path = Path(args.json), Path(args.md)
    doc = load_doc(json_path)
    resolve_options(args, doc["meta"])
    bases = {
        "naive": base_info(Path(args.base_model)),
        "labelled": base_info(Path(args.labelled_base)),
    }
    naive_ok = bases["naive"]["unconditional"] or args.allow_conditional_base
    if not naive_ok:
        print(f"{args.base_model}: meta.json says the base is not unconditional (task-naive); "
              "its arms are skipped (--allow-conditional-base to develop with it)",
              file=sys.stderr)  # fmt: skip
    half = FINETUNE_STEPS // 2
    plan: list[Arm] = []
    for n_class in args.sizes:
        plan += arms_for(n_class, "naive", half, resnet=n_class in args.resnet_sizes)
    for n_class in args.labelled_sizes:
        plan += [a for a in arms_for(n_class, "labelled", half) if a.r > 0]
    measured = dict(
        epochs={str(n): epochs_for(n) for n in args.sizes}, seeds=seeds, n_seeds=len(seeds), budget=BUDGET,
        finetune=f"with FinetuneConfig's defaults but {FINETUNE_STEPS} steps (default "
                 f"{FinetuneConfig().max_steps} since; batch "
                 f"{FinetuneConfig().batch_size}, lr {FinetuneConfig().lr}; checkpoint at {half})",
        sampler=f"{args.scheduler}, {args.sample_steps} steps", bases=bases,
        epoch_val=f"the trainer's per-epoch report sees {EPOCH_VAL_PER_CLASS} val images per "
                  "class; the final models are scored on the whole val split",
    )  # fmt: skip
    if args.takeaway:
        doc["takeaway"] = args.takeaway
    if args.render_only:
        # nothing is measured: what the file says the arms were measured with stays
        for key, value in measured.items():
            doc["meta"].setdefault(key, value)
        save(doc, plan, json_path, md_path)
        print(md_path.read_text())
        return 0
    doc["meta"].update(measured)
    only = args.only or []
    for n_class in sorted({a.n_class for a in plan}, reverse=True):
        data = load_dataset(DataConfig(phantom_n_per_class=n_class), home)
        doc["meta"]["n_val"] = int(len(data.val_y))
        models: dict[str, dict[int, Any]] = {}
        todo = [
            a for a in plan
            if a.n_class == n_class and (not only or any(o in a.id for o in only))
            and (naive_ok or a.r == 0 or a.base != "naive")
        ]  # fmt: skip
        todo.sort(key=run_order)
        for arm in todo:
            ctx = _ctx_key(bases[arm.base] if arm.r > 0 else {}, n_class, args)
            rec = doc["arms"].get(arm.id)
            if rec is not None and rec.get("ctx") == ctx:
                continue
            trial = trial_config(arm, args.sample_steps, args.scheduler, args.threads)
            pool_images, pool_info, t0 = None, {}, time.time()
            try:
                if arm.r > 0:
                    step = int(trial.generate.finetune_steps)
                    if step not in models.get(arm.base, {}):
                        base = Path(args.base_model if arm.base == "naive" else args.labelled_base)
                        # both bases have the checkpoint lever: the half-way checkpoint comes
                        # with the one run (a cached final without it is run again to there)
                        got, ft = generators(home, data, base, [half], args.threads)
                        models.setdefault(arm.base, {}).update(got)
                        gens = doc["meta"].setdefault("generators", {})
                        gens[f"n{n_class}/{arm.base}" + (f"/step{step}" if step else "")] = ft
                    n = pool_size(trial, n_class)
                    pool_images, pool_info = synthetic_for(home, models[arm.base], data, trial, n)
                rec = train_arm(trial.train, data, pool_images, seeds)
            except (ImportError, AttributeError) as e:  # a helper's function not there yet
                print(f"skip {arm.id}: {e}", flush=True)
                continue
            rec.update(ctx=ctx, label=arm.label, lever=arm.lever, base=arm.base,
                       params=dict(arm.params), pool=pool_info,
                       seconds=round(time.time() - t0, 1))  # fmt: skip
            doc["arms"][arm.id] = rec
            save(doc, plan, json_path, md_path)
            print(f"{arm.id}: {np.mean(rec['accuracy']):.3f} ({rec['seconds']} s)", flush=True)
        if n_class in args.converge_sizes:
            converge(doc, data, seeds, n_class, args)
            save(doc, plan, json_path, md_path)
    save(doc, plan, json_path, md_path)
    return 0


def converge(doc: dict[str, Any], data: Any, seeds: list[int], n_class: int, args) -> None:
    """R = 0 at twice the arms' epochs against the arms' R = 0 (same seeds): converged?"""
    e1 = epochs_for(n_class)
    key = f"{n_class}:{e1}"
    if key in doc.get("convergence", {}):
        return
    arm = Arm(n_class, "naive", "", "", {"r": 0.0})
    r0 = doc["arms"].get(arm.id)
    if r0 is None:
        return
    train = trial_config(arm, 10, "ddim", args.threads).train
    rec = train_arm(dataclasses.replace(train, epochs=2 * e1), data, None, seeds)
    c = compare(rec, r0)
    doc.setdefault("convergence", {})[key] = {
        "e1": e1, "e2": 2 * e1, "acc_e1": float(np.mean(r0["accuracy"])), "acc_e2": c["mean"],
        "diff": c["diff"], "boot_low": c["boot_low"], "boot_high": c["boot_high"],
        "t_low": c["t_low"], "t_high": c["t_high"], "accuracy_e2": rec["accuracy"],
        "correct_e2": rec["correct"],
    }  # fmt: skip
    print(
        f"convergence {key}: x2 epochs {c['diff']:+.3f} [{c['boot_low']:+.3f}, {c['boot_high']:+.3f}]"
    )


def parser() -> argparse.ArgumentParser:
    """The command line (:func:`main`)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--home", default="/tmp/payoff_home", help="models, pools, data cache")
    ap.add_argument("--seeds", type=int, default=10)
    # these and the notes below: not given, the JSON's recorded value (RECORDED)
    ap.add_argument("--sizes", type=int, nargs="+", help="default: recorded, else 100 50")
    ap.add_argument("--resnet-sizes", type=int, nargs="*", help="default: recorded, else 50 100")
    ap.add_argument("--labelled-sizes", type=int, nargs="*", help="default: recorded, else 100")
    ap.add_argument("--converge-sizes", type=int, nargs="*", default=[50])
    ap.add_argument("--base-model", default=str(NAIVE_BASE), help="the task-naive base")
    ap.add_argument("--labelled-base", default=str(LABELLED_BASE))
    ap.add_argument("--allow-conditional-base", action="store_true", help="development only")
    ap.add_argument("--sample-steps", type=int, default=10)
    ap.add_argument("--scheduler", default="ddim")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", help="run only arms whose id contains one of these")
    ap.add_argument("--json", default=str(RESULTS / "payoff.json"))
    ap.add_argument("--md", default=str(RESULTS / "payoff.md"))
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--takeaway", help="the closing sentence (kept in the JSON); default: derived")
    ap.add_argument("--naive-regime", help="how the task-naive base was trained")
    ap.add_argument("--labelled-regime", help="how the labelled base was trained")
    ap.add_argument("--finetune-note", help="said of the generators' fine-tune (in parentheses)")
    ap.add_argument(
        "--note",
        dest="notes",
        action="append",
        help="a line of the page above the table (repeat; replaces the recorded ones)",
    )
    ap.add_argument(
        "--unmeasured",
        nargs=2,
        action="append",
        metavar=("MATCH", "WHY"),
        help="planned arms whose id contains MATCH are listed as missing because WHY "
        "(repeat; replaces the recorded ones)",
    )
    ap.add_argument(
        "--clear-notes",
        action="store_true",
        help="drop the recorded --finetune-note, --note and --unmeasured",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    return run(parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
