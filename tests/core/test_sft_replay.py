"""SFT's replay mix: pretraining windows among the chat examples, every token trained."""
from __future__ import annotations

import numpy as np
import pytest

from wikigpt_core.config import TrainConfig
from wikigpt_core.sft import with_replay
from wikigpt_core.train.data import IGNORE_INDEX, DataError


def _chat(n: int) -> list[tuple[list[int], list[int]]]:
    return [([5, 6, 7 + i], [IGNORE_INDEX, 6, 7 + i]) for i in range(n)]


def _shards(tmp_path, n_tokens: int = 5_000):
    tokens = (np.arange(n_tokens) % 4000 + 10).astype(np.uint16)
    tokens.tofile(tmp_path / "train.bin")
    return tmp_path


def test_replay_makes_up_its_share_spread_evenly_and_fully_trained(tmp_path):
    chat = _chat(70)
    mixed = with_replay(chat, 0.3, _shards(tmp_path), block=64, seed=1)
    replay = [i for i, ex in enumerate(mixed) if ex not in chat]
    assert len(replay) == 30 and len(mixed) == 100  # 30 % of the whole
    assert [ex for ex in mixed if ex in chat] == chat  # chat order kept
    for i in replay:
        ids, labels = mixed[i]
        assert len(ids) == 32 and labels == ids  # half a block, every token a target
        assert ids == list(range(ids[0], ids[0] + 32))  # a contiguous window of the shard
    gaps = np.diff(replay)
    assert gaps.max() <= 4  # spread through the chat examples, not bunched at one end
    assert with_replay(chat, 0.3, _shards(tmp_path), block=64, seed=1) == mixed  # seeded


def test_no_replay_leaves_the_examples_alone_and_replay_needs_the_shards():
    chat = _chat(5)
    assert with_replay(chat, 0.0, None, block=64, seed=1) is chat
    with pytest.raises(DataError, match="token shards"):
        with_replay(chat, 0.2, None, block=64, seed=1)
    with pytest.raises(ValueError, match="replay_share"):
        TrainConfig(replay_share=1.0)
