"""Run a stage on a rented GPU through the SkyPilot SDK, reporting over Dagster Pipes.

One `run_stage` call:

1. plans the task (`remote_plan.plan_task`): YAML + workdir + file_mounts + envs + secrets;
2. opens a Pipes session whose context travels in the task's envs and whose messages come
   back in the job log (`log_stream.LogStreamMessageReader`);
3. re-attaches if the run's cluster (`wikigpt-<stage>-<run>`) is already up with this stage's
   job (a retried run after the orchestrator died), else `sky.launch`es it;
4. follows the job log (`sky.tail_logs(..., follow=True)`), raising with the log's tail if
   the job fails;
5. copies outputs back (rsync over the SSH alias `<cluster>` that SkyPilot writes into
   ~/.ssh/config, or the HF Hub for managed spot jobs), each published atomically and
   checked against the content hash the stage reported;
6. tears the cluster down in `finally` (`down: true` autostop does not fire after a failed
   setup), and records wall time, GPU hours, cost, what the launch uploaded (`upload_bytes`:
   the stage's inputs and spec; `upload_seconds`: the launch request, which provisions the box
   and syncs the mounts, as SkyPilot reports no finer split) and the box's `setup_seconds` (how
   long the YAML's `setup` took, printed by `sky/run_stage.sh` as a `WIKIGPT_SETUP_SECONDS=`
   line) as metadata.

The teacher (`teacher_endpoint`) listens on its box's loopback only; it is reached through an
SSH port-forward to the cluster's alias, so prompts and the API key never cross the internet in
clear text.

`use_spot` goes through managed jobs (`sky.jobs.launch`): SkyPilot relaunches a preempted job
and the stage resumes from checkpoints that its run script syncs to the HF Hub.

The `sky` package is imported only here, and only through `load_sky()` (tests swap in a fake).
"""
from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import dagster as dg

from wikigpt_core.artifacts import content_hash, swap_into_place
from wikigpt_core.train.memory import MemoryFitError, preflight
from wikigpt_pipeline.launchers.log_stream import LogStreamMessageReader
from wikigpt_pipeline.launchers.remote_plan import (
    RemotePlan,
    cluster_name,
    plan_task,
    redacted,
)
from wikigpt_pipeline.launchers.results import StageLaunchError, build_result
from wikigpt_pipeline.progress import StageProgress

SETUP_SECONDS_LINE = re.compile(r"WIKIGPT_SETUP_SECONDS=(\d+(?:\.\d+)?)")
"""The line sky/run_stage.sh prints with the duration of the task's setup (sky/setup.sh)."""


class _SetupTimeReader(LogStreamMessageReader):
    """The log-stream Pipes reader that also picks the setup duration out of the job log."""

    setup_seconds: float | None = None

    def feed_line(self, line: str) -> None:
        found = SETUP_SECONDS_LINE.search(line)
        if found:
            self.setup_seconds = float(found.group(1))  # the last one wins (a spot recovery reruns setup)
        super().feed_line(line)


ACTIVE_JOB = {"INIT", "PENDING", "SETTING_UP", "RUNNING", "SUCCEEDED"}
"""Job states worth re-attaching to (a SUCCEEDED job's log still holds every Pipes message)."""
LIVE_CLUSTER = {"UP"}
TEACHER_KEY_ENVS = ("WIKIGPT_TEACHER_API_KEY", "VLLM_API_KEY")
"""Where the teacher's API key is read from, first set wins (the first is `[teacher]
api_key_env`'s default); it travels to the box as the VLLM_API_KEY secret."""
AUTH_REFUSED = (401, 403)
"""Answers that say the key is wrong: no retry can fix them."""


def load_sky():
    """Import the SkyPilot SDK (the optional `cloud` extra) with a clear error if missing."""
    try:
        import sky

        if getattr(sky, "__file__", None) is None:  # the repo's sky/ folder, seen from its root
            raise ImportError("only the repository's sky/ YAML folder is importable as `sky`")
    except ImportError as e:
        raise StageLaunchError(
            "SkyPilotLauncher needs SkyPilot: pip install -e '.[cloud]' "
            f"(skypilot[vast]); import failed: {e}") from e
    return sky


def _field(record: Any, name: str, default: Any = None) -> Any:
    """SDK responses are pydantic models in recent SkyPilot, dicts in older ones."""
    if isinstance(record, dict):
        return record.get(name, default)
    return getattr(record, name, default)


def _state(value: Any) -> str:
    return str(getattr(value, "value", value) or "").upper()


@dataclass
class SkyPilotRunner:
    """One SkyPilot launch (or teacher rental), built from the `SkyPilotLauncher` resource's config."""

    sky_dir: Path
    workdir: Path
    env: dict[str, str]
    infra: str | None = None
    accelerators: str | None = None
    use_spot: bool = False
    hub_repo: str | None = None
    num_nodes: int | None = None
    keep_cluster: bool = False
    hourly_price_usd: float | None = None
    sky: Any = None
    ssh: str = "ssh"
    """Command that reaches a cluster by its SkyPilot alias (`ssh <cluster>`, from ~/.ssh/config):
    rsync's remote shell for outputs, and the teacher's port-forward."""
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def from_resource(cls, res) -> "SkyPilotRunner":
        return cls(sky_dir=res.sky_dir_path(), workdir=res.workdir_path(), env=dict(res.env),
                   infra=res.infra, accelerators=res.accelerators, use_spot=res.use_spot,
                   hub_repo=res.hub_repo, num_nodes=res.num_nodes, keep_cluster=res.keep_cluster,
                   hourly_price_usd=res.hourly_price_usd, ssh=res.ssh, sky=load_sky())

    # ------------------------------------------------------------------ entry point

    def run_stage(self, context, stage: str, cli_args: Sequence[str],
                  outputs: Sequence[Path]) -> dg.MaterializeResult:
        if self.use_spot and not self.hub_repo:
            raise StageLaunchError(
                "use_spot runs as a SkyPilot managed job whose cluster disappears after it ends, "
                "so outputs cannot be rsynced back and vast.ai cannot mount buckets: set "
                "SkyPilotLauncher.hub_repo (and HF_TOKEN) so outputs and checkpoints go "
                "through the HF Hub")
        run = context.run
        cluster = cluster_name(stage, run.root_run_id or run.run_id)
        plan = plan_task(sky_dir=self.sky_dir, stage=stage, cli_args=cli_args, outputs=outputs,
                         workdir=self.workdir, envs=self.env, infra=self.infra,
                         accelerators=self.accelerators, use_spot=self.use_spot,
                         hub_repo=self.hub_repo, num_nodes=self.num_nodes)
        if self.use_spot and plan.loopback_ports:
            raise StageLaunchError(
                f"{stage} talks to a rented teacher behind an SSH tunnel, which a managed spot "
                "job (on a cluster this launcher cannot reach by name) cannot use: run it with "
                "use_spot = false, or point [teacher] base_url at an HTTPS endpoint")
        try:  # before renting: a training stage too big for the card is refused here, for free
            fit = preflight(stage, cli_args, plan.config["resources"].get("accelerators"))
        except MemoryFitError as e:
            raise StageLaunchError(str(e)) from None
        if fit is not None:
            context.log.info(fit.describe())
        reader = _SetupTimeReader()
        reader.progress = StageProgress(stage)
        t0 = self.clock()
        hourly: float | None = None
        self._upload_seconds: float | None = None  # set by a launch; a re-attach uploads nothing
        with dg.open_pipes_session(context=context, context_injector=dg.PipesEnvContextInjector(),
                                   message_reader=reader) as session:
            plan.config["envs"].update(session.get_bootstrap_env_vars())
            # Hub prefix for outputs and resumable checkpoints of this run's stage (used by the
            # YAML's run script when WIKIGPT_HUB_REPO is set; same across spot recoveries).
            plan.config["envs"]["WIKIGPT_HUB_PREFIX"] = f"runs/{cluster}"
            context.log.info(f"[skypilot] {stage} on cluster {cluster}: {redacted(plan.config)}")
            try:
                if self.use_spot:
                    job_id, hourly = self._run_managed(context, cluster, plan, reader)
                else:
                    job_id, hourly = self._run_on_cluster(context, cluster, plan, reader)
                reported = session.get_reported_results()
                self._bring_back(context, cluster, plan, reported)
            finally:
                seconds = self.clock() - t0
                self._teardown(context, cluster, managed=self.use_spot)
        hourly = hourly if hourly is not None else self.hourly_price_usd
        gpu_hours = seconds / 3600 * max(plan.accelerator_count, 1) * plan.num_nodes
        figures: dict[str, Any] = {
            "backend": "skypilot-spot" if self.use_spot else "skypilot",
            "cluster": cluster, "job_id": str(job_id), "wall_seconds": round(seconds, 1),
            "gpu_hours": round(gpu_hours, 4),
            "accelerators": str(plan.config["resources"].get("accelerators", "")),
            "num_nodes": plan.num_nodes,
        }
        if self._upload_seconds is not None:
            figures["upload_bytes"] = plan.upload_bytes
            figures["upload_seconds"] = round(self._upload_seconds, 1)
        if reader.setup_seconds is not None:
            figures["setup_seconds"] = reader.setup_seconds
        if hourly is not None:
            figures["hourly_price_usd"] = round(hourly, 4)
            figures["cost_usd"] = round(hourly * seconds / 3600 * plan.num_nodes, 4)  # price is per node
        return build_result(stage, session.get_reported_results(), session.get_custom_messages(),
                            figures)

    # ------------------------------------------------------------------ teacher endpoint

    @contextmanager
    def teacher_endpoint(self, context, api_key: str, ready_timeout_s: float = 1800,
                         poll_s: float = 10, figures: dict | None = None) -> Iterator[str]:
        """Serve the teacher (sky/teacher.yaml: vLLM, OpenAI API) for the duration of the block;
        yields its base URL (`http://127.0.0.1:<local port>/v1`, the local end of an SSH
        port-forward to the box's loopback) once `/v1/models` answers; always downs it."""
        if not api_key:
            raise StageLaunchError(f"the teacher endpoint needs an API key: set {TEACHER_KEY_ENVS[0]} "
                                   f"(or {TEACHER_KEY_ENVS[1]}) before serving it")
        sky = self.sky
        cluster = cluster_name("teacher", context.run.root_run_id or context.run.run_id)
        plan = plan_task(sky_dir=self.sky_dir, stage="teacher", cli_args=[], outputs=[],
                         workdir=self.workdir, envs=self.env, infra=self.infra,
                         accelerators=self.accelerators,
                         environ={**os.environ, "VLLM_API_KEY": api_key})
        t0 = self.clock()
        try:
            if self._live_job(cluster)[0] is None:
                task = sky.Task.from_yaml_config(copy.deepcopy(plan.config))  # it mutates
                sky.stream_and_get(sky.launch(task, cluster_name=cluster))
            remote_port = int(plan.config["envs"]["TEACHER_PORT"])
            with self._port_forward(cluster, remote_port) as (base_url, tunnel_gone):
                _wait_ready(base_url, api_key, ready_timeout_s, poll_s, self.clock, broken=tunnel_gone)
                context.log.info(f"[skypilot] teacher on {cluster} serving at {base_url} (SSH port-forward)")
                yield base_url
        finally:
            hours = (self.clock() - t0) / 3600
            self._teardown(context, cluster)
            if figures is not None:
                figures["teacher_gpu_hours"] = round(hours, 4)
                if self.hourly_price_usd is not None:
                    figures["teacher_cost_usd"] = round(hours * self.hourly_price_usd, 4)
            if self.hourly_price_usd is not None:
                context.log.info(f"[skypilot] teacher: {hours:.3f} GPU-hours, "
                                 f"~${hours * self.hourly_price_usd:.2f}")

    @contextmanager
    def _port_forward(self, cluster: str, remote_port: int) -> Iterator[tuple[str, Callable[[], str | None]]]:
        """`ssh -N -L` from a free local port to `remote_port` on the box's loopback, through the
        cluster's SSH alias. Yields (base URL, a call saying why the tunnel is gone, None while it
        runs) and closes the tunnel when the block exits."""
        local = _free_port()
        with self._ssh_tunnel(cluster, ["-L", f"127.0.0.1:{local}:127.0.0.1:{remote_port}"]) as gone:
            yield f"http://127.0.0.1:{local}/v1", gone

    @contextmanager
    def _reverse_forwards(self, cluster: str, ports: Sequence[int]) -> Iterator[None]:
        """For the block, each of this machine's loopback `ports` also on the box's loopback
        (`ssh -N -R`): how a launched stage reaches a teacher that is itself behind a tunnel."""
        if not ports:
            yield
            return
        forwards = [arg for port in ports for arg in ("-R", f"127.0.0.1:{port}:127.0.0.1:{port}")]
        with self._ssh_tunnel(cluster, forwards):
            yield

    @contextmanager
    def _ssh_tunnel(self, cluster: str, forwards: list[str]) -> Iterator[Callable[[], str | None]]:
        """`ssh -N <forwards> <cluster>` for the duration of the block; yields a call saying why
        the tunnel is gone (None while it runs)."""
        cmd = [*shlex.split(self.ssh), "-N", "-o", "ExitOnForwardFailure=yes",
               "-o", "ServerAliveInterval=30", *forwards, cluster]
        # stderr to a file, not a pipe: nobody reads it while the tunnel runs, and a full pipe
        # would block ssh.
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
            try:
                yield lambda: _exited(proc, err, f"the SSH tunnel to {cluster}")
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    # ------------------------------------------------------------------ plain cluster

    def _run_on_cluster(self, context, cluster: str, plan: RemotePlan,
                        reader: LogStreamMessageReader) -> tuple[int, float | None]:
        sky = self.sky
        job_id, handle = self._live_job(cluster)
        if job_id is not None:
            context.log.info(f"[skypilot] re-attaching to job {job_id} on live cluster {cluster}")
        else:
            task = sky.Task.from_yaml_config(copy.deepcopy(plan.config))  # it mutates
            # No `down=True` here: it would delete the cluster as soon as the job ends, before
            # the outputs are copied back. The YAML's autostop(down) is the safety net and
            # `_teardown` the normal path.
            with self._timed_upload():
                job_id, handle = sky.stream_and_get(sky.launch(task, cluster_name=cluster))
            context.log.info(f"[skypilot] launched job {job_id} on {cluster}: uploaded "
                             f"{plan.upload_bytes / 1e6:.1f} MB of inputs in {self._upload_seconds:.0f} s")
        hourly = self._hourly_price(handle, cluster)
        sink = reader.stream()
        try:
            with self._reverse_forwards(cluster, plan.loopback_ports):
                exit_code = sky.tail_logs(cluster, job_id, follow=True, output_stream=sink)
        finally:
            sink.flush()
        if exit_code != 0:
            raise StageLaunchError(
                f"remote job {job_id} on {cluster} failed (exit code {exit_code}); "
                f"last lines of its log:\n{reader.tail()}")
        return job_id, hourly

    @contextmanager
    def _timed_upload(self) -> Iterator[None]:
        """Time a launch request: it provisions the box and uploads the file mounts."""
        t0 = self.clock()
        try:
            yield
        finally:
            self._upload_seconds = self.clock() - t0

    def _live_job(self, cluster: str) -> tuple[int | None, Any]:
        """(job id, handle) of this stage's job on an UP cluster of this run, else (None, None)."""
        sky = self.sky
        records = sky.get(sky.status(cluster_names=[cluster]))
        record = next((r for r in records or [] if _field(r, "name") == cluster), None)
        if record is None or _state(_field(record, "status")) not in LIVE_CLUSTER:
            return None, None
        jobs = sky.get(sky.queue(cluster))
        jobs = sorted(jobs or [], key=lambda j: _field(j, "job_id") or 0)
        if jobs and _state(_field(jobs[-1], "status")) in ACTIVE_JOB:
            return _field(jobs[-1], "job_id"), _field(record, "handle")
        return None, None

    def _hourly_price(self, handle: Any, cluster: str) -> float | None:
        resources = getattr(handle, "launched_resources", None)
        try:
            return float(resources.get_cost(3600)) if resources is not None else None
        except Exception:  # a price is nice to have; never fail a finished stage over it
            return None

    # ------------------------------------------------------------------ managed (spot)

    def _run_managed(self, context, name: str, plan: RemotePlan,
                     reader: LogStreamMessageReader) -> tuple[int, float | None]:
        sky = self.sky
        job_id = self._live_managed_job(name)
        if job_id is not None:
            context.log.info(f"[skypilot] re-attaching to managed job {job_id} ({name})")
        else:
            task = sky.Task.from_yaml_config(copy.deepcopy(plan.config))  # it mutates
            with self._timed_upload():
                job_ids, _ = sky.stream_and_get(sky.jobs.launch(task, name=name))
            job_id = job_ids[0]
            context.log.info(f"[skypilot] launched managed spot job {job_id} ({name})")
        self._managed_job_id = job_id
        sink = reader.stream()
        try:
            exit_code = sky.jobs.tail_logs(job_id=job_id, follow=True, output_stream=sink)
        finally:
            sink.flush()
        if exit_code not in (0, None):
            raise StageLaunchError(
                f"managed job {job_id} ({name}) failed (exit code {exit_code}); "
                f"last lines of its log:\n{reader.tail()}")
        return job_id, None

    def _live_managed_job(self, name: str) -> int | None:
        sky = self.sky
        jobs = sky.get(sky.jobs.queue(refresh=False, skip_finished=True))
        for job in jobs or []:
            if _field(job, "job_name") == name:
                return _field(job, "job_id")
        return None

    # ------------------------------------------------------------------ outputs and teardown

    def _bring_back(self, context, cluster: str, plan: RemotePlan, reported) -> None:
        expected = [r.data_version.value for r in reported
                    if isinstance(r, dg.MaterializeResult) and r.data_version is not None]
        for local, remote in plan.outputs:
            tmp = local.parent / f".{local.name}.tmp-sky-{uuid.uuid4().hex[:8]}"
            local.parent.mkdir(parents=True, exist_ok=True)
            try:
                if self.use_spot:
                    from wikigpt_pipeline.launchers.hub_sync import pull_dir

                    pull_dir(self.hub_repo, f"runs/{cluster}/out/{Path(remote).name}", tmp)
                else:
                    self._rsync(cluster, remote, tmp)
                if expected and len(plan.outputs) == 1 and content_hash(tmp) != expected[-1]:
                    raise StageLaunchError(
                        f"{local.name} came back from {cluster} with content hash "
                        f"{content_hash(tmp)[:12]}, but the stage reported {expected[-1][:12]}")
                swap_into_place(tmp, local)  # old copy aside first, as ArtifactWriter does
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            context.log.info(f"[skypilot] fetched {remote} -> {local}")

    def _rsync(self, cluster: str, remote: str, dest: Path) -> None:
        dest.mkdir(parents=True)
        cmd = ["rsync", "-a", "--partial", "-e", self.ssh, f"{cluster}:{remote}/", f"{dest}/"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise StageLaunchError(f"copying {remote} back from {cluster} failed "
                                   f"({' '.join(cmd)}): {proc.stderr.strip()[-2000:]}")

    def _teardown(self, context, cluster: str, managed: bool = False) -> None:
        sky = self.sky
        if self.keep_cluster:
            context.log.warning(f"[skypilot] keep_cluster=True: {cluster} is still up and billing")
            return
        try:
            if managed:
                job_id = getattr(self, "_managed_job_id", None)
                if job_id is not None:
                    sky.get(sky.jobs.cancel(job_ids=[job_id]))  # no-op once it finished
            else:
                sky.get(sky.down(cluster))
            context.log.info(f"[skypilot] tore down {cluster}")
        except Exception as e:  # never mask the stage's own error; but say it loudly
            if type(e).__name__ == "ClusterDoesNotExist":  # launch failed before creating it
                context.log.info(f"[skypilot] {cluster} does not exist; nothing to tear down")
                return
            context.log.error(f"[skypilot] teardown of {cluster} failed: {e!r}; "
                              f"run `sky down {cluster}` by hand, it may still bill")


def _free_port() -> int:
    """A local port nothing listens on now (ssh refuses to start if it is taken meanwhile)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exited(proc: subprocess.Popen, stderr, what: str) -> str | None:
    """Why `proc` is gone (its exit code and the tail of its stderr file), or None while it runs."""
    if proc.poll() is None:
        return None
    stderr.seek(0)
    return f"{what} exited with code {proc.returncode}: {stderr.read()[-500:].strip()}"


def _wait_ready(base_url: str, api_key: str, timeout_s: float, poll_s: float, clock,
                broken: Callable[[], str | None] = lambda: None) -> None:
    """Poll `GET /v1/models` until vLLM answers 200 (it loads the weights after `run` starts).
    A refused key stops at once, as does the channel (`broken` says why it is gone)."""
    import httpx

    deadline = clock() + timeout_s
    last = "no answer yet"
    while clock() < deadline:
        if (gone := broken()) is not None:
            raise StageLaunchError(f"teacher at {base_url} cannot be reached: {gone}")
        try:
            r = httpx.get(f"{base_url}/models", headers={"Authorization": f"Bearer {api_key}"},
                          timeout=10)
            if r.status_code == 200:
                return
            if r.status_code in AUTH_REFUSED:
                raise StageLaunchError(
                    f"teacher at {base_url} refused the API key (HTTP {r.status_code}); set "
                    f"{TEACHER_KEY_ENVS[0]} to the key the endpoint was started with")
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as e:
            last = type(e).__name__
        time.sleep(poll_s)
    raise StageLaunchError(f"teacher at {base_url} not ready after {timeout_s:.0f} s ({last})")
