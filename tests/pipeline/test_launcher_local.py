"""The LocalLauncher runs a real stage subprocess through Dagster Pipes.

The asset's metadata and DataVersion must come from what the child process reported over
Pipes (the parent never reads the artifact), and a failing stage must fail the asset with the
child's own traceback in the error.
"""

import os
import sys
import textwrap
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from wikigpt_core.artifacts import content_hash, read_manifest
from wikigpt_pipeline.launchers import LocalLauncher, SkyPilotLauncher, StageLauncher, launcher_from_env

REPO = Path(__file__).resolve().parents[2]

# A minimal stage CLI shaped like the real ones: ArtifactWriter + stage_reporter.
FIXTURE_STAGE = textwrap.dedent('''
    import argparse, json, sys
    from pathlib import Path
    from wikigpt_core.artifacts import ArtifactWriter
    from wikigpt_core.pipes_bridge import stage_reporter

    def main():
        p = argparse.ArgumentParser()
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--steps", type=int, default=3)
        p.add_argument("--fail-at", type=int, default=-1)
        a = p.parse_args()
        with stage_reporter("fixture") as rep:
            with ArtifactWriter(a.out, stage="fixture") as w:
                for step in range(a.steps):
                    if step == a.fail_at:
                        raise RuntimeError(f"fixture blew up at step {step}")
                    rep.metrics({"loss/train": 5.0 - step, "tps": 100 + step}, step)
                (w.dir / "weights.txt").write_text("x" * a.steps)
                w.stats.update({"steps": a.steps, "nested": {"a": 1.5},
                                "ppl_table": [{"ckpt": "base", "ppl": 13.8}, {"ckpt": "sft", "ppl": 14.7}]})
            rep.report(w.result)

    if __name__ == "__main__":
        main()
''')


@pytest.fixture()
def fixture_stage(tmp_path, monkeypatch) -> str:
    pkg = tmp_path / "pkgs" / "wg_fixture"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "stage.py").write_text(FIXTURE_STAGE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "pkgs"), str(REPO)]))
    return "wg_fixture.stage"


def _asset_for(stage: str, args: list[str], out: Path) -> dg.AssetsDefinition:
    @dg.asset(name="fixture_artifact")
    def fixture_artifact(context: dg.AssetExecutionContext, launcher: StageLauncher):
        return launcher.run_stage(context, stage, args, [out])

    return fixture_artifact


def test_metadata_and_data_version_come_from_pipes(tmp_path, fixture_stage):
    out = tmp_path / "art"
    asset = _asset_for(fixture_stage, ["--out", str(out), "--steps", "4"], out)
    instance = dg.DagsterInstance.ephemeral()
    res = dg.materialize([asset], resources={"launcher": LocalLauncher()}, instance=instance)
    assert res.success
    mat = res.asset_materializations_for_node("fixture_artifact")[0]
    md = {k: v.value for k, v in mat.metadata.items()}
    assert md["steps"] == 4 and md["nested/a"] == 1.5          # flattened stage stats
    table = mat.metadata["ppl_table"]                          # row lists render as tables
    assert isinstance(table, dg.TableMetadataValue) and table.records[1].data["ppl"] == 14.7
    assert md["last/loss/train"] == 2.0 and md["last_step"] == 3  # from the metric messages
    assert md["backend"] == "local" and md["wall_seconds"] > 0
    # The DataVersion is the child's content hash, and it matches the bytes on disk.
    assert mat.tags["dagster/data_version"] == content_hash(out) == read_manifest(out)["content_hash"]
    # Metric updates were streamed as log lines while the child ran.
    logs = [r.user_message for r in instance.all_logs(res.run_id)]
    assert "[fixture] step 2: loss/train=3 tps=102" in logs


def test_failure_carries_the_child_traceback(tmp_path, fixture_stage):
    out = tmp_path / "art"
    asset = _asset_for(fixture_stage, ["--out", str(out), "--fail-at", "1"], out)
    res = dg.materialize([asset], resources={"launcher": LocalLauncher()},
                         instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    assert not res.success
    error = res.get_step_failure_events()[0].step_failure_data.error
    assert error.cause.cls_name == "StageLaunchError"  # wrapped by Dagster's step error
    assert "RuntimeError: fixture blew up at step 1" in error.cause.message
    assert not out.exists()  # the atomic writer left nothing behind


# Tiny profile, shrunk further so the real training takes seconds on a shared CPU.
TINY_TRAIN_TOML = """
[pretrain]
max_steps = 3
batch_size = 2
seq_len = 64
warmup_steps = 1
eval_iters = 1
log_interval = 1
compile = "off"
"""


def _random_shards(directory: Path, vocab: int = 4_096) -> Path:
    """A token_shards-shaped dir of random uint16 ids (what the trainer memory-maps)."""
    import json

    directory.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rng.integers(0, vocab, 8_000, dtype=np.uint16).tofile(directory / "train.bin")
    rng.integers(0, vocab, 2_000, dtype=np.uint16).tofile(directory / "val.bin")
    (directory / "meta.json").write_text(json.dumps(
        {"vocab_size": vocab, "dtype": "uint16", "train_tokens": 8_000, "val_tokens": 2_000}))
    return directory


def test_real_tiny_pretrain_through_pipes(tmp_path):
    """The real stage CLI (`python -m wikigpt_core.run base_checkpoint --spec FILE`), launched as
    the base_checkpoint asset."""
    from tests.core.train_support import make_tokenizer, stage_spec

    shards = _random_shards(tmp_path / "token_shards")
    make_tokenizer(tmp_path / "tokenizer")
    out, work = tmp_path / "base_checkpoint", tmp_path / "_work"
    spec = stage_spec(tmp_path / "specs", "base_checkpoint", TINY_TRAIN_TOML,
                      {"token_shards": shards, "tokenizer": tmp_path / "tokenizer"}, out, work)

    @dg.asset(name="base_checkpoint")
    def base_checkpoint(context: dg.AssetExecutionContext, launcher: StageLauncher):
        return launcher.run_stage(context, "base_checkpoint", ["--spec", str(spec)], [out])

    instance = dg.DagsterInstance.ephemeral()
    launcher = LocalLauncher(env={"WANDB_MODE": "disabled"})
    res = dg.materialize([base_checkpoint], resources={"launcher": launcher}, instance=instance)
    assert res.success
    mat = res.asset_materializations_for_node("base_checkpoint")[0]
    md = {k: v.value for k, v in mat.metadata.items()}
    manifest = read_manifest(out)
    # Every figure below crossed the process boundary only as a Pipes message.
    assert md["steps"] == 3 == manifest["stats"]["steps"]
    assert md["params"] == manifest["stats"]["params"] > 0
    assert abs(md["val_loss"] - manifest["stats"]["val_loss"]) < 1e-9
    assert md["backend"] == "local"
    # Live metrics arrived as Pipes messages while it trained: log lines and last values.
    assert md["last_step"] == 3 and md["last/loss/train"] > 0
    logs = [r.user_message for r in instance.all_logs(res.run_id)]
    assert any(m.startswith("[base_checkpoint] step 1:") and "loss/train=" in m for m in logs)
    assert mat.tags["dagster/data_version"] == manifest["content_hash"] == content_hash(out)
    assert (out / "model.safetensors").exists()


def test_an_unknown_launcher_name_is_a_clear_error():
    with pytest.raises(ValueError, match="WIKIGPT_LAUNCHER='lambda' names no launcher.*local, skypilot"):
        launcher_from_env({"WIKIGPT_LAUNCHER": "lambda"})
    assert type(launcher_from_env({})) is LocalLauncher
    assert type(launcher_from_env({"WIKIGPT_LAUNCHER": "skypilot"})) is SkyPilotLauncher


def test_each_launcher_shows_only_the_fields_that_apply():
    """The Launchpad lists a resource's fields: a local run offers no SkyPilot knobs, and a
    rented one no local process count (the GPU count comes from the task's accelerators)."""
    def launchpad_fields(cls) -> set[str]:
        return set(cls.to_config_schema().as_field().config_type.fields)

    local, sky = launchpad_fields(LocalLauncher), launchpad_fields(SkyPilotLauncher)
    assert local == {"env", "nproc_per_node"}
    assert {"sky_dir", "infra", "accelerators", "use_spot", "hub_repo", "ssh"} <= sky
    assert local & sky == {"env"} and "backend" not in local | sky

    @dg.asset
    def needs_launcher(launcher: StageLauncher) -> None:
        pass

    with pytest.raises(dg.DagsterInvalidConfigError, match="use_spot"):  # a SkyPilot knob, run locally
        dg.materialize([needs_launcher], resources={"launcher": LocalLauncher()},
                       run_config={"resources": {"launcher": {"config": {"use_spot": True}}}})


def test_importing_pipeline_launchers_does_not_need_skypilot():
    code = ("import sys, wikigpt_pipeline.launchers; "
            "assert 'sky' not in sys.modules, 'sky was imported'")
    import subprocess
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_stage_reporter_without_pipes_prints_and_never_imports_dagster(tmp_path):
    """Outside Dagster the same CLI code just prints (a bare GPU box has no Dagster)."""
    code = textwrap.dedent('''
        import sys
        from pathlib import Path
        from wikigpt_core.artifacts import StageResult
        from wikigpt_core.pipes_bridge import stage_reporter
        with stage_reporter("pretrain") as rep:
            rep.metrics({"loss/train": 2.5, "tps": 1000}, 7)
            rep.report(StageResult(Path("/x"), "abc123", {"steps": 7, "nested": {"a": 1}}))
        assert not any(m.startswith(("dagster", "dagster_pipes")) for m in sys.modules), sys.modules
    ''')
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_PIPES")}
    import subprocess
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    assert "[pretrain] step 7: loss/train=2.5 tps=1000" in out
    assert '"content_hash": "abc123"' in out and '"nested/a": 1' in out


LAUNCHER = textwrap.dedent('''
    import subprocess, sys, time
    from wikigpt_pipeline.launchers.local import tied_popen_kwargs

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], **tied_popen_kwargs())
    print(child.pid, flush=True)
    time.sleep(600)
''')


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a reaper that a container may not have."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's prctl")
def test_a_stage_process_dies_with_its_killed_launcher():
    import signal
    import subprocess
    import time

    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    child = int(launcher.stdout.readline())
    try:
        assert os.getpgid(child) == child  # its own group: stopped together with its workers
        assert _alive(child)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(child), "the stage outlived the killed launcher"
    finally:
        launcher.kill()
        if _alive(child):
            os.kill(child, signal.SIGKILL)
