"""The whole pipeline on the embedded phantom data, as `make demo` runs it.

data -> finetune (tiny, from the bundled base) -> generate (the quick space's pools) -> run
(eight trials of two seeds, two at a time) -> export (multi-seed confirmation, test split) ->
report.

Every stage is cached by content: a second demo reuses the data, the model and the pools and only
runs a new search (named ``demo-<timestamp>``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .config import Config, DataConfig, FinetuneConfig
from .errors import ConfigError
from .home import Home

STAGES = ("data", "finetune", "generate", "search", "export", "report")
# The demo's fine-tune: 200 steps of batch 16 at lr 1e-3, a quarter of the compute of 400 steps
# of batch 32 at the default 2e-4 (its longest stage before: 5-6 minutes here). The classes are
# learnt by then at the high guidance of the quick space (share of its CNV images a real-trained
# judge calls CNV, DDIM 10 steps: 1.000 at guidance 12.5, 0.580 at guidance 2; TRAINING.md
# "A quarter of the compute").
DEMO_FINETUNE_STEPS = 200
DEMO_FINETUNE_BATCH = 16
DEMO_FINETUNE_LR = 1e-3

# Stage headers and the confirmation's messages go through the one progress logger (plain lines
# on stderr); the long loops inside each stage draw their own tqdm bars.


def run_demo(
    home: Home,
    *,
    name: str | None = None,
    trials: int | None = None,
    finetune_steps: int | None = None,
    concurrency: int = 2,
    confirm_seeds: int = 3,
    max_seeds: int = 6,
    confirm_r: tuple[float, ...] = (0.5, 1.0),
    top_k: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the demo pipeline under ``home``; return what it made (paths, the answer, timings)."""
    from .data import load_dataset
    from .diffusion import finetune
    from .pools import generate
    from .search import progress as _progress
    from .search import run_search
    from .search.setup import pool_size
    from .search.space import load_space

    def say(i: int, text: str) -> None:
        if progress:
            _progress.logger.info("\n[%d/%d] %s", i, len(STAGES), text)

    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    say(1, "data: the phantom OCT scans (CNV vs NORMAL), written once as an image folder")
    t = time.perf_counter()
    space = load_space("quick")
    data_cfg = space.data_config(DataConfig())
    data = load_dataset(data_cfg, home)
    timings["data"] = time.perf_counter() - t

    steps = DEMO_FINETUNE_STEPS if finetune_steps is None else int(finetune_steps)
    if steps < 1:
        raise ConfigError(f"--finetune-steps: {steps} must be >= 1")
    dflt = FinetuneConfig()
    say(
        2,
        f"finetune: adapting the bundled task-naive tiny diffusion base model to the training "
        f"split ({steps} steps of batch {DEMO_FINETUNE_BATCH} at lr {DEMO_FINETUNE_LR:g}; "
        f"`ratio-search finetune` defaults to {dflt.max_steps} of {dflt.batch_size} at "
        f"{dflt.lr:g})",
    )
    t = time.perf_counter()
    ft = FinetuneConfig(max_steps=steps, batch_size=DEMO_FINETUNE_BATCH, lr=DEMO_FINETUNE_LR)
    model = finetune(data, ft, home, progress=progress)
    timings["finetune"] = time.perf_counter() - t

    say(3, "generate: the pools of generated CNV images the quick space can ask for")
    t = time.perf_counter()
    # The same pool size the search computes, so that the search finds every pool cached.
    n = pool_size(space, data)
    pools = generate(
        home, Config(data=data_cfg), model=str(model.path), space=space, n=n, progress=progress
    )
    timings["generate"] = time.perf_counter() - t

    say(
        4,
        "search: Ray Tune + Optuna over R, the mixing mode, guidance and steps, tracked in MLflow",
    )
    t = time.perf_counter()
    name = name or time.strftime("demo-%Y%m%d-%H%M%S")
    result = run_search(
        home,
        name=name,
        space=space,
        n_trials=trials,
        concurrency=concurrency,
        data_cfg=data_cfg,
        model=str(model.path),
        progress=progress,
        argv=["ratio-search", "demo"],
    )
    timings["search"] = time.perf_counter() - t

    which = "configuration" if top_k == 1 else f"{top_k} configurations"
    say(
        5,
        f"export: confirming the best {which} over {confirm_seeds} seeds, the usable ratio "
        f"at R = {', '.join(f'{r:g}' for r in confirm_r)}, then the test split (up to "
        f"{max_seeds} seeds)",
    )
    t = time.perf_counter()
    from .evidence.export import export_with_confirmation, write_export

    doc = export_with_confirmation(
        home,
        name,
        top_k=top_k,
        n_seeds=confirm_seeds,
        max_seeds=max_seeds,
        confirm_r=list(confirm_r),
        progress=_progress.logger.info if progress else None,
    )
    best = write_export(doc, home.runs / name / "best.yaml")
    timings["export"] = time.perf_counter() - t

    say(6, "report: the HTML page with the metric-vs-R plot, the maps and the image grids")
    t = time.perf_counter()
    from .report import build_report

    rep = build_report(home, name, best_path=best)
    timings["report"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_all

    return {
        "name": name,
        "home": str(home.root),
        "data_key": data.key,
        "model": str(model.path),
        "pools": [p.get("key") for p in pools],
        "search": result,
        "best_yaml": str(best),
        "report": str(rep["html"]),
        "summary": rep.get("summary"),
        "confirm": doc.get("expected", {}).get("confirm"),
        "timings": timings,
        "finetune_steps": steps,
        "generator": generator_seen(steps, len(data.train_y)),
    }


def generator_seen(steps: int, n_train: int) -> str:
    """What the generator behind the demo's evidence has seen, read from the bundled base's
    meta.json (how it was trained: base_model/TRAINING.md) and the fine-tune's own data."""
    from .diffusion.tiny_train import base_meta
    from .diffusion.tiny_unet import BASE_DIR

    meta = base_meta(BASE_DIR)
    per_class = int((meta.get("data_info") or {}).get("n_per_class", 0))
    n_base = per_class * len(meta.get("class_names") or [])
    if meta.get("config", {}).get("unconditional"):
        base = f"the bundled task-naive base ({n_base:,} unlabelled phantom scans"
    else:
        base = f"the bundled labelled base ({n_base:,} labelled phantom scans"
    return (
        f"{base} of its own seed stream, none of the demo's) fine-tuned {steps} steps on the "
        f"{n_train} labelled training images (train split only; val and test never seen)"
    )


def where_to_look(out: dict[str, Any]) -> str:
    """The lines printed at the end of the demo: the answer and where to look next."""
    home = Path(out["home"])

    def rel(p: str) -> str:
        try:
            return str(Path(p).relative_to(Path.cwd()))
        except ValueError:
            return p

    lines = [
        "",
        "=" * 72,
        f"ratio-search demo finished in {out['timings']['total'] / 60:.1f} min",
        "stages: "
        + ", ".join(f"{s} {out['timings'][s]:.0f} s" for s in STAGES if s in out["timings"]),
        "",
    ]
    answer = []
    if out.get("confirm"):
        from .evidence.answer import confirm_lines

        *figures, answer_line = confirm_lines(out["confirm"])
        lines += [*figures]
        answer = ["", answer_line]
    elif out.get("summary"):
        lines += [out["summary"]]
    if out.get("generator"):
        lines += [f"generator: {out['generator']}"]
    lines += [""]
    lines += [
        f"best configuration : {rel(out['best_yaml'])}",
        f"                     (reproduce: ratio-search train --config {rel(out['best_yaml'])})",
        f"report             : {rel(out['report'])}",
        f"search status      : ratio-search status {out['name']}",
        f"MLflow UI          : ratio-search ui{'' if home == Path.cwd() else f' --home {home}'}"
        "   (then open the address it prints: this search's runs)",
        *answer,
        "=" * 72,
    ]
    return "\n".join(lines)
