"""benchmarks/payoff.py's own pieces: packing, pairing, the val shortcut and the table."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.unit

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "payoff.py"


@pytest.fixture(scope="module")
def payoff():
    spec = importlib.util.spec_from_file_location("payoff_bench", _PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["payoff_bench"] = mod  # dataclasses look their module up by name
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop("payoff_bench", None)


def test_pack_round_trips(payoff):
    rng = np.random.default_rng(0)
    correct = rng.random((3, 37)) < 0.5
    back = payoff.unpack(payoff.pack(correct), 37)
    assert back.shape == (3, 37)
    assert np.array_equal(back.astype(bool), correct)


def test_arms_are_unique_and_pair_with_their_own_r0(payoff):
    plan = payoff.arms_for(50, "naive", 200) + payoff.arms_for(50, "labelled", 200)
    synthetic = [a for a in plan if a.r > 0]
    ids = [a.id for a in synthetic]
    assert len(ids) == len(set(ids))
    resnet = next(a for a in plan if a.arch == "resnet" and a.r > 0)
    assert payoff.reference_of(resnet).id == "n50/any/arch=resnet,r=0.0"
    labelled = next(a for a in plan if a.base == "labelled" and a.r > 0)
    # the contrast repeats every lever but the second classifier
    levers = {b: {a.lever for a in plan if a.base == b and a.r > 0} for b in ("naive", "labelled")}
    assert levers["naive"] - levers["labelled"] == {"arch"}
    # R = 0 never samples: both bases share it
    assert payoff.reference_of(labelled).id == payoff.arms_for(50, "naive", 200)[0].id


def _micro_dataset():
    """Eight 8 px training and six val images per class (no phantom rendering: fast)."""
    from ratio_search.data import Dataset

    rng = np.random.default_rng(0)

    def split(n):
        y = np.repeat([0, 1], n)
        x = rng.integers(0, 120, size=(2 * n, 1, 8, 8)).astype(np.uint8)
        x[y == 1] += 100  # a learnable difference
        return x, y.astype(np.int64)

    (tx, ty), (vx, vy) = split(8), split(6)
    return Dataset(tx, ty, vx, vy, vx[:0], vy[:0], ["CNV", "NORMAL"], 0, "micro")


def test_epoch_val_shortcut_scores_like_the_trainer(payoff, one_thread):
    """Training on the shortened val and scoring the models on all of val gives the trainer's
    own full-val accuracy (val never steers training)."""
    from ratio_search.config import TrainConfig
    from ratio_search.train.trial import train_seeds

    data = _micro_dataset()
    cfg = TrainConfig(epochs=2, batch_size=8, widths=[4], fc=8, threads=1)
    short = payoff.epoch_val(data, per_class=1)
    assert len(short.val_y) == 2 and set(short.val_y.tolist()) == {0, 1}
    rec = payoff.train_arm(cfg, data, None, [0, 1])
    full = train_seeds(cfg, data, None, [0, 1])
    assert rec["n_val"] == 12
    assert rec["accuracy"] == pytest.approx([p["metrics"]["accuracy"] for p in full["per_seed"]])


def test_render_states_regime_interval_and_missing_arms(payoff):
    plan = payoff.arms_for(50, "naive", 200, resnet=False)
    r0, arm = plan[0], plan[1]
    rng = np.random.default_rng(1)
    a, b = rng.random((4, 20)) < 0.8, rng.random((4, 20)) < 0.7

    def rec(c):
        return {"seeds": [0, 1, 2, 3], "accuracy": c.mean(axis=1).tolist(),
                "correct": payoff.pack(c), "n_val": 20, "n_synthetic": 12}  # fmt: skip

    doc = {
        "meta": {"naive_regime": "NAIVE-REGIME", "labelled_regime": "L", "sizes": [50],
                 "n_val": 20, "budget": payoff.BUDGET, "epochs": {"50": 32}, "n_seeds": 4, "seeds": [0, 1, 2, 3],
                 "finetune": "F", "sampler": "S"},
        "arms": {r0.id: rec(b), arm.id: rec(a)},
    }  # fmt: skip
    md = payoff.render(doc, plan)
    assert "NAIVE-REGIME" in md and "seeds *and* validation images resampled" in md
    assert f"| 50 | naive | mixing | {arm.label} |" in md
    assert "Not measured" in md and plan[2].label in md
    assert md.rstrip().splitlines()[-1].startswith(("What to take", "No synthetic"))


def _doc(payoff, plan, **meta):
    """A two-arm document (R = 0 and the plan's first synthetic arm measured) for ``plan``."""
    rng = np.random.default_rng(1)
    a, b = rng.random((4, 20)) < 0.8, rng.random((4, 20)) < 0.7

    def rec(c):
        return {"seeds": [0, 1, 2, 3], "accuracy": c.mean(axis=1).tolist(),
                "correct": payoff.pack(c), "n_val": 20, "n_synthetic": 12}  # fmt: skip

    base = {"naive_regime": "N", "labelled_regime": "L", "sizes": [50], "n_val": 20,
            "budget": payoff.BUDGET, "epochs": {"50": 32}, "n_seeds": 4, "seeds": [0, 1, 2, 3],
            "finetune": "with F", "sampler": "S"}  # fmt: skip
    return {"meta": {**base, **meta}, "arms": {plan[0].id: rec(b), plan[1].id: rec(a)}}


def test_render_writes_the_recorded_notes_and_why_arms_are_missing(payoff):
    plan = payoff.arms_for(50, "naive", 200, resnet=False)
    guidance = [a for a in plan if a.lever == "guidance"]
    doc = _doc(payoff, plan, finetune_note="FT-NOTE", notes=["NOTE-ONE", "NOTE-TWO"],
               unmeasured=[{"match": "guidance=", "why": "Not re-run (WHY)"}])  # fmt: skip
    lines = payoff.render(doc, plan).splitlines()
    gen = next(x for x in lines if x.startswith("- **Generator**"))
    assert gen.startswith("- **Generator**: fine-tuned (FT-NOTE) with F on the labelled")
    table = lines.index(next(x for x in lines if x.startswith("| real/class")))
    assert lines.index("- NOTE-ONE") < lines.index("- NOTE-TWO") < table
    assert lines[lines.index("- NOTE-TWO") + 1] == ""
    rerun = next(x for x in lines if x.startswith("Not re-run (WHY): "))
    assert (
        rerun
        == "Not re-run (WHY): " + "; ".join(f"50/class naive: {a.label}" for a in guidance) + "."
    )
    # the other missing arms keep the default reason, listed after the recorded ones
    default = next(x for x in lines if x.startswith(payoff.NOT_MEASURED))
    assert lines.index(rerun) < lines.index(default)
    assert plan[2].label in default and not any(a.label in default for a in guidance)
    # without notes the page is as before: no parentheses, no note lines
    plain = payoff.render(_doc(payoff, plan), plan)
    assert "fine-tuned with F on" in plain and "- NOTE" not in plain
    assert "Not re-run" not in plain and guidance[0].label in plain


def test_options_not_given_come_from_the_json_and_given_ones_are_recorded(payoff):
    def args(*argv):
        return payoff.parser().parse_args(list(argv))

    meta = {"sizes": [100], "resnet_sizes": [100], "notes": ["OLD"], "finetune_note": "FT",
            "unmeasured": [{"match": "n50/", "why": "W"}]}  # fmt: skip
    a = args("--render-only")
    payoff.resolve_options(a, meta)
    assert (a.sizes, a.resnet_sizes, a.labelled_sizes) == ([100], [100], [100])
    assert a.notes == ["OLD"] and a.finetune_note == "FT" and meta["unmeasured"][0]["why"] == "W"
    a = args("--note", "NEW", "--unmeasured", "n100/", "W2", "--resnet-sizes")
    payoff.resolve_options(a, meta)
    assert meta["notes"] == ["NEW"] and meta["unmeasured"] == [{"match": "n100/", "why": "W2"}]
    assert meta["resnet_sizes"] == [] and meta["finetune_note"] == "FT"
    payoff.resolve_options(args("--clear-notes"), meta)
    assert meta["notes"] == [] and meta["unmeasured"] == [] and "finetune_note" not in meta
    fresh: dict = {}  # a new JSON: the defaults
    payoff.resolve_options(args(), fresh)
    assert fresh["sizes"] == [100, 50] and fresh["resnet_sizes"] == [50, 100]


def test_render_only_reproduces_the_committed_payoff_md(payoff, tmp_path):
    """payoff.md as committed is what payoff.py renders from payoff.json alone (no flags)."""
    results = _PATH.parent / "results"
    if not (results / "payoff.json").is_file():
        pytest.skip("no committed payoff.json")
    (tmp_path / "p.json").write_bytes((results / "payoff.json").read_bytes())
    argv = ["--render-only", "--json", str(tmp_path / "p.json"), "--md", str(tmp_path / "p.md")]
    assert payoff.main(argv) == 0
    assert (tmp_path / "p.md").read_text() == (results / "payoff.md").read_text()
