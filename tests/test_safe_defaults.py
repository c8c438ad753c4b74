"""`generate` without --data uses the newest model and its own data;
`ui` binds to loopback unless --allow-remote says otherwise (and says what it exposes)."""

from __future__ import annotations

import json

import pytest

from ratio_search.home import Home


@pytest.mark.unit
@pytest.mark.parametrize(
    "host, loopback",
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("127.0.1.1", True), ("0.0.0.0", False), ("::", False), ("10.1.2.3", False),
     ("headnode", False)],
)  # fmt: skip
def test_loopback_hosts(host, loopback):
    from ratio_search.tracking.ui import is_loopback

    assert is_loopback(host) is loopback


@pytest.mark.edges
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "headnode"])
def test_ui_on_another_host_needs_allow_remote(tmp_path, run_cli, host):
    rc, out, err = run_cli(["ui", "--home", tmp_path, "--host", host])
    assert rc == 2 and "Traceback" not in err
    assert f"--host {host}" in err and "--allow-remote" in err and "delete every run" in err
    assert not (tmp_path / "mlruns").exists()  # refused before anything was started or made


@pytest.mark.unit
def test_allow_remote_says_what_it_exposes():
    from ratio_search.cli.home import remote_exposure

    assert remote_exposure("127.0.0.1", False) is None
    msg = remote_exposure("0.0.0.0", True)
    assert msg.startswith("warning: --host 0.0.0.0") and "no login" in msg


@pytest.mark.unit
def test_ui_defaults_to_loopback():
    from ratio_search.cli import build_parser

    args = build_parser().parse_args(["ui"])
    assert args.host == "127.0.0.1" and args.allow_remote is False


def _as_model_of(home: Home, name: str, data, created: str) -> str:
    """The bundled base model, copied into the home as if fine-tuned on ``data`` at ``created``
    (a real model to sample from, without a fine-tune's tens of seconds on a loaded machine)."""
    import shutil

    from ratio_search.diffusion.tiny import BASE_DIR

    folder = home.models / name
    shutil.copytree(BASE_DIR, folder)
    meta = json.loads((folder / "meta.json").read_text())
    meta.update(data_key=data.key, data_info=data.info, created=created, model_hash=name)
    (folder / "meta.json").write_text(json.dumps(meta, default=str))
    return name


@pytest.mark.e2e
def test_generate_without_data_uses_the_newest_model_and_its_data(
    tmp_path, tiny_image_folder, run_cli, one_thread
):
    """`finetune --data FOLDER` then `generate` with no --data: not "no model for the phantom
    data; run finetune first", but the newest model, on the folder it was made from."""
    from ratio_search.config import DataConfig
    from ratio_search.data import load_dataset

    home = Home(tmp_path / "home")
    dcfg = DataConfig(source="imagefolder", path=str(tiny_image_folder), image_size=32,
                      min_val_per_class=0)  # fmt: skip
    data = load_dataset(dcfg, home)
    other = load_dataset(DataConfig(**{**vars(dcfg), "image_size": 24}), home)
    _as_model_of(home, "older", other, "2026-01-01T00:00:00Z")
    newest = _as_model_of(home, "newest", data, "2026-06-01T00:00:00Z")
    rc, out, err = run_cli(["generate", "--home", home.root, "--n", 2, "--steps", 2])
    assert rc == 0, err
    assert f"newest model {newest} and its data {tiny_image_folder}" in err
    assert "1 pool(s)" in out
    rc, out, err = run_cli(["generate", "--home", home.root, "--n", 2, "--steps", 2, "--json"])
    assert rc == 0, err
    (pool,) = json.loads(out)["pools"]
    assert pool["generated"] is False  # the same pool again: same model, same data
    manifest = json.loads((home.pools / pool["key"] / "manifest.json").read_text())
    assert manifest["model_hash"] == newest
    # data flags still win: the same folder at another size is other data, with no model
    argv = ["generate", "--home", home.root, "--data", tiny_image_folder, "--image-size", 8]
    rc, _, err = run_cli([*argv, "--n", 2])
    assert rc == 2 and "no fine-tuned model for data" in err, err
    # the newest model's data no longer cached: one line saying which data to pass
    import shutil

    shutil.rmtree(home.cache)
    rc, _, err = run_cli(["generate", "--home", home.root, "--n", 2])
    assert rc == 2 and f"pass --data {tiny_image_folder}" in err, err
