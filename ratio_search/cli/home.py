"""``ratio-search clean | ui | demo``: the home's stores, its MLflow UI, the whole pipeline."""

from __future__ import annotations

import argparse
import sys

from ..errors import RatioSearchError
from ._flags import emit, home_flag, json_flag, print_table, table


def add_clean(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("clean", help="remove run folders, pools, models or the data cache")
    home_flag(p)
    p.add_argument(
        "what",
        nargs="*",
        default=[],
        metavar="STORE",
        help="stores to clean: runs, pools, models, cache, data (none: show sizes)",
    )
    p.add_argument(
        "--name",
        nargs="+",
        help="only these: exact run names; pool keys, model hashes or cache keys (a unique prefix will do)",
    )
    p.add_argument(
        "--stale",
        action="store_true",
        help="only the .tmp-* folders of killed builders (pools, models incl. their fine-tune "
        "checkpoints, cache) whose builder is gone",
    )
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    json_flag(p)
    p.set_defaults(handler=cmd_clean)


def add_ui(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="start the MLflow UI on this home's tracking store")
    p.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to bind (default: 127.0.0.1, this machine only; another one needs "
        "--allow-remote)",
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a --host other machines can reach: anyone who reaches it can read, change "
        "and delete every run (the UI has no login; see docs/cluster.md for an authenticated server)",
    )
    p.add_argument(
        "--server",
        action="store_true",
        help="start `mlflow server` (artifact proxy, many writers) for a team; "
        "searches then pass --tracking-uri http://HOST:PORT",
    )
    home_flag(p)
    p.set_defaults(handler=cmd_ui)


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="the whole pipeline on the embedded phantom data (what `make demo` runs)"
    )
    home_flag(p)
    p.add_argument("--name", help="search name (default: demo-<timestamp>)")
    p.add_argument("--trials", type=int, help="trials (default: the quick space's n_trials)")
    p.add_argument(
        "--finetune-steps", type=int,
        help="fine-tune steps of the demo's generator (default: the demo's budget, demo.py)",
    )  # fmt: skip
    p.add_argument("--concurrency", type=int, default=2, help="trials at a time (default 2)")
    p.add_argument(
        "--confirm-seeds", type=int, default=3, help="seeds per confirmed configuration (default 3)"
    )
    p.add_argument(
        "--top-k", type=int, default=1, help="configurations confirmed besides R=0 (default 1)"
    )
    json_flag(p)
    p.set_defaults(handler=cmd_demo)


def cmd_clean(args: argparse.Namespace) -> None:
    from ..clean import find_targets, human_size, remove, store_sizes
    from ..home import Home

    home = Home.resolve(args.home)
    if not args.what and not args.stale:  # no store named: show what there is and how big
        sizes = store_sizes(home)
        if args.json:
            emit(args, {"home": str(home.root), "sizes": sizes}, "")
            return
        t = table("store", "size", "path")
        t.show_header = False
        t.columns[1].justify = "right"
        for k, v in sizes.items():
            t.add_row(k, human_size(v), str(getattr(home, k)))
        print_table(t)
        return
    targets = find_targets(home, args.what, args.name, stale=args.stale)
    if not targets:
        emit(args, {"removed": [], "freed": 0}, "nothing to remove")
        return
    total = sum(t.size for t in targets)
    if not args.yes:
        t = table("store", "name", "size")
        t.show_header = False
        t.columns[2].justify = "right"
        for target in targets:
            t.add_row(target.kind, target.name, human_size(target.size))
        print_table(t)
        if not sys.stdin.isatty():
            raise RatioSearchError("clean needs confirmation: run it in a terminal or pass --yes")
        answer = input(f"Remove {len(targets)} entries ({human_size(total)})? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing removed")
            return
    freed = remove(targets)
    emit(
        args,
        {"removed": [str(t.path) for t in targets], "freed": freed},
        f"removed {len(targets)} entries, freed {human_size(freed)}",
    )


def cmd_ui(args: argparse.Namespace) -> None:
    from ..home import Home
    from ..tracking import serve_ui
    from ..tracking.links import newest_search, runs_page

    exposure = remote_exposure(args.host, args.allow_remote)
    home = Home.resolve(args.home)
    uri = home.tracking_uri()
    if not uri.startswith("sqlite:"):
        raise RatioSearchError(
            f"MLFLOW_TRACKING_URI is {uri}: open that server's own UI, or unset it to use {home.mlruns}"
        )
    home.mlruns.mkdir(parents=True, exist_ok=True)

    if exposure:
        print(exposure, file=sys.stderr, flush=True)

    def ready(url: str) -> None:
        if args.host in ("0.0.0.0", "::"):  # reachable from other machines by this one's name
            import socket

            url = f"http://{socket.getfqdn()}:{args.port}"
        if args.server:
            print(f"MLflow tracking server at {url} (store {uri})", flush=True)
            print(f"searches log to it with: ratio-search run --tracking-uri {url} ...", flush=True)
        else:
            print(f"MLflow UI at {url} (store {uri}); Ctrl-C stops it", flush=True)
        newest = newest_search(home.runs, uri)  # the runs table, not MLflow's GenAI overview
        if newest:
            page = runs_page(url, newest["experiment_id"])
            print(f"newest search {newest['name']}: {page}", flush=True)

    serve_ui(
        uri,
        host=args.host,
        port=args.port,
        server=args.server,
        log_path=home.mlruns / "ui.log",
        on_ready=ready,
    )


def remote_exposure(host: str, allow_remote: bool) -> str | None:
    """None for a loopback ``host``; else what binding it exposes (RatioSearchError without
    ``allow_remote``: the MLflow UI has no login, anyone who reaches it may delete runs)."""
    from ..tracking.ui import is_loopback

    if is_loopback(host):
        return None
    what = (
        f"--host {host} makes the MLflow UI reachable from other machines: anyone who reaches "
        "it can read, change and delete every run and artifact (it has no login)"
    )
    if not allow_remote:
        raise RatioSearchError(
            f"{what}; pass --allow-remote to do it anyway, or put an authenticated server in "
            "front (docs/cluster.md)"
        )
    return f"warning: {what}"


def cmd_demo(args: argparse.Namespace) -> None:
    from ..demo import run_demo, where_to_look
    from ..home import Home

    out = run_demo(
        Home.resolve(args.home),
        name=args.name,
        trials=args.trials,
        finetune_steps=args.finetune_steps,
        concurrency=args.concurrency,
        confirm_seeds=args.confirm_seeds,
        top_k=args.top_k,
        progress=not args.json,
    )
    emit(args, out, where_to_look(out))
