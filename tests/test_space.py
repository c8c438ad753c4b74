"""Search-space YAML: parsing, validation errors that name the key, pool grid, baselines."""

from __future__ import annotations

import optuna
import pytest
import yaml

from ratio_search.errors import ConfigError
from ratio_search.search.space import bundled_spaces, load_space, parse_space


def _space(**over):
    doc = {
        "params": {
            "r": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.05},
            "guidance": {"type": "float", "low": 1.0, "high": 12.5, "step": 0.5},
            "steps": {"type": "categorical", "choices": [10, 25, 50]},
            "postprocess": {"type": "categorical", "choices": ["none", "histogram-match"]},
        },
        "fixed": {
            "mode": "replace",
            "epochs": 30,
            "batch_size": 64,
            "scheduler": "ddim",
            "seed": 0,
        },
        "search": {
            "n_startup_trials": 4,
            "metric": "val_accuracy",
            "mode": "max",
            "baselines": True,
        },
    }
    for k, v in over.items():
        doc[k] = v
    return doc


@pytest.mark.unit
def test_bundled_spaces_load():
    assert {"default.yaml", "reference_grid.yaml", "quick.yaml"} <= set(bundled_spaces())
    for name in ("default", "reference_grid.yaml", "quick"):
        s = load_space(name)
        assert s.metric == "val_accuracy" and s.mode == "max"
        assert s.pool_grid(), name
    d = load_space("default")
    assert 12.5 in d.choices("guidance")
    assert d.choices("steps") == [10, 25]
    assert d.params["r"].values()[:3] == [0.0, 0.05, 0.1] and len(d.params["r"].values()) == 21


@pytest.mark.unit
def test_reference_grid_is_the_study_sweep():
    s = load_space("reference_grid")
    assert s.search["sampler"] == "grid"
    assert s.grid() == {"r": [round(0.1 * i, 1) for i in range(11)]}
    assert s.default_trials() == s.grid_size() == 11
    assert s.pool_grid() == [
        {"guidance": 12.5, "steps": 50, "scheduler": "ddim", "postprocess": "none",
         "finetune_steps": 0}
    ]  # fmt: skip
    assert s.baselines() == []


@pytest.mark.unit
def test_distributions_and_pool_grid():
    s = parse_space(_space())
    dist = s.distributions()
    assert dist["r"] == optuna.distributions.FloatDistribution(0.0, 1.0, step=0.05)
    assert dist["steps"] == optuna.distributions.CategoricalDistribution([10, 25, 50])
    grid = s.pool_grid()
    # 24 guidance values x 3 steps x 1 scheduler x 2 postprocess
    assert len(grid) == 24 * 3 * 2
    assert {
        "guidance": 12.5,
        "steps": 50,
        "scheduler": "ddim",
        "postprocess": "histogram-match",
        "finetune_steps": 0,
    } in grid
    assert all(g["scheduler"] == "ddim" for g in grid)


@pytest.mark.unit
def test_no_pools_when_r_is_zero():
    doc = _space()
    doc["params"]["r"] = {"type": "categorical", "choices": [0.0]}
    assert parse_space(doc).pool_grid() == []


@pytest.mark.unit
def test_baselines_r0_and_study_point():
    s = parse_space(_space())
    b = s.baselines()
    assert [p["r"] for p in b] == [0.0, 0.5]
    assert all(p["guidance"] == 12.5 for p in b)
    assert all(p["steps"] == 50 for p in b)
    assert all(set(p) == set(s.params) for p in b)
    # guidance capped at 10: the nearest allowed value
    doc = _space()
    doc["params"]["guidance"] = {"type": "float", "low": 1.0, "high": 10.0, "step": 1.5}
    assert [p["guidance"] for p in parse_space(doc).baselines()] == [10.0, 10.0]
    doc["search"]["baselines"] = False
    assert parse_space(doc).baselines() == []


@pytest.mark.unit
def test_trial_config_snaps_float_noise():
    s = parse_space(_space())
    cfg = s.trial_config(
        {"r": 0.30000000000000004, "guidance": 7.499999, "steps": 25, "postprocess": "none"}
    )
    assert cfg["r"] == 0.3 and cfg["guidance"] == 7.5
    assert cfg["epochs"] == 30 and cfg["mode"] == "replace" and cfg["scheduler"] == "ddim"
    assert cfg["lr"] == 0.001  # config default


@pytest.mark.unit
def test_file_and_name_resolution(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(_space()))
    assert load_space(p).path == str(p)
    with pytest.raises(ConfigError, match="search space not found: nope"):
        load_space("nope")


@pytest.mark.edges
@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.update(extra=1), "unknown key 'extra'"),
        (
            lambda d: d["params"].update(temperature={"type": "float", "low": 0, "high": 1}),
            "params.temperature: unknown parameter",
        ),
        (
            lambda d: d["params"]["r"].update(low=0.6, high=0.4),
            r"params.r: empty range \(low 0.6 >= high 0.4\)",
        ),
        (lambda d: d["params"]["r"].update(high=1.5, step=0.5), r"params.r.high: 1.5 is outside"),
        (lambda d: d["params"]["r"].update(low=-0.1, step=0.1), r"params.r.low: -0.1 is outside"),
        (
            lambda d: d["params"]["steps"].update(choices=[]),
            "params.steps.choices: must be a non-empty list",
        ),
        (
            lambda d: d["params"]["guidance"].pop("step"),
            "params.guidance: guidance must be discrete",
        ),
        (
            lambda d: d["params"].update(steps={"type": "float", "low": 1, "high": 5}),
            "params.steps.type",
        ),
        (lambda d: d["search"].update(metric="val_auc"), "search.metric: unknown metric 'val_auc'"),
        (lambda d: d["search"].update(sampler="cmaes"), "search.sampler"),
        (lambda d: d["fixed"].update(scheduler="euler"), "fixed.scheduler: 'euler' is not one of"),
        (lambda d: d["fixed"].update(color=1), "fixed.color: unknown parameter"),
        (lambda d: d["params"]["r"].update(step=0.3), "params.r.step: high - low"),
        (
            lambda d: d["params"]["postprocess"].update(choices=["none", "blur"]),
            "params.postprocess.choices: 'blur'",
        ),
        (lambda d: d.update(data={"image_size": 2}), "data.image_size"),
        (lambda d: d["fixed"].update(steps=10), "fixed.steps: steps is also in params"),
    ],
)
def test_validation_names_the_key(mutate, match):
    doc = _space()
    mutate(doc)
    with pytest.raises(ConfigError, match=match):
        parse_space(doc, origin="s.yaml")


@pytest.mark.unit
def test_grid_sampler_needs_discrete_params():
    doc = _space()
    doc["params"]["r"] = {"type": "float", "low": 0.0, "high": 1.0}
    doc["search"]["sampler"] = "grid"
    with pytest.raises(ConfigError, match="params.r: the grid sampler needs"):
        parse_space(doc)


@pytest.mark.unit
def test_data_block_and_tiny_fixed_knobs():
    doc = _space(data={"image_size": 16, "phantom_n_per_class": 8})
    doc["fixed"].update(widths=[2, 4], fc=8, pool_size=16)
    s = parse_space(doc)
    assert s.data_config().image_size == 16
    assert s.data_config().phantom_n_per_class == 8
    assert s.trial_config({"r": 0.5})["widths"] == [2, 4]
