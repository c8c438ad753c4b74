"""Config: defaults, YAML, overrides, validation errors that name the key."""

from __future__ import annotations

import pytest

from ratio_search.config import Config, config_from_dict, config_to_dict, load_config, save_config
from ratio_search.errors import ConfigError, RatioSearchError

pytestmark = pytest.mark.unit


def test_defaults_are_the_studys():
    cfg = Config()
    assert cfg.train.lr == 1e-3
    assert cfg.train.batch_size == 128
    assert cfg.train.mode == "replace"
    assert cfg.data.source == "phantom"


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  r: 0.25\n  epochs: 3\ndata:\n  image_size: 16\n")
    cfg = load_config(p, {"train.r": 0.5})
    assert cfg.train.r == 0.5  # the command line wins over the file
    assert cfg.train.epochs == 3
    assert cfg.data.image_size == 16


@pytest.mark.parametrize(
    "doc, needle",
    [
        ("train:\n  rr: 0.5\n", "train.rr"),
        ("trian:\n  r: 0.5\n", "trian"),
        ("train:\n  r: 1.5\n", "train.r"),
        ("train:\n  mode: swap\n", "replace, augment"),
        ("train:\n  epochs: two\n", "train.epochs"),
        ("train:\n  epochs: 2.5\n", "train.epochs"),
        ("data:\n  channels: 2\n", "data.channels"),
        ("- just\n- a list\n", "mapping"),
        ("train: [1, 2]\n", "mapping"),
        ("train:\n  r: [0.5\n", "invalid YAML"),
    ],
)
def test_bad_yaml_names_the_key(tmp_path, doc, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(doc)
    with pytest.raises(ConfigError, match=None) as e:
        load_config(p)
    assert needle in str(e.value)
    assert isinstance(e.value, RatioSearchError)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_round_trip(tmp_path):
    cfg = load_config(overrides={"train.r": 0.3, "data.classes": ["CNV", "NORMAL"]})
    path = save_config(cfg, tmp_path / "out" / "config.yaml")
    again = load_config(path)
    assert config_to_dict(again) == config_to_dict(cfg)
    assert config_from_dict(config_to_dict(cfg)).train.r == 0.3


def test_bool_and_optional_values():
    cfg = load_config(overrides={"data.skip_bad_images": "true", "data.max_per_class": None})
    assert cfg.data.skip_bad_images is True
    assert cfg.data.max_per_class is None
    with pytest.raises(ConfigError, match="data.max_per_class"):
        load_config(overrides={"data.max_per_class": 0})


def test_trial_config_round_trip_and_unknown_key():
    from ratio_search.config import TrialConfig

    flat = {"r": 0.5, "guidance": 3, "widths": [4, 4], "fc": 8, "pool_size": 100}
    t = TrialConfig.from_flat(flat)
    assert t.train.widths == [4, 4] and t.train.fc == 8 and t.generate.n == 100
    assert t.generate.guidance == 3.0
    assert TrialConfig.from_flat(t.to_flat()) == t
    with pytest.raises(ConfigError, match="unknown key 'zz'"):
        TrialConfig.from_flat({"zz": 1})
    with pytest.raises(ConfigError, match="train.widths"):
        TrialConfig.from_flat({"widths": [4, 0]})
