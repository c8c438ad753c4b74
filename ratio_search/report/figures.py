"""The report's figures, each as PNG bytes: metric against R, guidance x steps, the Optuna
study's history and parameter importances (drawn by ``optuna.visualization.matplotlib``), and
grids of generated images."""

from __future__ import annotations

import io
import math
import warnings
from contextlib import contextmanager
from typing import Any

import numpy as np

from .._io import is_number

# One seeded fANOVA for the importance figure and the table beside it: both show the same values.
IMPORTANCE_SEED = 0


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


@contextmanager
def _optuna_plotting():
    """Optuna's matplotlib plots set a global style and warn that they are experimental: keep
    the style inside this block (so the other figures keep matplotlib's) and the warning quiet."""
    import optuna

    plt = _plt()
    with plt.style.context("default"), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


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
        g = np.array([r["guidance"] if is_number(r["guidance"]) else np.nan for r in rows], float)
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
        err = iv["half_width"] if is_number(iv.get("half_width")) else 0.0
        ax.errorbar(c["params"]["r"], iv["mean"], yerr=err, fmt="s", color="black", ms=6,
                    capsize=4, zorder=3, label="confirmed mean ± 95 % CI" if i == 0 else None)  # fmt: skip
    if baseline is not None:
        ax.axhline(baseline, color="tab:red", ls="--", lw=1, label="R = 0 (real only)")
    if usable:
        if baseline is not None:
            ax.axhspan(baseline - usable["delta"], baseline, color="tab:green", alpha=0.12,
                       label=f"within δ = {usable['delta']:g} below R = 0")  # fmt: skip
        ax.axvline(usable["r"], color="tab:green", lw=1.5,
                   label=f"usable synthetic ratio {usable['r']:g} (non-inferiority)")  # fmt: skip
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
                ax.text(j, i, f"{best[i, j]:.3f}\nn={count[i, j]}", ha="center", va="center",
                        fontsize=7, color="white")  # fmt: skip
    ax.set_xticks(range(len(gs)), [f"{g:g}" for g in gs])
    ax.set_yticks(range(len(ss)), [str(s) for s in ss])
    ax.set_xlabel("guidance")
    ax.set_ylabel("sampling steps")
    ax.set_title("best trial per pool setting (R > 0)")
    return _png(fig)


def values_study(values: list[float], mode: str):
    """An in-memory Optuna study of these trial values, in order (for the history figure of a
    search whose ``optuna.db`` is gone)."""
    import optuna

    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for v in values:
        study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=v))
    return study


def fig_history(study: Any, metric: str, source: str) -> bytes | None:
    """Every completed trial's value in order, and the best so far (Optuna's plot)."""
    import optuna
    from optuna.visualization.matplotlib import plot_optimization_history

    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        return None
    with _optuna_plotting():
        ax = plot_optimization_history(study, target_name=metric)
        ax.figure.set_size_inches(7, 3.5)
        ax.set_xlabel(f"trial ({source})")
        ax.set_title("optimisation history")
        return _png(ax.figure)


def importance_evaluator():
    from optuna.importance import FanovaImportanceEvaluator

    return FanovaImportanceEvaluator(seed=IMPORTANCE_SEED)


def fig_importances(study: Any, importances: dict[str, float], metric: str) -> bytes | None:
    """The study's parameter importances (Optuna's plot, the same seeded fANOVA as the table)."""
    from optuna.visualization.matplotlib import plot_param_importances

    if not importances:
        return None
    with _optuna_plotting():
        ax = plot_param_importances(study, evaluator=importance_evaluator(), target_name=metric)
        ax.figure.set_size_inches(6, 0.6 + 0.4 * len(importances))
        ax.set_xlabel("importance (Optuna fANOVA)")
        ax.set_title("parameter importances")
        return _png(ax.figure)


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
