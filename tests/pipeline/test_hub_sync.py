"""Hub sync of the training scratch: `watch` uploads only when a new complete checkpoint
appeared, and then only that checkpoint and the run's small files; the remote keeps the newest
checkpoint. The HF Hub is a cloud service, so its client is a recording fake here; the
`file://` store is the real local implementation."""
from __future__ import annotations

from pathlib import Path

import pytest

from wikigpt_pipeline.launchers import hub_sync
from wikigpt_pipeline.launchers.hub_sync import CheckpointSync

KEY = "0123456789abcdef"


class FakeHfApi:
    def __init__(self):
        self.uploads: list[dict] = []

    def create_repo(self, repo, private, exist_ok):
        assert private  # checkpoints are never public

    def upload_folder(self, **kwargs):
        self.uploads.append(kwargs)


@pytest.fixture
def hub(monkeypatch) -> FakeHfApi:
    api = FakeHfApi()
    monkeypatch.setattr(hub_sync, "_api", lambda: api)
    return api


def write_checkpoint(work: Path, step: int) -> Path:
    ckpt = work / KEY / f"ckpt-{step:08d}"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"weights %d" % step)
    (work / KEY / "log.jsonl").write_text(f'{{"step": {step}}}\n')
    return ckpt


class Stop(Exception):
    pass


def test_watch_uploads_a_checkpoint_once(tmp_path, hub, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    ticks = []

    def fake_sleep(seconds):
        ticks.append(seconds)
        if len(ticks) == 1:
            write_checkpoint(work, 2)  # appears during the first interval
        if len(ticks) == 4:
            raise Stop  # three ticks done: end the loop

    monkeypatch.setattr(hub_sync.time, "sleep", fake_sleep)
    with pytest.raises(Stop):
        hub_sync.watch(work, "user/wikigpt-runs", "runs/c1/work", interval=600)
    assert len(hub.uploads) == 1  # the two ticks without a new checkpoint uploaded nothing
    assert hub.uploads[0]["repo_id"] == "user/wikigpt-runs"
    assert hub.uploads[0]["path_in_repo"] == "runs/c1/work"


def test_only_the_new_checkpoint_is_pushed(tmp_path, hub):
    work = tmp_path / "work"
    write_checkpoint(work, 2)  # what `pull` restored: already remote
    sync = CheckpointSync(work, "user/wikigpt-runs", "runs/c1/work")
    assert not sync.tick() and hub.uploads == []
    write_checkpoint(work, 4)
    (work / KEY / ".tmp-deadbeef").mkdir()  # the next checkpoint, half written
    assert sync.tick()
    assert not sync.tick()
    [upload] = hub.uploads
    # the older checkpoint and the partial write stay home; rotated-out remote files are deleted
    assert sorted(upload["ignore_patterns"]) == [f"{KEY}/.tmp-deadbeef/*", f"{KEY}/ckpt-00000002/*"]
    assert upload["delete_patterns"] == "*"


def test_local_store_keeps_the_newest_checkpoint_and_the_log(tmp_path):
    work, store = tmp_path / "work", tmp_path / "store"
    sync = CheckpointSync(work, f"file://{store}", "runs/c1/work")
    assert not sync.tick()  # nothing trained yet
    write_checkpoint(work, 2)
    assert sync.tick()
    write_checkpoint(work, 4)
    assert sync.tick()
    remote = store / "runs/c1/work" / KEY
    assert sorted(p.name for p in remote.iterdir()) == ["ckpt-00000004", "log.jsonl"]
    assert (remote / "ckpt-00000004" / "model.safetensors").read_bytes() == b"weights 4"
    # a relaunch pulls it back and resumes from it; the restored checkpoint is not re-sent
    restored = tmp_path / "restored"
    assert hub_sync.pull_dir(f"file://{store}", "runs/c1/work", restored)
    assert not CheckpointSync(restored, f"file://{store}", "runs/c1/work").tick()
    assert (restored / KEY / "ckpt-00000004" / "model.safetensors").exists()
