"""Collect what the report shows and render it through the Jinja2 template ``report.html.j2``."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_bytes, atomic_write_text, utc_now
from ..errors import RatioSearchError
from ..evidence.confirm import label_of
from ..home import Home
from . import figures
from .inputs import find_confirmation, load_study, pool_table, r0_trial_mean, trial_rows
from .text import NO_TRIAL, fmt, pm, setting, summary_text

REPORT_NAME = "report.html"


def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("ratio_search.report", "templates"),
        autoescape=True,
        keep_trailing_newline=True,
    )
    env.filters["fmt"] = fmt
    return env


def _best_row(
    trials: Mapping[str, Mapping[str, Any]], rows: list[dict[str, Any]], metric: str, mode: str
) -> dict[str, Any] | None:
    """The row of the search's best trial among ``rows`` (the one best-trial rule)."""
    from ..search.trials import best_trial

    by_id = {r["trial_id"]: r for r in rows}
    best = best_trial({tid: trials[tid] for tid in by_id}, metric, mode)
    return None if best is None else by_id[str(best["trial_id"])]


# ------------------------------------------------------------------------------- the figures


def _optuna_figures(folder, name, rows, metric, mode, notes):
    """History and importance figures from ``optuna.db`` (else the history of trials.jsonl)."""
    figs: list[tuple[str, str, bytes]] = []
    study, importances = None, {}
    try:
        study = load_study(folder, name)
    except Exception as e:  # noqa: BLE001 - a damaged optuna.db loses two figures, not the report
        notes.append(f"optuna.db could not be read ({type(e).__name__}: {e})")
    if study is not None:
        import optuna

        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.values]
        hist = figures.fig_history(study, metric, "Optuna study order")
        if len(done) >= 2:
            try:
                importances = dict(
                    optuna.importance.get_param_importances(
                        study, evaluator=figures.importance_evaluator()
                    )
                )
            except Exception as e:  # noqa: BLE001 - e.g. every parameter constant
                notes.append(f"parameter importances not available ({type(e).__name__}: {e})")
        else:
            notes.append("parameter importances need at least 2 completed trials")
    else:
        values = [r["value"] for r in rows]
        hist = (
            figures.fig_history(figures.values_study(values, mode), metric, "trials.jsonl order")
            if values
            else None
        )
    if hist is not None:
        figs.append(("history.png", "optimisation history", hist))
    imp = figures.fig_importances(study, importances, metric) if importances else None
    if imp is not None:
        figs.append(("importances.png", "parameter importances", imp))
    return figs, importances


def _grids(
    ctx, home, confirm, trials, rows, metric, mode, grid_n, classifier_path, classifier_kwargs
):
    """Best/worst grids of the chosen pool, ranked by a real-trained classifier; None if no pool."""
    from ..quality import rank_by_confidence, real_classifier

    cfg, key = None, None
    if confirm and float(confirm["chosen"]["params"].get("r", 0)) > 0:
        cfg, key = (
            confirm["chosen"].get("config") or confirm["chosen"]["params"],
            confirm["chosen"].get("pool_key"),
        )
    if cfg is None:  # no confirmed pick with generated images: the best trial with R > 0
        top = _best_row(trials, [r for r in rows if r["r"] > 0], metric, mode)
        if top is None:
            return None
        cfg, key = top["config"], top["pool_key"]
    got = ctx.pool_images(cfg, key)
    data = ctx.data
    label = int(data.synthetic_label)
    if isinstance(got, dict):  # one pool per class: the synthetic class's (else the first)
        if not got:
            return None
        label = label if label in got else min(got)
        got = got[label]
    images = np.asarray(got)
    clf = real_classifier(
        home.cache / "quality", data, path=classifier_path, **(classifier_kwargs or {})
    )
    order, score = rank_by_confidence(images, clf, label)
    n = min(grid_n, len(order) // 2 if len(order) > 1 else len(order))
    cls = data.class_names[label]
    what = f"pool {key or label_of(cfg)}"
    best_i, worst_i = order[:n], order[::-1][:n]
    return [
        ("best_generated.png", f"best-generated images of {what}",
         figures.fig_image_grid(images[best_i], score[best_i],
                                f"most confidently {cls} (real-trained classifier's P({cls}))")),
        ("worst_generated.png", f"worst-generated images of {what}",
         figures.fig_image_grid(images[worst_i], score[worst_i],
                                f"least confidently {cls} (real-trained classifier's P({cls}))")),
    ]  # fmt: skip


# ------------------------------------------------------------------------------- the report


def build_report(
    home: Home,
    name: str,
    out_dir: str | Path | None = None,
    *,
    best_path: str | Path | None = None,
    tolerance: float = 0.01,
    grid_n: int = 16,
    classifier_path: str | Path | None = None,
    classifier_kwargs: dict[str, Any] | None = None,
    context: Any = None,
    track: bool = True,
) -> dict[str, Any]:
    """Write the report of run ``name``; return ``{"html", "pngs", "summary", "best_r", ...}``.

    ``tolerance``: kept for the command line; the usable ratio and its δ come from the export's
    confirmation (without one, the page names no usable ratio). ``grid_n``: images per best/worst grid (0: no grids). ``classifier_path``: the
    real-trained classifier that ranks generated images (default: trained on the real training
    images once and cached, as for pool quality). ``context``: a
    :class:`ratio_search.evidence.confirm.RunContext` (tests pass a prepared one).
    """
    from ..evidence.confirm import RunContext
    from ..search.runs import find_run, read_run_json
    from ..search.trials import read_trials

    folder = find_run(home, name)
    info = read_run_json(folder)
    metric, mode = info.get("metric", "val_accuracy"), info.get("mode", "max")
    ctx = context if context is not None else RunContext(home, folder, info)
    trials = read_trials(folder)
    rows = trial_rows(trials, metric, ctx)
    confirm, confirm_path = find_confirmation(home, folder, name, best_path)
    out = Path(out_dir) if out_dir is not None else folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if confirm and "delta" not in (confirm.get("usable_ratio") or {}):
        notes.append(
            f"{confirm_path} holds a confirmation of an older ratio-search (no non-inferiority "
            f"test, no paired test interval); run `ratio-search export {name}` again"
        )
        confirm, confirm_path = None, None

    best = _best_row(trials, rows, metric, mode)
    baseline_trial = r0_trial_mean(rows)
    if confirm:
        usable = confirm["usable_ratio"]
        best_cfg = confirm["chosen"].get("config") or confirm["chosen"]["params"]
        base_conf = next((c for c in confirm["configurations"] if c["role"] == "baseline"), None)
        baseline = (
            base_conf["val"][metric]["mean"]
            if base_conf and metric in base_conf["val"]
            else baseline_trial
        )
        confirmed = confirm["configurations"]
    else:
        usable = {}  # a non-inferiority test needs confirmation runs: single trials never decide
        best_cfg = best["config"] if best else None
        baseline, confirmed = baseline_trial, []
        notes.append(
            f"No confirmation found (best.yaml with expected.confirm): every number below is a single "
            f"run. Run `ratio-search export {name}` to confirm the best configurations with several "
            "seeds and evaluate the test split."
        )

    figs: list[tuple[str, str, bytes]] = []  # (file name, caption, png)
    if rows:
        figs.append(("metric_vs_r.png", f"{metric} against R",
                     figures.fig_metric_vs_r(rows, confirmed, usable, metric, mode, baseline)))  # fmt: skip
    gs = figures.fig_guidance_steps(rows, metric, mode)
    if gs is not None:
        figs.append(("guidance_steps.png", "guidance x steps", gs))
    more, importances = _optuna_figures(folder, name, rows, metric, mode, notes)
    figs += more

    # Best- and worst-generated images of the chosen (else best R > 0) pool.
    if grid_n > 0:
        grid_note = None
        try:
            grids = _grids(ctx, home, confirm, trials, rows, metric, mode, grid_n,
                           classifier_path, classifier_kwargs)  # fmt: skip
            if grids is None:
                grid_note = "no trial used generated images (R = 0 only): no image grids"
            else:
                figs += grids
        except RatioSearchError as e:
            grid_note = f"image grids not drawn: {e}"
        if grid_note:
            notes.append(grid_note)

    summary = (
        summary_text(metric, best_cfg, confirm, usable, best, baseline_trial) if rows else NO_TRIAL
    )
    pngs = []
    for fname, _, png in figs:
        atomic_write_bytes(out / fname, png)
        pngs.append(str(out / fname))

    page = render_page(
        name=name, info=info, summary=summary, notes=notes, figs=figs, rows=rows,
        confirm=confirm, confirm_path=confirm_path, usable=usable,
        pool_rows=pool_table(home, rows, mode, _int_or_none(info.get("pool_n"))),
        importances=importances, metric=metric,
    )  # fmt: skip
    html_path = atomic_write_text(out / REPORT_NAME, page)

    result: dict[str, Any] = {
        "html": str(html_path),
        "pngs": pngs,
        "summary": summary,
        "best_r": None if best_cfg is None else float(best_cfg.get("r", 0.0)),
        "usable_r": usable.get("r") if usable else None,
        "usable_confirmed": bool(usable) if usable else None,
        "confirmed": confirm is not None,
        "n_trials": len(rows),
    }
    if track:
        result["mlflow"] = _log_report(info, folder, out)
    return result


def _int_or_none(v: Any) -> int | None:
    """A positive int from run.json, else None (an old or hand-written run folder)."""
    return int(v) if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def _tables(rows, confirm, usable, pool_rows, importances, metric) -> dict[str, Any]:
    """The page's tables as ``{"header", "rows", "left"}`` (``left``: left-aligned columns)."""

    def t(header: list[str], body: list[list[Any]], left: int = 1) -> dict[str, Any]:
        return {"header": header, "rows": body, "left": left}

    out: dict[str, Any] = {}
    if usable and usable.get("points"):
        out["usable"] = t(
            ["R", "configuration", "paired difference to R = 0", "95 % low", "95 % high", "seeds",
             "candidate", f"low > -{usable['delta']:g}"],
            [[setting(p["r"]), p.get("label"), p["diff"], p["low"], p["high"], p["n_seeds"],
              p["candidate"], p["passes"]] for p in usable["points"]],
            left=2,
        )  # fmt: skip
    if confirm:
        out["confirmation"] = t(
            ["configuration", "role", "search trial", f"confirmed {metric}", "difference to R = 0 (seeds only)",
             "paired, seeds x images: [95 % low, high]"],
            [[c["label"], c["role"], c.get("trial_value"), pm(c["val"].get(metric)),
              pm(c["diff_vs_baseline"].get(metric)), _bounds(c.get("paired_val"))]
             for c in confirm["configurations"]],
            left=2,
        )  # fmt: skip
        out["test"] = _test_table(confirm["test"])
    if importances:
        out["importances"] = t(
            ["parameter", "importance"], [[k, v] for k, v in importances.items()]
        )
    if pool_rows:
        out["pools"] = t(
            ["pool", "guidance", "steps", "images", "trials", f"best {metric}", "FD / floor",
             "KID / floor", "precision / floor", "recall / floor", "C2ST / floor", "C2ST p",
             "memorised / floor", "called its class / floor", "measured on"],
            pool_rows,
        )  # fmt: skip
    out["trials"] = t(
        ["trial", "R", "guidance", "steps", metric, "pool"],
        [[r["trial_id"], setting(r["r"]), setting(r["guidance"]), r["steps"], r["value"], r["pool_key"]]
         for r in rows],
    )  # fmt: skip
    return out


def _bounds(d: Mapping[str, Any] | None) -> str:
    """``+diff [low, high]`` of a paired bootstrap dict."""
    if not d:
        return "—"
    return f"{d['diff']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def _test_table(test: Mapping[str, Any]) -> dict[str, Any]:
    """The test split: the paired accuracy difference first, then every metric over seeds."""
    summary = test.get("summary") or {}
    arm, base = summary.get("arm") or {}, summary.get("baseline") or {}
    body: list[list[Any]] = []
    seq = test.get("paired")
    if seq:
        f = seq["final"]
        body.append(["accuracy, paired over seeds and test images", f"{f['mean_a']:.4f}",
                     f"{f['mean_b']:.4f}", _bounds(f), f"{f['n_seeds']} x {f['n_images']}"])  # fmt: skip
    u = test.get("usable")
    if u:
        body.append([f"usable ratio {u['label']} (non-inferiority)", f"{u['mean_a']:.4f}",
                     f"{u['mean_b']:.4f}", _bounds(u), f"{u['n_seeds']} x {u['n_images']}"])  # fmt: skip
    for k in [k for k in arm if k in base]:
        body.append([f"{k} (mean ± t over seeds)", pm(arm[k]), pm(base[k]), "—", arm[k].get("n")])
    for k in base if not arm else []:
        body.append([f"{k} (mean ± t over seeds)", "—", pm(base[k]), "—", base[k].get("n")])
    return {
        "header": ["figure", f"compared: {test.get('arm') or '—'}", "R = 0", "paired difference [95 %]",
                   "seeds x images"],
        "rows": body,
        "left": 1,
    }  # fmt: skip


# The alt text of the two figures whose caption names the metric or reads differently.
_ALT = {"metric_vs_r.png": "metric vs R", "guidance_steps.png": "guidance x steps"}


def render_page(
    *, name, info, summary, notes, figs, rows, confirm, confirm_path, usable, pool_rows,
    importances, metric,
) -> str:  # fmt: skip
    """The HTML page (figures embedded as base64 PNGs) from the template."""
    embedded = {
        f: {"alt": _ALT.get(f, cap), "data": base64.b64encode(png).decode("ascii")}
        for f, cap, png in figs
    }
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            name=name,
            state=str(info.get("state")),
            calibration=(info.get("calibration") or {}).get("line")
            if isinstance(info.get("calibration"), dict)
            else None,
            n_rows=len(rows),
            metric=metric,
            mode=info.get("mode", "max"),
            generated=utc_now(),
            confirm_path=str(confirm_path) if confirm_path else None,
            summary=summary,
            notes=notes,
            figs=embedded,
            confirm=confirm,
            tables=_tables(rows, confirm, usable, pool_rows, importances, metric),
        )
    )


def _log_report(info: Mapping[str, Any], folder: Path, out: Path) -> dict[str, Any] | None:
    """Log the report folder as ``report/`` artifacts of the search's parent run."""
    ml = info.get("mlflow") or {}
    uri, parent = ml.get("tracking_uri"), ml.get("parent_run_id")
    if not uri or not parent:
        return None
    try:
        from .. import tracking

        tracker = tracking.SearchTracker(uri, run_dir=folder)
        tracker.client.log_artifacts(parent, str(out), "report")
        return {"parent_run_id": parent, "artifact_path": "report"}
    except Exception as e:  # noqa: BLE001 - the report on disk is what matters
        return {"error": f"{type(e).__name__}: {e}"}
