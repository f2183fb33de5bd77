"""Settings: one profile object (tiny / 124m / 350m) gathering a small config per stage.

A profile is built from a named preset, then optionally overridden by a TOML file named by
`WIKIGPT_CONFIG` (one table per section, e.g. `[clean] min_chars = 800`). The pipeline hashes
each stage's sections into that asset's Dagster code_version, so editing a value marks exactly
that stage and its downstream stale.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wikigpt_core.artifacts import CURRENT
from wikigpt_core.model_config import GPTConfig

PROFILES = ("tiny", "124m", "350m")


@dataclass
class DumpConfig:
    source: str = "sample"
    """`sample` (the enwiki sample inside the gensim wheel), a local .xml.bz2 path, or a dump
    name such as `enwiki/20261101` fetched from `base_url`; `<wiki>/latest` (e.g.
    `dewiki/latest`) means the newest dump whose multistream files the dump site reports done."""
    base_url: str = "https://dumps.wikimedia.org"
    """Dump site or mirror used for dump names."""


@dataclass
class CleanConfig:
    min_chars: int = 1_000
    """Articles with fewer characters of plain text than this are dropped as too short."""
    max_markup_ratio: float = 0.02
    """Drop articles where leftover markup characters ({|}[]<>=) exceed this share of text."""
    language: str = ""
    """Target language (ISO 639-1 code, e.g. `de`) the corpus is filtered for; empty = the
    dump's own (`dewiki/...` → de, `simplewiki` → en, `sample` → en, else the dump's
    <siteinfo> or `<lang>wiki-` file name). Later stages (teacher templates, model card) follow
    what cleaning wrote into its artifact."""
    min_language_prob: float = 0.5
    """Drop articles whose first 1,000 characters py3langid gives less than this probability of
    being in the target language (English sample articles score > 0.99); 0 = no language check."""
    row_group_size: int = 10_000
    """Parquet rows per row group (bounds reader memory)."""
    max_list_ratio: float = 0.6
    """Drop as a list page when more than this share of wikitext lines are list items."""
    workers: int = 0
    """Extraction processes; 0 = one per CPU core."""
    part_pages: int = 2_000
    """Dump pages per resumable part (a finished part is reused after a killed run)."""


@dataclass
class DedupConfig:
    num_perm: int = 128
    """MinHash permutations."""
    threshold: float = 0.8
    """Jaccard threshold the LSH bands are tuned for."""
    shingle_size: int = 5
    """Word n-gram size of the shingles."""
    seed: int = 1
    lsh_threshold: float = 0.65
    """LSH bands are tuned for this lower Jaccard so pairs at `threshold` are almost always
    candidates (16 bands x 8 rows at 128 perms: 99.4 % at J=0.85); each candidate pair is then
    confirmed by its exact shingle Jaccard >= `threshold`."""
    workers: int = 0
    """Hashing processes; 0 = one per CPU core."""
    batch_docs: int = 500
    """Documents per hashing task (bounds a worker's memory)."""


@dataclass
class TokenizerConfig:
    vocab_size: int = 32_768
    """Byte-level BPE vocabulary including the reserved specials; equals the model's vocab."""
    min_frequency: int = 2
    heldout_fraction: float = 0.005
    """Documents (by id hash, the same rule as the val shard) kept out of training and used
    to measure bytes per token."""
    max_train_chars: int = 0
    """Train on a deterministic sample of about this many characters, spread over the whole
    corpus (documents chosen by a hash of their id); 0 = the whole corpus. HF's BPE trainer
    holds every word and pair count in memory, so this bounds its memory and time."""
    max_memory_gb: float = 48.0
    """The stage refuses to start when training on its sample is estimated to need more memory
    than this (`tokenizer_train.estimate_memory_gb`); 0 = no cap."""


@dataclass
class ShardsConfig:
    val_fraction: float = 0.005
    """Share of documents (chosen by hash of the document id) that go to val.bin."""
    batch_docs: int = 1_000
    """Documents per encode_batch call and per resumable part."""


@dataclass
class TrainConfig:
    """Optimizer, schedule and bookkeeping for one training stage (pretrain, SFT or DPO)."""

    max_steps: int = 1_000
    """Optimizer steps (after accumulation). For SFT/DPO, `epochs` takes precedence when set."""
    epochs: float | None = None
    """If set, max_steps is derived from the dataset size."""
    batch_size: int = 16
    """Micro-batch size in sequences."""
    grad_accum: int = 1
    """Micro-batches per optimizer step, in total over all ranks (divided by world size)."""
    seq_len: int | None = None
    """Training sequence length; defaults to the model's block_size."""
    lr: float = 6e-4
    min_lr_ratio: float = 0.1
    """Cosine decays to lr * min_lr_ratio (the 10 % floor)."""
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    eval_interval: int = 250
    eval_iters: int = 20
    sample_interval: int = 500
    ckpt_interval: int = 500
    ckpt_minutes: float = 10.0
    """Also checkpoint when this much wall time passed since the last checkpoint (0 = off), so a
    preemption loses about this much training whatever the step time. Checked on log steps."""
    keep_last_k: int = 2
    log_interval: int = 10
    seed: int = 1337
    compile: str = "auto"
    """torch.compile of the training forward: auto = on CUDA only; on / off force it (on works
    on CPU too, through inductor and the machine's C compiler)."""
    compile_mode: str = "default"
    """torch.compile's mode when compiling: default, or max-autotune-no-cudagraphs (kernels
    benchmarked while compiling: minutes more, a faster step on long runs). Changes results
    within bf16 rounding only, so it is not part of the run key."""
    attention: str = "auto"
    """SDPA backend tried first for causal attention: auto (cuDNN then flash on Hopper and
    later, torch's order elsewhere), flash, cudnn, efficient or math. Packed SFT blocks use
    FlexAttention on CUDA whatever this says. Not part of the run key (bf16 rounding only)."""
    precision: str = "auto"
    """Autocast precision: auto = bf16 on a CUDA GPU that supports it, float32 elsewhere;
    bf16 / fp32 force it on any device (CPU bf16 autocast included). Weights and optimizer
    state stay float32 either way."""
    dpo_beta: float = 0.1
    """DPO temperature beta (used by the DPO stage only)."""
    replay_share: float = 0.0
    """SFT only: this share of the training examples are pretraining text (windows of the token
    shards, every token trained), mixed in among the chat examples, so that fine-tuning keeps
    the base model's language modelling (its perplexity on Wikipedia text) from drifting."""

    def __post_init__(self) -> None:
        # Also built directly (tests, the training stages), not only through Settings.
        check_section(self)


@dataclass
class TeacherConfig:
    backend: str = "offline"
    """offline (built-in, deterministic) or openai (any OpenAI-compatible endpoint, e.g. vLLM)."""
    base_url: str = "http://127.0.0.1:8001/v1"
    launch: str = "none"
    """none: use `base_url` as it is. skypilot: the stages that need the teacher rent one
    (sky/teacher.yaml: `model` on vLLM) for the duration of their work, and tear it down."""
    model: str = "Qwen/Qwen2.5-7B-Instruct"
    concurrency: int = 8
    """Requests in flight at once (bounded thread pool)."""
    max_retries: int = 4
    """Retries per request after a transient failure (5xx, 429, timeout, connection error)."""
    timeout_s: float = 120.0
    retry_backoff_s: float = 1.0
    """First retry waits this long; each further retry doubles it (plus a little jitter)."""
    api_key_env: str = "WIKIGPT_TEACHER_API_KEY"
    """Env var holding the endpoint's API key (OPENAI_API_KEY is the fallback); never logged."""
    max_tokens: int = 512
    """Completion budget per teacher request."""
    temperature: float = 0.0
    """Teacher sampling temperature (0 = greedy, the most reproducible)."""
    json_mode: bool = True
    """Ask the endpoint for a JSON object reply (`response_format`, supported by vLLM and OpenAI)."""
    json_schema: bool = True
    """Constrained decoding: send each reply's JSON schema (`response_format`), so the server
    decodes to it (vLLM's guided decoding, llama.cpp's grammars, OpenAI structured outputs).
    Even a weak model then replies with parseable JSON of the right fields and bounded length;
    whether the content passes the stage's filters is still up to the model. The offline backend
    ignores it; set it to false for an endpoint that supports no schema."""
    schema_format: str = "json_schema"
    """How the schema is sent. json_schema: OpenAI structured outputs,
    `{"type": "json_schema", "json_schema": {"name", "schema"}}` (vLLM, llama.cpp's llama-server,
    OpenAI). json_object: the schema inside a json_object format, `{"type": "json_object",
    "schema"}` (llama-cpp-python's server; llama-server reads it too)."""
    max_reply_chars: int = 1_200
    """With json_schema: the longest string field a reply may hold (bounds each reply's cost)."""
    max_failure_share: float = 0.5
    """A teacher stage (SFT data, preference data, the eval judge) stops with an error once more
    than this share of its teacher replies failed or were rejected by its filters ..."""
    min_failures: int = 20
    """... and at least this many did (a few bad replies early on do not stop a stage)."""
    max_requests_per_item: float = 4.0
    """Requests (retries included) a teacher stage may send, as a multiple of the requests it
    plans for what it was asked for; past that it stops with an error (bounds a paid bill)."""

    def __post_init__(self) -> None:
        check_section(self)


SCHEMA_FORMATS = ("json_schema", "json_object")


@dataclass
class SFTDataConfig:
    n_examples: int = 50_000
    mix: dict[str, float] = field(
        default_factory=lambda: {"qa": 0.5, "summarize": 0.25, "extract": 0.25}
    )
    heldout_fraction: float = 0.02
    """Share of articles (not examples, so no passage leaks across the split) held out."""
    passage_chars: int = 1_200
    """Target passage length; passages are whole sentences packed up to this size."""
    seed: int = 7
    max_passages_per_article: int = 8
    """Passages taken from one article (spreads the data across articles)."""
    min_grounding: float = 0.7
    """Minimum share of the response's content words that occur in the passage."""
    min_response_words: int = 1
    max_response_words: int = 120
    min_english_ratio: float = 0.25
    """Minimum share of common English function words in the passage (language filter)."""
    min_examples: int | None = None
    """The stage fails when fewer examples than this result (None: a quarter of n_examples)."""


@dataclass
class PreferenceConfig:
    n_prompts: int = 5_000
    samples_per_prompt: int = 2
    false_premise_fraction: float = 0.2
    max_new_tokens: int = 200
    temperature: float = 0.8
    seed: int = 11
    top_p: float = 0.95
    min_margin: float = 0.5
    """Judge score gap (1-10 scale, averaged over both orders) below which a pair is dropped."""
    min_pairs: int | None = None
    """The stage fails when fewer pairs than this result (None: a tenth of n_prompts, at least 1)."""


@dataclass
class EvalConfig:
    ppl_batches: int = 50
    harness_n: int = 200
    pairwise_n: int = 200
    max_new_tokens: int = 200
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 2024
    ppl_batch_size: int = 8
    """Windows of block_size tokens per perplexity batch (ppl_batches x this many in all)."""
    harness_temperature: float = 0.0
    """Decoding for the harness and pairwise replies (0 = greedy, reproducible)."""
    sft_ppl_limit: float = 25.0
    """SFT val perplexity at or above this means catastrophic forgetting (at 124m;
    docs/reference.md, "Evaluation")."""
    dpo_ppl_max_ratio: float = 1.3
    """DPO val perplexity above this multiple of SFT's means DPO drifted off the language model
    (a non-blocking check on dpo_checkpoint warns)."""
    lm_eval: bool = False
    """Run EleutherAI's lm-evaluation-harness on all three checkpoints (the `lmeval` extra;
    task datasets come from the Hugging Face Hub at run time). On for 124m and 350m."""
    lm_eval_tasks: list[str] = field(default_factory=lambda: [
        "hellaswag", "arc_easy", "arc_challenge", "piqa", "lambada_openai", "winogrande"])
    """lm-eval task names, evaluated zero-shot."""
    lm_eval_limit: int | None = None
    """Examples per task (None: the whole split)."""
    lm_eval_include_path: str = ""
    """A folder of extra lm-eval task YAMLs (local tasks); "" for the built-in ones only."""
    lm_eval_batch_size: int = 16
    """Requests per forward pass in lm-eval's HF model."""


@dataclass
class ReleaseConfig:
    repo_name: str = "wikigpt-124m-instruct"
    sft_dataset_repo: str = ""
    """Hub dataset id where the SFT data is published (named in the model card), if any."""
    preference_dataset_repo: str = ""
    """Hub dataset id where the preference pairs are published, if any."""
    gguf: bool = False
    """Also make the `gguf_release` asset: GGUF files (f16, Q8_0, Q4_K_M) and an Ollama
    Modelfile for llama.cpp and Ollama, published beside the release as `<repo>-GGUF` and
    linked from the model card. Off by default: it needs llama-cpp-python (see [gguf])."""


@dataclass
class GGUFConfig:
    """The `gguf_release` stage. It runs llama.cpp through llama-cpp-python in a separate
    Python: `$WIKIGPT_LLAMACPP_VENV/bin/python`, else this Python if it imports llama_cpp."""

    ppl_windows: int = 16
    """Evenly spaced val-shard windows (of the model's context) each file's perplexity is
    measured on, by llama.cpp and by the release's own weights alike."""
    decode_tokens: int = 64
    """Tokens generated greedily per file to measure CPU decode speed (tok/s: one over the
    median time per token)."""
    threads: int = 0
    """llama.cpp CPU threads; 0 = llama-cpp-python's default (half the cores)."""
    q8_0_ppl_max_ratio: float = 1.01
    """Q8_0's perplexity stays within this multiple of f16's (a non-blocking check warns)."""
    q4_k_m_ppl_max_ratio: float = 1.05
    """Q4_K_M's perplexity stays within this multiple of f16's (a non-blocking check warns)."""


@dataclass(frozen=True)
class Range:
    """A numeric field's allowed values; an open end excludes its bound."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def admits(self, value: float) -> bool:
        above = self.lo is None or (value > self.lo if self.lo_open else value >= self.lo)
        below = self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)
        return above and below  # NaN fails both comparisons, so it is never admitted

    def __str__(self) -> str:
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"


@dataclass(frozen=True)
class OneOf:
    """A text field's allowed values."""

    choices: tuple[str, ...]

    def admits(self, value: str) -> bool:
        return value in self.choices

    def __str__(self) -> str:
        return "one of " + ", ".join(c or '""' for c in self.choices)


AT_LEAST_0 = Range(lo=0)
AT_LEAST_1 = Range(lo=1)
POSITIVE = Range(lo=0, lo_open=True)
SHARE = Range(lo=0, hi=1)
"""A fraction or probability, both ends allowed."""
SHARE_BELOW_1 = Range(lo=0, hi=1, hi_open=True)
SHARE_ABOVE_0 = Range(lo=0, hi=1, lo_open=True)

# The allowed values of each section's fields, beyond their declared types (which are checked
# too). A field not named here may hold any value of its type (seeds, names, URLs).
_RULES: dict[type, dict[str, Range | OneOf]] = {
    DumpConfig: {},
    CleanConfig: {"min_chars": AT_LEAST_0, "max_markup_ratio": SHARE, "min_language_prob": SHARE,
                  "row_group_size": AT_LEAST_1, "max_list_ratio": SHARE, "workers": AT_LEAST_0,
                  "part_pages": AT_LEAST_1},
    DedupConfig: {"num_perm": AT_LEAST_1, "threshold": SHARE_ABOVE_0, "shingle_size": AT_LEAST_1,
                  "lsh_threshold": SHARE_ABOVE_0, "workers": AT_LEAST_0, "batch_docs": AT_LEAST_1},
    TokenizerConfig: {"vocab_size": AT_LEAST_1, "min_frequency": AT_LEAST_0,
                      "heldout_fraction": SHARE_BELOW_1, "max_train_chars": AT_LEAST_0,
                      "max_memory_gb": AT_LEAST_0},
    ShardsConfig: {"val_fraction": SHARE_BELOW_1, "batch_docs": AT_LEAST_1},
    GPTConfig: {"vocab_size": AT_LEAST_1, "block_size": AT_LEAST_1, "n_layer": AT_LEAST_1,
                "n_head": AT_LEAST_1, "n_embd": AT_LEAST_1, "rope_theta": POSITIVE,
                "norm_eps": POSITIVE, "dropout": SHARE_BELOW_1, "mlp_multiple_of": AT_LEAST_1},
    TrainConfig: {"max_steps": AT_LEAST_1, "epochs": POSITIVE, "batch_size": AT_LEAST_1,
                  "grad_accum": AT_LEAST_1, "seq_len": AT_LEAST_1, "lr": POSITIVE,
                  "min_lr_ratio": SHARE, "warmup_steps": AT_LEAST_0, "weight_decay": AT_LEAST_0,
                  "beta1": SHARE_BELOW_1, "beta2": SHARE_BELOW_1, "grad_clip": AT_LEAST_0,
                  "eval_interval": AT_LEAST_1, "eval_iters": AT_LEAST_1,
                  "sample_interval": AT_LEAST_1, "ckpt_interval": AT_LEAST_1,
                  "ckpt_minutes": AT_LEAST_0, "keep_last_k": AT_LEAST_1, "log_interval": AT_LEAST_1,
                  "compile": OneOf(("auto", "on", "off")), "precision": OneOf(("auto", "bf16", "fp32")),
                  "compile_mode": OneOf(("default", "max-autotune-no-cudagraphs")),
                  "attention": OneOf(("auto", "flash", "cudnn", "efficient", "math")),
                  "dpo_beta": POSITIVE, "replay_share": SHARE_BELOW_1},
    TeacherConfig: {"backend": OneOf(("offline", "openai")), "launch": OneOf(("none", "skypilot")),
                    "concurrency": AT_LEAST_1, "max_retries": AT_LEAST_0, "timeout_s": POSITIVE,
                    "retry_backoff_s": AT_LEAST_0, "max_tokens": AT_LEAST_1,
                    "temperature": AT_LEAST_0, "schema_format": OneOf(SCHEMA_FORMATS),
                    "max_reply_chars": AT_LEAST_1, "max_failure_share": SHARE,
                    "min_failures": AT_LEAST_0, "max_requests_per_item": POSITIVE},
    SFTDataConfig: {"n_examples": AT_LEAST_1, "heldout_fraction": SHARE_BELOW_1,
                    "passage_chars": AT_LEAST_1, "max_passages_per_article": AT_LEAST_1,
                    "min_grounding": SHARE, "min_response_words": AT_LEAST_0,
                    "max_response_words": AT_LEAST_1, "min_english_ratio": SHARE,
                    "min_examples": AT_LEAST_0},
    PreferenceConfig: {"n_prompts": AT_LEAST_1, "samples_per_prompt": Range(lo=2),
                       "false_premise_fraction": SHARE, "max_new_tokens": AT_LEAST_1,
                       "temperature": AT_LEAST_0, "top_p": SHARE_ABOVE_0, "min_margin": AT_LEAST_0,
                       "min_pairs": AT_LEAST_0},
    EvalConfig: {"ppl_batches": AT_LEAST_1, "harness_n": AT_LEAST_0, "pairwise_n": AT_LEAST_0,
                 "max_new_tokens": AT_LEAST_1, "temperature": AT_LEAST_0, "top_p": SHARE_ABOVE_0,
                 "ppl_batch_size": AT_LEAST_1, "harness_temperature": AT_LEAST_0,
                 "sft_ppl_limit": POSITIVE, "dpo_ppl_max_ratio": POSITIVE,
                 "lm_eval_limit": AT_LEAST_1, "lm_eval_batch_size": AT_LEAST_1},
    ReleaseConfig: {},
    GGUFConfig: {"ppl_windows": AT_LEAST_1, "decode_tokens": AT_LEAST_1, "threads": AT_LEAST_0,
                 "q8_0_ppl_max_ratio": Range(lo=1), "q4_k_m_ppl_max_ratio": Range(lo=1)},
}


def check_section(section: Any, name: str = "") -> None:
    """Raise ValueError for the first field of `section` whose type or value is not allowed."""
    for f in dataclasses.fields(section):
        if f.init:
            check_field(type(section), f.name, getattr(section, f.name), name)


def check_field(cls: type, field_name: str, value: Any, section: str = "") -> None:
    """Raise ValueError, naming `[section] field`, the expected type or range and the value,
    if `value` is not allowed in that field of the section dataclass `cls`."""
    hint = _field_types(cls)[field_name]
    rule = _RULES.get(cls, {}).get(field_name)
    if value is None and _matches(hint, None):
        return
    if not _matches(hint, value) or (rule is not None and not rule.admits(value)):
        expected = _describe(hint) if rule is None else _describe_ruled(hint, rule)
        where = f"[{section}] " if section else ""
        raise ValueError(f"{where}{field_name} = {value!r} is not {expected}")


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _matches(hint: Any, value: Any) -> bool:
    """Whether `value` is of the declared type `hint` (an int counts as a float, a bool as
    neither: TOML writes `lr = 1` for 1.0, and `True` is an int in Python)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return any(_matches(a, value) for a in args)
    if origin is dict:
        return isinstance(value, dict) and all(_matches(args[0], k) and _matches(args[1], v)
                                               for k, v in value.items())
    if origin is list:
        return isinstance(value, list) and all(_matches(args[0], v) for v in value)
    if hint is type(None):
        return value is None
    if hint in (int, float) and isinstance(value, bool):
        return False
    if hint is float:
        return isinstance(value, (int, float))
    return isinstance(value, hint)


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               type(None): "unset"}


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(a) for a in args)
    if origin is dict:
        return f"a table of {_describe(args[1]).removeprefix('a ').removeprefix('an ')}s"
    if origin is list:
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    return _TYPE_WORDS[hint]


def _describe_ruled(hint: Any, rule: Range | OneOf) -> str:
    """`an integer >= 1`, `a number in [0, 1)`, `one of auto, on, off`."""
    if isinstance(rule, OneOf):
        return str(rule)
    value_hint = next(a for a in (typing.get_args(hint) or (hint,)) if a is not type(None))
    return f"{_describe(value_hint)} {rule}"


@dataclass
class Settings:
    """Everything one run of the pipeline is configured by."""

    profile: str
    dump: DumpConfig
    clean: CleanConfig
    dedup: DedupConfig
    tokenizer: TokenizerConfig
    shards: ShardsConfig
    model: GPTConfig
    pretrain: TrainConfig
    teacher: TeacherConfig
    sft_data: SFTDataConfig
    sft: TrainConfig
    preference: PreferenceConfig
    dpo: TrainConfig
    eval: EvalConfig
    release: ReleaseConfig
    gguf: GGUFConfig = field(default_factory=GGUFConfig)

    def __post_init__(self) -> None:
        # Every value is checked when the settings are built, not when its stage runs hours later.
        for name in _SECTION_NAMES:
            check_section(getattr(self, name), name)
        if self.tokenizer.vocab_size != self.model.vocab_size:
            raise ValueError(
                f"tokenizer.vocab_size={self.tokenizer.vocab_size} must equal "
                f"model.vocab_size={self.model.vocab_size}; set both in your WIKIGPT_CONFIG"
            )
        if self.model.vocab_size > 65_536:
            raise ValueError("vocab_size must fit uint16 token shards (<= 65,536)")

    def section(self, name: str) -> Any:
        if name not in _SECTION_NAMES:
            raise ValueError(f"unknown config section {name!r}; known: {sorted(_SECTION_NAMES)}")
        return getattr(self, name)


_SECTION_NAMES = tuple(f.name for f in dataclasses.fields(Settings) if f.name != "profile")


def as_dict(obj: Any) -> dict[str, Any]:
    """A config section (or GPTConfig) as a plain table: its constructor's fields."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}


TOKENIZER_SAMPLE_CHARS = 2_000_000_000
"""The 124m / 350m tokenizer's training sample (~10 % of English Wikipedia's text): held-out
bytes per token has flattened well before it (benchmarks/data_scale.py; README, "Bigger runs")."""


def _preset(name: str) -> Settings:
    if name == "tiny":
        vocab = 4_096
        model = GPTConfig(vocab_size=vocab, block_size=256, n_layer=4, n_head=4, n_embd=128,
                          mlp_multiple_of=64)
        return Settings(
            profile=name,
            dump=DumpConfig(),
            clean=CleanConfig(min_chars=500),
            dedup=DedupConfig(),
            tokenizer=TokenizerConfig(vocab_size=vocab, heldout_fraction=0.1),
            shards=ShardsConfig(val_fraction=0.1),
            model=model,
            pretrain=TrainConfig(max_steps=300, batch_size=4, grad_accum=1, lr=3e-3,
                                 warmup_steps=30, eval_interval=100, eval_iters=5,
                                 sample_interval=150, ckpt_interval=100, log_interval=25),
            teacher=TeacherConfig(),
            sft_data=SFTDataConfig(n_examples=600, heldout_fraction=0.1, passage_chars=400),
            # 30 % pretraining text among the chat examples: without it this short, high-lr SFT
            # raises the val perplexity ~1.5x over base (with it: 0.98x, stopping unchanged).
            sft=TrainConfig(max_steps=200, batch_size=8, grad_accum=1, lr=1e-3, replay_share=0.3,
                            warmup_steps=10, eval_interval=60, eval_iters=4,
                            sample_interval=60, ckpt_interval=60, log_interval=20),
            # 128 prompts give ~50 judged pairs (the judge drops ties and close calls); DPO
            # takes ~5 passes over them at a small lr with beta 0.25, which keeps it within a few
            # % of SFT's val perplexity (40 steps at 1e-4, beta 0.1 over 28 pairs drifted to 1.44x).
            preference=PreferenceConfig(n_prompts=128, max_new_tokens=48),
            dpo=TrainConfig(max_steps=30, batch_size=8, grad_accum=1, lr=3e-5, dpo_beta=0.25,
                            warmup_steps=3, eval_interval=15, eval_iters=2,
                            sample_interval=30, ckpt_interval=15, log_interval=10),
            eval=EvalConfig(ppl_batches=8, harness_n=24, pairwise_n=16, max_new_tokens=48,
                            # a tiny model sits in the hundreds; this only flags a diverged SFT
                            sft_ppl_limit=5_000.0),
            release=ReleaseConfig(repo_name="wikigpt-tiny-instruct"),
        )
    if name in ("124m", "350m"):
        if name == "124m":
            model = GPTConfig()  # the reference shape, docs/reference.md
            pre_batch, pre_accum = 16, 32  # 16 x 1,024 x 32 = 524,288 tokens per optimizer step
        else:
            # A standard ~350 M Llama shape: 24 layers, width 1,024, 16 heads of 64.
            model = GPTConfig(n_layer=24, n_head=16, n_embd=1_024)
            pre_batch, pre_accum = 8, 64
        return Settings(
            profile=name,
            dump=DumpConfig(),
            clean=CleanConfig(),
            dedup=DedupConfig(),
            tokenizer=TokenizerConfig(vocab_size=model.vocab_size,
                                      max_train_chars=TOKENIZER_SAMPLE_CHARS),
            shards=ShardsConfig(),
            model=model,
            pretrain=TrainConfig(max_steps=7_630, batch_size=pre_batch, grad_accum=pre_accum,
                                 lr=6e-4, warmup_steps=700),
            # A real LLM teacher and judge; the offline rule system runs here only when a
            # config names it (`[teacher] backend = "offline"`).
            teacher=TeacherConfig(backend="openai"),
            sft_data=SFTDataConfig(),
            sft=TrainConfig(epochs=3, batch_size=16, grad_accum=4, lr=3e-5, warmup_steps=100,
                            sample_interval=200, eval_interval=200, ckpt_interval=200),
            preference=PreferenceConfig(),
            dpo=TrainConfig(epochs=1, batch_size=8, grad_accum=4, lr=1e-6, warmup_steps=20,
                            eval_interval=100, ckpt_interval=100, sample_interval=100),
            eval=EvalConfig(lm_eval=True),
            release=ReleaseConfig(repo_name=f"wikigpt-{name}-instruct"),
        )
    raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")


def load_settings(profile: str | None = None, overrides: str | Path | None = None, *,
                  env: bool = True) -> Settings:
    """Preset named by `profile` (default: $WIKIGPT_PROFILE or tiny), then the TOML overrides
    file (default: $WIKIGPT_CONFIG), then the dump source from $WIKIGPT_DUMP. With env=False
    the environment is not read at all: only the arguments count.

    Only orchestrators call this (the Dagster definitions, `wikigpt`, `--write-spec`); a stage
    reads its settings from its spec, never from the environment."""
    environ = os.environ if env else {}
    settings = _preset(profile or environ.get("WIKIGPT_PROFILE", "tiny"))
    overrides = overrides or environ.get("WIKIGPT_CONFIG")
    if overrides:
        settings = _apply_file(settings, Path(overrides))
    if environ.get("WIKIGPT_DUMP"):
        # Through replace, so the new value is checked like any other.
        settings = dataclasses.replace(
            settings, dump=dataclasses.replace(settings.dump, source=environ["WIKIGPT_DUMP"]))
    return settings


def _apply_file(settings: Settings, path: Path) -> Settings:
    """apply_overrides from a TOML file; a refused value's error names the file too."""
    table = _read_toml(path)
    try:
        return apply_overrides(settings, table)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"WIKIGPT_CONFIG points at {path}, which does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path} is not valid TOML: {e}") from None


def apply_overrides(settings: Settings, table: dict[str, Any]) -> Settings:
    """Return a copy of settings with `{section: {field: value}}` applied; unknown names raise."""
    changes: dict[str, Any] = {}
    for section, values in table.items():
        current = settings.section(section)
        if not isinstance(values, dict):
            raise ValueError(f"override [{section}] must be a table of field = value")
        known = {f.name for f in dataclasses.fields(current) if f.init}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)} in [{section}]; known: {sorted(known)}")
        for name, value in values.items():  # before building, so the error names the section
            check_field(type(current), name, value, section)
        changes[section] = dataclasses.replace(current, **values)
    return dataclasses.replace(settings, **changes)


def wikigpt_home() -> Path:
    """Root of all artifacts: $WIKIGPT_HOME, default ~/.wikigpt."""
    return Path(os.environ.get("WIKIGPT_HOME", Path.home() / ".wikigpt")).expanduser()


def asset_root(settings: Settings, asset: str) -> Path:
    """Where an asset's versions live: $WIKIGPT_HOME/<profile>/<asset>/<version>/."""
    return wikigpt_home() / settings.profile / asset


def artifact_dir(settings: Settings, asset: str) -> Path:
    """The asset's latest materialized version, through its `current` pointer."""
    return asset_root(settings, asset) / CURRENT


def version_dir(settings: Settings, asset: str, version: str) -> Path:
    """The directory that holds exactly one version of an asset; it is never overwritten."""
    return asset_root(settings, asset) / version


WORK_DIR = "_work"
"""Beside a profile's asset folders: `_work/<asset>/<version>` scratch and its version lock."""


def work_dir(settings: Settings, asset: str, version: str) -> Path:
    """Persistent scratch for resumable work (training checkpoints, finished extraction parts),
    keyed by the version it builds, so a changed config never resumes an old run. Survives a
    killed run; cleared by the stage once its artifact is published (or by `wikigpt gc`)."""
    return wikigpt_home() / settings.profile / WORK_DIR / asset / version


def section_type(name: str) -> type:
    """The dataclass of a config section (a spec file stores sections as plain tables)."""
    if name not in _SECTION_NAMES:
        raise ValueError(f"unknown config section {name!r}; known: {sorted(_SECTION_NAMES)}")
    return _SECTION_TYPES[name]


def section_from_dict(name: str, values: dict[str, Any]) -> Any:
    section = section_type(name)(**values)
    check_section(section, name)
    return section


_SECTION_TYPES = {n: t for n, t in typing.get_type_hints(Settings).items() if n != "profile"}
