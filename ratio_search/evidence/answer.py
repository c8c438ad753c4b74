"""The confirmation's answer in words, computed from its numbers (never written in).

One of four sentences, decided by the test split's paired interval (:mod:`.paired`) and the
non-inferiority usable ratio (:mod:`.noninferiority`):

- ``synthetic data helps: +x points [lo, hi] at CONFIG``: the interval lies above 0;
- ``synthetic data hurts: -x points [lo, hi] at CONFIG``: the interval lies below 0;
- ``no gain larger than δ; replacing up to R = u costs at most δ``: the interval holds 0 and is
  narrower than δ (so the gain is below δ) ("adding ... up to R = u (augment)" when the usable
  configuration adds generated images instead of replacing real ones);
- ``undecided after S seeds``: the interval holds 0 and is still wider than δ when the seed
  budget is spent (more seeds would decide).

Points are accuracy points (0.01 = 1 point).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _pts(x: float) -> str:
    return f"{100.0 * x:+.1f}"


def _iv(d: Mapping[str, Any]) -> str:
    return f"{_pts(d['diff'])} points [{_pts(d['low'])}, {_pts(d['high'])}]"


def usable_clause(c: Mapping[str, Any]) -> str:
    """What the usable ratio says: its R, δ, and how it fared on the test split."""
    u = c["usable_ratio"]
    delta = 100.0 * float(u["delta"])
    if float(u["r"]) <= 0.0:
        return f"no R > 0 stays within {delta:g} point(s) of R = 0 (non-inferiority on validation)"
    if u.get("mode") == "augment":  # R generated images added per real one of the class
        text = f"adding generated images up to R = {u['r']:g} (augment) costs at most {delta:g} point(s)"
    else:
        text = f"replacing up to R = {u['r']:g} costs at most {delta:g} point(s)"
    if u.get("failed_below"):
        text += f" (R = {', '.join(f'{r:g}' for r in u['failed_below'])} below it did not pass)"
    t = (c.get("test") or {}).get("usable")
    if t:
        verdict = "holds" if t.get("passes") else "does NOT hold"
        text += f"; on the test split it {verdict}: {_iv(t)}"
    return text


def answer_text(c: Mapping[str, Any]) -> str:
    """The one-paragraph answer of a confirmation result (``expected.confirm``)."""
    test = c.get("test") or {}
    seq = test.get("paired")
    delta = 100.0 * float(c["usable_ratio"]["delta"])
    if not seq:
        return "no configuration with synthetic images was confirmed; " + usable_clause(c)
    f = seq["final"]
    arm = test.get("arm")
    where = (
        f"at {arm} (test accuracy {f['mean_a']:.4f} vs {f['mean_b']:.4f} at R = 0, paired over "
        f"{f['n_seeds']} seeds and {f['n_images']} test images; {100 * seq['confidence']:g} % "
        f"over all looks, {100 * seq['look_level']:.4g} % per look; stopped because "
        f"{seq['reason']})"
    )
    if f["low"] > 0:
        head = f"synthetic data helps: {_iv(f)} {where}"
    elif f["high"] < 0:
        head = f"synthetic data hurts: {_iv(f)} {where}"
    elif f["high"] < float(c["usable_ratio"]["delta"]):
        head = f"no gain larger than {delta:g} point(s): {_iv(f)} {where}"
    else:
        head = (
            f"undecided after {f['n_seeds']} seeds: {_iv(f)} {where}; the interval is wider than "
            f"{delta:g} point(s), more seeds (--max-seeds) would decide"
        )
    return f"{head}; {usable_clause(c)}."


def _seeds(seeds: list[int]) -> str:
    return f"{len(seeds)} seeds ({', '.join(map(str, seeds))})"


def confirm_lines(c: Mapping[str, Any]) -> list[str]:
    """The confirmation as the lines ``export`` and the demo print: the test figures (both
    means, the paired difference, its interval, the seeds), the usable ratio with δ and its rule,
    the budget, the looks at the test split, and the answer."""
    test = c.get("test") or {}
    look = test.get("look") or {}
    lines = []
    if look.get("reused"):
        lines.append(
            f"test split: the recorded numbers of look {look['number']} ({look.get('when')}); "
            f"nothing evaluated again ({look['count']} look(s) in test_looks.jsonl)"
        )
    elif look:
        warn = "" if look["number"] == 1 else " (earlier looks asked for other configurations)"
        lines.append(
            f"test split: this is look number {look['number']}{warn}; see test_looks.jsonl"
        )
    seq = test.get("paired")
    if seq:
        f = seq["final"]
        lines.append(
            f"test accuracy {f['mean_a']:.4f} ({test.get('arm')}) vs {f['mean_b']:.4f} (R = 0); "
            f"paired difference {_iv(f)}, {100 * seq['confidence']:g} % over "
            f"{len(seq['schedule'])} planned looks at {seq['schedule']} seeds "
            f"({100 * seq['look_level']:.4g} % each, Bonferroni); {_seeds(test.get('seeds') or [])}, "
            f"{f['n_images']} test images; stopped because {seq['reason']}"
        )
        lines.append(f"  interval: {f['method']}")
    u = c["usable_ratio"]
    lines.append(
        f"usable synthetic ratio R = {u['r']:g} (non-inferiority on {u.get('split', 'validation')}, "
        f"δ = {u['delta']:g}: {u['rule']}; "
        f"{_seeds(u.get('seeds') or [])}; smaller R that failed: "
        f"{', '.join(f'{r:g}' for r in u['failed_below']) or 'none'}; every R up to "
        f"{u['r_all_below']:g} passes)"
    )
    cal = c.get("calibration")
    if cal:
        text = cal.get("line") or cal.get("text") if isinstance(cal, Mapping) else None
        lines.append(f"calibration: {text or cal}")
    b = c.get("budget") or {}
    if b:
        lines.append(
            "budget of every confirmation run: " + ", ".join(f"{k} {v}" for k, v in b.items())
        )
    if c.get("stopped_trials"):
        lines.append(
            f"{len(c['stopped_trials'])} trial(s) stopped early by the scheduler: not candidates"
        )
    lines.append("answer: " + (c.get("answer") or answer_text(c)))
    return lines
