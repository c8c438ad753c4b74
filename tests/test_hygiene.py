"""Evidence hygiene: an explicit model fine-tuned on other data is refused,
status counts the looks at the test split, export refuses an empty test split in one line."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from ratio_search.errors import ModelError
from ratio_search.home import Home
from ratio_search.provenance import check_model_data
from ratio_search.search.looks import TEST_LOOKS, look_count, record_look

pytestmark = pytest.mark.edges


def test_check_model_data():
    assert check_model_data({"data_key": "k1"}, "k1", "/m") is None
    with pytest.raises(ModelError, match="fine-tuned on data k0, not on this search's data k1"):
        check_model_data({"data_key": "k0"}, "k1", "/m")
    with pytest.raises(ModelError, match="unrecorded data"):
        check_model_data({}, "k1", "/m")
    note = check_model_data({"data_key": "k0"}, "k1", "/m", allow_other_data=True)
    assert note.startswith("--allow-other-data: model /m was fine-tuned on data k0")


def test_model_for_refuses_an_explicit_model_of_other_data(monkeypatch, tmp_path):
    import ratio_search.diffusion as diffusion
    from ratio_search.search.setup import model_for

    meta = {"data_key": "other", "image_size": 8, "channels": 1}
    monkeypatch.setattr(diffusion, "load_model", lambda m, h: SimpleNamespace(path=tmp_path))
    monkeypatch.setattr(diffusion, "read_meta", lambda p: dict(meta))
    data = SimpleNamespace(key="mine", image_size=8, channels=1)
    home = Home(tmp_path)
    with pytest.raises(ModelError, match="pass --allow-other-data"):
        model_for(str(tmp_path), data, home, None, False, None)
    _, got = model_for(str(tmp_path), data, home, None, False, None, allow_other_data=True)
    assert "--allow-other-data" in got["allow_other_data"]  # recorded with the model's meta
    meta["data_key"] = "mine"
    _, got = model_for(str(tmp_path), data, home, None, False, None)
    assert "allow_other_data" not in got


def test_status_counts_the_looks_at_the_test_split(tmp_path, run_cli):
    home = Home(tmp_path)
    folder = home.runs / "r1"
    folder.mkdir(parents=True)
    info = {"name": "r1", "state": "finished", "metric": "val_accuracy", "mode": "max"}
    (folder / "run.json").write_text(json.dumps(info))
    (folder / "trials.jsonl").write_text("")
    assert look_count(folder) == 0
    assert record_look(folder, {"key": "a", "configurations": ["R=0.50", "R=0"], "seeds": [1]}) == 1
    assert record_look(folder, {"key": "b", "configurations": ["R=1.00", "R=0"], "seeds": [1]}) == 2
    with open(folder / TEST_LOOKS, "a") as f:
        f.write('{"torn')  # a crash mid-write: skipped, not counted
    rc, out, _ = run_cli(["status", "r1", "--home", str(tmp_path), "--json"])
    assert rc == 0 and json.loads(out)["test_looks"] == 2
    rc, out, _ = run_cli(["status", "r1", "--home", str(tmp_path)])
    assert rc == 0 and "test split looked at 2 time(s)" in out


def test_run_passes_allow_other_data_and_max_failures_to_the_search(monkeypatch, tmp_path, run_cli):
    """The flag that the refusal names exists, and reaches run_search (recorded in run.json)."""
    import ratio_search.search as search

    seen = {}

    def fake_run_search(home, **kwargs):
        seen.update(kwargs)
        raise search_error("stop here")

    from ratio_search.errors import SearchError as search_error

    monkeypatch.setattr(search, "run_search", fake_run_search)
    rc, _, err = run_cli(
        ["run", "--home", tmp_path, "--allow-other-data", "--max-failures", "2", "--model", "x"]
    )
    assert rc == 2 and "stop here" in err
    assert seen["allow_other_data"] is True and seen["max_failures"] == 2
    from ratio_search.search.options import SearchOptions

    opts = SearchOptions.from_kwargs({"allow_other_data": True})
    assert opts.allow_other_data is True
