"""Control flow of the SkyPilot launcher against a fake of the SkyPilot SDK.

The fake stands in for the calls that need a cloud account (launch, stream_and_get, status,
queue, tail_logs, down, get) and nothing else: the task config the launcher builds is run for
real by `bash` with the task's envs, with HOME pointing at a temp "remote home", so the YAML's
`run` line, sky/run_stage.sh, the remote path rewriting, the stage CLI, Dagster Pipes over the
log stream and the rsync of outputs (through a stand-in for `ssh <cluster>`) are all the real
thing. What is faked is only the rented machine.
"""
import dataclasses
import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from tests.core.train_support import make_tokenizer, stage_spec
from wikigpt_core.artifacts import ArtifactWriter, content_hash, read_manifest
from wikigpt_pipeline.launchers import SkyPilotLauncher, StageLauncher
from wikigpt_pipeline.launchers import skypilot as sky_launcher

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.requires_tool("rsync")  # copies outputs back; skips locally without it, fails in CI

FAKE_SSH = textwrap.dedent('''
    #!{python}
    """`ssh` to a fake cluster, whose remote home is {home}. `ssh -N ... -L L:host:R CLUSTER`
    forwards local port L to what listens on the box's port R (the address the fake SDK wrote to
    .listening/R); `ssh -N ... -R P:host:P CLUSTER` has nothing to do (the fake box is this
    machine, its loopback ours); `ssh CLUSTER CMD` runs CMD in the remote home (as rsync does)."""
    import json, os, socket, sys, threading, time
    from pathlib import Path

    home = Path("{home}")
    args = sys.argv[1:]
    with open(home / ".ssh_calls", "a") as log:
        log.write(json.dumps(args) + "\\n")
    if "-N" not in args:
        os.chdir(home)
        os.execvp("sh", ["sh", "-c", " ".join(args[1:])])
    if "-L" not in args:
        while True:
            time.sleep(60)
    _, local, _, remote = args[args.index("-L") + 1].split(":")
    host, port = (home / ".listening" / remote).read_text().split(":")

    def pump(src, dst):
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)

    listener = socket.create_server(("127.0.0.1", int(local)))
    while True:
        client, _ = listener.accept()
        upstream = socket.create_connection((host, int(port)))
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=pump, args=(a, b), daemon=True).start()
''').lstrip()

FIXTURE_STAGE = textwrap.dedent('''
    import argparse
    from pathlib import Path
    from wikigpt_core.artifacts import ArtifactWriter
    from wikigpt_core.pipes_bridge import stage_reporter

    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--fail-at", type=int, default=-1)
    p.add_argument("--note", default="")
    a = p.parse_args()
    with stage_reporter("fixture") as rep:
        with ArtifactWriter(a.out, stage="fixture") as w:
            for step in range(3):
                print(f"training step {step}", flush=True)
                if step == a.fail_at:
                    raise RuntimeError(f"CUDA error: fixture blew up at step {step}")
                rep.metrics({"loss/train": 4.0 - step}, step)
            (w.dir / "weights.bin").write_bytes(b"w" * 64)
            w.stats["steps"] = 3
            w.stats["note"] = a.note
        rep.report(w.result)
''')


class FakeHandle:
    class launched_resources:  # noqa: N801 - mirrors the SDK's attribute name
        @staticmethod
        def get_cost(seconds: float) -> float:
            return 0.40 * seconds / 3600  # an RTX 4090 on vast at $0.40/h


class FakeTask:
    def __init__(self, config: dict) -> None:
        self.config = config

    @classmethod
    def from_yaml_config(cls, config: dict) -> "FakeTask":
        return cls(config)


class FakeJobs:
    """`sky.jobs`: managed jobs run on a fresh (fake) instance; recovery is SkyPilot's job."""

    def __init__(self, sky: "FakeSky") -> None:
        self.sky = sky
        self.jobs: dict[int, dict] = {}

    def launch(self, task, name=None, **kwargs):
        self.sky.calls.append(("jobs.launch", name))
        return ("jobs_launch", task, name)

    def tail_logs(self, name=None, job_id=None, follow=True, output_stream=None, **kwargs):
        self.sky.calls.append(("jobs.tail_logs", job_id))
        job = self.jobs[job_id]
        if job["status"] not in ("SUCCEEDED", "FAILED"):
            self.sky._run(job)
        output_stream.write(job["log"])
        return 0 if job["status"] == "SUCCEEDED" else 100

    def queue(self, refresh, skip_finished=False, **kwargs):
        self.sky.calls.append(("jobs.queue",))
        return ("jobs_queue", skip_finished)

    def cancel(self, name=None, job_ids=None, **kwargs):
        self.sky.calls.append(("jobs.cancel", tuple(job_ids or ())))
        return ("jobs_cancel", job_ids)


class FakeSky:
    """The SDK calls the launcher makes. Requests are tuples resolved by get/stream_and_get;
    a job runs (synchronously, for real) when its log is tailed with follow=True."""

    Task = FakeTask

    def __init__(self, remote_home: Path) -> None:
        self.remote_home = remote_home
        self.calls: list[tuple] = []
        self.clusters: dict[str, dict] = {}
        self.job_ids = itertools.count(1)
        self.tail_error: BaseException | None = None  # raised by the next tail_logs
        self.down_error: BaseException | None = None  # raised by the next down
        self.serve_at: str | None = None  # host:port the "remote" teacher answers on
        self.jobs = FakeJobs(self)

    # -- request plumbing
    def get(self, request):
        kind, *args = request
        return getattr(self, f"_do_{kind}")(*args)

    stream_and_get = get

    # -- SDK surface
    def launch(self, task, cluster_name=None, **kwargs):
        self.calls.append(("launch", cluster_name))
        return ("launch", task, cluster_name)

    def status(self, cluster_names=None, **kwargs):
        self.calls.append(("status", tuple(cluster_names or ())))
        return ("status", cluster_names)

    def queue(self, cluster_name, **kwargs):
        self.calls.append(("queue", cluster_name))
        return ("queue", cluster_name)

    def down(self, cluster_name, **kwargs):
        self.calls.append(("down", cluster_name))
        if self.down_error is not None:
            err, self.down_error = self.down_error, None
            raise err
        return ("down", cluster_name)

    def tail_logs(self, cluster_name, job_id, follow, tail=0, output_stream=None):
        self.calls.append(("tail_logs", cluster_name, job_id))
        if self.tail_error is not None:
            err, self.tail_error = self.tail_error, None
            raise err
        job = self.clusters[cluster_name]["jobs"][job_id]
        if job["status"] not in ("SUCCEEDED", "FAILED"):
            self._run(job)
        output_stream.write(job["log"])
        return 0 if job["status"] == "SUCCEEDED" else 100

    # -- request bodies
    def _do_launch(self, task, cluster_name):
        cluster = self.clusters.setdefault(cluster_name, {"status": "UP", "jobs": {}})
        for remote, local in (task.config.get("file_mounts") or {}).items():
            dest = self.remote_home / remote.removeprefix("~/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if Path(local).is_dir() else shutil.copyfile)(local, dest)
        job_id = next(self.job_ids)
        cluster["jobs"][job_id] = {"status": "PENDING", "task": task, "log": ""}
        if "vllm serve" in task.config.get("run", ""):  # a server: running until downed
            cluster["jobs"][job_id]["status"] = "RUNNING"
            # The box's loopback port the server listens on, as the fake ssh forwards to it.
            listening = self.remote_home / ".listening" / task.config["envs"]["TEACHER_PORT"]
            listening.parent.mkdir(exist_ok=True)
            listening.write_text(self.serve_at or "127.0.0.1:9")
        return job_id, FakeHandle()

    def _do_jobs_launch(self, task, name):
        job_id = next(self.job_ids)
        self.jobs.jobs[job_id] = {"status": "PENDING", "task": task, "log": "", "name": name}
        return [job_id], None

    def _do_jobs_queue(self, skip_finished):
        return [{"job_id": i, "job_name": j["name"], "status": j["status"]}
                for i, j in self.jobs.jobs.items()
                if not (skip_finished and j["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"))]

    def _do_jobs_cancel(self, job_ids):
        for i in job_ids:
            if self.jobs.jobs[i]["status"] not in ("SUCCEEDED", "FAILED"):
                self.jobs.jobs[i]["status"] = "CANCELLED"

    def _do_status(self, names):
        return [{"name": n, "status": c["status"], "handle": FakeHandle()}
                for n, c in self.clusters.items() if not names or n in names]

    def _do_queue(self, cluster_name):
        return [{"job_id": i, "status": j["status"]}
                for i, j in self.clusters[cluster_name]["jobs"].items()]

    def _do_down(self, cluster_name):
        self.clusters.pop(cluster_name, None)

    def _run(self, job) -> None:
        cfg = job["task"].config
        env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               "HOME": str(self.remote_home),
               "PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO))}
        env.update(cfg["envs"])
        env.update({k: v for k, v in cfg["secrets"].items() if v})
        proc = subprocess.run(["bash", "-c", cfg["run"]], cwd=cfg["workdir"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        job["log"] = "".join(f"(task, pid=4242) {line}\n" for line in proc.stdout.splitlines())
        job["status"] = "SUCCEEDED" if proc.returncode == 0 else "FAILED"

    def launched(self) -> int:
        return sum(1 for c in self.calls if c[0] == "launch")


@pytest.fixture()
def remote(tmp_path, monkeypatch):
    """A fake SkyPilot, a fake remote home, and an `ssh <cluster>` stand-in for rsync and the
    teacher's port-forward."""
    home = tmp_path / "remote_home"
    home.mkdir()
    fake = FakeSky(home)
    monkeypatch.setattr(sky_launcher, "load_sky", lambda: fake)
    fake_ssh = tmp_path / "fake_ssh"
    fake_ssh.write_text(FAKE_SSH.format(python=sys.executable, home=home))
    fake_ssh.chmod(0o755)
    pkgs = tmp_path / "pkgs" / "wg_fixture"
    pkgs.mkdir(parents=True)
    (pkgs / "__init__.py").write_text("")
    (pkgs / "stage.py").write_text(FIXTURE_STAGE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(pkgs.parent), str(REPO)]))
    monkeypatch.setenv("HF_TOKEN", "hf_test_secret_value")
    monkeypatch.delenv("WIKIGPT_CONFIG", raising=False)
    sky_dir = tmp_path / "sky"
    sky_dir.mkdir()
    # The fixture task is the real pretrain task with only the stage module swapped.
    text = (REPO / "sky" / "pretrain.yaml").read_text()
    (sky_dir / "fixture.yaml").write_text(
        text.replace("bash sky/run_stage.sh", "bash sky/run_stage.sh wg_fixture.stage"))
    shutil.copy(REPO / "sky" / "pretrain.yaml", sky_dir / "pretrain.yaml")
    launcher = SkyPilotLauncher(sky_dir=str(sky_dir), ssh=str(fake_ssh),
                               env={"WANDB_MODE": "disabled"})
    return fake, launcher


@pytest.fixture()
def clock(monkeypatch):
    """The launcher's clock: 1,000 s at its first reading, 1,900 s at every later one, so a
    stage (or the teacher) is billed for exactly 900 s = 0.25 GPU-hours on one GPU."""
    readings = itertools.chain([1000.0], itertools.repeat(1900.0))
    build = sky_launcher.SkyPilotRunner.from_resource.__func__

    def from_resource(cls, res):
        return dataclasses.replace(build(cls, res), clock=lambda: next(readings))

    monkeypatch.setattr(sky_launcher.SkyPilotRunner, "from_resource", classmethod(from_resource))


def _materialize(asset, launcher, **kwargs):
    instance = dg.DagsterInstance.ephemeral()
    return dg.materialize([asset], resources={"launcher": launcher}, instance=instance,
                          raise_on_error=False, **kwargs), instance


def _fixture_asset(out: Path, extra_args=(), retry_policy=None):
    @dg.asset(name="fixture_checkpoint", retry_policy=retry_policy)
    def fixture_checkpoint(context: dg.AssetExecutionContext, launcher: StageLauncher):
        return launcher.run_stage(context, "fixture", ["--out", str(out), *extra_args], [out])

    return fixture_checkpoint


def test_success_streams_pipes_over_the_log_and_rsyncs_outputs_back(tmp_path, remote, clock):
    fake, launcher = remote
    out = tmp_path / "local_home" / "fixture_checkpoint"
    note = "it's a \"quoted\" note; $HOME `whoami` ~/x * | rm -rf /nothing"
    res, instance = _materialize(_fixture_asset(out, ["--note", note]), launcher)
    assert res.success
    md = {k: v.value for k, v in res.asset_materializations_for_node("fixture_checkpoint")[0]
          .metadata.items()}
    assert md["steps"] == 3 and md["last/loss/train"] == 2.0     # from Pipes messages in the log
    assert md["note"] == note            # survived shell quoting through the remote `eval`
    assert md["backend"] == "skypilot" and md["cluster"].startswith("wikigpt-fixture-")
    # 900 s on one RTX 4090 at the price the handle reports ($0.40/h): 0.25 GPU-hours, $0.10.
    assert md["wall_seconds"] == 900.0 and md["gpu_hours"] == 0.25
    assert md["hourly_price_usd"] == 0.4 and md["cost_usd"] == pytest.approx(0.10)
    # The artifact came back byte-identical to what the "remote" stage hashed.
    assert md["content_hash"] == content_hash(out) == read_manifest(out)["content_hash"]
    assert [c[0] for c in fake.calls] == ["status", "launch", "tail_logs", "down"]
    assert fake.clusters == {}
    logs = "\n".join(r.user_message for r in instance.all_logs(res.run_id))
    assert "[fixture] step 1: loss/train=3" in logs                # live metric lines
    assert "hf_test_secret_value" not in logs                      # secrets never logged


def test_failure_mid_run_tears_down_and_quotes_the_remote_log(tmp_path, remote):
    fake, launcher = remote
    out = tmp_path / "fixture_checkpoint"
    res, _ = _materialize(_fixture_asset(out, ["--fail-at", "1"]), launcher)
    assert not res.success
    err = res.get_step_failure_events()[0].step_failure_data.error.cause
    assert err.cls_name == "StageLaunchError"
    assert "exit code 100" in err.message
    assert "training step 1" in err.message                        # tail of the remote log
    assert "RuntimeError: CUDA error: fixture blew up at step 1" in err.message
    assert ("down", md_cluster(fake)) in fake.calls and fake.clusters == {}
    assert not out.exists()


def test_sdk_error_while_following_still_tears_down(tmp_path, remote):
    fake, launcher = remote
    fake.tail_error = ConnectionError("lost the API server mid-run")
    res, _ = _materialize(_fixture_asset(tmp_path / "o"), launcher)
    assert not res.success
    assert "lost the API server" in res.get_step_failure_events()[0].step_failure_data.error.cause.message
    assert [c[0] for c in fake.calls][-1] == "down" and fake.clusters == {}


def test_retry_reattaches_to_the_live_cluster_instead_of_launching_again(tmp_path, remote):
    """Attempt 1 loses the SDK mid-run and cannot tear down either (the cluster stays up);
    the retry finds the run's cluster UP with the job still going and follows it."""
    fake, launcher = remote
    fake.tail_error = ConnectionError("lost the API server mid-run")
    fake.down_error = ConnectionError("still no API server")
    out = tmp_path / "fixture_checkpoint"
    asset = _fixture_asset(out, retry_policy=dg.RetryPolicy(max_retries=1))
    res, instance = _materialize(asset, launcher)
    assert res.success
    assert fake.launched() == 1                                    # no second cluster
    tails = [c for c in fake.calls if c[0] == "tail_logs"]
    assert len(tails) == 2 and tails[0][1:] == tails[1][1:]        # same cluster, same job
    assert fake.clusters == {}                                     # torn down after success
    md = {k: v.value for k, v in res.asset_materializations_for_node("fixture_checkpoint")[0]
          .metadata.items()}
    assert md["steps"] == 3 and md["content_hash"] == content_hash(out)
    logs = "\n".join(r.user_message for r in instance.all_logs(res.run_id))
    assert "re-attaching to job 1" in logs and "teardown of" in logs


def test_real_pretrain_task_yaml_end_to_end(tmp_path, remote):
    """The shipped sky/pretrain.yaml + run_stage.sh + the real pretrain CLI on tiny inputs."""
    fake, launcher = remote
    shards = tmp_path / "token_shards"
    shards.mkdir()
    rng = np.random.default_rng(0)
    rng.integers(0, 4096, 8_000, dtype=np.uint16).tofile(shards / "train.bin")
    rng.integers(0, 4096, 2_000, dtype=np.uint16).tofile(shards / "val.bin")
    (shards / "meta.json").write_text('{"vocab_size": 4096, "dtype": "uint16"}')
    toml = ('[pretrain]\nmax_steps = 2\nbatch_size = 2\nseq_len = 64\nwarmup_steps = 1\n'
            'eval_iters = 1\nlog_interval = 1\ncompile = "off"\n')
    make_tokenizer(tmp_path / "tokenizer")
    out, work = tmp_path / "base_checkpoint", tmp_path / "_work" / "base_checkpoint"
    # The config travels inside the spec, which the launcher rewrites to remote paths and uploads.
    spec = stage_spec(tmp_path / "specs", "base_checkpoint", toml,
                      {"token_shards": shards, "tokenizer": tmp_path / "tokenizer"}, out, work)
    # An ancestor in the lineage (figures for a model card), as a resolved 124m spec has the
    # ~22 GB dump: it must not travel, and the remote stage must not need it.
    with ArtifactWriter(tmp_path / "wiki_dump", stage="wiki_dump") as w:
        (w.dir / "enwiki.xml.bz2").write_bytes(b"x" * 200_000)
    resolved = json.loads(spec.read_text())
    resolved["lineage"]["wiki_dump"] = {"path": str(w.out), "content_hash": read_manifest(w.out)["content_hash"]}
    # A rented teacher for this run, at the local end of its SSH port-forward.
    resolved["services"] = {"teacher_url": "http://127.0.0.1:48123/v1"}
    spec.write_text(json.dumps(resolved))

    @dg.asset(name="base_checkpoint")
    def base_checkpoint(context: dg.AssetExecutionContext, launcher: StageLauncher):
        return launcher.run_stage(context, "base_checkpoint", ["--spec", str(spec)], [out])

    res, _ = _materialize(base_checkpoint, launcher)
    assert res.success, res.get_step_failure_events()[0].step_failure_data.error.cause.message
    md = {k: v.value for k, v in res.asset_materializations_for_node("base_checkpoint")[0]
          .metadata.items()}
    assert md["steps"] == 2                                  # the spec's config reached the remote
    assert md["last_step"] == 2 and md["last/loss/train"] > 0    # live metrics over the log
    assert md["content_hash"] == content_hash(out)
    assert (out / "model.safetensors").exists()
    uploaded = fake.remote_home / "wikigpt_io" / "in"
    assert (uploaded / "token_shards" / "train.bin").exists()
    remote_spec = json.loads((uploaded / "spec.json").read_text())
    assert remote_spec["inputs"]["token_shards"]["path"] == "~/wikigpt_io/in/token_shards"
    assert remote_spec["out"] == "~/wikigpt_io/out/base_checkpoint"
    # Only the inputs travelled, and the stage ran without the rest of its lineage.
    assert sorted(p.name for p in uploaded.iterdir()) == ["spec.json", "token_shards", "tokenizer"]
    assert set(remote_spec["lineage"]) == {"token_shards", "tokenizer"}
    # What the launch uploaded, in the metadata (the fixture's clock does not move here).
    assert md["upload_bytes"] == sum(f.stat().st_size for f in uploaded.rglob("*") if f.is_file())
    assert 0 < md["upload_bytes"] < 200_000 and md["upload_seconds"] >= 0
    # The teacher's port reached the box's loopback through `ssh -R`, for the stage's run.
    calls = [json.loads(line) for line in (fake.remote_home / ".ssh_calls").read_text().splitlines()]
    (tunnel,) = [call for call in calls if "-N" in call]
    assert tunnel[tunnel.index("-R") + 1] == "127.0.0.1:48123:127.0.0.1:48123"
    assert tunnel[-1] == md["cluster"]


def md_cluster(fake) -> str:
    return next(c[1] for c in fake.calls if c[0] == "launch")


# --- the teacher endpoint --------------------------------------------------------------------

class _ModelsHandler(__import__("http.server").server.BaseHTTPRequestHandler):
    """vLLM's /v1/models as the launcher's readiness poll sees it; every request is recorded."""

    polls: list[tuple[str, str | None]] = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.polls.append((self.path, self.headers.get("Authorization")))
        ok = self.path == "/v1/models" and self.headers.get("Authorization") == "Bearer k-123"
        self.send_response(200 if ok else 401)
        self.end_headers()
        self.wfile.write(b'{"data": [{"id": "Qwen/Qwen2.5-7B-Instruct"}]}' if ok else b"{}")

    def log_message(self, *args):
        pass


def test_teacher_endpoint_serves_then_always_tears_down(remote, monkeypatch, clock):
    """sky/teacher.yaml is launched, reached through an SSH port-forward to the cluster's alias,
    polled over real HTTP until vLLM's /v1/models answers (with the API key), yielded, and downed
    when the block exits; its GPU time and cost land in the figures though the block failed."""
    import http.server
    import threading

    fake, base = remote
    launcher = SkyPilotLauncher(**{**base.model_dump(), "hourly_price_usd": 0.4})
    shutil.copy(REPO / "sky" / "teacher.yaml", Path(launcher.sky_dir) / "teacher.yaml")
    polls: list[tuple[str, str | None]] = []
    handler = type("Handler", (_ModelsHandler,), {"polls": polls})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fake.serve_at = f"127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("WIKIGPT_TEACHER_API_KEY", "k-123")
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret")  # the teacher box must get neither
    seen, figures = {}, {}

    @dg.asset(name="sft_dataset")
    def sft_dataset(context: dg.AssetExecutionContext, launcher: StageLauncher):
        with launcher.teacher_endpoint(context, figures) as url:
            seen["url"] = url
            seen["polls_before_yield"] = list(polls)
            task = next(iter(fake.clusters.values()))["jobs"][1]["task"]
            seen["secrets"], seen["envs"] = dict(task.config["secrets"]), dict(task.config["envs"])
            seen["run"], seen["resources"] = task.config["run"], dict(task.config["resources"])
            raise RuntimeError("generation failed halfway")

    try:
        res, _ = _materialize(sft_dataset, launcher)
    finally:
        server.shutdown()
    assert not res.success                                     # the block's error propagates
    assert "generation failed halfway" in res.get_step_failure_events()[0].step_failure_data.error.cause.message
    # The private line: the URL is the local end of `ssh -N -L <port>:127.0.0.1:8001 <cluster>`,
    # the box opens no port, and vLLM listens on its loopback only.
    cluster = md_cluster(fake)
    (tunnel,) = [json.loads(line) for line in (fake.remote_home / ".ssh_calls").read_text().splitlines()]
    local_port = seen["url"].removeprefix("http://127.0.0.1:").removesuffix("/v1")
    assert seen["url"] == f"http://127.0.0.1:{local_port}/v1" != f"http://{fake.serve_at}/v1"
    assert tunnel[0] == "-N" and tunnel[-1] == cluster
    assert tunnel[tunnel.index("-L") + 1] == f"127.0.0.1:{local_port}:127.0.0.1:8001"
    assert "ports" not in seen["resources"] and "--host 127.0.0.1" in seen["run"]
    # Before yielding, the launcher waited for vLLM, through the tunnel, with the key from
    # WIKIGPT_TEACHER_API_KEY.
    assert seen["polls_before_yield"] == [("/v1/models", "Bearer k-123")]
    # Only the secrets a serving box needs: the key (a secret, never an env), no HF write
    # token, no W&B key.
    assert seen["secrets"] == {"VLLM_API_KEY": "k-123", "HF_READ_TOKEN": ""}
    assert "k-123" not in seen["envs"].values()
    assert not {"hf_test_secret_value", "wandb-secret"} & {*seen["envs"].values(), *seen["secrets"].values()}
    # The launched task serves the model sky/teacher.yaml names, the id /v1/models reports.
    assert seen["envs"]["TEACHER_MODEL"] == "Qwen/Qwen2.5-7B-Instruct"
    assert '"$TEACHER_MODEL"' in seen["run"]
    assert figures == {"teacher_gpu_hours": 0.25, "teacher_cost_usd": 0.1}   # 900 s at $0.40/h
    assert [c[0] for c in fake.calls][-1] == "down" and fake.clusters == {}


def test_teacher_refuses_to_serve_without_an_api_key(remote, monkeypatch):
    fake, launcher = remote
    monkeypatch.delenv("WIKIGPT_TEACHER_API_KEY", raising=False)
    monkeypatch.delenv("VLLM_API_KEY", raising=False)

    @dg.asset(name="sft_dataset")
    def sft_dataset(context: dg.AssetExecutionContext, launcher: StageLauncher):
        with launcher.teacher_endpoint(context):
            pass

    res, _ = _materialize(sft_dataset, launcher)
    assert not res.success and fake.launched() == 0
    assert "WIKIGPT_TEACHER_API_KEY" in res.get_step_failure_events()[0].step_failure_data.error.cause.message


def test_spot_without_durable_storage_is_refused_before_renting(tmp_path, remote):
    fake, launcher = remote
    spot = SkyPilotLauncher(**{**launcher.model_dump(), "use_spot": True, "hub_repo": None})
    res, _ = _materialize(_fixture_asset(tmp_path / "o"), spot)
    assert not res.success and fake.calls == []
    assert "hub_repo" in res.get_step_failure_events()[0].step_failure_data.error.cause.message


# --- managed (spot) jobs ---------------------------------------------------------------------

def test_spot_runs_as_a_managed_job_and_outputs_come_back_through_durable_storage(tmp_path, remote):
    """use_spot: sky.jobs.launch, follow sky.jobs.tail_logs, outputs pushed by run_stage.sh to
    the durable store (a file:// store stands in for the HF Hub) and pulled back from there."""
    fake, launcher = remote
    hub = tmp_path / "hub"
    spot = SkyPilotLauncher(**{**launcher.model_dump(), "use_spot": True,
                              "hub_repo": f"file://{hub}",
                              "ssh": "/bin/false"})  # any rsync attempt would fail
    out = tmp_path / "fixture_checkpoint"
    res, _ = _materialize(_fixture_asset(out), spot)
    assert res.success, res.get_step_failure_events()[0].step_failure_data.error.cause.message
    kinds = [c[0] for c in fake.calls]
    assert kinds == ["jobs.queue", "jobs.launch", "jobs.tail_logs", "jobs.cancel"]
    assert "launch" not in kinds and "down" not in kinds         # no plain cluster involved
    md = {k: v.value for k, v in res.asset_materializations_for_node("fixture_checkpoint")[0]
          .metadata.items()}
    assert md["backend"] == "skypilot-spot" and md["steps"] == 3
    assert md["content_hash"] == content_hash(out)
    cluster = md["cluster"]
    assert (hub / "runs" / cluster / "out" / "fixture_checkpoint" / "weights.bin").exists()
    job = next(iter(fake.jobs.jobs.values()))
    assert job["task"].config["resources"]["use_spot"] is True
    assert job["task"].config["envs"]["WIKIGPT_HUB_PREFIX"] == f"runs/{cluster}"


def test_teacher_refusing_the_key_stops_at_the_first_poll(remote, monkeypatch):
    """A 401 while waiting for the rented teacher is not "not ready yet": the launcher stops at
    once, names the key variable, and still tears the box down."""
    import http.server
    import threading

    fake, launcher = remote
    shutil.copy(REPO / "sky" / "teacher.yaml", Path(launcher.sky_dir) / "teacher.yaml")
    polls: list[tuple[str, str | None]] = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_ModelsHandler,), {"polls": polls}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    fake.serve_at = f"127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("WIKIGPT_TEACHER_API_KEY", "k-wrong")  # the server expects k-123

    @dg.asset(name="sft_dataset")
    def sft_dataset(context: dg.AssetExecutionContext, launcher: StageLauncher):
        with launcher.teacher_endpoint(context):
            raise AssertionError("never yielded: the key was refused")

    try:
        res, _ = _materialize(sft_dataset, launcher)
    finally:
        server.shutdown()
    assert not res.success
    message = res.get_step_failure_events()[0].step_failure_data.error.cause.message
    assert "refused the API key (HTTP 401)" in message and "WIKIGPT_TEACHER_API_KEY" in message
    assert "k-wrong" not in message
    assert polls == [("/v1/models", "Bearer k-wrong")]             # one poll, no retry loop
    assert [c[0] for c in fake.calls][-1] == "down" and fake.clusters == {}
