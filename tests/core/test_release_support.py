"""Shared builders for the release and serving tests (no tests in here).

Everything is real and tiny: a byte-level BPE trained here with `tokenizers`, a random core GPT
saved with `save_model`, an eval report, lineage stats, and `run_release` writing the folder.
"""
from __future__ import annotations

import copy
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from wikigpt_core.artifacts import ArtifactWriter, content_hash, point_current
from wikigpt_core.config import ReleaseConfig
from wikigpt_core.model import GPT, GPTConfig
from wikigpt_core.model_io import save_model
from wikigpt_core.release import run_release
from wikigpt_core.tokenizer import SPECIAL_TOKENS, WikiTokenizer

ROOT = Path(__file__).resolve().parents[2]
TEXT = (
    "Wikipedia is a free online encyclopedia written and maintained by a community of volunteers. "
    "The history of the encyclopedia began in 2001. Ada Lovelace was an English mathematician and "
    "writer, chiefly known for her work on the Analytical Engine. The sky is blue because air "
    "scatters short wavelengths of sunlight more than long ones. Paris is the capital of France. "
    "Tokenization splits text into pieces called tokens, which a model maps to numbers. "
)


def train_tokenizer(directory: Path, vocab_size: int = 320) -> WikiTokenizer:
    """Byte-level BPE on a few KB of ASCII text; the four specials first, in order."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([TEXT] * 20, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    return WikiTokenizer.load(directory)


def tiny_config(vocab_size: int) -> GPTConfig:
    return GPTConfig(vocab_size=vocab_size, block_size=96, n_layer=2, n_head=4, n_embd=64,
                     mlp_multiple_of=32)


def random_model(vocab_size: int, seed: int = 0, block_scale: float = 1.0) -> GPT:
    """Random tiny GPT. `block_scale` > 1 enlarges the block weights: at init scale the tied
    head makes greedy decoding repeat the last token (<|assistant|>, i.e. empty text)."""
    torch.manual_seed(seed)
    model = GPT(tiny_config(vocab_size))
    with torch.no_grad():  # non-trivial norm gains, so a swapped norm would show in the logits
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.startswith("blocks."):
                p.mul_(block_scale)
    return model.eval()


def chain_model(tok: WikiTokenizer, chain: list[int], *, width: int | None = None, n_layer: int = 1,
                block_size: int = 64) -> GPT:
    """A model whose greedy output after <|assistant|> is exactly `chain`, then <|end|>.

    One-hot embeddings (width >= vocab), a zeroed attention output and an MLP in block 0 that
    maps token x to the next token of the chain make the next token a pure function of the
    current one. Extra blocks are all-zero (identity on the residual) and only add compute,
    which makes each token take measurably long (used to watch a reply stream)."""
    V = tok.vocab_size
    succ = dict(zip([tok.assistant_id, *chain], [*chain, tok.end_id]))
    assert len(succ) == len(chain) + 1, "chain tokens must be distinct"
    cfg = GPTConfig(vocab_size=V, block_size=block_size, n_layer=n_layer, n_head=4,
                    n_embd=width or V + (-V % 4), mlp_multiple_of=64)
    assert cfg.n_embd >= V and cfg.mlp_hidden >= V
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
        model.tok_emb.weight[:, :V] = torch.eye(V)
        blk = model.blocks[0]
        for x, y in succ.items():
            blk.mlp.gate.weight[x, x] = 1.0
            blk.mlp.up.weight[x, x] = 1.0
            blk.mlp.down.weight[y, x] = 1.0
    return model.eval()


def spell(tok: WikiTokenizer, text: str) -> list[int]:
    """Ids spelling `text` one character (or one byte of a multi-byte character) per token."""
    return [i for ch in text for i in tok.encode(ch)]


LINEAGE = {  # stat names as the upstream stages write them
    "wiki_dump": {"stats": {"source": "sample", "dump_date": "2017-01-01", "pages": 12_345,
                            "bytes": 987_654, "sha1": "ab" * 20}, "content_hash": "h-dump"},
    "cleaned_articles": {"stats": {"pages_seen": 9_876, "rows": 4_321,
                                   "filter_counts": {"too_short": 700, "markup": 12, "not_english": 3}},
                         "content_hash": "h-clean"},
    "deduped_corpus": {"stats": {"rows": 4_200, "exact_removed": 77, "fuzzy_removed": 44},
                       "content_hash": "h-dedup"},
    "tokenizer": {"stats": {"vocab_size": 320}, "content_hash": "h-tok"},
    "token_shards": {"stats": {"train_tokens": 3_141_592, "val_tokens": 27_182},
                     "content_hash": "h-shards"},
    "base_checkpoint": {"stats": {"steps": 300, "seconds": 1_800.0, "train_loss": 3.21,
                                  "val_loss": 3.4, "val_ppl": 29.96, "tokens_trained": 2_457_600,
                                  "gpu_hours": 0.5, "cost_usd": 0.2, "accelerators": "RTX4090:1",
                                  "backend": "skypilot"},
                        "content_hash": "h-base"},
    "sft_dataset": {"stats": {"examples_train": 540, "examples_heldout": 60, "examples_qa": 300,
                              "examples_summarize": 150, "examples_extract": 150,
                              "teacher_backend": "offline", "teacher_model": "offline-teacher"},
                    "content_hash": "h-sftd"},
    "sft_checkpoint": {"stats": {"steps": 120, "seconds": 360.0, "train_loss": 1.61},
                       "content_hash": "h-sft"},
    "preference_dataset": {"stats": {"pairs": 64, "pairs_false_premise": 13}, "content_hash": "h-pref"},
    "dpo_checkpoint": {"stats": {"steps": 40, "seconds": 120.0, "loss": 0.52, "reward_accuracy": 0.81,
                                 "margin": 1.25, "beta": 0.1},
                       "content_hash": "h-dpo"},
    "eval_report": {"stats": {"gallery_prompts": 1}, "content_hash": "h-eval"},
}

REPORT = {
    "perplexity": {"base": 13.8, "sft": 14.7, "dpo": 15.1},
    "pairwise": {"sft_vs_base": {"win": 0.89, "tie": 0.06, "loss": 0.05, "n": 200},
                 "dpo_vs_sft": {"win": 0.61, "tie": 0.17, "loss": 0.22, "n": 200}},
    "harness": {"sft": {"exact_match": 0.2, "contains_answer": 0.5, "stopped": 0.97,
                        "length_ok": 0.9, "distinct3": 0.95}},
    "gallery": [{"id": 1, "type": "refuse", "prompt": "Who won the 1850 FIFA World Cup?",
                 "base": "The 1850 ```cup``` was", "sft": "Brazil.", "dpo": "There was no 1850 World Cup."}],
}


def lineage_for(dpo_dir: Path, tokenizer_dir: Path, eval_dir: Path) -> dict[str, dict]:
    """LINEAGE with the real content hashes of the three directories the release reads."""
    lineage = copy.deepcopy(LINEAGE)
    for asset, directory in (("dpo_checkpoint", dpo_dir), ("tokenizer", tokenizer_dir),
                             ("eval_report", eval_dir)):
        lineage[asset]["content_hash"] = content_hash(Path(directory))
    return lineage


def build_release(tmp: Path, model: GPT, tokenizer_dir: Path, name: str = "release") -> Path:
    """Save `model` as the DPO checkpoint, write an eval report, run the release stage."""
    dpo = tmp / f"{name}_dpo"
    save_model(model, dpo)
    eval_dir = tmp / f"{name}_eval"
    eval_dir.mkdir(exist_ok=True)
    (eval_dir / "report.json").write_text(json.dumps(REPORT))
    out = tmp / "tiny" / name
    result = run_release(ReleaseConfig(repo_name="wikigpt-tiny-instruct"), dpo, tokenizer_dir,
                         eval_dir, out, lineage_for(dpo, tokenizer_dir, eval_dir), profile="tiny")
    return result.path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wikigpt_command(sub: str) -> list[str]:
    """`wikigpt <sub>` (the installed console script), or the same entry point through
    `python -m wikigpt_core.serve` when the package is not installed."""
    script = Path(sys.executable).parent / "wikigpt"
    if script.exists():
        return [str(script), sub]
    return [sys.executable, "-m", "wikigpt_core.serve", sub]


class Server:
    """`wikigpt serve` as a real subprocess on 127.0.0.1. Construction only launches it (so
    several can start in parallel); `wait()` blocks until /health answers."""

    def __init__(self, release: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [*wikigpt_command("serve"), "--release", str(release),
             "--port", str(self.port), "--threads", "1", "--log-level", "warning", *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait(self, timeout: float = 90.0) -> "Server":
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not become healthy in time")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.stdout.read() if self.proc.stdout else ""


def materialize_upstreams(home: Path, model: GPT, tok: WikiTokenizer, profile: str = "tiny") -> None:
    """The release's upstreams under `home/<profile>/<asset>/v1` with `current` set, laid out as
    the pipeline lays them out: the DPO weights, the tokenizer, the eval report, lineage stats."""
    for name, entry in LINEAGE.items():
        with ArtifactWriter(home / profile / name / "v1", stage=name) as w:
            w.stats.update(entry["stats"])
            if name == "dpo_checkpoint":
                save_model(model, w.dir)
            elif name == "tokenizer":
                tok.backend.save(str(w.dir / "tokenizer.json"))
            elif name == "eval_report":
                (w.dir / "report.json").write_text(json.dumps(REPORT))
        point_current(w.out)
