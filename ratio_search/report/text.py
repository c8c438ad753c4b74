"""The report's words: table cells, intervals and the answer in one paragraph."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._io import is_number

NO_TRIAL = "No finished trial: nothing to report yet."


def fmt(v: Any, digits: int = 4) -> str:
    """A table cell: 4 decimals for floats, a dash for missing or non-finite values."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}f}" if is_number(v) else "—"
    return str(v)


def setting(v: Any) -> Any:
    """Settings (R, guidance) as written, not padded to 4 decimals."""
    return f"{v:g}" if is_number(v) else v


def pm(iv: Mapping[str, Any] | None) -> str:
    """``mean ± half width`` of an interval (the mean alone over a single run)."""
    if not iv:
        return "—"
    if not is_number(iv.get("half_width")):
        return f"{iv['mean']:.4f}"
    return f"{iv['mean']:.4f} ± {iv['half_width']:.4f}"


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
        return NO_TRIAL
    gen = ""
    if float(best_cfg.get("r", 0)) > 0 and best_cfg.get("guidance") is not None:
        gen = f" (guidance {best_cfg['guidance']:g}, {best_cfg.get('steps')} steps)"
    r = float(best_cfg.get("r", 0.0))
    if confirm:
        from ..evidence.answer import answer_text

        return confirm.get("answer") or answer_text(confirm)
    text = f"Best R = {r:.2f}{gen}: {short} {best_trial['value']:.4f} on validation (one run, not confirmed)"
    if baseline_trial is not None:
        text += f" vs {baseline_trial:.4f} at R = 0"
    return text + (
        "; no usable synthetic ratio yet: it is a non-inferiority test on confirmation runs "
        "(ratio-search export), and single trials are never candidates."
    )
