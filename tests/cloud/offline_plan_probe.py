"""Run inside an isolated HOME (seeded catalog + fake vast key), with the network blocked:
plan every GPU stage through the launcher, hand the plans to SkyPilot's own optimizer, and
dry-run the pretrain launch. Prints one JSON object with what SkyPilot chose.

Started as a subprocess by test_sky_tasks.py because SkyPilot fixes its state paths (~/.sky)
when it is imported; the test process's HOME must stay untouched.
"""
import copy
import json
import sys
from pathlib import Path

import sky
from sky import check as sky_check
from sky import execution, optimizer
from sky.clouds import cloud as cloud_lib

from wikigpt_core.config import load_settings
from wikigpt_core.stages import STAGES, resolve_spec
from wikigpt_pipeline.launchers.remote_plan import plan_task

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
            "image": str(best.image_id)}


def main(scratch: Path) -> None:
    enabled = sky_check.check_capability(cloud_lib.CloudCapability.COMPUTE, quiet=True,
                                         clouds=["vast"])
    inputs = {name: scratch / name for name in ("token_shards", "tokenizer", "sft_dataset",
                                                "base_checkpoint", "preference_dataset",
                                                "sft_checkpoint", "dpo_checkpoint")}
    for path in inputs.values():
        path.mkdir(parents=True, exist_ok=True)
        (path / "manifest.json").write_text(json.dumps({"content_hash": "0" * 64}))
    out = scratch / "outputs"
    # Each launched stage's spec, resolved as the asset resolves it (124m profile).
    settings = load_settings("124m", env=False)
    stages = {}
    for name in ("base_checkpoint", "sft_checkpoint", "dpo_checkpoint", "eval_report"):
        stage_inputs = {dep: inputs[dep] for dep in STAGES[name].inputs}
        spec = resolve_spec(settings, name, stage_inputs, out=out / name, work=scratch / "_work" / name)
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
                                  "file_mounts": mounts}
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
    job_id, handle = execution.launch(sky.Task.from_yaml_config(copy.deepcopy(plans["base_checkpoint"].config)),
                                      cluster_name="wikigpt-pretrain-dryrun0", dryrun=True,
                                      _quiet_optimizer=True)
    result["dryrun"] = {"job_id": job_id, "handle": handle is not None}
    print("PROBE-RESULT " + json.dumps(result, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
