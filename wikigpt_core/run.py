"""The one stage command line, for every stage, locally and on a rented GPU:

    python -m wikigpt_core.run STAGE --spec FILE          # run from a resolved spec
    python -m wikigpt_core.run STAGE --write-spec FILE [--profile P] [--config TOML]
        [--dump SOURCE] [--input NAME=DIR ...] [--out DIR] [--work DIR]
    python -m wikigpt_core.run --list

A stage reads only its spec: config sections, input artifacts (checked against their content
hashes) and out/work dirs. Under `torchrun` every rank runs the stage; only rank 0 reports.
Progress and the result go to Dagster Pipes when Dagster launched the process, else to the
terminal (the last line is the result as JSON).

`--write-spec` is the orchestrator's half for runs without Dagster: it resolves settings from
the flags (profile preset, TOML overrides, dump source) and the inputs from the given dirs or
the upstreams' `current` versions under $WIKIGPT_HOME, and writes the spec to run.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from pathlib import Path

from wikigpt_core.artifacts import StageResult
from wikigpt_core.integrity import intact_or_absent
from wikigpt_core.spec import SpecError, StageSpec
from wikigpt_core.stages import STAGES, get_stage, resolve_spec
from wikigpt_core.version_lock import version_lock

CACHE_HIT = "cache hit"
"""How the run log says that a published version was reused and no stage code ran."""


def run_spec(spec: StageSpec, reporter=None):
    """Verify the spec against the stage's declaration, then, holding the version's lock, reuse
    the published version if it is intact, or else check the inputs' bytes and run the stage.
    Progress and the result go to `reporter`, by default the process's own (Pipes, or the
    terminal)."""
    from wikigpt_core.pipes_bridge import stage_reporter

    stage = get_stage(spec.stage)
    spec.verify(stage.version, stage.sections)
    if reporter is not None:
        return _run_locked(stage, spec, reporter)
    with stage_reporter(stage.name) as rep:
        return _run_locked(stage, spec, rep)


def _version_lock_on_local_rank_0(work: Path, log):
    """The version's lock, taken by one process per machine. Under torchrun every rank runs this
    file; the ranks other than local rank 0 must not wait for the lock that rank 0 holds, or
    rank 0 would wait for them in the process-group rendezvous for ever."""
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return contextlib.nullcontext()
    return version_lock(work, on_wait=log)


def _run_locked(stage, spec: StageSpec, rep):
    """One run per version at a time: a second run of the same version waits here, then finds
    it published (a cache hit), so the two never share the scratch dir or race to publish."""
    with _version_lock_on_local_rank_0(spec.work, rep.log):
        published = intact_or_absent(spec.out, spec.stage, log=rep.log)
        if published is not None and not spec.recompute:
            rep.log(f"{CACHE_HIT}: version {spec.version} is published and intact at {spec.out}")
            result = StageResult(spec.out, published["content_hash"], published.get("stats", {}))
        else:
            spec.verify_input_bytes()
            result = stage.run(spec, rep)
    rep.report(result)
    return result


def write_spec(args: argparse.Namespace) -> Path:
    from wikigpt_core.config import load_settings

    # The orchestrator's side: the one place a settings lookup happens, before the stage runs.
    settings = load_settings(args.profile, args.config, env=False)
    if args.dump:
        settings = dataclasses.replace(settings, dump=dataclasses.replace(settings.dump, source=args.dump))
    inputs = {}
    for item in args.input or []:
        name, eq, path = item.partition("=")
        if not eq:
            raise SpecError(f"--input {item!r} must be NAME=DIR")
        inputs[name] = Path(path)
    spec = resolve_spec(settings, args.stage, inputs, out=args.out, work=args.work)
    return spec.write(args.write_spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wikigpt_core.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", nargs="?", help=f"one of: {', '.join(STAGES)}")
    p.add_argument("--spec", type=Path, help="the resolved spec to run")
    p.add_argument("--list", action="store_true", help="list the stages with inputs and sections")
    g = p.add_argument_group("writing a spec (instead of running)")
    g.add_argument("--write-spec", type=Path, metavar="FILE")
    g.add_argument("--profile", default="tiny", help="tiny, 124m or 350m (default tiny)")
    g.add_argument("--config", type=Path, help="TOML overrides file")
    g.add_argument("--dump", help="dump source (sample, a local .xml.bz2, or <wiki>/<date>)")
    g.add_argument("--input", action="append", metavar="NAME=DIR", help="an upstream artifact dir")
    g.add_argument("--out", type=Path, help="output dir (default: the versioned dir under $WIKIGPT_HOME)")
    g.add_argument("--work", type=Path, help="scratch dir (default: keyed by version under $WIKIGPT_HOME)")
    args = p.parse_args(argv)
    if args.list:
        for s in STAGES.values():
            where = f"launched ({s.task})" if s.launched else "in-process"
            print(f"{s.name:<20} inputs={','.join(s.inputs) or '-'} sections={','.join(s.sections)} {where}")
        return 0
    if not args.stage or bool(args.spec) == bool(args.write_spec):
        p.error("give STAGE and exactly one of --spec FILE or --write-spec FILE")
    try:
        if args.write_spec:
            print(write_spec(args))
            return 0
        spec = StageSpec.read(args.spec)
        if spec.stage != args.stage:
            raise SpecError(f"{args.spec} is a spec for {spec.stage!r}, not {args.stage!r}")
        run_spec(spec)
    except SpecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
