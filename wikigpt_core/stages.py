"""The stage registry: every stage of the pipeline, declared once.

A declaration says what the stage is called, what it runs, which upstream stages it reads,
which config sections it reads, whether it runs in-process or is launched (GPU), and its code
version. Everything else is derived from here: the Dagster assets and their lineage
(`wikigpt_pipeline.assets`), the one stage CLI (`python -m wikigpt_core.run STAGE --spec FILE`),
the SkyPilot task a launched stage runs in, and every list of asset names.

A stage's `run` takes the resolved `StageSpec` (and a reporter for progress) and returns a
`StageResult`. To add an input, name it in `inputs` and read it with `spec.input(...)`; that is
the whole change. See docs/architecture.md, "Adding a stage".
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from wikigpt_core.artifacts import StageResult
from wikigpt_core.checkpoints import CHECKPOINT_ASSETS
from wikigpt_core.config import Settings, artifact_dir, as_dict, version_dir, work_dir
from wikigpt_core.spec import ArtifactRef, SpecError, StageSpec, code_version, input_hash


@dataclass(frozen=True)
class Stage:
    name: str
    """The asset's name; also the stage's name on the command line."""
    run: Callable[[StageSpec, object], StageResult]
    """`run(spec, reporter) -> StageResult`; its docstring is the asset's description."""
    inputs: tuple[str, ...]
    """Upstream stages whose artifacts it reads."""
    sections: tuple[str, ...]
    """Config sections it reads; they, and only they, are in its spec and its code version."""
    version: str
    """Bump when the stage's code changes what it writes."""
    group: str
    kinds: tuple[str, ...] = ()
    launched: bool = False
    """True: run through the compute launcher (a local subprocess, or a rented GPU) under
    Dagster Pipes. False: run in the orchestrator's process."""
    task: str = ""
    """SkyPilot task (`sky/<task>.yaml`) a launched stage runs in."""
    gpu: bool = False
    """Holds a GPU slot (the `gpu` pool) while it runs, launched or not."""
    network: bool = False
    """Talks to a remote service (dump site, teacher, Hub), so transient failures are retried."""
    teacher: bool = False
    """Uses the teacher/judge endpoint."""
    preview: str = ""
    """Name of the preview function in `wikigpt_pipeline.previews` shown on the asset page."""
    automation: bool = False
    """Opt-in eager automation (data stages below the dump)."""
    reads_dump: bool = False
    """Fed by the Wikipedia dump from outside the pipeline: the dump's identity is part of its
    version, and its asset depends on the observable dump source."""
    enabled_by: str = ""
    """`section.field` of a boolean setting that switches the stage on; "" = always on. A stage
    switched off is not in the definitions: `wikigpt run` neither runs nor shows it."""

    @property
    def description(self) -> str:
        return (self.run.__doc__ or "").strip()


# --- what each stage runs (imports are lazy: the registry loads without torch) ---

def _wiki_dump(spec: StageSpec, rep) -> StageResult:
    """The Wikipedia dump (pages-articles bz2, plus the index for multistream dumps), fetched
    or copied from WIKIGPT_DUMP and verified by SHA-1."""
    from wikigpt_core.data.dump import run_dump

    return run_dump(spec.section("dump"), spec.out, spec.work, identity=spec.fingerprint)


def _cleaned_articles(spec: StageSpec, rep) -> StageResult:
    """Article plain text (namespace 0, no redirects or disambiguation pages), filtered;
    parquet with id, title, url, text."""
    from wikigpt_core.data.clean import run_clean

    return run_clean(spec.section("clean"), spec.input("wiki_dump"), spec.out, spec.work)


def _deduped_corpus(spec: StageSpec, rep) -> StageResult:
    """Cleaned articles minus exact (SHA-1 of normalized text) and near duplicates
    (MinHash-LSH)."""
    from wikigpt_core.data.dedup import run_dedup

    return run_dedup(spec.section("dedup"), spec.input("cleaned_articles"), spec.out)


def _tokenizer(spec: StageSpec, rep) -> StageResult:
    """Byte-level BPE (tokenizer.json) with reserved single-id specials."""
    from wikigpt_core.data.tokenizer_train import run_tokenizer

    return run_tokenizer(spec.section("tokenizer"), spec.input("deduped_corpus"), spec.out)


def _token_shards(spec: StageSpec, rep) -> StageResult:
    """uint16 train.bin / val.bin, documents joined by <|endoftext|>."""
    from wikigpt_core.data.shards import run_shards

    return run_shards(spec.section("shards"), spec.input("deduped_corpus"), spec.input("tokenizer"),
                      spec.out, spec.work)


def _base_checkpoint(spec: StageSpec, rep) -> StageResult:
    """The pretrained base model in the profile's shape (docs/reference.md, "Model shape"):
    safetensors + config, with its tokenizer."""
    from wikigpt_core.pretrain import run_pretrain

    return run_pretrain(spec.section("model"), spec.section("pretrain"), spec.input("token_shards"),
                        spec.out, spec.work, on_metrics=rep.metrics,
                        tokenizer_dir=spec.input("tokenizer"))


def _sft_dataset(spec: StageSpec, rep) -> StageResult:
    """Chat examples (grounded QA, summarization, extraction) written by the teacher over
    corpus passages; train + held-out JSONL with a data card."""
    from wikigpt_core.align.sft_data import run_sft_data

    return run_sft_data(spec.section("sft_data"), _teacher(spec), spec.input("deduped_corpus"),
                        spec.out, spec.work / "teacher_cache")


def _sft_checkpoint(spec: StageSpec, rep) -> StageResult:
    """The base model fine-tuned on the chat data (masked, packed; docs/reference.md, "Chat
    format")."""
    from wikigpt_core.sft import run_sft

    base = spec.input("base_checkpoint")  # carries the tokenizer it was trained with
    return run_sft(spec.section("sft"), base, spec.input("sft_dataset"), base, spec.out, spec.work,
                   on_metrics=rep.metrics, shards_dir=spec.input("token_shards"))


def _preference_dataset(spec: StageSpec, rep) -> StageResult:
    """(prompt, chosen, rejected) pairs: SFT samples ranked by the judge, plus false-premise
    contrasts where chosen refuses and rejected invents. Sampled by a launched process: bf16
    autocast and batched prefill on a GPU."""
    from wikigpt_core.align.preferences import run_preferences

    sft = spec.input("sft_checkpoint")
    return run_preferences(spec.section("preference"), _teacher(spec), sft, spec.input("sft_dataset"),
                           sft, spec.out, spec.work / "teacher_cache")


def _dpo_checkpoint(spec: StageSpec, rep) -> StageResult:
    """The SFT model aligned with DPO against a frozen copy of itself."""
    from wikigpt_core.dpo import run_dpo

    sft = spec.input("sft_checkpoint")
    return run_dpo(spec.section("dpo"), sft, spec.input("preference_dataset"), sft, spec.out,
                   spec.work, on_metrics=rep.metrics)


def _eval_report(spec: StageSpec, rep) -> StageResult:
    """report.md + report.json: val perplexity, debiased pairwise wins, the judge-free harness
    and the prompt gallery, for base, SFT and DPO (docs/reference.md, "Evaluation")."""
    from wikigpt_core.evaluate import run_eval

    upstream = {name: spec.manifest(name).get("stats", {}) for name in EVAL_INPUTS}
    sft = spec.input("sft_checkpoint")
    return run_eval(spec.section("eval"), _teacher(spec),
                    {short: spec.input(name) for short, name in CHECKPOINT_ASSETS.items()},
                    spec.input("token_shards"), spec.input("sft_dataset"), sft, spec.out,
                    upstream=upstream, cache_dir=spec.work / "teacher_cache")


def _hf_release(spec: StageSpec, rep) -> StageResult:
    """The release folder: Llama config + safetensors, tokenizer with chat template,
    generation config, model card, gallery, run manifest, license."""
    from wikigpt_core.release import run_release

    lineage = {name: {"stats": m.get("stats", {}), "content_hash": m["content_hash"]}
               for name in spec.lineage for m in [spec.manifest(name)]}
    return run_release(spec.section("release"), spec.input("dpo_checkpoint"), spec.input("tokenizer"),
                       spec.input("eval_report"), spec.out, lineage, profile=spec.profile)


def _gguf_release(spec: StageSpec, rep) -> StageResult:
    """GGUF files of the release for llama.cpp and Ollama (f16, Q8_0, and llama.cpp's Q4_K_M)
    with an Ollama Modelfile; each file's val perplexity, size and CPU decode speed measured
    through llama.cpp. Needs llama-cpp-python; on with `[release] gguf = true`."""
    from wikigpt_core.release.gguf_release import run_gguf_release

    return run_gguf_release(spec.section("gguf"), spec.input("hf_release"), spec.input("token_shards"),
                            spec.out, {name: ref.content_hash for name, ref in spec.inputs.items()})


def _teacher(spec: StageSpec):
    """The teacher section, pointed at an endpoint brought up for this run if there is one."""
    import dataclasses

    cfg = spec.section("teacher")
    url = spec.services.get("teacher_url")
    return dataclasses.replace(cfg, base_url=url, backend="openai") if url else cfg


EVAL_INPUTS = (*CHECKPOINT_ASSETS.values(), "token_shards", "sft_dataset")
_TRAINING = dict(group="training", kinds=("pytorch", "safetensors"), launched=True, gpu=True,
                 preview="training")

STAGES: dict[str, Stage] = {s.name: s for s in [
    Stage("wiki_dump", _wiki_dump, (), ("dump",), "1", "data", ("bz2",), network=True,
          reads_dump=True),
    Stage("cleaned_articles", _cleaned_articles, ("wiki_dump",), ("clean",), "1", "data",
          ("parquet",), preview="articles", automation=True),
    Stage("deduped_corpus", _deduped_corpus, ("cleaned_articles",), ("dedup",), "1", "data",
          ("parquet",), preview="articles", automation=True),
    Stage("tokenizer", _tokenizer, ("deduped_corpus",), ("tokenizer",), "1", "data",
          ("tokenizers",), automation=True),
    Stage("token_shards", _token_shards, ("deduped_corpus", "tokenizer"), ("shards",), "1", "data",
          ("numpy",), automation=True),
    Stage("base_checkpoint", _base_checkpoint, ("token_shards", "tokenizer"), ("model", "pretrain"),
          "1", task="pretrain", **_TRAINING),
    Stage("sft_dataset", _sft_dataset, ("deduped_corpus",), ("sft_data", "teacher"), "1",
          "alignment", ("jsonl",), network=True, teacher=True, preview="chat_examples"),
    Stage("sft_checkpoint", _sft_checkpoint, ("base_checkpoint", "sft_dataset", "token_shards"), ("sft",), "1",
          task="sft", **_TRAINING),
    Stage("preference_dataset", _preference_dataset, ("sft_checkpoint", "sft_dataset"),
          ("preference", "teacher"), "2", "alignment", ("jsonl",), launched=True, task="preference",
          gpu=True, network=True, teacher=True, preview="preference_pairs"),
    Stage("dpo_checkpoint", _dpo_checkpoint, ("sft_checkpoint", "preference_dataset"), ("dpo",), "1",
          task="dpo", **_TRAINING),
    Stage("eval_report", _eval_report, EVAL_INPUTS, ("eval", "teacher"), "2", "evaluation",
          ("markdown", "json"), launched=True, task="eval", gpu=True, network=True, teacher=True,
          preview="eval_report"),
    Stage("hf_release", _hf_release, ("dpo_checkpoint", "tokenizer", "eval_report"), ("release",), "3",
          "release", ("huggingface",), network=True, preview="model_card"),
    Stage("gguf_release", _gguf_release, ("hf_release", "token_shards"), ("gguf",), "1", "release",
          ("gguf",), network=True, preview="gguf_files", enabled_by="release.gguf"),
]}
ASSET_NAMES = tuple(STAGES)
"""Every asset, in the order the pipeline runs them."""


def is_enabled(stage: Stage, settings: Settings) -> bool:
    """Whether the settings switch the stage on (see `Stage.enabled_by`)."""
    if not stage.enabled_by:
        return True
    section, field_name = stage.enabled_by.split(".")
    return bool(getattr(settings.section(section), field_name))


def asset_names(settings: Settings) -> tuple[str, ...]:
    """The assets these settings define (every one in ASSET_NAMES that is switched on)."""
    return tuple(name for name in ASSET_NAMES if is_enabled(STAGES[name], settings))


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise SpecError(f"unknown stage {name!r}; known: {', '.join(STAGES)}")
    return STAGES[name]


def ancestors(name: str) -> tuple[str, ...]:
    """Every stage upstream of `name`, in pipeline order."""
    seen: set[str] = set()
    todo = list(get_stage(name).inputs)
    while todo:
        dep = todo.pop()
        if dep not in seen:
            seen.add(dep)
            todo.extend(STAGES[dep].inputs)
    return tuple(n for n in ASSET_NAMES if n in seen)


def fingerprint(stage: Stage, settings: Settings) -> str:
    """The identity of what a source stage reads from outside the pipeline (the dump)."""
    if not stage.reads_dump:
        return ""
    from wikigpt_core.data.dump import static_fingerprint

    # No network: a dump name's published identity comes from observing the source at run time
    # (wikigpt_pipeline.dump_source), not from loading the definitions.
    return static_fingerprint(settings.dump)


def config_tables(stage: Stage, settings: Settings) -> dict[str, dict]:
    return {name: as_dict(settings.section(name)) for name in stage.sections}


def stage_code_version(stage: Stage, settings: Settings, fingerprint_: str | None = None) -> str:
    fp = fingerprint(stage, settings) if fingerprint_ is None else fingerprint_
    return code_version(stage.version, config_tables(stage, settings), fp)


def resolve_spec(settings: Settings, name: str, inputs: dict[str, Path] | None = None, *,
                 fingerprint_: str | None = None, out: Path | None = None,
                 work: Path | None = None) -> StageSpec:
    """The spec for one run of `name`: its config sections from `settings`, each input at the
    given path or else at the upstream's `current` version, and its versioned out/work dirs."""
    stage = get_stage(name)
    given = {k: Path(v) for k, v in (inputs or {}).items()}
    unknown = set(given) - set(ancestors(name))
    if unknown:
        raise SpecError(f"{name} has no upstream {sorted(unknown)}; its inputs are {list(stage.inputs)}")

    def ref(dep: str) -> ArtifactRef:
        path = given.get(dep) or artifact_dir(settings, dep)
        digest = input_hash(path)
        if digest is None:
            raise SpecError(f"{name} needs {dep}, but {path} holds no artifact; materialize {dep} "
                            "first (or pass its directory)")
        return ArtifactRef(Path(path).resolve(), digest)

    refs = {dep: ref(dep) for dep in stage.inputs}
    # Lineage only feeds figures (a model card's token counts): an ancestor that was never
    # materialized here, e.g. data brought in with --input, is left out rather than refused.
    # Directories passed by hand have no recorded ancestry: then the lineage is the inputs alone.
    lineage = dict(refs)
    for dep in ancestors(name) if not given else ():
        try:
            lineage.setdefault(dep, ref(dep))
        except SpecError:
            continue
    fp = fingerprint(stage, settings) if fingerprint_ is None else fingerprint_
    spec = StageSpec(stage=name, profile=settings.profile,
                     code_version=code_version(stage.version, config_tables(stage, settings), fp),
                     config=config_tables(stage, settings), inputs=refs, lineage=lineage,
                     out=Path("."), work=Path("."), fingerprint=fp)
    spec.out = Path(out) if out else version_dir(settings, name, spec.version)
    spec.work = Path(work) if work else work_dir(settings, name, spec.version)
    return spec
