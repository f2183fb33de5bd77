"""Push a release folder to the Hugging Face Hub, then download it back and smoke-test it.

Publishing happens only when both HF_REPO_ID and HF_TOKEN are set in the environment. The
token is passed to huggingface_hub directly and never printed, logged, stored in metadata or
written into the folder; error messages are scrubbed of it before they are raised.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)


class PublishError(RuntimeError):
    """Upload, download or smoke test of the published release failed."""


@dataclass(frozen=True)
class HubTarget:
    repo_id: str
    token: str
    endpoint: str | None = None

    def __repr__(self) -> str:  # never show the token, even in a traceback's locals
        return f"HubTarget(repo_id={self.repo_id!r}, endpoint={self.endpoint!r}, token=***)"


def hub_target_from_env() -> HubTarget | None:
    """The Hub target when HF_REPO_ID and HF_TOKEN are both set, else None (local only)."""
    repo_id, token = os.environ.get("HF_REPO_ID", "").strip(), os.environ.get("HF_TOKEN", "").strip()
    if not repo_id or not token:
        return None
    return HubTarget(repo_id=repo_id, token=token, endpoint=os.environ.get("HF_ENDPOINT") or None)


GGUF_SUFFIX = "-GGUF"
"""The Hub convention: a model's GGUF files live in `<repo>-GGUF`."""


def gguf_target(target: HubTarget) -> HubTarget:
    """Where the GGUF files of the release at `target` are published."""
    return HubTarget(repo_id=gguf_repo_id(target.repo_id), token=target.token, endpoint=target.endpoint)


def gguf_repo_id(repo_id: str) -> str:
    return repo_id + GGUF_SUFFIX


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def sha256_files(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts):
            out[p.relative_to(folder).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def smoke_test(folder: Path) -> str:
    """Load a release folder with the core loader and greedily generate a few tokens."""
    from wikigpt_core.chat import render_prompt
    from wikigpt_core.generation import SamplingParams, generate_ids
    from wikigpt_core.release.hf_export import load_release_model
    from wikigpt_core.tokenizer import WikiTokenizer

    model = load_release_model(folder)
    tok = WikiTokenizer.load(folder)
    ids = render_prompt([{"role": "user", "content": "What is Wikipedia?"}], tok)
    (reply,) = generate_ids(model, [ids], [SamplingParams(max_new_tokens=8, temperature=0.0)], tok=tok)
    return tok.decode(reply.tokens)


def publish(folder: Path, target: HubTarget, commit_message: str = "WikiGPT release",
            smoke: Callable[[Path], str] = smoke_test) -> dict[str, str]:
    """Create the repo if needed, upload the folder, download it again into a temp dir, check
    every file's sha256 and run `smoke` on that copy (it returns a generated reply). Returns
    {"repo_id", "commit"}."""
    from huggingface_hub import HfApi, snapshot_download

    api = HfApi(endpoint=target.endpoint, token=target.token)
    local = sha256_files(folder)
    try:
        api.create_repo(target.repo_id, repo_type="model", exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=target.repo_id, repo_type="model",
                                 commit_message=commit_message)
        log.info("uploaded release to %s", target.repo_id)
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "release"
            snapshot_download(target.repo_id, repo_type="model", local_dir=copy, token=target.token,
                              endpoint=target.endpoint, cache_dir=Path(tmp) / "cache")
            remote = sha256_files(copy)
            changed = [n for n, h in local.items() if remote.get(n) != h]
            if changed:
                raise PublishError(f"re-downloaded {target.repo_id} differs from the local release "
                                   f"in {changed}")
            sample = smoke(copy)
        log.info("re-downloaded %s and generated a smoke-test reply (%d chars)", target.repo_id, len(sample))
    except PublishError:
        raise
    except Exception as e:  # huggingface_hub raises many types; keep the message, drop the token
        raise PublishError(_scrub(f"publishing to {target.repo_id} failed: {type(e).__name__}: {e}",
                                  target.token)) from None
    return {"repo_id": target.repo_id, "commit": str(getattr(info, "oid", "") or "")}
