"""The `gguf_release` stage with real llama.cpp (llama-cpp-python in its own venv, found through
WIKIGPT_LLAMACPP_VENV as the stage finds it): three GGUF files, llama.cpp's own Q4_K_M, each
file measured, the Modelfile, publishing to `<repo>-GGUF`, and a loud failure without llama.cpp.

The release here is a random model 256 wide, so llama.cpp's K-quants apply (they need rows of
256 weights); the tiny profile's 128-wide model gets the fallback types, which
test_zz_gguf_on_the_embedded_default shows on the real pipeline."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import test_release_support as support  # noqa: E402
from test_release_publish import TOKEN, FakeHub  # noqa: E402

from tests.llamacpp.server import llamacpp_python  # noqa: E402
from wikigpt_core.config import GGUFConfig  # noqa: E402
from wikigpt_core.model import GPT, GPTConfig  # noqa: E402
from wikigpt_core.release.gguf_release import LABELS, MEASUREMENTS, gguf_file, run_gguf_release  # noqa: E402
from wikigpt_core.release.llamacpp import VENV_ENV, LlamaCppMissing  # noqa: E402

gguf = pytest.importorskip("gguf")
REPO_NAME = "wikigpt-tiny-instruct"
CFG = GGUFConfig(ppl_windows=6, decode_tokens=24, threads=2)


def wide_model(vocab_size: int) -> GPT:
    """Random, 256 wide with a 768-wide MLP: every weight row is a whole number of K-quant blocks."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=vocab_size, block_size=96, n_layer=2, n_head=4, n_embd=256,
                          mlp_multiple_of=256))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("blocks."):
                p.mul_(3.0)  # larger block weights: greedy replies wander instead of stopping at once
    return model.eval()


def val_shards(directory: Path, tok) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    ids = tok.encode(support.TEXT * 8)
    np.asarray(ids, dtype=np.uint16).tofile(directory / "val.bin")
    return directory


@pytest.fixture(scope="module")
def llama_venv(tmp_path_factory):
    """The stage finds llama.cpp the way a user points it there: WIKIGPT_LLAMACPP_VENV."""
    python = Path(llamacpp_python())  # skips locally (fails in CI) without the venv
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(VENV_ENV, str(python.parent.parent))
        yield python


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gguf_release")
    tok = support.train_tokenizer(tmp / "tok")
    release = support.build_release(tmp, wide_model(tok.vocab_size), tmp / "tok")
    return tmp, release, val_shards(tmp / "shards", tok)


@pytest.fixture(scope="module")
def built(inputs, llama_venv):
    tmp, release, shards = inputs
    result = run_gguf_release(CFG, release, shards, tmp / "tiny" / "gguf_release" / "v1")
    return result, json.loads((result.path / "run" / MEASUREMENTS).read_text())


def test_three_files_and_llama_cpps_own_k_quant(built):
    result, _ = built
    files = {label: result.path / gguf_file(REPO_NAME, label) for label in LABELS}
    types = {label: {t.tensor_type.name for t in gguf.GGUFReader(p).tensors} for label, p in files.items()}
    assert types["f16"] == {"F16", "F32"}  # norms stay float32
    assert types["Q8_0"] == {"Q8_0", "F32"}
    # llama.cpp's Q4_K_M mix: Q4_K for most weights, Q6_K for some (attn_v, ffn_down, embeddings)
    assert {"Q4_K", "Q6_K"} <= types["Q4_K_M"] <= {"Q4_K", "Q6_K", "F32"}
    reader = gguf.GGUFReader(files["Q4_K_M"])
    assert reader.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    assert reader.fields["tokenizer.chat_template"].contents() == \
        gguf.GGUFReader(files["f16"]).fields["tokenizer.chat_template"].contents()
    sizes = [files[label].stat().st_size for label in ("f16", "Q8_0", "Q4_K_M")]
    assert sizes[0] > 1.7 * sizes[1] and sizes[1] > 1.5 * sizes[2]


def test_each_file_measured_by_llama_cpp(built):
    result, measured = built
    files, reference = measured["files"], measured["release_perplexity"]
    assert measured["windows"] == CFG.ppl_windows and set(files) == set(LABELS)
    # f16 through llama.cpp agrees with the release's own float32 weights on the same windows:
    # the windows, the token ids and the loss are the same computation on both sides.
    assert files["f16"]["perplexity"] == pytest.approx(reference, rel=2e-3)
    assert files["Q8_0"]["perplexity"] == pytest.approx(files["f16"]["perplexity"], rel=1e-2)
    assert files["Q4_K_M"]["perplexity"] != files["f16"]["perplexity"]  # really a different file
    for label, row in files.items():
        assert row["decode_tok_s"] > 0 and row["chat"]["completion_tokens"] >= 1, label
        assert row["bytes"] == (result.path / row["file"]).stat().st_size
    table = (result.path / "run" / "quantization.md").read_text()
    assert table.count("\n") == 2 + len(LABELS) + 1 and f"{reference:.4f}" in table
    assert result.stats["q8_0_ppl_ratio"] == pytest.approx(files["Q8_0"]["perplexity"] / files["f16"]["perplexity"])


def test_folder_carries_modelfile_and_card(built):
    result, _ = built
    modelfile = (result.path / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{gguf_file(REPO_NAME, 'Q4_K_M')}\n")
    card = (result.path / "README.md").read_text()
    for label in LABELS:
        assert gguf_file(REPO_NAME, label) in card
    assert "ollama create" in card and "llama-server" in card
    assert not any(p.name.endswith(".tmp") for p in result.path.iterdir())


@pytest.mark.parametrize("venv", ["no-such-venv", None])
def test_without_llama_cpp_the_stage_fails_saying_what_to_install(inputs, tmp_path, monkeypatch, venv):
    _, release, shards = inputs
    if venv:
        monkeypatch.setenv(VENV_ENV, str(tmp_path / venv))
    else:  # and this Python (the project's) has no llama_cpp either
        monkeypatch.delenv(VENV_ENV, raising=False)
    out = tmp_path / "tiny" / "gguf_release" / "v"
    with pytest.raises(LlamaCppMissing, match=r"pip install 'llama-cpp-python==") as err:
        run_gguf_release(CFG, release, shards, out)
    assert (str(tmp_path / venv) if venv else "[release] gguf = false") in str(err.value)
    assert not out.exists()


def test_published_to_the_gguf_repo(inputs, llama_venv, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from wikigpt_core.release.publish import gguf_repo_id

    _, release, shards = inputs
    repo = "acme/wikigpt-tiny-instruct"
    hub = FakeHub(repo=gguf_repo_id(repo))
    for k, v in {"HF_REPO_ID": repo, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / "hf"),
                 "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    try:
        result = run_gguf_release(CFG, release, shards, tmp_path / "tiny" / "gguf_release" / "pub")
    finally:
        hub.close()
    assert result.stats["published"] is True and result.stats["repo_id"] == "acme/wikigpt-tiny-instruct-GGUF"
    assert {gguf_file(REPO_NAME, label) for label in LABELS} | {"Modelfile", "README.md"} <= set(hub.files)
    assert hub.files["Modelfile"] == (result.path / "Modelfile").read_bytes()
    # the GGUF card points back at the release it quantizes
    assert f"base_model: {repo}" in hub.files["README.md"].decode()
    assert all(TOKEN.encode() not in p.read_bytes() for p in result.path.rglob("*") if p.is_file())
