"""The test split: a sequential paired confirmation, the usable ratio checked once, every look
recorded.

:func:`test_phase` pairs one configuration with R = 0 on the same seeds and the same test
images and adds seeds (training both arms) until :func:`.paired.sequential_paired` stops; it
also evaluates the non-inferiority answer's configuration against R = 0 on the test split, once.
Before anything is evaluated the request (configurations, seed plan, settings) is looked up in
``test_looks.jsonl`` (``search.looks``): the same request shows the recorded numbers; a new one is
recorded as the next look, with its number.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._io import json_safe, utc_now
from ..search.looks import find_look, look_count, look_key, record_look
from .candidates import Candidate, config_signature, summarise
from .paired import N_BOOT, paired_bootstrap, sequential_paired
from .runs import load_state


class Scorer:
    """Per-image correctness of confirmation runs, computed once per (weights, split)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self._memo: dict[tuple[str, str], np.ndarray] = {}

    def rows(self, cand: Candidate, seeds: list[int], split: str) -> np.ndarray:
        """``(len(seeds), images)`` 0/1 correctness of ``cand``'s models of ``seeds``."""
        by_seed = dict(zip(cand.seeds, cand.weights, strict=True))
        out = []
        for s in seeds:
            key = (by_seed[s], split)
            if key not in self._memo:
                state = load_state(by_seed[s])
                self._memo[key] = np.asarray(self.ctx.correct(cand.config, state, split))
            out.append(self._memo[key])
        return np.stack(out).astype(np.float64)

    def paired(
        self,
        a: Candidate,
        b: Candidate,
        split: str,
        confidence: float = 0.95,
        n_boot: int = N_BOOT,
    ) -> dict[str, Any] | None:
        """The paired bootstrap of ``a - b`` on ``split`` over their common seeds (None: < 2)."""
        seeds = [s for s in a.seeds if s in set(b.seeds)]
        if len(seeds) < 2:
            return None
        d = paired_bootstrap(
            self.rows(a, seeds, split), self.rows(b, seeds, split), confidence, n_boot
        )
        return {**d.as_dict(), "seeds": seeds}


def _request(arm, base, usable, seeds_all, start, tolerance, confidence, n_boot) -> dict:
    def sig(c: Candidate | None) -> Any:
        return None if c is None else repr(config_signature(c.config))

    return {
        "arm": sig(arm),
        "baseline": sig(base),
        "usable": sig(usable),
        "seeds": list(seeds_all),
        "start": start,
        "tolerance": tolerance,
        "confidence": confidence,
        "n_boot": n_boot,
    }


def test_phase(
    ctx: Any,
    folder: Path,
    scorer: Scorer,
    train: Callable[[list[tuple[Candidate, int]]], None],
    *,
    arm: Candidate | None,
    base: Candidate,
    usable: Candidate | None,
    seeds_all: list[int],
    start: int,
    tolerance: float,
    confidence: float = 0.95,
    n_boot: int = N_BOOT,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The ``test`` block of the confirmation (see the module docstring).

    ``arm``: the configuration compared with R = 0 (None when no R > 0 was confirmed);
    ``usable``: the non-inferiority answer's configuration (None at R = 0); ``seeds_all``: the
    seed plan, its first ``start`` seeds already trained; ``train([(cand, seed), ...])`` trains
    more (cached runs are read back).
    """
    max_seeds = len(seeds_all)
    request = _request(arm, base, usable, seeds_all, start, tolerance, confidence, n_boot)
    key = look_key(request)
    prev = find_look(folder, key)
    if prev is not None:
        number, rec = prev
        block = dict(rec["test"])
        block["look"] = {
            "number": number,
            "count": look_count(folder),
            "reused": True,
            "when": rec.get("time"),
        }
        if progress:
            progress(f"test split: the recorded numbers of look {number} ({rec.get('time')})")
        return block

    if progress:
        what = f"{arm.label} vs {base.label}" if arm is not None else base.label
        print_n = look_count(folder) + 1
        progress(f"test split, look number {print_n}: {what}")
    seq = None
    if arm is not None:

        def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
            seeds = seeds_all[:n]
            # both arms of each new seed in one batch: they train side by side where they can
            train([(c, s) for s in seeds for c in (arm, base) if s not in c.seeds])
            return scorer.rows(arm, seeds, "test"), scorer.rows(base, seeds, "test")

        seq = sequential_paired(draw, start, max_seeds, tolerance, confidence, n_boot)
    ni = None
    if usable is not None:
        ni = scorer.paired(usable, base, "test", confidence, n_boot)
        if ni is not None:
            ni["passes"] = bool(ni["low"] > -tolerance)
            ni["label"] = usable.label
            ni["r"] = float(usable.config.get("r", 0.0))
    # Every metric per seed (mean ± t-interval over seeds), for the tables.
    sides = {"arm": arm, "baseline": base} if arm is not None else {"baseline": base}
    for cand in sides.values():
        cand.test = [ctx.test(cand.config, load_state(w)) for w in cand.weights]
    final_seeds = seeds_all[: seq.final.n_seeds] if seq else list(base.seeds)
    block: dict[str, Any] = {
        "n_test": int(ctx.n_test),
        "arm": None if arm is None else arm.label,
        "seeds": final_seeds,
        "paired": None if seq is None else seq.as_dict(),
        "usable": ni,
        "summary": {k: summarise(c.test, confidence) for k, c in sides.items()},
        "per_seed": {k: c.test for k, c in sides.items()},
    }
    block = json_safe(block)
    seeds_seen = sorted({s for c in (arm, base, usable) if c is not None for s in c.seeds})
    number = record_look(
        folder,
        {
            "key": key,
            "time": utc_now(),
            "configurations": [c.label for c in (arm, base, usable) if c is not None],
            "seeds": seeds_seen,
            "test": block,
        },
    )
    block["look"] = {
        "number": number,
        "count": number,
        "reused": False,
        "when": utc_now(),
    }
    return block
