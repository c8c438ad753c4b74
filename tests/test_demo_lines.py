"""The demo's closing lines: time by stage, what the generator has seen, where to look."""

from __future__ import annotations

import pytest

from ratio_search.demo import STAGES, where_to_look

pytestmark = pytest.mark.unit


def test_closing_lines_give_the_stages_and_the_generator(tmp_path):
    timings = {s: float(i + 1) for i, s in enumerate(STAGES)}
    out = {
        "home": str(tmp_path),
        "name": "demo-x",
        "timings": {**timings, "total": 123.0},
        "summary": "no confirmation",
        "best_yaml": str(tmp_path / "runs/demo-x/best.yaml"),
        "report": str(tmp_path / "runs/demo-x/report/report.html"),
        "generator": "the base fine-tuned 7 steps",
    }
    text = where_to_look(out)
    assert "finished in 2.0 min" in text
    assert (
        "stages: data 1 s, finetune 2 s, generate 3 s, search 4 s, export 5 s, report 6 s" in text
    )
    assert "generator: the base fine-tuned 7 steps" in text
    assert f"ratio-search ui --home {tmp_path}" in text


def test_the_generator_line_is_read_from_the_bundled_base():
    from ratio_search.demo import generator_seen

    line = generator_seen(400, 200)
    # the bundled base: unconditional, 8,000 phantom images per class (its meta.json)
    assert line.startswith("the bundled task-naive base (16,000 unlabelled phantom scans")
    assert "fine-tuned 400 steps on the 200 labelled training images" in line
