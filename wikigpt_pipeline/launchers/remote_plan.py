"""The plan for running one stage on a rented GPU: a SkyPilot task config, built without SkyPilot.

`plan_task` reads `sky/<stage>.yaml` and returns the task config the launcher hands to
`sky.Task.from_yaml_config`, plus where each output will appear remotely:

- the workdir is this repository (installed there by the YAML's `setup`);
- the stage's spec (`--spec FILE`) is rewritten for the remote layout: its output to
  `~/wikigpt_io/out/<name>`, its inputs to `~/wikigpt_io/in/<name>` (uploaded through
  file_mounts), its scratch to `~/wikigpt_io/work/<name>`; the rewritten spec is uploaded too.
  Only the stage's inputs travel: the rest of its lineage (every ancestor, the dump included:
  ~22 GB at `124m`) is figures for a model card, which no launched stage reads, so the remote
  spec's lineage is its inputs alone;
- the project's extras the box installs (WIKIGPT_EXTRAS, read by sky/setup.sh) follow the
  spec: W&B always, lm-evaluation-harness when the eval config turns it on;
- the stage (WIKIGPT_STAGE) and its args (WIKIGPT_STAGE_ARGS) travel in `envs`; the YAML's
  `run` evaluates the args, so `~` expands on the remote machine;
- Dagster Pipes' bootstrap variables and extra envs are added to `envs`;
- secrets (the ones the YAML names) are filled from this process's environment, never logged;
- several GPUs (`RTX4090:4`) are used by `sky/run_stage.sh`, which starts the stage under
  torchrun with one process per GPU ($SKYPILOT_NUM_GPUS_PER_NODE); several GeForce cards get
  `NCCL_P2P_DISABLE=1` (their peer-to-peer path is known to hang NCCL); `num_nodes > 1` adds
  SkyPilot's node rank and head IP, on clouds that offer several nodes (vast.ai does not:
  planning that is refused here, before anything is rented).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from wikigpt_core.spec import StageSpec
from wikigpt_core.stages import STAGES
from wikigpt_pipeline.launchers.images import TEACHER_TASK

REMOTE_ROOT = "~/wikigpt_io"
SPEC_MOUNT = f"{REMOTE_ROOT}/in/spec.json"
"""Where the stage's rewritten spec is uploaded."""
TASKS = {**{s.name: s.task for s in STAGES.values() if s.launched}, TEACHER_TASK: TEACHER_TASK}
"""What can run remotely: each launched stage's SkyPilot task (`sky/<task>.yaml`), and the teacher."""


class PlanError(ValueError):
    """The stage cannot be planned for remote execution; the message says what to fix."""


SINGLE_NODE_CLOUDS = ("vast",)
"""Clouds (SkyPilot infra names) that rent single machines only: no multi-node jobs."""

GEFORCE = re.compile(r"^(RTX|GTX)[1-5]0[5-9]0(TI|SUPER)*$", re.IGNORECASE)
"""Consumer GeForce cards as SkyPilot names them (RTX3090, RTX4090, RTX5090, ...); not the
workstation RTX A6000 / RTX6000."""
GEFORCE_MULTI_GPU_ENVS = {"NCCL_P2P_DISABLE": "1"}
"""Several GeForce cards in one box: NCCL over their peer-to-peer path is known to hang, so it
goes through host memory instead (a user's own `envs` may still override it)."""

BOX_EXTRAS = ("wandb",)
"""The project's extras every stage box installs (W&B logs online when WANDB_API_KEY is set)."""
SWITCHED_EXTRAS = {("eval", "lm_eval"): "lmeval"}
"""Extras a config switch turns on: (section, field) -> extra, installed when the spec has it on."""


@dataclass
class RemotePlan:
    config: dict[str, Any]
    """Task config for `sky.Task.from_yaml_config`."""
    outputs: list[tuple[Path, str]] = field(default_factory=list)
    """(local artifact dir, remote dir relative to the remote home)."""
    remote_args: str = ""
    """The stage's CLI args as evaluated remotely (no secrets in here)."""
    upload_bytes: int = 0
    """What the file_mounts upload: the stage's inputs and its spec (the workdir, this
    repository's code, comes on top)."""
    loopback_ports: list[int] = field(default_factory=list)
    """Ports of this run's services (a rented teacher's local end of its SSH port-forward) on
    this machine's loopback. The launcher forwards each to the same port on the box's loopback
    (`ssh -R`), so the spec's service URL means the same there and the line stays encrypted."""

    @property
    def accelerator_count(self) -> int:
        return accelerator(self.config.get("resources", {}))[1]

    @property
    def num_nodes(self) -> int:
        return int(self.config.get("num_nodes") or 1)


def accelerator(resources: Mapping[str, Any]) -> tuple[str, int]:
    """(name, count) of a task's `accelerators` (`RTX4090:4` or `{RTX4090: 4}`); ("", 0) if none."""
    acc = resources.get("accelerators")
    if isinstance(acc, dict) and acc:
        name, count = next(iter(acc.items()))
        return str(name), int(count)
    if isinstance(acc, str) and acc:
        name, _, count = acc.partition(":")
        return name, int(float(count or 1))
    return "", 0


def cluster_name(stage: str, run_key: str) -> str:
    """Deterministic per (run, stage): a retry of the same run finds the same cluster.
    `wikigpt-<stage>-<first 8 of the run id>`, lowercased to what clouds accept."""
    stage_part = re.sub(r"[^a-z0-9-]", "-", stage.lower()).strip("-")
    run_part = re.sub(r"[^a-z0-9]", "", run_key.lower())[:8]
    return f"wikigpt-{stage_part}-{run_part}"


def yaml_path(sky_dir: Path, stage: str) -> Path:
    path = Path(sky_dir) / f"{TASKS.get(stage, stage)}.yaml"
    if not path.exists():
        known = sorted(p.stem for p in Path(sky_dir).glob("*.yaml"))
        raise PlanError(f"no SkyPilot task for stage {stage!r}: {path} does not exist "
                        f"(known: {known}); stages without a GPU run locally")
    return path


def load_task_yaml(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        raise PlanError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(config, dict) or "run" not in config:
        raise PlanError(f"{path} must be a SkyPilot task with a `run` section")
    return config


def _safe_name(path: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", path.name) or "root"


class _PathMapper:
    """Rewrites local absolute paths to remote ones, remembering uploads and outputs."""

    def __init__(self, outputs: Sequence[Path]) -> None:
        self.outputs = {Path(p).resolve(): Path(p) for p in outputs}
        self.file_mounts: dict[str, str] = {}
        self.remote_outputs: list[tuple[Path, str]] = []
        self._assigned: dict[Path, str] = {}
        self._taken: set[str] = set()
        self._names: dict[Path, str] = {}

    def name(self, value: str, name: str) -> None:
        """Upload `value` (if it is an input) under `name` rather than its basename (an artifact's
        basename is its version hash; the input's name says what it is)."""
        self._names[Path(value).resolve()] = name

    def _unique(self, kind: str, path: Path) -> str:
        name = self._names.get(path) or _safe_name(path)
        rel = f"{kind}/{name}"
        if rel in self._taken:  # two inputs with the same basename
            digest = hashlib.sha1(str(path).encode()).hexdigest()[:6]
            rel = f"{kind}/{name}-{digest}"
        self._taken.add(rel)
        return rel

    def remote(self, value: str) -> str:
        local = Path(value).resolve()
        if local in self._assigned:
            return self._assigned[local]
        if local in self.outputs:
            rel = self._unique("out", local)
            self.remote_outputs.append((self.outputs[local], f"wikigpt_io/{rel}"))
        elif local.exists():
            rel = self._unique("in", local)
            self.file_mounts[f"{REMOTE_ROOT}/{rel}"] = str(local)
        else:
            rel = self._unique("work", local)
        remote = f"{REMOTE_ROOT}/{rel}"
        self._assigned[local] = remote
        return remote


def remote_args(cli_args: Sequence[str], mapper: _PathMapper) -> str:
    """Quote args for `eval` on the remote shell; remote paths stay unquoted so `~` expands
    (they contain only [A-Za-z0-9._/~-], by construction)."""
    parts: list[str] = []
    for arg in map(str, cli_args):
        flag, eq, value = arg.partition("=")
        if eq and flag.startswith("--") and os.path.isabs(value):
            parts.append(f"{shlex.quote(flag)}={mapper.remote(value)}")
        elif os.path.isabs(arg):
            parts.append(mapper.remote(arg))
        else:
            parts.append(shlex.quote(arg))
    return " ".join(parts)


def remote_spec(cli_args: Sequence[str], mapper: _PathMapper) -> tuple[list[str], StageSpec | None]:
    """If the args name a spec (`--spec FILE`), the spec as the box reads it (its inputs only,
    every path mapped to the remote layout), and the args pointing at its uploaded copy."""
    args = [str(a) for a in cli_args]
    if "--spec" not in args:
        return args, None
    i = args.index("--spec")
    spec = inputs_only(StageSpec.read(Path(args[i + 1])))
    for name, ref in spec.inputs.items():
        mapper.name(str(ref.path), name)
    spec = spec.relocated(mapper.remote)
    return [*args[:i], "--spec", SPEC_MOUNT, *args[i + 2:]], spec


def inputs_only(spec: StageSpec) -> StageSpec:
    """The spec with its lineage cut to its direct inputs: the box verifies and reads every
    lineage path, so an ancestor kept there would have to be uploaded."""
    return dataclasses.replace(spec, lineage={n: r for n, r in spec.lineage.items() if n in spec.inputs})


def box_extras(spec: StageSpec | None) -> str:
    """WIKIGPT_EXTRAS for sky/setup.sh: the extras every box installs, plus those the spec's
    config switches on (`lmeval` for `[eval] lm_eval = true`)."""
    extras = list(BOX_EXTRAS)
    for (section, name), extra in SWITCHED_EXTRAS.items():
        if spec is not None and (spec.config.get(section) or {}).get(name):
            extras.append(extra)
    return ",".join(extras)


def upload_size(mounts: Mapping[str, str]) -> int:
    """Bytes of the local files and directories that `file_mounts` uploads."""
    total = 0
    for local in map(Path, mounts.values()):
        files = [local] if local.is_file() else [p for p in local.rglob("*") if p.is_file()]
        total += sum(p.stat().st_size for p in files)
    return total


def plan_task(
    *,
    sky_dir: Path,
    stage: str,
    cli_args: Sequence[str],
    outputs: Sequence[Path],
    workdir: Path,
    envs: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    infra: str | None = None,
    accelerators: str | None = None,
    use_spot: bool = False,
    hub_repo: str | None = None,
    num_nodes: int | None = None,
) -> RemotePlan:
    """Build the task config (see module docstring). `environ` defaults to os.environ and is
    where WIKIGPT_PROFILE, WIKIGPT_CONFIG and the secrets are read from."""
    environ = os.environ if environ is None else environ
    config = load_task_yaml(yaml_path(sky_dir, stage))
    mapper = _PathMapper(outputs)
    cli_args, spec = remote_spec(cli_args, mapper)
    args = " ".join(a if a.startswith(REMOTE_ROOT) else shlex.quote(a) for a in cli_args) \
        if spec is not None else remote_args(cli_args, mapper)
    missing = [str(p) for p in outputs if Path(p).resolve() not in mapper._assigned]
    if missing:
        raise PlanError(f"outputs {missing} do not appear in the CLI args of stage {stage!r}; "
                        "the remote run could not write them")

    if "workdir" in config:  # the teacher serves a hub model and needs no copy of the repo
        config["workdir"] = str(Path(workdir).resolve())
    mounts = dict(config.get("file_mounts") or {})
    mounts.update(mapper.file_mounts)
    if spec is not None:
        mounts[SPEC_MOUNT] = str(_write_spec(spec))
    if mounts:
        config["file_mounts"] = mounts
    config["resources"] = _resources(config, infra, accelerators, use_spot)
    config["envs"] = _task_envs(config, stage, args, spec, hub_repo, envs)
    config["secrets"] = _secrets(config, environ)
    if num_nodes is not None:
        config["num_nodes"] = num_nodes
    check_nodes(config)
    return RemotePlan(config=config, outputs=mapper.remote_outputs, remote_args=args,
                      upload_bytes=upload_size(mounts), loopback_ports=loopback_ports(spec))


def loopback_ports(spec: StageSpec | None) -> list[int]:
    """The ports of the spec's service URLs that point at this machine's loopback."""
    from urllib.parse import urlsplit

    urls = [urlsplit(url) for url in (spec.services.values() if spec is not None else ())]
    return sorted({u.port for u in urls if u.hostname in ("127.0.0.1", "localhost") and u.port})


def _resources(config: Mapping[str, Any], infra: str | None, accelerators: str | None,
               use_spot: bool) -> dict[str, Any]:
    """The YAML's resources with the launcher's overrides."""
    resources = dict(config.get("resources") or {})
    if infra:
        resources["infra"] = infra
    if accelerators:
        resources["accelerators"] = accelerators
    if use_spot:
        resources["use_spot"] = True
    return resources


def _task_envs(config: Mapping[str, Any], stage: str, args: str, spec: StageSpec | None,
               hub_repo: str | None, envs: Mapping[str, str] | None) -> dict[str, str]:
    """The YAML's envs, then what the launcher sets, then the user's own `envs` (which win)."""
    task_envs = {str(k): "" if v is None else str(v) for k, v in (config.get("envs") or {}).items()}
    task_envs["WIKIGPT_STAGE"] = stage if stage in STAGES else ""
    task_envs["WIKIGPT_STAGE_ARGS"] = args
    if "WIKIGPT_EXTRAS" in task_envs:  # a task that installs the project (sky/setup.sh)
        task_envs["WIKIGPT_EXTRAS"] = box_extras(spec)
    if hub_repo:
        task_envs["WIKIGPT_HUB_REPO"] = hub_repo
    name, count = accelerator(config["resources"])
    if count > 1 and GEFORCE.match(name):
        task_envs.update(GEFORCE_MULTI_GPU_ENVS)
    task_envs.update({str(k): str(v) for k, v in (envs or {}).items()})
    return task_envs


def _secrets(config: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """The secrets the YAML names, and only those: a box gets no secret it does not need."""
    secrets = config.get("secrets") or {}
    if isinstance(secrets, list):  # `secrets: [HF_TOKEN]` form
        secrets = {str(s).removeprefix("secrets:"): None for s in secrets}
    # A null secret is filled from our environment; absent ones become empty strings (the
    # stage then runs without W&B sync / Hub access) rather than failing the launch.
    return {k: (v if v is not None else environ.get(k, "")) for k, v in secrets.items()}


def _write_spec(spec: StageSpec) -> Path:
    """The remote spec as a local file to upload (named by its content: identical specs share it)."""
    import tempfile

    blob = json.dumps(spec.to_json(), sort_keys=True).encode()
    return spec.write(Path(tempfile.gettempdir()) / f"wikigpt-spec-{hashlib.sha256(blob).hexdigest()[:16]}.json")


def check_nodes(config: Mapping[str, Any]) -> None:
    """Refuse a multi-node task on a cloud that has only single machines (before renting)."""
    nodes = config.get("num_nodes")
    nodes = 1 if nodes is None else nodes
    if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 1:
        raise PlanError(f"num_nodes must be a whole number >= 1, got {nodes!r}")
    infra = str((config.get("resources") or {}).get("infra") or "")
    cloud = infra.split("/")[0].lower()
    if nodes > 1 and cloud in SINGLE_NODE_CLOUDS:
        raise PlanError(
            f"num_nodes = {nodes} on infra {infra!r}: vast.ai rents single machines, so a stage "
            "cannot span several nodes there. Use more GPUs on one node instead (accelerators "
            "`RTX4090:4` trains with torchrun over 4 GPUs), or a cloud with multi-node clusters "
            "(SkyPilotLauncher.infra, e.g. `aws` or `gcp`).")


def redacted(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config with secret values and Pipes blobs hidden, for logs and error messages."""
    shown = dict(config)
    if "secrets" in shown:
        shown["secrets"] = {k: ("<set>" if v else "<empty>") for k, v in shown["secrets"].items()}
    if "envs" in shown:
        shown["envs"] = {k: ("<pipes>" if k.startswith("DAGSTER_PIPES_") else v)
                         for k, v in shown["envs"].items()}
    return shown
