"""Durable storage on the HF Hub for rented GPUs that cannot mount buckets (vast.ai).

Used by the task YAMLs' run scripts when `WIKIGPT_HUB_REPO` is set, and by the launcher to
fetch outputs of managed (spot) jobs, whose cluster is gone by the time the job ends:

    python -m wikigpt_pipeline.launchers.hub_sync pull  REPO PREFIX/work ~/wikigpt_io/work
    python -m wikigpt_pipeline.launchers.hub_sync watch ~/wikigpt_io/work REPO PREFIX/work &
    python -m wikigpt_pipeline.launchers.hub_sync push  ~/wikigpt_io/out  REPO PREFIX/out

`watch` re-uploads the training scratch (checkpoints) every `--interval` seconds, so a
preempted instance loses at most that much work: SkyPilot relaunches the job, `pull` restores
the scratch, and the trainer resumes from its latest checkpoint. The repo is created private.
The token comes from HF_TOKEN (read by huggingface_hub itself, never printed).

A `file:///some/dir` "repo" is a plain directory instead (a disk both sides can reach, e.g. a
network volume; also what the tests use).
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _api():
    from huggingface_hub import HfApi  # lazy: only remote runs and spot fetches need it

    return HfApi()


def _local_store(repo: str) -> Path | None:
    return Path(repo.removeprefix("file://")) if repo.startswith("file://") else None


def push_dir(local: Path, repo: str, prefix: str) -> None:
    """Upload `local` to `repo` under `prefix`, deleting remote files no longer present."""
    store = _local_store(repo)
    if store is not None:
        target = store / prefix
        tmp = target.parent / f".{target.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(local, tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        return
    api = _api()
    api.create_repo(repo, private=True, exist_ok=True)
    api.upload_folder(repo_id=repo, folder_path=str(local), path_in_repo=prefix,
                      commit_message=f"sync {prefix}", delete_patterns="*")


def pull_dir(repo: str, prefix: str, dest: Path, missing_ok: bool = False) -> bool:
    """Download `repo`/`prefix` into `dest` (created). Returns False if nothing was there."""
    with tempfile.TemporaryDirectory() as tmp:
        store = _local_store(repo)
        if store is not None:
            if (store / prefix).is_dir():
                shutil.copytree(store / prefix, Path(tmp) / prefix)
        else:
            from huggingface_hub import snapshot_download

            snapshot_download(repo, allow_patterns=[f"{prefix}/**"], local_dir=tmp)
        src = Path(tmp) / prefix
        if not src.is_dir():
            if missing_ok:
                Path(dest).mkdir(parents=True, exist_ok=True)
                return False
            raise FileNotFoundError(f"{repo} has no folder {prefix!r}; did the remote job push it?")
        Path(dest).mkdir(parents=True, exist_ok=True)
        for item in src.iterdir():
            target = Path(dest) / item.name
            if target.is_dir():
                shutil.rmtree(target)
            shutil.move(str(item), str(target))
    return True


def watch(local: Path, repo: str, prefix: str, interval: float) -> None:
    """Push `local` every `interval` seconds (forever; the run script kills it at the end)."""
    while True:
        time.sleep(interval)
        if Path(local).is_dir() and any(Path(local).iterdir()):
            try:
                push_dir(local, repo, prefix)
            except Exception as e:  # keep training; the next round retries
                print(f"[hub_sync] upload of {local} failed: {e}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wikigpt_pipeline.launchers.hub_sync")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("push"); a.add_argument("local", type=Path); a.add_argument("repo"); a.add_argument("prefix")
    b = sub.add_parser("pull"); b.add_argument("repo"); b.add_argument("prefix"); b.add_argument("dest", type=Path)
    c = sub.add_parser("watch"); c.add_argument("local", type=Path); c.add_argument("repo"); c.add_argument("prefix")
    c.add_argument("--interval", type=float, default=600)
    args = p.parse_args(argv)
    if args.cmd == "push":
        push_dir(args.local, args.repo, args.prefix)
    elif args.cmd == "pull":
        found = pull_dir(args.repo, args.prefix, args.dest, missing_ok=True)
        print(f"[hub_sync] {'restored' if found else 'nothing to restore from'} {args.prefix}")
    else:
        watch(args.local, args.repo, args.prefix, args.interval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
