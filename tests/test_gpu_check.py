"""The CPU-side pieces of benchmarks/gpu_check.py (the GPU run itself needs a GPU machine)."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks/gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_search_options_put_four_quarter_gpu_trials_on_one_device(gc):
    gpu, cpu = gc.search_kwargs("cuda"), gc.search_kwargs("cpu")
    assert (gpu["gpus"], gpu["gpus_per_trial"], gpu["concurrency"]) == (1, 0.25, 4)
    assert (cpu["gpus"], cpu["gpus_per_trial"]) == (0, 0.0)
    assert gpu["n_trials"] == len(gpu["space"]["params"]["seed"]["choices"]) == 4


def test_overlap_counts_trials_running_at_once(gc):
    assert gc.max_overlap([(0, 4), (1, 5), (2, 3), (6, 7)]) == 3
    assert gc.max_overlap([(0, 1), (2, 3)]) == 1


def test_a_failing_check_is_a_row_and_the_table_marks_it(gc, monkeypatch):
    def boom(home, device):
        raise RuntimeError("no device")

    monkeypatch.setattr(gc, "check_search", boom)
    rows = gc.run("cpu", skip=("seeds", "sd"))
    assert rows == [{"check": "search", "ok": False, "figure": "RuntimeError: no device"}]
    text = gc.table(rows + [{"check": "seeds", "ok": None, "figure": "pending"}])
    assert "| search | FAILED |" in text and "| seeds | pending |" in text


def test_seeds_check_runs_on_the_cpu(gc, tiny_home, one_thread):
    row = gc.check_seeds(tiny_home, "cpu", k=2, epochs=1)
    assert row["ok"] in (True, None)  # None: the vectorised-seeds function is not there yet
    if row["ok"]:
        assert "largest val-accuracy difference 0.0000" in row["figure"]


def test_without_cuda_the_script_says_so(gc):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    assert gc.main(["--device", "cuda"]) == 2
    out = subprocess.run(["bash", "-n", str(ROOT / "benchmarks/gpu_check.sh")], check=False)
    assert out.returncode == 0
