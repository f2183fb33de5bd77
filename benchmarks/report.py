"""What every benchmark writes beside its printed table: the machine it ran on, and a JSON file
of its figures, so two runs (two machines, two commits) can be compared."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """Cores, torch threads, CPU model, load and versions: the conditions of the run."""
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cores_online": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
    }
    if "torch" in sys.modules:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                        capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


def machine_line(info: dict[str, Any]) -> str:
    parts = [f"cpu: {info['cpu_model']}", f"cores usable {info['cores_usable']} of {info['cores_online']}",
             f"load average {info['load_average_1_5_15'][0]}"]
    if "torch_threads" in info:
        parts.append(f"torch {info['torch']} threads {info['torch_threads']}")
    if "gpu" in info:
        parts.append(f"gpu {info['gpu']}")
    return "  ".join(parts)


def write_json(path: Path, script: str, machine: dict[str, Any], figures: dict[str, Any]) -> Path:
    """Write {script, when, machine, figures} atomically to `path` and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"script": script, "when_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "machine": machine, "figures": figures}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    tmp.replace(path)
    return path


def process_tree(root: int) -> list[int]:
    """`root` and every process descended from it, read from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_rss_mb(root: int) -> dict[int, float]:
    """Resident MB of `root` and each of its descendants still alive, from /proc/<pid>/statm."""
    page_mb = os.sysconf("SC_PAGE_SIZE") / 2**20
    rss = {}
    for pid in process_tree(root):
        try:
            rss[pid] = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page_mb
        except (OSError, IndexError, ValueError):
            pass
    return rss
