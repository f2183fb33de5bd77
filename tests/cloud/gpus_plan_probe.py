"""Run inside an isolated HOME (seeded catalog with 4-GPU vast offers, fake vast key, network
blocked): plan base_checkpoint through the launcher on `RTX4090:4`, let SkyPilot's optimizer
choose the offer and dry-run the launch, and print the task SkyPilot would run (its envs,
setup and run) with what it chose. Started by test_sky_gpus.py (SkyPilot fixes ~/.sky at import).
"""
import copy
import json
import sys
from pathlib import Path

import sky
from sky import execution, optimizer

from wikigpt_core.config import load_settings
from wikigpt_core.stages import STAGES, resolve_spec
from wikigpt_pipeline.launchers.remote_plan import plan_task

REPO = Path(__file__).resolve().parents[2]


def main(scratch: Path) -> None:
    inputs = {}
    for name in STAGES["base_checkpoint"].inputs:
        inputs[name] = scratch / name
        inputs[name].mkdir(parents=True, exist_ok=True)
        (inputs[name] / "manifest.json").write_text(json.dumps({"content_hash": "0" * 64}))
    out = scratch / "outputs" / "base_checkpoint"
    spec = resolve_spec(load_settings("124m", env=False), "base_checkpoint", inputs, out=out,
                        work=scratch / "_work").write(scratch / "base.spec.json")
    plan = plan_task(sky_dir=REPO / "sky", stage="base_checkpoint", cli_args=["--spec", str(spec)],
                     outputs=[out], workdir=REPO, environ={"HF_TOKEN": "hf_fake"},
                     accelerators="RTX4090:4")
    task = sky.Task.from_yaml_config(copy.deepcopy(plan.config))  # it mutates its argument
    dag = sky.Dag()
    dag.add(task)
    optimizer.Optimizer.optimize(dag, quiet=True)
    best = task.best_resources
    job_id, handle = execution.launch(sky.Task.from_yaml_config(copy.deepcopy(plan.config)),
                                      cluster_name="wikigpt-pretrain-dryrun4", dryrun=True,
                                      _quiet_optimizer=True)
    result = {"instance": best.instance_type, "accelerators": best.accelerators,
              "cloud": str(best.cloud), "hourly": best.get_cost(3600), "num_nodes": task.num_nodes,
              "envs": dict(task.envs), "setup": task.setup, "run": task.run,
              "workdir": task.workdir, "image": next(iter(best.image_id.values())),
              "dryrun": {"job_id": job_id, "handle": handle is not None}}
    print("PROBE-RESULT " + json.dumps(result, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
