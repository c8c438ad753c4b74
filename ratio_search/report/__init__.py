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

What the report reads: ``run.json``, ``trials.jsonl``, ``optuna.db`` and, when ``export`` has
run, the confirmation in ``best.yaml`` (``expected.confirm``). Without a confirmation the page
says that its numbers are single, unconfirmed runs.

Modules: :mod:`.inputs` reads the run folder, :mod:`.figures` draws (Optuna's own matplotlib
plots for the study), :mod:`.text` words the answer, :mod:`.page` collects and renders
``templates/report.html.j2``.
"""

from .figures import (
    fig_guidance_steps,
    fig_history,
    fig_image_grid,
    fig_importances,
    fig_metric_vs_r,
    pareto_front,
)
from .inputs import find_confirmation
from .page import REPORT_NAME, build_report, render_page
from .text import summary_text

__all__ = [
    "REPORT_NAME",
    "build_report",
    "fig_guidance_steps",
    "fig_history",
    "fig_image_grid",
    "fig_importances",
    "fig_metric_vs_r",
    "find_confirmation",
    "pareto_front",
    "render_page",
    "summary_text",
]
