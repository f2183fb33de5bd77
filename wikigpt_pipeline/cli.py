"""`wikigpt`: run the pipeline, refresh what is stale, open the UI, serve and chat.

    wikigpt run       [--profile tiny|124m|350m] [--dump sample|PATH|enwiki/YYYYMMDD]
    wikigpt run       --submit [--select ASSET,...] [--wait]   (through the instance's run queue)
    wikigpt refresh   [--dry-run]
    wikigpt refresh   --submit [--wait]
    wikigpt status
    wikigpt gc        [--dry-run]           (remove versions no materialization refers to)
    wikigpt ui        [--port 3000]         (dagster dev on this repo, persistent DAGSTER_HOME)
    wikigpt serve     [--release PATH] [--host 127.0.0.1] [--port 8000]
    wikigpt chat      [--url http://127.0.0.1:8000]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # serve and chat own their flags; hand them the rest of the line untouched.
    if argv and argv[0] in ("serve", "chat"):
        from wikigpt_core.serve import cli as serve_cli

        return (serve_cli.serve_main if argv[0] == "serve" else serve_cli.chat_main)(argv[1:]) or 0

    parser = argparse.ArgumentParser(prog="wikigpt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in [("run", "materialize every asset, dump to release"),
                        ("refresh", "materialize missing and stale assets until none is stale"),
                        ("status", "each asset's stale status and artifact path"),
                        ("gc", "remove artifact versions that no materialization or `current` refers to"),
                        ("ui", "start the Dagster UI (dagster dev) on this code location")]:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--profile", choices=["tiny", "124m", "350m"], help="sets WIKIGPT_PROFILE")
        p.add_argument("--dump", help="sets WIKIGPT_DUMP: sample, a local .xml.bz2, or enwiki/YYYYMMDD")
        if name in ("run", "refresh"):
            p.add_argument("--verbose", action="store_true",
                           help="print Dagster's full event stream, not one line per asset")
            p.add_argument("--submit", action="store_true",
                           help="put one run on the instance's run queue instead of running here; "
                                "a dagster-daemon launches it within the instance's limits "
                                "(the gpu pool: one GPU stage at a time)")
            p.add_argument("--wait", action="store_true",
                           help="with --submit: follow the run until it ends and print its results")
            p.add_argument("--workspace", metavar="FILE",
                           help="with --submit: the workspace file whose code location the run "
                                "records (default: the repo's workspace.yaml)")
        if name == "run":
            p.add_argument("--select", metavar="ASSET,...",
                           help="with --submit: only these assets (and their checks)")
        if name in ("refresh", "gc"):
            p.add_argument("--dry-run", action="store_true",
                           help="print what would run and why" if name == "refresh" else "only list what would go")
        if name == "ui":
            p.add_argument("--port", type=int, default=3000)
    sub.add_parser("serve", help="serve a release over HTTP (see `wikigpt serve --help`)")
    sub.add_parser("chat", help="terminal chat client (see `wikigpt chat --help`)")
    args = parser.parse_args(argv)
    _check_submit_flags(parser, args)

    if args.profile:
        os.environ["WIKIGPT_PROFILE"] = args.profile
    if args.dump:
        os.environ["WIKIGPT_DUMP"] = args.dump
    return {"run": _run, "refresh": _refresh, "status": _status, "gc": _gc, "ui": _ui}[args.command](args)


def _quiet_run_config(args) -> dict:
    """Unless --verbose: one progress line per asset (wikigpt.progress), no Dagster console log
    (a failure is one line after the run, `_report_failure`) and no library preview notices.
    The UI and the run's log file keep the full log either way."""
    if getattr(args, "verbose", False):
        return {}
    import logging
    import warnings

    import dagster as dg

    for category in (dg.PreviewWarning, dg.BetaWarning):
        warnings.filterwarnings("ignore", category=category)
    from wikigpt_pipeline.progress import PROGRESS as progress, OneLineFormatter

    if not progress.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(OneLineFormatter("%(asctime)s  %(message)s", "%H:%M:%S"))
        progress.addHandler(handler)
        progress.setLevel(logging.INFO)
        progress.propagate = False
    # Dagster's console logger would print each failure's whole traceback (~150 lines).
    return {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def _load():
    from wikigpt_pipeline.instance import get_instance
    from wikigpt_pipeline.definitions import defs

    return get_instance(), defs


def _check_submit_flags(parser: argparse.ArgumentParser, args) -> None:
    if getattr(args, "submit", False):
        if args.profile or args.dump:
            parser.error("--profile/--dump do not travel with --submit: the run executes with the "
                         "settings of the daemon's code location; set WIKIGPT_PROFILE / WIKIGPT_DUMP "
                         "(and WIKIGPT_CONFIG) where the daemon runs, and the same here")
        if getattr(args, "dry_run", False):
            parser.error("--dry-run and --submit exclude each other")
        if args.verbose:
            parser.error("--verbose does not apply to --submit: the daemon's run keeps its whole "
                         "event log, in the UI")
        return
    for flag in ("wait", "workspace", "select"):
        if getattr(args, flag, None):
            parser.error(f"--{flag} needs --submit")


def _submitted(instance, run, keys: list[str], workspace, wait: bool) -> int:
    """What a person sees after --submit: the queued run, and where it goes from there."""
    from wikigpt_pipeline import submit

    shown = ", ".join(keys[:6]) + (f", ... ({len(keys)} assets)" if len(keys) > 6 else "")
    print(f"queued run {run.run_id} ({run.job_name}: {shown}) on DAGSTER_HOME={os.environ['DAGSTER_HOME']}",
          flush=True)
    if not submit.queue_daemon_running(instance):
        print("no dagster-daemon is running for this instance: the run stays QUEUED until one starts "
              f"(`dagster-daemon run -w {workspace}`, or `wikigpt ui`)", flush=True)
    if not wait:
        print("it is in the UI's Runs tab (`wikigpt ui`); GPU stages take the `gpu` pool one at a time",
              flush=True)
        return 0
    t0 = time.time()
    final = submit.wait(instance, run.run_id, on_event=lambda line: print(line, flush=True))
    for key, md in submit.materializations(instance, run.run_id):
        figures = ", ".join(f"{k}={_fmt(md[k])}" for k in _HEADLINE if k in md)
        print(f"  {key:<20} {figures}")
        if "path" in md:
            print(f"  {'':<20} {md['path']}")
    ok = final.status.value == "SUCCESS"
    print(f"run {run.run_id} {final.status.value} after {time.time() - t0:.0f}s of waiting")
    return 0 if ok else 1


def _submit(args, refresh: bool) -> int:
    from wikigpt_pipeline import submit
    from wikigpt_pipeline.instance import get_instance

    instance = get_instance()
    workspace = args.workspace or submit.WORKSPACE
    try:
        if refresh:
            run, keys = submit.submit_refresh(instance, workspace)
        else:
            select = [a.strip() for a in (args.select or "").split(",") if a.strip()] or None
            run, keys = submit.submit_run(instance, workspace, select)
    except submit.SubmitError as e:
        print(f"wikigpt: not submitted: {e}", file=sys.stderr)
        return 2
    if run is None:
        print("nothing is stale")
        return 0
    return _submitted(instance, run, keys, workspace, args.wait)


def _run(args) -> int:
    from wikigpt_core.config import load_settings, wikigpt_home
    from wikigpt_pipeline.dead_runs import owner_tags
    from wikigpt_pipeline.jobs import PIPELINE_JOB

    if args.submit:
        return _submit(args, refresh=False)
    instance, defs = _load()
    settings = load_settings()
    print(f"WikiGPT: profile={settings.profile} dump={settings.dump.source} "
          f"WIKIGPT_HOME={wikigpt_home()} DAGSTER_HOME={os.environ['DAGSTER_HOME']}", flush=True)
    t0 = time.time()
    with _reaping_dead_runs(instance):
        result = defs.resolve_job_def(PIPELINE_JOB).execute_in_process(
            instance=instance, raise_on_error=False, run_config=_quiet_run_config(args),
            tags=owner_tags())
    _print_summary(result)
    if not result.success:
        _report_failure(instance, result.run_id)
    print(f"{'succeeded' if result.success else 'FAILED'} in {time.time() - t0:.0f}s; "
          f"run {result.run_id} is in the UI (`wikigpt ui`).")
    return 0 if result.success else 1


@contextmanager
def _reaping_dead_runs(instance) -> Iterator[None]:
    """Fail the runs whose process died (and free their `gpu` slot) before running here, and
    keep doing so while this run waits for a slot (wikigpt_pipeline.dead_runs)."""
    from wikigpt_pipeline import dead_runs

    for run_id in dead_runs.reap(instance):
        print(f"run {run_id} was left STARTED by a process that is gone: marked failed, "
              "its pool slots freed", flush=True)
    with dead_runs.reaping(instance):
        yield


_HEADLINE = ("rows", "pages", "train_tokens", "val_tokens", "vocab_size", "bytes_per_token",
             "examples_train", "pairs", "train_loss", "val_loss", "val_ppl", "ppl_base", "ppl_sft",
             "ppl_dpo", "reward_accuracy", "params")


def _report_failure(instance, run_id: str) -> None:
    """One line per failed step, and where the whole log is."""
    from wikigpt_pipeline.instance import dagster_home
    from wikigpt_pipeline.progress import failure_lines, write_run_log

    log = dagster_home() / "logs" / f"{run_id}.log"
    write_run_log(instance, run_id, log)
    for line in failure_lines(instance, run_id):
        print(f"  FAILED {line}")
    print(f"  full log: {log}")


def _last_run_of_this_process(instance) -> str | None:
    import dagster as dg

    from wikigpt_pipeline.dead_runs import owner_tags

    runs = instance.get_runs(dg.RunsFilter(tags=owner_tags()), limit=1)
    return runs[0].run_id if runs else None


def _print_summary(result) -> None:
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        md = mat.metadata
        figures = ", ".join(f"{k}={_fmt(md[k].value)}" for k in _HEADLINE if k in md)
        print(f"  {mat.asset_key.to_user_string():<20} {figures}")
        if "path" in md:
            print(f"  {'':<20} {md['path'].value}")


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _refresh(args) -> int:
    import dagster as dg

    from wikigpt_pipeline import staleness

    if args.submit:
        return _submit(args, refresh=True)
    instance, defs = _load()
    if args.dry_run:
        statuses = staleness.stale_status(instance, defs)
        stale = staleness.to_run(statuses)
        for s in statuses:
            if s.key in stale:
                print(f"{s.key}\t{s.status}\t{'; '.join(s.causes)}")
        graph = defs.resolve_asset_graph()
        below = [k.to_user_string() for k in staleness.with_downstream(
            [dg.AssetKey.from_user_string(k) for k in stale], graph)]
        for key in below:
            if key not in stale:
                print(f"{key}\tDOWNSTREAM\truns in the same pass; a cache hit if its inputs are unchanged")
        if not stale:
            print("nothing is stale")
        return 0

    def on_pass(i, statuses):
        print(f"pass {i}: {', '.join(s.key for s in statuses)}", flush=True)

    try:
        with _reaping_dead_runs(instance):
            passes = staleness.refresh(instance, defs, on_pass=on_pass, run_config=_quiet_run_config(args))
    except Exception:
        failed = _last_run_of_this_process(instance)
        if failed is None:
            raise
        _report_failure(instance, failed)
        print(f"refresh FAILED; run {failed} is in the UI (`wikigpt ui`).")
        return 1
    print(f"fresh after {len(passes)} pass(es)" if passes else "nothing is stale")
    return 0


def _status(args) -> int:
    from wikigpt_core.config import artifact_dir, load_settings
    from wikigpt_pipeline import staleness

    instance, defs = _load()
    settings = load_settings()
    for s in staleness.stale_status(instance, defs):
        current = artifact_dir(settings, s.key)
        where = current.resolve() if current.exists() else "-"
        print(f"{s.key:<20} {s.status:<8} {where}"
              + (f"  ({'; '.join(s.causes)})" if s.causes else ""))
    return 0


def _gc(args) -> int:
    from wikigpt_core.config import wikigpt_home
    from wikigpt_pipeline.gc import collect

    instance, _ = _load()
    garbage = collect(instance, wikigpt_home(), dry_run=args.dry_run)
    for g in garbage:
        print(f"{'would remove' if args.dry_run else 'removed'} {g.path} ({_mb(g.bytes)}; {g.reason})")
    total = sum(g.bytes for g in garbage)
    print(f"{'would free' if args.dry_run else 'freed'} {_mb(total)} in {len(garbage)} version(s)")
    return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _ui(args) -> int:
    from wikigpt_pipeline.instance import ensure_dagster_home

    ensure_dagster_home()
    repo = Path(__file__).resolve().parents[1]
    dagster = Path(sys.executable).parent / "dagster"  # this environment's, not whichever is on PATH
    cmd = [str(dagster) if dagster.exists() else "dagster", "dev", "-w", str(repo / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(args.port)]
    print(f"DAGSTER_HOME={os.environ['DAGSTER_HOME']}; {' '.join(cmd)}", flush=True)
    return subprocess.call(cmd, cwd=repo)


if __name__ == "__main__":
    sys.exit(main())
