"""A real PostgreSQL server for tests: Debian's `postgresql` binaries, a fresh data directory,
a loopback port, trust authentication for the local test user. As root, initdb/pg_ctl run as
the `postgres` user (PostgreSQL refuses to run as root) in a directory that user owns."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

from tests.needs import missing
from tests.pipeline.servers import free_port

PG_ROOT = Path("/usr/lib/postgresql")


def pg_bin() -> Path | None:
    versions = sorted(PG_ROOT.glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    return versions[-1].parent if versions else None


def _as_db_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def postgres_server() -> Iterator[dict[str, str]]:
    """Yields connection facts: host, port, user, db (a fresh database `dagster`), url."""
    bin_dir = pg_bin()
    if bin_dir is None:
        missing("PostgreSQL server binaries under /usr/lib/postgresql; install with "
                "`apt-get install -y postgresql`")
    root = Path(tempfile.mkdtemp(prefix="wikigpt-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(sock, "postgres", "postgres")
    user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")
    port = free_port()
    log = root / "server.log"
    try:
        subprocess.run(_as_db_user([str(bin_dir / "initdb"), "-D", str(data), "-U", user, "-A", "trust",
                                    "--no-sync", "-E", "UTF8"]), check=True, capture_output=True, timeout=120)
        opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        subprocess.run(_as_db_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(log),
                                    "-w", "-t", "60", "start"]), check=True, capture_output=True, timeout=90)
        subprocess.run(_as_db_user([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user,
                                    "dagster"]), check=True, capture_output=True, timeout=60)
        yield {"host": "127.0.0.1", "port": str(port), "user": user, "db": "dagster",
               "url": f"postgresql://{user}@127.0.0.1:{port}/dagster"}
    except subprocess.CalledProcessError as e:
        server_log = log.read_text()[-2000:] if log.exists() else ""
        raise RuntimeError(f"postgres failed: {e.cmd}\n{e.stdout!r}\n{e.stderr!r}\n{server_log}") from None
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(_as_db_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
                           capture_output=True, timeout=60)
        for _ in range(20):  # the server may take a moment to release the directory
            try:
                shutil.rmtree(root)
                break
            except OSError:
                time.sleep(0.2)
