"""Durable storage on the HF Hub for rented GPUs that cannot mount buckets (vast.ai).

Used by the task YAMLs' run scripts when `WIKIGPT_HUB_REPO` is set, and by the launcher to
fetch outputs of managed (spot) jobs, whose cluster is gone by the time the job ends:

    python -m wikigpt_pipeline.launchers.hub_sync pull  REPO PREFIX/work ~/wikigpt_io/work
    python -m wikigpt_pipeline.launchers.hub_sync watch ~/wikigpt_io/work REPO PREFIX/work &
    python -m wikigpt_pipeline.launchers.hub_sync push  ~/wikigpt_io/out  REPO PREFIX/out

`watch` looks at the training scratch every `--interval` seconds and uploads it only when a new
complete checkpoint appeared: that checkpoint and the run's small files (metric log, offline
W&B), never the checkpoints the remote already has. The remote keeps the newest checkpoint
only (the upload deletes the ones rotated out, in the same commit), which is all a resume
needs. A preempted instance thus loses the training since its last checkpoint (at most
`ckpt_minutes`, see TrainConfig) plus up to one interval: SkyPilot relaunches the job, `pull`
restores the scratch, and the trainer resumes from that checkpoint. The repo is created private.
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


def push_dir(local: Path, repo: str, prefix: str, skip: list[str] = ()) -> None:
    """Upload `local` to `repo` under `prefix`, deleting remote files no longer present.
    `skip` names folders of `local` (relative paths) to leave out, as if absent."""
    store = _local_store(repo)
    if store is not None:
        target = store / prefix
        tmp = target.parent / f".{target.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        skipped = {(Path(local) / s).resolve() for s in skip}
        shutil.copytree(local, tmp, ignore=lambda d, names: [n for n in names
                                                             if (Path(d) / n).resolve() in skipped])
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
        return
    api = _api()
    api.create_repo(repo, private=True, exist_ok=True)
    api.upload_folder(repo_id=repo, folder_path=str(local), path_in_repo=prefix,
                      commit_message=f"sync {prefix}", delete_patterns="*",
                      ignore_patterns=[f"{s}/*" for s in skip] or None)


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


def checkpoints(work: Path) -> list[str]:
    """Complete checkpoints under a training work dir (`<run key>/ckpt-<step>`, written by an
    atomic rename), oldest first, as paths relative to it."""
    found = Path(work).glob("*/ckpt-*") if Path(work).is_dir() else []
    return sorted((str(p.relative_to(work)) for p in found if p.is_dir()),
                  key=lambda rel: (Path(rel).name, rel))  # zero-padded steps sort by name


class CheckpointSync:
    """Uploads a training work dir each time a new checkpoint appears in it (see the module
    docstring); `tick()` looks once."""

    def __init__(self, local: Path, repo: str, prefix: str):
        self.local, self.repo, self.prefix = Path(local), repo, prefix
        # `pull` has just restored the remote's checkpoint here, if it had one: not new.
        self.uploaded = self._newest()

    def _newest(self) -> str | None:
        found = checkpoints(self.local)
        return found[-1] if found else None

    def tick(self) -> bool:
        """Upload if a checkpoint newer than the last upload exists; return whether it did."""
        newest = self._newest()
        if newest is None or newest == self.uploaded:
            return False
        others = [c for c in checkpoints(self.local) if c != newest]
        push_dir(self.local, self.repo, self.prefix, skip=others + self._partial_writes())
        self.uploaded = newest
        return True

    def _partial_writes(self) -> list[str]:
        """Checkpoints still being written (`.tmp-*`): never uploaded."""
        return [str(p.relative_to(self.local)) for p in self.local.glob("*/.tmp-*")]


def watch(local: Path, repo: str, prefix: str, interval: float) -> None:
    """Every `interval` seconds, upload `local` if it holds a new checkpoint (forever; the run
    script kills it at the end)."""
    sync = CheckpointSync(local, repo, prefix)
    while True:
        time.sleep(interval)
        try:
            if sync.tick():
                print(f"[hub_sync] uploaded {sync.uploaded}", file=sys.stderr, flush=True)
        except Exception as e:  # keep training; the next round retries
            print(f"[hub_sync] upload of {local} failed: {e}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m wikigpt_pipeline.launchers.hub_sync")
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("push"); a.add_argument("local", type=Path); a.add_argument("repo"); a.add_argument("prefix")
    b = sub.add_parser("pull"); b.add_argument("repo"); b.add_argument("prefix"); b.add_argument("dest", type=Path)
    c = sub.add_parser("watch"); c.add_argument("local", type=Path); c.add_argument("repo"); c.add_argument("prefix")
    c.add_argument("--interval", type=float, default=60,
                   help="seconds between looks for a new checkpoint (a look is a directory listing)")
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
