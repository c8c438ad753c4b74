"""The search's new levers in a space file: mode, filter_top, finetune_steps, synthetic_classes,
arch; augment's R bound (validated when read); R = 0 canonicalisation; pool sizes."""

from __future__ import annotations

import types

import numpy as np
import pytest

from ratio_search.errors import ConfigError
from ratio_search.search.space import load_space, parse_space

pytestmark = pytest.mark.unit


def _doc(r=None, fixed=None, **params):
    p = {"r": r or {"type": "float", "low": 0.0, "high": 1.0, "step": 0.25}, **params}
    return {"params": p, "fixed": dict(fixed or {})}


LEVERS = {
    "mode": {"type": "categorical", "choices": ["replace", "augment"]},
    "filter_top": {"type": "float", "low": 0.5, "high": 1.0, "step": 0.25},
    "finetune_steps": {"type": "categorical", "choices": [0, 100, 400]},
    "synthetic_classes": {"type": "categorical", "choices": ["default", "all", ["CNV", "DME"]]},
    "arch": {"type": "categorical", "choices": ["simple", "resnet"]},
}


def test_new_params_parse_sampled_and_fixed():
    r = {"type": "float", "low": 0.0, "high": 1.0, "step": 0.25, "augment_high": 0.75}
    s = parse_space(_doc(r, **LEVERS))
    assert s.choices("mode") == ["replace", "augment"]
    assert s.choices("filter_top") == [0.5, 0.75, 1.0]
    assert s.choices("finetune_steps") == [0, 100, 400]
    # a YAML list is one choice, comma-joined
    assert s.choices("synthetic_classes") == ["default", "all", "CNV,DME"]
    assert s.choices("arch") == ["simple", "resnet"]
    # checkpoints pick pools; filter_top and the classes do not (one pool per class each)
    assert len(s.pool_grid()) == 3 and {g["finetune_steps"] for g in s.pool_grid()} == {0, 100, 400}
    fixed = parse_space(
        _doc(fixed={"mode": "augment", "filter_top": 0.8, "finetune_steps": 200,
                    "synthetic_classes": "CNV, NORMAL", "arch": "resnet"},
             r={"type": "float", "low": 0.0, "high": 0.5, "step": 0.25})
    )  # fmt: skip
    cfg = fixed.trial_config({"r": 0.5})
    assert (cfg["mode"], cfg["filter_top"], cfg["finetune_steps"]) == ("augment", 0.8, 200)
    assert (cfg["synthetic_classes"], cfg["arch"]) == ("CNV,NORMAL", "resnet")
    # every trial config names every lever (MLflow children log them all), defaults included
    plain = parse_space(_doc()).trial_config({"r": 0.25})
    assert {k: plain[k] for k in ("filter_top", "finetune_steps", "synthetic_classes", "arch")} == {
        "filter_top": 1.0, "finetune_steps": 0, "synthetic_classes": "default", "arch": "simple"}  # fmt: skip
    assert s.to_dict()["params"]["r"]["augment_high"] == 0.75
    assert parse_space(s.to_dict()).to_dict() == s.to_dict()  # run.json's copy reads back


@pytest.mark.parametrize(
    ("name", "spec", "needle"),
    [
        ("filter_top", {"type": "categorical", "choices": [0.0, 1.0]}, "params.filter_top.choices"),
        ("filter_top", {"type": "float", "low": 0.5, "high": 1.5, "step": 0.5}, "filter_top.high"),
        ("filter_top", {"type": "float", "low": 0.5, "high": 1.0}, "must be discrete"),
        ("filter_top", {"type": "int", "low": 0, "high": 1}, "params.filter_top"),
        ("finetune_steps", {"type": "int", "low": 0, "high": 400}, "use type: categorical"),
        ("finetune_steps", {"type": "categorical", "choices": [0, -100]}, "finetune_steps.choices"),
        ("finetune_steps", {"type": "categorical", "choices": [0, 1.5]}, "finetune_steps.choices"),
        ("synthetic_classes", {"type": "categorical", "choices": ["default", "CNV,,DME"]},
         "empty class name"),
        ("synthetic_classes", {"type": "categorical", "choices": [["all", "CNV"]]}, "stand alone"),
        ("synthetic_classes", {"type": "categorical", "choices": ["CNV,CNV"]}, "twice"),
        ("synthetic_classes", {"type": "categorical", "choices": ["all", "all"]}, "duplicate"),
        ("arch", {"type": "categorical", "choices": ["simple", "vgg"]}, "params.arch.choices"),
        ("mode", {"type": "categorical", "choices": ["swap"]}, "params.mode.choices"),
    ],
)  # fmt: skip
def test_bad_lever_values_name_the_key(name, spec, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        parse_space(_doc(**{name: spec}))


@pytest.mark.parametrize(
    ("fixed", "needle"),
    [
        ({"filter_top": 0.001}, "fixed.filter_top"),
        ({"finetune_steps": -1}, "fixed.finetune_steps"),
        ({"arch": "vgg"}, "fixed.arch"),
        ({"synthetic_classes": ""}, "fixed.synthetic_classes"),
    ],
)
def test_bad_fixed_lever_names_the_key(fixed, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        parse_space(_doc(fixed=fixed))


AUG = {"mode": {"type": "categorical", "choices": ["replace", "augment"]}}


@pytest.mark.parametrize(
    ("r", "ok"),
    [
        ({"type": "float", "low": 0.0, "high": 1.0, "step": 0.25}, False),  # augment could get 1
        ({"type": "float", "low": 0.0, "high": 1.0, "step": 0.25, "augment_high": 0.75}, True),
        ({"type": "float", "low": 0.0, "high": 1.0, "step": 0.25, "augment_high": 1.0}, False),
        ({"type": "float", "low": 0.0, "high": 1.0, "step": 0.25, "augment_high": 0.7}, False),
        ({"type": "float", "low": 0.25, "high": 1.0, "step": 0.25, "augment_high": 0.25}, True),
        ({"type": "float", "low": 0.25, "high": 1.0, "step": 0.25, "augment_high": 0.0}, False),
        ({"type": "float", "low": 0.0, "high": 1.0, "augment_high": 0.9}, True),  # continuous
        ({"type": "float", "low": 0.0, "high": 1.0}, False),
        ({"type": "float", "low": 0.0, "high": 0.95, "step": 0.05}, True),  # below 1 anyway
        ({"type": "float", "low": 0.0, "high": 1.0, "step": 0.25, "augment_high": True}, False),
        ({"type": "float", "low": 0.0, "high": 1.0, "step": 0.25, "augment_high": "x"}, False),
        ({"type": "categorical", "choices": [0.0, 0.5, 1.0], "augment_high": 0.5}, True),
        ({"type": "categorical", "choices": [0.0, 0.5, 1.0], "augment_high": 0.6}, True),
        ({"type": "categorical", "choices": [0.5, 1.0], "augment_high": 0.4}, False),
        ({"type": "categorical", "choices": [0.0, 0.5, 1.0]}, False),
    ],
)
def test_augment_bound_is_validated_when_read(r, ok):
    if ok:
        s = parse_space(_doc(r, **AUG))
        # no augment trial, sampled anywhere, gets R >= 1; replace keeps the whole range
        for v in s.params["r"].values() if s.params["r"].discrete else [0.0, 0.5, 0.99, 1.0]:
            aug = s.trial_config({"r": v, "mode": "augment"})["r"]
            assert aug < 1.0 and aug <= v
            assert s.trial_config({"r": v, "mode": "replace"})["r"] == v
            assert s.sampled_params({"r": v, "mode": "augment"})["r"] == aug
        assert max(s.r_values("augment")) < 1.0
    else:
        with pytest.raises(ConfigError, match=r"params\.r"):
            parse_space(_doc(r, **AUG))


def test_augment_bound_edges_and_fixed_r():
    s = parse_space(
        _doc({"type": "float", "low": 0.0, "high": 1.0, "step": 0.25, "augment_high": 0.5}, **AUG)
    )
    assert s.r_values("augment") == [0.0, 0.25, 0.5]
    assert s.r_values("replace") == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [s.params["r"].cap(v) for v in (0.25, 0.5, 0.75, 1.0)] == [0.25, 0.5, 0.5, 0.5]
    cat = parse_space(
        _doc({"type": "categorical", "choices": [0.0, 0.5, 1.0], "augment_high": 0.75}, **AUG)
    )
    assert cat.params["r"].cap(1.0) == 0.5  # the largest choice within the bound
    # a fixed augment with R = 1 cannot be bounded: refused, naming fixed.r
    with pytest.raises(ConfigError, match=r"fixed\.r"):
        parse_space({"params": AUG, "fixed": {"r": 1.0}})
    # augment_high is r's alone
    with pytest.raises(ConfigError, match=r"params\.guidance: unknown key 'augment_high'"):
        parse_space(_doc(guidance={"type": "float", "low": 1, "high": 2, "step": 1,
                                   "augment_high": 0.5}))  # fmt: skip
    # replace-only spaces need no bound
    assert parse_space(_doc()).r_values("replace")[-1] == 1.0


def test_r0_canonicalises_pool_and_draw_params():
    r = {"type": "float", "low": 0.0, "high": 1.0, "step": 0.25, "augment_high": 0.75}
    s = parse_space(_doc(r, **LEVERS))
    a = s.trial_config({"r": 0.0, "mode": "augment", "filter_top": 0.5, "finetune_steps": 400,
                        "synthetic_classes": "all", "arch": "resnet"})  # fmt: skip
    b = s.trial_config({"r": 0.0, "mode": "replace", "filter_top": 0.75, "finetune_steps": 100,
                        "synthetic_classes": "CNV,DME", "arch": "resnet"})  # fmt: skip
    assert a == b
    # the canonical draw is "no filter, the default class" (the defaults, when allowed)
    assert (a["filter_top"], a["synthetic_classes"], a["mode"]) == (1.0, "default", "replace")
    # arch changes the classifier, so R = 0 keeps it
    c = s.trial_config({"r": 0.0, "arch": "simple"})
    assert c["arch"] == "simple" and c != a
    # at R > 0 every lever counts
    d = s.trial_config({"r": 0.25, "filter_top": 0.5, "synthetic_classes": "all"})
    e = s.trial_config({"r": 0.25, "filter_top": 0.75, "synthetic_classes": "all"})
    assert d != e and d["filter_top"] == 0.5


def test_baselines_and_grid_with_levers():
    r = {"type": "categorical", "choices": [0.0, 0.5, 1.0], "augment_high": 0.5}
    s = parse_space(_doc(r, **LEVERS))
    pts = s.baselines()
    assert [p["r"] for p in pts] == [0.0, 0.5]
    # baselines take the lever's config default where allowed
    assert {(p["mode"], p["filter_top"], p["synthetic_classes"], p["arch"]) for p in pts} == {
        ("replace", 1.0, "default", "simple")}  # fmt: skip
    g = parse_space({**_doc(r, **LEVERS), "search": {"sampler": "grid"}})
    assert g.grid()["mode"] == ["replace", "augment"] and g.grid_size() == 3 * 2 * 3 * 3 * 3 * 2
    # every grid point runs: augment's R = 1 point runs at the bound
    assert g.trial_config({"r": 1.0, "mode": "augment"})["r"] == 0.5


def _data(counts, syn=0, names=("CNV", "DME", "DRUSEN", "NORMAL")):
    y = np.concatenate([np.full(n, k) for k, n in enumerate(counts)])
    return types.SimpleNamespace(train_y=y, synthetic_label=syn, class_names=list(names))


def test_pool_size_over_modes_r_filter_and_classes():
    from ratio_search.search import setup
    from ratio_search.train.mixing import pool_needed

    data = _data([10, 30, 20, 5])
    r = {"type": "categorical", "choices": [0.0, 0.5, 1.0], "augment_high": 0.5}
    base = _doc(r, fixed={"mode": "replace"})
    assert setup.pool_size(parse_space(base), data) == 10  # R = 1 of the default class
    both = _doc(r, mode=AUG["mode"])
    assert setup.pool_size(parse_space(both), data) == 10  # augment capped at 0.5: 10 as well
    ft = _doc(r, fixed={"mode": "replace", "filter_top": 0.5})
    # the top half must still hold 10
    assert setup.pool_size(parse_space(ft), data) == pool_needed(10, 1.0, "replace", 0.5) > 10
    cls = _doc(r, fixed={"mode": "replace"},
               synthetic_classes={"type": "categorical", "choices": ["default", "DRUSEN,NORMAL"]})  # fmt: skip
    assert setup.pool_size(parse_space(cls), data) == 20  # the largest listed class
    every = _doc(r, mode=AUG["mode"], filter_top={"type": "categorical", "choices": [1.0, 0.8]},
                 synthetic_classes={"type": "categorical", "choices": ["all"]})  # fmt: skip
    assert setup.pool_size(parse_space(every), data) == pool_needed(30, 1.0, "replace", 0.8) > 30
    with pytest.raises(ConfigError, match="synthetic_classes.*XYZ|XYZ"):
        setup.check_classes(parse_space(_doc(fixed={"synthetic_classes": "XYZ"})), data)


def test_bundled_spaces_search_the_levers():
    d = load_space("default")
    assert {"r", "mode", "guidance", "steps", "filter_top", "finetune_steps",
            "synthetic_classes"} <= set(d.params)  # fmt: skip
    assert max(d.r_values("augment")) < 1.0
    q = load_space("quick")
    assert "mode" in q.params and len(q.pool_grid()) <= 4


def test_models_for_checkpoints(monkeypatch, tmp_path):
    """The search's generators per finetune_steps: an explicit model's saved checkpoints, or one
    fine-tune saving them (A's diffusion API, faked here: no training)."""
    import ratio_search.diffusion as diffusion
    from ratio_search.errors import ModelError
    from ratio_search.home import Home
    from ratio_search.search.generators import models_for, run_models
    from ratio_search.search.runinfo import RunInfo

    home = Home(tmp_path)
    folders = {s: tmp_path / f"m{s}" for s in (0, 100, 400)}
    metas = {str(p): {"data_key": "k", "image_size": 8, "channels": 1, "model_hash": f"h{s}"}
             for s, p in folders.items()}  # fmt: skip
    monkeypatch.setattr(diffusion, "load_model", lambda m, h: types.SimpleNamespace(path=m))
    monkeypatch.setattr(diffusion, "read_meta", lambda p: dict(metas[str(p)]))
    monkeypatch.setattr(
        diffusion, "checkpoints_of", lambda p, h: {0: folders[0], 100: folders[100]}
    )
    data = types.SimpleNamespace(key="k", image_size=8, channels=1)
    got = models_for(str(folders[0]), data, home, None, [0, 100], False, None)
    assert {s: m["model_hash"] for s, (_, m) in got.items()} == {0: "h0", 100: "h100"}
    with pytest.raises(
        ModelError, match=r"no checkpoint at finetune_steps \[400\].*it has: 0, 100"
    ):
        models_for(str(folders[0]), data, home, None, [100, 400], False, None)

    # "latest" lacking step 400: one fine-tune with every asked step (cached ones reused there)
    asked = []

    def finetune_checkpoints(data, cfg, home, steps, **kw):
        asked.append(sorted(steps))
        return {s: types.SimpleNamespace(path=folders[s], cached=True) for s in (0, *steps)}

    monkeypatch.setattr(diffusion, "list_models", lambda h, k: [folders[0]])
    monkeypatch.setattr(diffusion, "finetune_checkpoints", finetune_checkpoints)
    got = models_for("latest", data, home, None, [100, 400], False, None)
    assert asked == [[100, 400]] and sorted(got) == [0, 100, 400]
    # run.json keeps them by step; an older run.json (one model) reads as step 0
    info = RunInfo(models={str(s): [p, m] for s, (p, m) in got.items()})
    assert run_models(info)[400] == (str(folders[400]), metas[str(folders[400])])
    assert run_models(RunInfo(model_path="/m", model_meta={"a": 1})) == {0: ("/m", {"a": 1})}


def test_confirmation_grid_keeps_augment_within_its_bound():
    from ratio_search.evidence.confirm import _augment_allows

    r = {"type": "float", "low": 0.0, "high": 1.0, "step": 0.25, "augment_high": 0.5}
    ctx = types.SimpleNamespace(space=parse_space(_doc(r, **AUG)))
    assert [v for v in (0.25, 0.5, 0.75, 1.0) if _augment_allows(ctx, v)] == [0.25, 0.5]
    # a space without a bound (augment fixed below 1): only R < 1
    free = types.SimpleNamespace(space=parse_space(_doc({"type": "float", "low": 0.0,
                                                         "high": 0.9, "step": 0.1}, **AUG)))  # fmt: skip
    assert _augment_allows(free, 0.9) and not _augment_allows(free, 1.0)
