"""preference_dataset is a launched stage: the asset's run goes through the launcher resource (a
local subprocess here, a rented GPU with SkyPilot), and its figures come back over Pipes."""
import shutil

import dagster as dg

from tests.core.test_align_stages import env, sft  # noqa: F401 - fixtures
from tests.core.train_support import stage_spec
from wikigpt_core.artifacts import read_manifest
from wikigpt_core.spec import StageSpec
from wikigpt_core.stages import STAGES
from wikigpt_pipeline.factory import GPU_POOL, run_stage, stage_asset
from wikigpt_pipeline.launchers import LocalLauncher, StageLauncher

SMALL_PREFERENCES = """
[preference]
n_prompts = 6
samples_per_prompt = 2
max_new_tokens = 8
false_premise_fraction = 0.5

[teacher]
backend = "offline"
"""


def test_preference_dataset_is_a_launched_gpu_asset():
    from wikigpt_core.config import load_settings

    stage = STAGES["preference_dataset"]
    assert (stage.launched, stage.task, stage.gpu) == (True, "preference", True)
    asset = stage_asset(load_settings("tiny", env=False), stage)
    assert asset.op.pool == GPU_POOL and "launcher" in asset.required_resource_keys


def test_launched_preference_dataset_runs_through_the_local_launcher(env, sft, tmp_path):  # noqa: F811
    root = env["root"]
    sft_checkpoint = tmp_path / "sft_checkpoint"  # the stage reads its tokenizer from there too
    shutil.copytree(root / "sft", sft_checkpoint)
    shutil.copy(root / "tokenizer" / "tokenizer.json", sft_checkpoint)
    out = tmp_path / "preference_dataset"
    spec = StageSpec.read(stage_spec(tmp_path / "specs", "preference_dataset", SMALL_PREFERENCES,
                                     {"sft_checkpoint": sft_checkpoint, "sft_dataset": sft[0]},
                                     out, tmp_path / "_work"))

    @dg.asset(name="preference_dataset")
    def preference_dataset(context: dg.AssetExecutionContext, launcher: StageLauncher):
        return run_stage(context, STAGES["preference_dataset"], spec)  # the asset's own routing

    res = dg.materialize([preference_dataset], resources={"launcher": LocalLauncher()},
                         instance=dg.DagsterInstance.ephemeral())
    assert res.success
    mat = res.asset_materializations_for_node("preference_dataset")[0]
    md = {k: v.value for k, v in mat.metadata.items()}
    stats = read_manifest(out)["stats"]
    # These crossed the process boundary only as Pipes messages.
    assert md["backend"] == "local"
    assert md["pairs"] == stats["pairs"] >= 3
    assert (md["generation_device"], md["generation_autocast"]) == ("cpu", "float32")  # "auto" off a GPU
    assert mat.tags["dagster/data_version"] == read_manifest(out)["content_hash"]
