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
        (path / "manifest.json").write_text("{}")
    out = scratch / "outputs"
    # The stage CLIs' own flags (python -m wikigpt_core.<stage> --help).
    stages = {
        "pretrain": ["--shards", inputs["token_shards"], "--tokenizer", inputs["tokenizer"],
                     "--out", out / "base_checkpoint", "--work", scratch / "_work" / "base"],
        "sft": ["--base", inputs["base_checkpoint"], "--data", inputs["sft_dataset"],
                "--tokenizer", inputs["tokenizer"], "--out", out / "sft_checkpoint"],
        "dpo": ["--sft", inputs["sft_checkpoint"], "--pairs", inputs["preference_dataset"],
                "--tokenizer", inputs["tokenizer"], "--out", out / "dpo_checkpoint"],
        "evaluate": ["--base", inputs["base_checkpoint"], "--sft", inputs["sft_checkpoint"],
                     "--dpo", inputs["dpo_checkpoint"], "--shards", inputs["token_shards"],
                     "--sft-dataset", inputs["sft_dataset"], "--tokenizer", inputs["tokenizer"],
                     "--out", out / "eval_report"],
    }
    env = {"HF_TOKEN": "hf_fake", "WIKIGPT_PROFILE": "124m"}
    result = {"enabled": {k: list(map(str, v)) for k, v in enabled.items()}, "plans": {}}
    plans = {}
    for stage, args in stages.items():
        plan = plan_task(sky_dir=REPO / "sky", stage=stage, cli_args=[str(a) for a in args],
                         outputs=[Path(args[args.index("--out") + 1])], workdir=REPO,
                         environ=env)
        plans[stage] = plan
        result["plans"][stage] = {"chosen": chosen(plan.config),
                                  "args": plan.config["envs"]["WIKIGPT_STAGE_ARGS"],
                                  "file_mounts": plan.config.get("file_mounts", {})}
    spot = plan_task(sky_dir=REPO / "sky", stage="pretrain",
                     cli_args=[str(a) for a in stages["pretrain"]],
                     outputs=[out / "base_checkpoint"], workdir=REPO, environ=env,
                     use_spot=True, hub_repo="someone/wikigpt-runs")
    result["spot"] = chosen(spot.config)
    teacher = sky.Task.from_yaml(str(REPO / "sky" / "teacher.yaml"))
    teacher_dag = sky.Dag()
    teacher_dag.add(teacher)
    optimizer.Optimizer.optimize(teacher_dag, quiet=True)
    result["teacher_hourly"] = teacher.best_resources.get_cost(3600)
    job_id, handle = execution.launch(sky.Task.from_yaml_config(copy.deepcopy(plans["pretrain"].config)),
                                      cluster_name="wikigpt-pretrain-dryrun0", dryrun=True,
                                      _quiet_optimizer=True)
    result["dryrun"] = {"job_id": job_id, "handle": handle is not None}
    print("PROBE-RESULT " + json.dumps(result, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
