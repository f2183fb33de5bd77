"""Publishing: the real huggingface_hub client uploads the release, downloads it back and the
smoke test runs on the download. The Hub itself cannot be reached from tests, so a minimal
Hub speaking the same HTTP API (create repo, preupload, ndjson commit, repo info, tree,
resolve) runs on 127.0.0.1. The token must reach the Hub's Authorization header and nowhere
else: not the folder, the manifest, the stats, the logs or an error message."""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
import test_release_support as support  # noqa: E402

from wikigpt_core.release.publish import PublishError  # noqa: E402

TOKEN = "hf_FAKEtoken0123456789abcdefSECRET"
REPO = "acme/wikigpt-tiny-instruct"


class FakeHub:
    """Just enough of the Hub API for upload_folder + snapshot_download of regular files."""

    def __init__(self, *, corrupt: str | None = None, reject_auth: bool = False,
                 repo: str = REPO) -> None:
        self.repo = repo
        self.files: dict[str, bytes] = {}
        self.card_metadata: dict | None = None
        self.sha = "0" * 40
        self.auth: list[str] = []
        self.paths: list[str] = []
        self.corrupt, self.reject_auth = corrupt, reject_auth
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def _reply(self, code: int, body: bytes = b"", ctype: str = "application/json",
                       headers: dict[str, str] | None = None, head: bool = False) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, obj, code: int = 200) -> None:
                self._reply(code, json.dumps(obj).encode())

            def _route(self, method: str) -> None:
                hub.auth.append(self.headers.get("authorization", ""))
                path = unquote(urlparse(self.path).path)
                hub.paths.append(f"{method} {path}")
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                if hub.reject_auth:
                    return self._json({"error": "Invalid credentials in Authorization header"}, 401)
                api = f"/api/models/{hub.repo}"
                if method == "POST" and path == "/api/repos/create":
                    return self._json({"url": f"{hub.url}/{hub.repo}", "name": hub.repo})
                if method == "POST" and path == "/api/validate-yaml":
                    # The real Hub checks the model card's front matter before accepting it.
                    content = json.loads(body)["content"]
                    try:
                        hub.card_metadata = yaml.safe_load(content.split("---")[1])
                    except (IndexError, yaml.YAMLError) as e:
                        return self._json({"errors": [{"message": str(e)}]}, 400)
                    return self._json({"errors": [], "warnings": []})
                if method == "POST" and path == f"{api}/preupload/main":
                    files = json.loads(body)["files"]
                    return self._json({"files": [{"path": f["path"], "uploadMode": "regular",
                                                  "shouldIgnore": False, "oid": None} for f in files]})
                if method == "POST" and path == f"{api}/commit/main":
                    for line in body.splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            hub.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    hub.sha = hashlib.sha1(json.dumps(sorted(hub.files)).encode() + body).hexdigest()
                    return self._json({"commitUrl": f"{hub.url}/{hub.repo}/commit/{hub.sha}",
                                       "commitOid": hub.sha, "pullRequestUrl": None})
                if method == "GET" and path.startswith(f"{api}/revision/"):
                    return self._json({"id": hub.repo, "sha": hub.sha, "private": True,
                                       "siblings": [{"rfilename": p} for p in sorted(hub.files)]})
                if method == "GET" and path.startswith(f"{api}/tree/"):
                    return self._json([{"type": "file", "path": p, "size": len(b),
                                        "oid": hashlib.sha1(b).hexdigest()} for p, b in sorted(hub.files.items())])
                prefix = f"/{hub.repo}/resolve/"
                if method in ("GET", "HEAD") and path.startswith(prefix):
                    name = path[len(prefix):].split("/", 1)[1]
                    if name not in hub.files:
                        return self._json({"error": "not found"}, 404)
                    data = hub.files[name]
                    if name == hub.corrupt:
                        data = data[:-1] + bytes([data[-1] ^ 1])
                    return self._reply(200, data, "application/octet-stream", head=method == "HEAD",
                                       headers={"X-Repo-Commit": hub.sha,
                                                "ETag": f'"{hashlib.sha1(data).hexdigest()}"'})
                return self._json({"error": f"unexpected {method} {path}"}, 404)

            def do_GET(self):
                self._route("GET")

            def do_HEAD(self):
                self._route("HEAD")

            def do_POST(self):
                self._route("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("publish")
    tok = support.train_tokenizer(tmp / "tok")
    return tmp, support.random_model(tok.vocab_size), tmp / "tok"


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_REPO_ID", REPO)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # no writes to ~/.cache
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    # The suite runs with HF_HUB_OFFLINE=1 so nothing reaches the real Hub; this test talks
    # only to the Hub on 127.0.0.1, so lift offline mode for it alone.
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)


def _no_token_anywhere(directory: Path, *texts: str) -> None:
    for p in directory.rglob("*"):
        if p.is_file():
            assert TOKEN.encode() not in p.read_bytes(), p
    for text in texts:
        assert TOKEN not in text


def test_publish_uploads_redownloads_and_smoke_tests(inputs, hub_env, monkeypatch, caplog, capsys):
    tmp, model, tok_dir = inputs
    hub = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    try:
        with caplog.at_level(logging.DEBUG):
            release = support.build_release(tmp, model, tok_dir, "published")
    finally:
        hub.close()
    manifest = json.loads((release / "manifest.json").read_text())
    assert manifest["stats"]["published"] is True and manifest["stats"]["repo_id"] == REPO
    local = {p.name: p.read_bytes() for p in release.iterdir() if p.name != "manifest.json"}
    assert hub.files == local  # every release file, byte for byte; no manifest
    # The re-download happened (resolve GETs for every file) after the commit.
    commit_at = hub.paths.index(f"POST /api/models/{REPO}/commit/main")
    downloads = [p for p in hub.paths[commit_at:] if p.startswith(f"GET /{REPO}/resolve/")]
    assert {p.rsplit("/", 1)[1] for p in downloads} == set(local)
    assert hub.card_metadata["license"] == "cc-by-sa-4.0"
    assert set(hub.auth) == {f"Bearer {TOKEN}"}  # the token went to the Hub, on every call
    out = capsys.readouterr()
    _no_token_anywhere(release, caplog.text, out.out, out.err)


def test_corrupted_download_fails_the_stage_and_keeps_nothing(inputs, hub_env, monkeypatch):
    tmp, model, tok_dir = inputs
    hub = FakeHub(corrupt="model.safetensors")
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    try:
        with pytest.raises(PublishError, match="model.safetensors") as err:
            support.build_release(tmp, model, tok_dir, "corrupt")
    finally:
        hub.close()
    assert not (tmp / "tiny" / "corrupt").exists()
    assert TOKEN not in str(err.value)


def test_rejected_token_error_names_repo_not_token(inputs, hub_env, monkeypatch):
    tmp, model, tok_dir = inputs
    hub = FakeHub(reject_auth=True)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    try:
        with pytest.raises(PublishError, match=REPO) as err:
            support.build_release(tmp, model, tok_dir, "rejected")
    finally:
        hub.close()
    assert "401" in str(err.value) and TOKEN not in str(err.value)
    # The hub client's exception (which holds the request and its headers) is not chained in.
    assert err.value.__cause__ is None and err.value.__suppress_context__


@pytest.mark.parametrize("unset", ["HF_TOKEN", "HF_REPO_ID"])
def test_without_both_variables_the_release_stays_local(inputs, hub_env, monkeypatch, unset):
    tmp, model, tok_dir = inputs
    hub = FakeHub()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv(unset)
    try:
        release = support.build_release(tmp, model, tok_dir, f"local-{unset}")
    finally:
        hub.close()
    assert hub.paths == []
    stats = json.loads((release / "manifest.json").read_text())["stats"]
    assert stats["published"] is False
    _no_token_anywhere(release)
