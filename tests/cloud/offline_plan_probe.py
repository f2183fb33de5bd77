"""Run inside an isolated HOME (seeded catalog + fake vast key), with the network blocked:
plan every GPU stage through the launcher, hand the plans to SkyPilot's own optimizer, and
dry-run the pretrain launch. Prints one JSON object with what SkyPilot chose.

Started as a subprocess by test_sky_tasks.py because SkyPilot fixes its state paths (~/.sky)
when it is imported; the test process's HOME must stay untouched.
"""
import copy
import json
import os
import sys
from pathlib import Path

import sky
from sky import check as sky_check
from sky import execution, optimizer
from sky.clouds import cloud as cloud_lib

from wikigpt_core.artifacts import ArtifactWriter, point_current
from wikigpt_core.config import load_settings, version_dir
from wikigpt_core.stages import STAGES, resolve_spec
from wikigpt_pipeline.launchers.remote_plan import plan_task, upload_size

REPO = Path(__file__).resolve().parents[2]


def chosen(config: dict) -> dict:
    task = sky.Task.from_yaml_config(copy.deepcopy(config))  # it mutates its argument
    dag = sky.Dag()
    dag.add(task)
    optimizer.Optimizer.optimize(dag, quiet=True)
    best = task.best_resources
    return {"cloud": str(best.cloud), "instance": best.instance_type,
            "accelerators": best.accelerators, "use_spot": best.use_spot,
            "hourly": best.get_cost(3600), "disk_size": best.disk_size,
            "image": next(iter(best.image_id.values()))}  # {region: image} once optimized


def main(scratch: Path) -> None:
    enabled = sky_check.check_capability(cloud_lib.CloudCapability.COMPUTE, quiet=True,
                                         clouds=["vast"])
    # Every artifact a launched stage could reach, materialized where the assets look, so each
    # spec is resolved as the asset resolves it (124m profile), its lineage back to the dump.
    os.environ["WIKIGPT_HOME"] = str(scratch / "home")
    settings = load_settings("124m", env=False)
    for name in STAGES:
        if name not in ("eval_report", "hf_release"):
            with ArtifactWriter(version_dir(settings, name, "v1"), stage=name) as w:
                (w.dir / "data.bin").write_bytes(b"x" * 1000)
            point_current(w.out)
    out = scratch / "outputs"
    stages, lineage = {}, {}
    for name in [s.name for s in STAGES.values() if s.launched]:
        spec = resolve_spec(settings, name, out=out / name, work=scratch / "_work" / name)
        lineage[name] = sorted(spec.lineage)
        stages[name] = spec.write(scratch / f"{name}.spec.json")
    env = {"HF_TOKEN": "hf_fake"}
    result = {"enabled": {k: list(map(str, v)) for k, v in enabled.items()}, "plans": {}}
    plans = {}
    for stage, spec_file in stages.items():
        plan = plan_task(sky_dir=REPO / "sky", stage=stage, cli_args=["--spec", str(spec_file)],
                         outputs=[out / stage], workdir=REPO, environ=env)
        plans[stage] = plan
        mounts = plan.config.get("file_mounts", {})
        result["plans"][stage] = {"chosen": chosen(plan.config),
                                  "args": plan.config["envs"]["WIKIGPT_STAGE_ARGS"],
                                  "stage": plan.config["envs"]["WIKIGPT_STAGE"],
                                  "remote_spec": json.loads(Path(mounts["~/wikigpt_io/in/spec.json"]).read_text()),
                                  "file_mounts": mounts, "local_lineage": lineage[stage],
                                  "extras": plan.config["envs"]["WIKIGPT_EXTRAS"],
                                  "upload_bytes": plan.upload_bytes,
                                  "mounted_bytes": upload_size(mounts)}
    spot = plan_task(sky_dir=REPO / "sky", stage="base_checkpoint",
                     cli_args=["--spec", str(stages["base_checkpoint"])],
                     outputs=[out / "base_checkpoint"], workdir=REPO, environ=env,
                     use_spot=True, hub_repo="someone/wikigpt-runs")
    result["spot"] = chosen(spot.config)
    teacher = sky.Task.from_yaml(str(REPO / "sky" / "teacher.yaml"))
    teacher_dag = sky.Dag()
    teacher_dag.add(teacher)
    optimizer.Optimizer.optimize(teacher_dag, quiet=True)
    result["teacher_hourly"] = teacher.best_resources.get_cost(3600)
    # The teacher as the launcher plans it, with secrets it must not pass on in the environment.
    teacher_plan = plan_task(sky_dir=REPO / "sky", stage="teacher", cli_args=[], outputs=[], workdir=REPO,
                             environ={"HF_TOKEN": "hf_write", "WANDB_API_KEY": "wandb", "VLLM_API_KEY": "k"})
    planned = sky.Task.from_yaml_config(copy.deepcopy(teacher_plan.config))
    (res,) = planned.resources
    result["teacher_plan"] = {"secrets": {k: "<set>" if v else "<empty>" for k, v in planned.secrets.items()},
                              "ports": res.ports, "image": res.image_id[None], "envs": dict(planned.envs)}
    job_id, handle = execution.launch(sky.Task.from_yaml_config(copy.deepcopy(plans["base_checkpoint"].config)),
                                      cluster_name="wikigpt-pretrain-dryrun0", dryrun=True,
                                      _quiet_optimizer=True)
    result["dryrun"] = {"job_id": job_id, "handle": handle is not None}
    print("PROBE-RESULT " + json.dumps(result, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
