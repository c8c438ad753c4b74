"""``ratio-search report NAME``: one self-contained HTML page answering the search's question.

The page (``<run dir>/report/report.html`` by default) embeds its figures as base64 PNGs, so it
can be mailed or archived as one file; the PNGs are also written beside it and, when the search
has an MLflow parent run, logged to it under ``report/``. It shows:

- the answer in a few sentences (best R and its generation settings, confirmed mean ± 95 % CI
  against R = 0, the usable synthetic ratio);
- the metric against R: every trial as a point, the confirmed means with their intervals, the
  R = 0 line, the tolerance band and the usable ratio, and the trials' Pareto front of
  (metric, R): the most synthetic data for a given accuracy;
- the guidance x steps map (best metric per pool setting);
- Optuna's optimisation history and parameter importances (from ``optuna.db``);
- the pool quality table (figures from :mod:`ratio_search.quality`, as stored in the manifests);
- grids of the best- and worst-generated images of the chosen pool, ranked by a real-trained
  classifier's confidence that they show their class (the reference study picked them by eye).

What the report reads: ``run.json``, ``trials.jsonl``, ``optuna.db`` and, when ``export`` has run,
the confirmation in ``best.yaml`` (``expected.confirm``). Without a confirmation the page says
that its numbers are single, unconfirmed runs.
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .confirm import group_of, label_of
from .errors import RatioSearchError
from .home import Home
from .stats import usable_ratio

REPORT_NAME = "report.html"


# ------------------------------------------------------------------------------- inputs


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def find_confirmation(
    home: Home, folder: Path, name: str, best_path: str | Path | None = None
) -> tuple[dict[str, Any] | None, Path | None]:
    """The ``expected.confirm`` block of this run's best.yaml, and the file it came from.

    Looks at ``best_path`` if given, else ``<run dir>/best.yaml``, ``<home>/best.yaml`` and
    ``./best.yaml`` (``export``'s default), taking the first that belongs to run ``name``.
    """
    if best_path is not None:
        candidates = [Path(best_path)]
        if not candidates[0].is_file():
            raise RatioSearchError(f"--best: {best_path} not found")
    else:
        candidates = [folder / "best.yaml", home.root / "best.yaml", Path.cwd() / "best.yaml"]
    for path in candidates:
        if not path.is_file():
            continue
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError:
            continue
        exp = doc.get("expected") or {}
        if best_path is None and exp.get("run") not in (None, name):
            continue  # another search's export
        if isinstance(exp.get("confirm"), dict):
            return exp["confirm"], path
    return None, None


def _trial_rows(
    trials: Mapping[str, Mapping[str, Any]], metric: str, ctx: Any
) -> list[dict[str, Any]]:
    rows = []
    for tid, rec in trials.items():
        v = (rec.get("metrics") or {}).get(metric)
        if rec.get("state") != "TERMINATED" or not _finite(v):
            continue
        cfg = ctx.full_config(rec.get("params") or {})
        rows.append(
            {
                "trial_id": str(tid),
                "r": float(cfg.get("r", 0.0)),
                "guidance": cfg.get("guidance"),
                "steps": cfg.get("steps"),
                "value": float(v),
                "time": rec.get("time") or 0,
                "pool_key": rec.get("pool_key"),
                "group": group_of(cfg),
                "config": cfg,
            }
        )
    rows.sort(key=lambda r: (r["time"], r["trial_id"]))
    return rows


def pareto_front(points: list[tuple[float, float]], mode: str = "max") -> list[tuple[float, float]]:
    """Non-dominated ``(r, value)`` points when both more R and a better value are wanted.

    Sorted by R descending: each point on the front has a strictly better value than every point
    with a larger R (ties in R keep the better value only).
    """
    sign = 1.0 if mode == "max" else -1.0
    front: list[tuple[float, float]] = []
    best = -math.inf
    for r, v in sorted(points, key=lambda p: (-p[0], -sign * p[1])):
        if sign * v > best:
            front.append((r, v))
            best = sign * v
    return front


# ------------------------------------------------------------------------------ figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def fig_metric_vs_r(
    rows: list[dict[str, Any]],
    confirmed: list[dict[str, Any]],
    usable: dict[str, Any],
    metric: str,
    mode: str,
    baseline: float | None,
) -> bytes:
    """Every trial, the confirmed means with 95 % intervals, R = 0, tolerance band, usable R."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    if rows:
        g = np.array(
            [r["guidance"] if _finite(r["guidance"]) else np.nan for r in rows], dtype=float
        )
        sc = ax.scatter(
            [r["r"] for r in rows],
            [r["value"] for r in rows],
            c=np.nan_to_num(g, nan=0.0),
            cmap="viridis",
            s=28,
            alpha=0.75,
            label="trial (one run)",
            zorder=2,
        )
        if np.isfinite(g).any() and np.nanmax(g) > np.nanmin(g):
            fig.colorbar(sc, ax=ax, label="guidance")
        front = pareto_front([(r["r"], r["value"]) for r in rows], mode)
        if len(front) > 1:
            fr = sorted(front)
            ax.step([p[0] for p in fr], [p[1] for p in fr], where="post", color="tab:gray",
                    lw=1, ls=":", label="Pareto front (value, R)")  # fmt: skip
    for i, c in enumerate(confirmed):
        iv = (c.get("val") or {}).get(metric)
        if not iv:
            continue
        err = iv["half_width"] if _finite(iv.get("half_width")) else 0.0
        ax.errorbar(c["params"]["r"], iv["mean"], yerr=err, fmt="s", color="black", ms=6,
                    capsize=4, zorder=3, label="confirmed mean ± 95 % CI" if i == 0 else None)  # fmt: skip
    if baseline is not None:
        ax.axhline(baseline, color="tab:red", ls="--", lw=1, label="R = 0 (real only)")
    if usable:
        lo, hi = sorted((usable["best_value"], usable["threshold"]))
        ax.axhspan(
            lo,
            hi,
            color="tab:green",
            alpha=0.12,
            label=f"within {usable['tolerance']:g} of the best",
        )
        ax.axvline(usable["r"], color="tab:green", lw=1.5,
                   label=f"usable synthetic ratio {usable['r']:g}" + ("" if usable["confirmed"] else " (unconfirmed)"))  # fmt: skip
    ax.set_xlabel("R (share of the synthetic class that is generated)")
    ax.set_ylabel(metric)
    ax.set_xlim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(f"{metric} against the synthetic ratio R")
    return _png(fig)


def fig_guidance_steps(rows: list[dict[str, Any]], metric: str, mode: str) -> bytes | None:
    """Heatmap of the best trial value per (guidance, steps), trials with R > 0 only."""
    pts = [r for r in rows if r["r"] > 0 and r["guidance"] is not None and r["steps"] is not None]
    if not pts:
        return None
    gs = sorted({float(r["guidance"]) for r in pts})
    ss = sorted({int(r["steps"]) for r in pts})
    best = np.full((len(ss), len(gs)), np.nan)
    count = np.zeros_like(best, dtype=int)
    sign = 1.0 if mode == "max" else -1.0
    for r in pts:
        i, j = ss.index(int(r["steps"])), gs.index(float(r["guidance"]))
        count[i, j] += 1
        if np.isnan(best[i, j]) or sign * r["value"] > sign * best[i, j]:
            best[i, j] = r["value"]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(gs), 1.2 + 0.6 * len(ss)))
    im = ax.imshow(
        best, cmap="viridis" if mode == "max" else "viridis_r", aspect="auto", origin="lower"
    )
    fig.colorbar(im, ax=ax, label=f"best {metric}")
    for i in range(len(ss)):
        for j in range(len(gs)):
            if count[i, j]:
                ax.text(
                    j,
                    i,
                    f"{best[i, j]:.3f}\nn={count[i, j]}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white",
                )
    ax.set_xticks(range(len(gs)), [f"{g:g}" for g in gs])
    ax.set_yticks(range(len(ss)), [str(s) for s in ss])
    ax.set_xlabel("guidance")
    ax.set_ylabel("sampling steps")
    ax.set_title("best trial per pool setting (R > 0)")
    return _png(fig)


def _load_study(folder: Path, name: str):
    db = folder / "optuna.db"
    if not db.is_file():
        return None
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{db.resolve()}"
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # another study name: take the only one there is
        names = optuna.get_all_study_names(storage)
        return optuna.load_study(study_name=names[0], storage=storage) if len(names) == 1 else None


def fig_history(values: list[float], metric: str, mode: str, source: str) -> bytes | None:
    """Every trial's value in order, and the best so far."""
    if not values:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(1, len(values) + 1)
    best = np.maximum.accumulate(values) if mode == "max" else np.minimum.accumulate(values)
    ax.plot(x, values, "o", ms=4, alpha=0.7, label="trial")
    ax.step(x, best, where="post", color="tab:red", label="best so far")
    ax.set_xlabel(f"trial ({source})")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("optimisation history")
    return _png(fig)


def fig_importances(importances: dict[str, float]) -> bytes | None:
    if not importances:
        return None
    plt = _plt()
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.6 + 0.4 * len(names)))
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (Optuna fANOVA)")
    ax.set_title("parameter importances")
    return _png(fig)


def fig_image_grid(images: np.ndarray, scores: np.ndarray, title: str, cols: int = 8) -> bytes:
    """A grid of uint8 images ``(N, C, H, W)``, each titled with its score."""
    plt = _plt()
    n = len(images)
    cols = max(1, min(cols, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows + 0.4), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        img = images[k]
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(np.transpose(img[:3], (1, 2, 0)))
        ax.set_title(f"{scores[k]:.2f}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _png(fig)


# --------------------------------------------------------------------------------- HTML


_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; max-width: 1000px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.answer { background: #f3f8f3; border-left: 4px solid #3a7; padding: 0.8em 1em; font-size: 1.05em; }
.warn { background: #fff7e6; border-left: 4px solid #e90; padding: 0.6em 1em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; }
th { background: #f5f5f5; } td.l, th.l { text-align: left; }
img { max-width: 100%; } .muted { color: #777; font-size: 0.85em; }
"""


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "—" if not math.isfinite(v) else f"{v:.{digits}f}"
    return html.escape(str(v))


def _g(v: Any) -> Any:
    """Settings (R, guidance) as written, not padded to 4 decimals."""
    return f"{v:g}" if isinstance(v, int | float) and not isinstance(v, bool) else v


def _table(header: list[str], rows: list[list[Any]], left: int = 1) -> str:
    th = "".join(
        f'<th class="{"l" if i < left else ""}">{html.escape(h)}</th>' for i, h in enumerate(header)
    )
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"l" if i < left else ""}">{_fmt(c)}</td>' for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{th}</tr>{body}</table>"


def _pm(iv: Mapping[str, Any] | None) -> str:
    if not iv:
        return "—"
    if not _finite(iv.get("half_width")):
        return f"{iv['mean']:.4f}"
    return f"{iv['mean']:.4f} ± {iv['half_width']:.4f}"


# ------------------------------------------------------------------------------- the page


def summary_text(
    metric: str,
    best_cfg: Mapping[str, Any] | None,
    confirm: Mapping[str, Any] | None,
    usable: Mapping[str, Any],
    best_trial: Mapping[str, Any] | None,
    baseline_trial: float | None,
) -> str:
    """The answer in one paragraph (plain text)."""
    short = metric.removeprefix("val_")
    if best_cfg is None:
        return "No finished trial: nothing to report yet."
    gen = ""
    if float(best_cfg.get("r", 0)) > 0 and best_cfg.get("guidance") is not None:
        gen = f" (guidance {best_cfg['guidance']:g}, {best_cfg.get('steps')} steps)"
    r = float(best_cfg.get("r", 0.0))
    if confirm:
        tkey = f"test_{short}"
        ch, base = confirm["test"].get("chosen", {}), confirm["test"].get("baseline", {})
        n = len(confirm.get("seeds", []))
        if confirm["chosen"].get("is_baseline") and tkey in ch:
            text = (
                f"Best R = 0 (real images only): test {short} {_pm(ch[tkey])} (mean ± 95 % CI over "
                f"{n} seeds); no mix of synthetic images beat it after confirmation"
            )
        elif tkey in ch and tkey in base:
            text = (
                f"Best R = {r:.2f}{gen}: test {short} {_pm(ch[tkey])} vs {_pm(base[tkey])} at R = 0 "
                f"(mean ± 95 % CI over {n} seeds)"
            )
            diff = confirm["test"].get("diff", {}).get(tkey)
            if diff:
                sig = (
                    "excludes 0"
                    if diff["low"] > 0 or diff["high"] < 0
                    else "includes 0: no clear difference"
                )
                text += f"; paired difference {_pm(diff)} ({sig})"
        else:
            text = f"Best R = {r:.2f}{gen} (confirmed over {n} seeds)"
    else:
        text = f"Best R = {r:.2f}{gen}: {short} {best_trial['value']:.4f} on validation (one run, not confirmed)"
        if baseline_trial is not None:
            text += f" vs {baseline_trial:.4f} at R = 0"
    flag = "" if usable.get("confirmed") else " (resting on a single unconfirmed trial)"
    text += (
        f"; usable synthetic ratio {usable['r']:g}{flag}: the largest R whose {short} stays within "
        f"{usable['tolerance']:g} of the best."
    )
    return text


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

    ``tolerance`` applies when there is no confirmation (the export's own tolerance is used
    otherwise). ``grid_n``: images per best/worst grid (0: no grids). ``classifier_path``: the
    real-trained classifier that ranks generated images (default: trained on the real training
    images once and cached, as for pool quality). ``context``: a
    :class:`ratio_search.confirm.RunContext` (tests pass a prepared one).
    """
    from .confirm import RunContext
    from .search.runs import find_run, read_run_json, read_trials

    folder = find_run(home, name)
    info = read_run_json(folder)
    metric, mode = info.get("metric", "val_accuracy"), info.get("mode", "max")
    ctx = context if context is not None else RunContext(home, folder, info)
    trials = read_trials(folder)
    rows = _trial_rows(trials, metric, ctx)
    confirm, confirm_path = find_confirmation(home, folder, name, best_path)
    out = Path(out_dir) if out_dir is not None else folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    sign = 1.0 if mode == "max" else -1.0

    best_trial = max(rows, key=lambda r: sign * r["value"]) if rows else None
    base_trials = [r["value"] for r in rows if r["r"] == 0.0]
    baseline_trial = float(np.mean(base_trials)) if base_trials else None
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
        if rows:
            table = [{"r": r["r"], "value": r["value"], "group": r["group"]} for r in rows]
            usable = usable_ratio(table, tolerance, mode).as_dict()
        else:
            usable = {}
        best_cfg = best_trial["config"] if best_trial else None
        baseline, confirmed = baseline_trial, []
        notes.append(
            f"No confirmation found (best.yaml with expected.confirm): every number below is a single "
            f"run. Run `ratio-search export {name}` to confirm the best configurations with several "
            "seeds and evaluate the test split."
        )

    figures: list[tuple[str, str, bytes]] = []  # (file name, caption, png)
    if rows:
        figures.append(("metric_vs_r.png", f"{metric} against R",
                        fig_metric_vs_r(rows, confirmed, usable, metric, mode, baseline)))  # fmt: skip
    gs = fig_guidance_steps(rows, metric, mode)
    if gs is not None:
        figures.append(("guidance_steps.png", "guidance x steps", gs))

    # Optuna: history and importances.
    study, importances = None, {}
    try:
        study = _load_study(folder, name)
    except Exception as e:  # noqa: BLE001 - a damaged optuna.db loses two figures, not the report
        notes.append(f"optuna.db could not be read ({type(e).__name__}: {e})")
    if study is not None:
        import optuna

        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE and t.values]
        values = [float(t.values[0]) for t in sorted(done, key=lambda t: t.number)]
        hist = fig_history(values, metric, mode, "Optuna study order")
        if len(done) >= 2:
            try:
                importances = dict(optuna.importance.get_param_importances(study))
            except Exception as e:  # noqa: BLE001 - e.g. every parameter constant
                notes.append(f"parameter importances not available ({type(e).__name__}: {e})")
        else:
            notes.append("parameter importances need at least 2 completed trials")
    else:
        hist = fig_history([r["value"] for r in rows], metric, mode, "trials.jsonl order")
    if hist is not None:
        figures.append(("history.png", "optimisation history", hist))
    imp = fig_importances(importances)
    if imp is not None:
        figures.append(("importances.png", "parameter importances", imp))

    # Pool quality table.
    pool_rows = _pool_table(home, rows, metric, mode)

    # Best- and worst-generated images of the chosen (else best R > 0) pool.
    grid_note = None
    if grid_n > 0:
        try:
            grids = _grids(
                ctx, home, confirm, rows, mode, grid_n, classifier_path, classifier_kwargs
            )
            if grids is None:
                grid_note = "no trial used generated images (R = 0 only): no image grids"
            else:
                figures += grids
        except RatioSearchError as e:
            grid_note = f"image grids not drawn: {e}"
        if grid_note:
            notes.append(grid_note)

    summary = (
        summary_text(metric, best_cfg, confirm, usable, best_trial, baseline_trial)
        if rows
        else ("No finished trial: nothing to report yet.")
    )
    pngs = []
    for fname, _, png in figures:
        (out / fname).write_bytes(png)
        pngs.append(str(out / fname))

    page = _page(
        name,
        info,
        summary,
        notes,
        figures,
        rows,
        confirm,
        confirm_path,
        usable,
        pool_rows,
        importances,
        metric,
    )
    html_path = out / REPORT_NAME
    tmp = html_path.with_name(html_path.name + ".tmp")
    tmp.write_text(page)
    tmp.replace(html_path)

    result: dict[str, Any] = {
        "html": str(html_path),
        "pngs": pngs,
        "summary": summary,
        "best_r": None if best_cfg is None else float(best_cfg.get("r", 0.0)),
        "usable_r": usable.get("r") if usable else None,
        "usable_confirmed": usable.get("confirmed") if usable else None,
        "confirmed": confirm is not None,
        "n_trials": len(rows),
    }
    if track:
        result["mlflow"] = _log_report(info, folder, out)
    return result


def _pool_table(home: Home, rows: list[dict[str, Any]], metric: str, mode: str) -> list[list[Any]]:
    from .pools import load_pool

    sign = 1.0 if mode == "max" else -1.0
    by_pool: dict[str, list[float]] = {}
    for r in rows:
        if r["pool_key"] and r["r"] > 0:
            by_pool.setdefault(r["pool_key"], []).append(r["value"])
    out = []
    for key, values in sorted(by_pool.items()):
        try:
            m = load_pool(home, key).manifest
        except RatioSearchError:
            m = {}
        q = m.get("quality") or {}
        out.append([
            key, _g(m.get("guidance")), m.get("steps"), m.get("n"), len(values), max(values, key=lambda v: sign * v),
            q.get("fd"), q.get("kid"), q.get("precision"), q.get("recall"), q.get("c2st"),
            q.get("memorisation"), q.get("label_agreement"),
        ])  # fmt: skip
    return out


def _grids(ctx, home, confirm, rows, mode, grid_n, classifier_path, classifier_kwargs):
    """Best/worst grids of the chosen pool, ranked by a real-trained classifier; None if no pool."""
    from .quality import rank_by_confidence, real_classifier

    sign = 1.0 if mode == "max" else -1.0
    cfg, key = None, None
    if confirm and float(confirm["chosen"]["params"].get("r", 0)) > 0:
        cfg, key = (
            confirm["chosen"].get("config") or confirm["chosen"]["params"],
            confirm["chosen"].get("pool_key"),
        )
    if cfg is None:
        synth = [r for r in rows if r["r"] > 0]
        if not synth:
            return None
        top = max(synth, key=lambda r: sign * r["value"])
        cfg, key = top["config"], top["pool_key"]
    images = ctx.pool_images(cfg, key)
    data = ctx.data
    clf = real_classifier(
        home.cache / "quality", data, path=classifier_path, **(classifier_kwargs or {})
    )
    label = int(data.synthetic_label)
    order, score = rank_by_confidence(np.asarray(images), clf, label)
    n = min(grid_n, len(order) // 2 if len(order) > 1 else len(order))
    cls = data.class_names[label]
    what = f"pool {key or label_of(cfg)}"
    best_i, worst_i = order[:n], order[::-1][:n]
    return [
        ("best_generated.png", f"best-generated images of {what}",
         fig_image_grid(np.asarray(images)[best_i], score[best_i],
                        f"most confidently {cls} (real-trained classifier's P({cls}))")),
        ("worst_generated.png", f"worst-generated images of {what}",
         fig_image_grid(np.asarray(images)[worst_i], score[worst_i],
                        f"least confidently {cls} (real-trained classifier's P({cls}))")),
    ]  # fmt: skip


def _page(
    name,
    info,
    summary,
    notes,
    figures,
    rows,
    confirm,
    confirm_path,
    usable,
    pool_rows,
    importances,
    metric,
) -> str:
    figs = {f: (cap, png) for f, cap, png in figures}
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>ratio-search report: {html.escape(name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>ratio-search report: {html.escape(name)}</h1>",
        f"<p class='muted'>search state {html.escape(str(info.get('state')))}, {len(rows)} finished trials, "
        f"metric {html.escape(metric)} ({html.escape(info.get('mode', 'max'))}); "
        f"generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        + (f"; confirmation from {html.escape(str(confirm_path))}" if confirm_path else "")
        + "</p>",
        f"<h2>The answer</h2><p class='answer'>{html.escape(summary)}</p>",
    ]
    parts += [f"<p class='warn'>{html.escape(n)}</p>" for n in notes]

    parts.append("<h2>Metric against the synthetic ratio R</h2>")
    if "metric_vs_r.png" in figs:
        parts.append(_img(figs["metric_vs_r.png"][1], "metric vs R"))
    if usable and usable.get("points"):
        parts.append(
            "<p>The usable synthetic ratio is the largest R whose value stays within the tolerance of "
            "the best R; at each R, confirmed runs replace the single trials there.</p>"
        )
        parts.append(_table(
            ["R", "value", "runs", "confirmed", "95 % CI low", "95 % CI high", "generation"],
            [[_g(p["r"]), p["value"], p["n"], p["confirmed"], (p.get("interval") or {}).get("low"),
              (p.get("interval") or {}).get("high"), p.get("group")] for p in usable["points"]],
            left=0,
        ))  # fmt: skip

    if confirm:
        parts.append("<h2>Confirmation (validation split, new seeds)</h2>")
        parts.append(f"<p>Seeds {html.escape(', '.join(map(str, confirm['seeds'])))}; "
                     "differences are paired by seed against R = 0.</p>")  # fmt: skip
        parts.append(_table(
            ["configuration", "role", "search trial", f"confirmed {metric}", "difference to R = 0"],
            [[c["label"], c["role"], c.get("trial_value"), _pm(c["val"].get(metric)),
              _pm(c["diff_vs_baseline"].get(metric))] for c in confirm["configurations"]],
            left=2,
        ))  # fmt: skip
        t = confirm["test"]
        keys = [k for k in t.get("chosen", {}) if k in t.get("baseline", {})]
        parts.append(f"<h2>Test split (evaluated once, {t['n_test']} images)</h2>")
        parts.append(_table(
            ["metric", f"chosen: {confirm['chosen']['label']}", "R = 0", "paired difference"],
            [[k, _pm(t["chosen"][k]), _pm(t["baseline"][k]), _pm(t.get("diff", {}).get(k))] for k in keys],
        ))  # fmt: skip

    if "guidance_steps.png" in figs:
        parts.append(
            "<h2>Guidance x sampling steps</h2>"
            + _img(figs["guidance_steps.png"][1], "guidance x steps")
        )
    if "history.png" in figs or "importances.png" in figs:
        parts.append("<h2>The search</h2>")
        for f in ("history.png", "importances.png"):
            if f in figs:
                parts.append(_img(figs[f][1], figs[f][0]))
        if importances:
            parts.append(
                _table(["parameter", "importance"], [[k, v] for k, v in importances.items()])
            )

    parts.append("<h2>Pool quality</h2>")
    if pool_rows:
        parts.append(_table(
            ["pool", "guidance", "steps", "images", "trials", f"best {metric}", "FD", "KID", "precision",
             "recall", "C2ST", "memorised", "called its class"],
            pool_rows,
        ))  # fmt: skip
        parts.append(
            "<p class='muted'>FD/KID in the feature space of a CNN trained on the real training images; "
            "precision/recall with k-NN manifolds; C2ST = held-out accuracy telling real from generated "
            "(0.5: indistinguishable); memorised = share of generated images closer to a training image "
            "than training images are to each other (about 0.05 without copying). Empty cells: run "
            "<code>ratio-search pools --quality</code>.</p>"
        )
    else:
        parts.append("<p>No trial used a pool of generated images.</p>")

    if "best_generated.png" in figs:
        parts.append("<h2>Best- and worst-generated images</h2>")
        parts.append("<p>Ranked by a classifier trained on the real images only: its probability that "
                     "each generated image shows the class it was generated for.</p>")  # fmt: skip
        for f in ("best_generated.png", "worst_generated.png"):
            parts.append(_img(figs[f][1], figs[f][0]))

    parts.append("<h2>Trials</h2>")
    parts.append(_table(
        ["trial", "R", "guidance", "steps", metric, "pool"],
        [[r["trial_id"], _g(r["r"]), _g(r["guidance"]), r["steps"], r["value"], r["pool_key"]] for r in rows],
    ))  # fmt: skip
    parts.append("</body></html>")
    return "\n".join(parts)


def _log_report(info: Mapping[str, Any], folder: Path, out: Path) -> dict[str, Any] | None:
    """Log the report folder as ``report/`` artifacts of the search's parent run."""
    ml = info.get("mlflow") or {}
    uri, parent = ml.get("tracking_uri"), ml.get("parent_run_id")
    if not uri or not parent:
        return None
    try:
        from . import tracking

        tracker = tracking.SearchTracker(uri, run_dir=folder)
        tracker.client.log_artifacts(parent, str(out), "report")
        return {"parent_run_id": parent, "artifact_path": "report"}
    except Exception as e:  # noqa: BLE001 - the report on disk is what matters
        return {"error": f"{type(e).__name__}: {e}"}
