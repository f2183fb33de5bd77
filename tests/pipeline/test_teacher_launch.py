"""`[teacher] launch = "skypilot"`: the sft_dataset asset rents the teacher through the launcher
for its work, talks to it over real HTTP, and tears it down, with the rented time in its metadata.

The cloud is the fake SDK of test_launcher_skypilot_flow (nothing can be rented here); the
"rented" endpoint is a real HTTP server on 127.0.0.1 speaking the OpenAI chat API. Behind it sits
the project's rule-based offline teacher, so the replies are valid without a model: this test is
about the wiring, and the real-model runs are in tests/core/test_align_real_server.py.
"""
from __future__ import annotations

import http.server
import json
import shutil
import threading
from pathlib import Path

import dagster as dg
import pytest

from tests.core.test_align_stages import _corpus
from tests.pipeline.test_launcher_skypilot_flow import REPO, remote  # noqa: F401 (fixture)
from wikigpt_core.artifacts import ArtifactWriter, point_current
from wikigpt_core.config import apply_overrides, load_settings
from wikigpt_core.llm import offline
from wikigpt_pipeline.assets import build_assets
from wikigpt_pipeline.launchers import SkyPilotLauncher

KEY = "k-teacher-secret"


class _OpenAIOverRules(http.server.BaseHTTPRequestHandler):
    chats: list[dict] = []

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {KEY}"

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path == "/v1/models" and self._authorized():
            self._send(200, {"data": [{"id": "rules-over-http"}]})
        else:
            self._send(401, {})

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/v1/chat/completions" or not self._authorized():
            self._send(401, {})
            return
        type(self).chats.append(body)
        out = offline.reply(body)
        self._send(200, {"choices": [{"message": {"role": "assistant", "content": out["text"]}}],
                         "usage": {"prompt_tokens": out["prompt_tokens"],
                                   "completion_tokens": out["completion_tokens"]}})

    def log_message(self, *args):
        pass


@pytest.fixture()
def teacher_server():
    _OpenAIOverRules.chats = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _OpenAIOverRules)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def test_sft_dataset_rents_the_teacher_for_its_work_and_tears_it_down(remote, teacher_server,  # noqa: F811
                                                                       tmp_path, monkeypatch):
    fake, launcher = remote
    shutil.copy(REPO / "sky" / "teacher.yaml", Path(launcher.sky_dir) / "teacher.yaml")
    fake.serve_at = f"127.0.0.1:{teacher_server.server_address[1]}"
    monkeypatch.setenv("WIKIGPT_TEACHER_API_KEY", KEY)
    monkeypatch.setenv("WIKIGPT_HOME", str(tmp_path / "home"))
    # The corpus the stage reads: real enwiki articles, as a materialized deduped_corpus.
    _corpus(tmp_path / "rows")
    with ArtifactWriter(tmp_path / "home" / "tiny" / "deduped_corpus" / "v1", stage="deduped_corpus") as w:
        shutil.copy(tmp_path / "rows" / "corpus.parquet", w.dir / "corpus.parquet")
    point_current(w.out)
    settings = apply_overrides(load_settings("tiny", env=False), {
        "teacher": {"backend": "openai", "launch": "skypilot", "model": "rules-over-http",
                    "base_url": "http://127.0.0.1:9/v1", "concurrency": 2},  # never used
        "sft_data": {"n_examples": 24, "heldout_fraction": 0.25, "passage_chars": 300}})
    rented = SkyPilotLauncher(**{**launcher.model_dump(), "hourly_price_usd": 0.5})

    res = dg.materialize(build_assets(settings), selection=["sft_dataset"],
                         resources={"launcher": rented}, instance=dg.DagsterInstance.ephemeral(),
                         raise_on_error=False)
    assert res.success, res.get_step_failure_events()[0].step_failure_data.error.cause.message
    md = {k: v.value for k, v in res.asset_materializations_for_node("sft_dataset")[0].metadata.items()}
    assert _OpenAIOverRules.chats, "the stage never talked to the rented endpoint"
    assert all(c["model"] == "rules-over-http" for c in _OpenAIOverRules.chats)
    assert md["teacher_gpu_hours"] >= 0 and md["teacher_cost_usd"] == pytest.approx(md["teacher_gpu_hours"] * 0.5, abs=1e-4)
    assert md["examples_train"] > 0
    kinds = [c[0] for c in fake.calls]
    assert kinds[-1] == "down" and fake.clusters == {}         # torn down once the work ended
    task = next(c for c in fake.calls if c[0] == "launch")
    assert "teacher" in task[1]
    assert KEY not in json.dumps(md, default=str)               # the key never reaches metadata


def test_offline_backend_with_a_rented_teacher_is_refused_before_renting(remote, tmp_path, monkeypatch):  # noqa: F811
    fake, launcher = remote
    monkeypatch.setenv("WIKIGPT_HOME", str(tmp_path / "home"))
    with ArtifactWriter(tmp_path / "home" / "tiny" / "deduped_corpus" / "v1", stage="deduped_corpus") as w:
        (w.dir / "corpus.parquet").write_text("unused")
    point_current(w.out)
    settings = apply_overrides(load_settings("tiny", env=False), {"teacher": {"launch": "skypilot"}})
    res = dg.materialize(build_assets(settings), selection=["sft_dataset"],
                         resources={"launcher": launcher}, instance=dg.DagsterInstance.ephemeral(),
                         raise_on_error=False)
    assert not res.success and fake.calls == []
    assert 'backend = "offline"' in res.get_step_failure_events()[0].step_failure_data.error.cause.message
