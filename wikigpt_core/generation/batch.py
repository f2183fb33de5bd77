"""Continuous batching: concurrent sequences decode together over one ragged KV cache.

Each `step()` runs one batched forward that feeds every active sequence its last token (one
new token per sequence), then lets waiting sequences join free rows, each prefilled alone
(exactly the batch-1 computation) straight into its row of the shared cache; batch jobs
(`prefill_together`) prefill the joiners together instead, right-padded, in one forward. A sequence that
finishes (stop token, stop string, token budget, full context, cancelled, or an error of its
own) leaves at once and the rows are compacted, so the next step only computes live sequences.
An exception while prefilling or sampling one sequence fails that sequence alone ("error",
with the message in `Sequence.error`); only a failure of the shared batched forward concerns
them all, and `step()` raises it. Every sequence samples
from its own generator, so its tokens do not depend on the company it decodes in. On CPU in
fp32 the forwards run the model with its linear weights packed once for oneDNN (`packed.py`),
which is what makes 8 rows cost little more than one.
"""
from __future__ import annotations

import contextlib
import copy
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from wikigpt_core.generation.packed import DecodeView
from wikigpt_core.generation.prompts import stop_ids as default_stop_ids
from wikigpt_core.generation.sampling import TokenLogprob, is_greedy, nucleus_probs, token_logprobs
from wikigpt_core.generation.text import StopText
from wikigpt_core.tokenizer import WikiTokenizer

MAX_TOP_LOGPROBS = 20
PREFILL_TOKENS = 8192
"""Padded prompt tokens per batched prefill forward: its (rows, longest prompt, vocab) logits
are that forward's peak memory (512 MiB in bf16 at a 32,768-token vocabulary)."""
MAX_SEED = 2**63
"""Seeds are 0 <= seed < 2**63: what a torch generator takes, and a signed 64-bit integer."""


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 256
    """Generated tokens at most (a stop token counts); 0 only scores the prompt."""
    temperature: float = 0.7
    """0 is greedy."""
    top_p: float = 0.9
    seed: int | None = None
    """Seeds this sequence's own generator; None draws from torch's global generator."""
    stop: tuple[str, ...] = ()
    """Stop strings: the text ends just before the first one that appears."""
    logprobs: bool = False
    """Record each generated token's log-probability."""
    top_logprobs: int = 0
    """Also record this many most likely alternatives per token (at most 20)."""
    prompt_logprobs: bool = False
    """Score the prompt tokens too (echo): each token's log-probability given those before."""


@dataclass(eq=False)
class Sequence:
    """One prompt being continued. Read `tokens`, `text`, `finish_reason` and the logprob
    lists; `drain()` hands out what is new since the last call (for streaming).

    `logprobs` holds every generated token's, the stop token included (for scoring jobs).
    `drain()` hands a token's log-probability out with the text that shows it: a token that
    shows no text of its own (part of a character, a special) goes out with the next text. The
    tokens of a stop string never go out. What no text followed (a trailing partial character,
    a trailing special) is left in `unshown_logprobs` once finished, and the final stop
    token's in `stop_logprob`."""

    prompt: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    tok: WikiTokenizer | None = None
    tag: object = None
    """Anything the caller wants to find the sequence by."""
    tokens: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] = field(default_factory=list)
    stop_logprob: TokenLogprob | None = None
    """The log-probability of the stop token that ended the sequence, if one did."""
    unshown_logprobs: list[TokenLogprob] = field(default_factory=list)
    """Once finished: the trailing tokens no text followed (see the class doc)."""
    finish_reason: str | None = None
    """"stop", "length", "cancelled" or "error" once finished."""
    error: str | None = None
    """Why this sequence failed (finish_reason "error")."""

    def __post_init__(self) -> None:
        self._text = StopText(self.tok, self.params.stop) if self.tok is not None else None
        if self.params.stop and self.tok is None:
            raise ValueError("stop strings need a tokenizer")
        self._pending_text: list[str] = []
        self._unplaced: list[TokenLogprob] = []  # tokens whose text has not appeared yet
        self._placed: deque[tuple[int, TokenLogprob]] = deque()  # (end of its text, logprob)
        self._prompt_drained = False
        self.generator: torch.Generator | None = None

    @property
    def text(self) -> str:
        """Generated text so far (final once finished); stop tokens and stop strings excluded."""
        return self._text.text[:self._text.sent] if self._text else ""

    def drain(self) -> tuple[str, list[TokenLogprob]]:
        """The text released since the last call, and the log-probabilities of the tokens that
        text completes (see the class doc)."""
        text, self._pending_text = "".join(self._pending_text), []
        shown = self._text.sent if self._text is not None else 0
        new = []
        while self._placed and self._placed[0][0] <= shown:
            new.append(self._placed.popleft()[1])
        return text, new

    def drain_prompt_logprobs(self) -> list[TokenLogprob | None] | None:
        """The prompt's log-probabilities the first time they are ready, else None."""
        if self._prompt_drained or not self.prompt_logprobs:
            return None
        self._prompt_drained = True
        return self.prompt_logprobs

    def cancel(self) -> None:
        if self.finish_reason is None:
            self.finish_reason = "cancelled"

    def fail(self, error: str) -> None:
        if self.finish_reason is None:
            self.finish_reason, self.error = "error", error

    def _accept(self, token: int, logprob: TokenLogprob | None, stops: frozenset[int], block: int) -> None:
        self.tokens.append(token)
        if logprob is not None:  # a stop token's too: scoring clients count every token
            self.logprobs.append(logprob)
        if token in stops:
            self.stop_logprob = logprob
            return self._finish("stop")
        if self._text is not None:
            decoded = self._text.decoded
            delta, stopped = self._text.push(token)
            self._place(logprob, grew=self._text.decoded > decoded)
            self._pending_text.append(delta)
            if stopped:
                return self._finish("stop")
        elif logprob is not None:
            self._placed.append((0, logprob))  # no text to wait for
        if len(self.tokens) >= self.params.max_new_tokens or len(self.prompt) + len(self.tokens) >= block:
            self._finish("length")

    def _place(self, logprob: TokenLogprob | None, grew: bool) -> None:
        """Tie the token's log-probability to where the next text ends (its own, if it made
        the text grow)."""
        if logprob is None:
            return
        self._unplaced.append(logprob)
        if grew:
            end = self._text.decoded
            self._placed.extend((end, lp) for lp in self._unplaced)
            self._unplaced.clear()

    def _finish(self, reason: str) -> None:
        self.finish_reason = reason
        if self._text is not None:
            self._pending_text.append(self._text.finish())
            self.unshown_logprobs, self._unplaced = self._unplaced, []


class BatchDecoder:
    """Owns a model's decoding; not thread-safe (one thread calls add/step)."""

    def __init__(self, model, *, max_batch: int = 8, stop_ids: frozenset[int] | None = None,
                 prepack: bool = True, prefill_together: bool = False) -> None:
        """`prepack`: on CPU in fp32, run the linears through weights packed once for oneDNN
        (`generation/packed.py`: ~2.5x faster matmuls at 8 rows, an extra copy of the weights).
        `prefill_together`: sequences that join in the same step are prefilled in one padded
        forward (what batch jobs want on a GPU) rather than one by one; their logits then match
        the batch-1 computation to rounding, not bit for bit, so a server leaves it off."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.model = model  # the caller puts it in eval mode
        self.max_batch = max_batch
        self.prefill_together = prefill_together
        self._net = DecodeView(model, rows_hint=max_batch) if prepack else (lambda: model)
        self.block = int(model.config.block_size)
        self.stop_ids = default_stop_ids() if stop_ids is None else frozenset(stop_ids)
        self.device = next(model.parameters()).device
        self.waiting: deque[Sequence] = deque()
        self.active: list[Sequence] = []  # active[i] owns row i of the cache
        self._cache = None

    @property
    def busy(self) -> bool:
        return bool(self.active or self.waiting)

    def add(self, seq: Sequence) -> Sequence:
        p = seq.params
        if not seq.prompt:
            raise ValueError("the prompt is empty; give at least one token")
        if len(seq.prompt) + (p.max_new_tokens > 0) > self.block:
            raise ValueError(f"the prompt has {len(seq.prompt)} tokens; the context holds {self.block}")
        if not 0 <= p.top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
        if p.seed is not None and not 0 <= p.seed < MAX_SEED:
            raise ValueError(f"seed {p.seed} is out of range; use 0 <= seed < 2**63")
        if p.seed is not None:
            seq.generator = torch.Generator(device=self.device).manual_seed(int(p.seed))
        self.waiting.append(seq)
        return seq

    @torch.no_grad()
    def step(self) -> list[Sequence]:
        """One decode step for all active sequences, then admit waiting ones. Returns the
        sequences that changed (new tokens or finished); finished ones have left."""
        touched: list[Sequence] = []
        self._leave()
        if self.active:
            cache = self._cache
            cache.rows = len(self.active)
            fed = torch.tensor([[s.tokens[-1]] for s in self.active], device=self.device)
            logits, _ = self._net()(fed, cache=cache)
            self._choose(self.active, logits[:, -1])
            touched += self.active
            self._leave()
        if self.prefill_together:
            touched += self._join_waiting_together()
        while self.waiting and len(self.active) < self.max_batch:
            seq = self.waiting.popleft()
            touched.append(seq)
            if seq.finish_reason is None:  # not cancelled while it waited
                try:
                    self._join(seq)
                except Exception as e:  # this prompt alone: its row is reused by the next join
                    seq.fail(f"prefill failed: {type(e).__name__}: {e}")
        self._leave()
        return touched

    def prepare(self) -> None:
        """Pack the weights and allocate the cache now (otherwise the first request does)."""
        self._net()
        if self._cache is None:
            self._cache = self.model.new_ragged_cache(self.max_batch)

    def run(self, seqs: list[Sequence]) -> list[Sequence]:
        """Decode `seqs` to the end (at most max_batch at a time); returns them."""
        for s in seqs:
            self.add(s)
        while self.busy:
            self.step()
        failed = next((s for s in seqs if s.error), None)
        if failed is not None:  # a batch job has no one to hand a failed sequence to
            raise RuntimeError(f"generation failed: {failed.error}")
        return seqs

    def _join_waiting_together(self) -> list[Sequence]:
        """Prefill the waiting sequences that fit in the free rows together, in groups of at
        most PREFILL_TOKENS padded tokens; returns those taken. What cannot go together (a group
        of one, prompt scoring, a group whose forward failed) goes back to the head of the queue
        for the one-by-one path, which isolates a failing prompt."""
        free = self.max_batch - len(self.active)
        taken = [self.waiting.popleft() for _ in range(min(free, len(self.waiting)))]
        live = [s for s in taken if s.finish_reason is None]  # not cancelled while it waited
        alone = [s for s in live if s.params.prompt_logprobs]  # scoring reads every position alone
        for group in prefill_groups([s for s in live if not s.params.prompt_logprobs], PREFILL_TOKENS):
            if len(group) == 1 or not self._join_together(group):
                alone += group
        self.waiting.extendleft(reversed(alone))
        return [s for s in taken if not any(s is a for a in alone)]

    def _join_together(self, seqs: list[Sequence]) -> bool:
        """Prefill several prompts in one forward, each into its own new row; False (nothing
        joined) if that forward fails. Prompts are right-padded: padding sits after every real
        token, so no real token attends to it; the row's length is set to its prompt's, and
        decoding overwrites the padding."""
        if self._cache is None:
            self._cache = self.model.new_ragged_cache(self.max_batch)
        first, n = len(self.active), len(seqs)
        lengths = torch.tensor([len(s.prompt) for s in seqs], device=self.device)
        ids = torch.zeros((n, int(lengths.max())), dtype=torch.long, device=self.device)
        for i, s in enumerate(seqs):
            ids[i, :len(s.prompt)] = torch.tensor(s.prompt, device=self.device)
        rows = rows_view(self._cache, first, n)
        rows.lengths.zero_()  # freed rows keep their last length; new rows start empty
        try:
            logits, _ = self._net()(ids, cache=rows, all_logits=True)  # (n, longest, V)
        except Exception:  # noqa: BLE001 - the one-by-one path finds and fails the culprit alone
            return False
        self._cache.lengths[first:first + n] = lengths
        self.active.extend(seqs)
        for s in seqs:
            if s.params.max_new_tokens == 0:
                s._finish("length")
        going = [i for i, s in enumerate(seqs) if s.params.max_new_tokens > 0]
        if going:
            last = logits[torch.arange(n, device=self.device), lengths - 1]  # (n, V)
            self._choose([seqs[i] for i in going], last[going])
        return True

    def _join(self, seq: Sequence) -> None:
        if self._cache is None:
            self._cache = self.model.new_ragged_cache(self.max_batch)
        slot = len(self.active)
        view = self._cache.row_cache(slot)
        ids = torch.tensor([seq.prompt], device=self.device)
        logits, _ = self._net()(ids, cache=view, all_logits=seq.params.prompt_logprobs)
        self._cache.lengths[slot] = view.pos
        self.active.append(seq)
        if seq.params.prompt_logprobs:
            seq.prompt_logprobs = [None, *token_logprobs(logits[0, :-1], ids[0, 1:], seq.params.top_logprobs)]
        if seq.params.max_new_tokens == 0:
            seq._finish("length")
            return
        self._choose([seq], logits[:, -1])

    def _choose(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        """Pick each sequence's next token from its row of logits (n, V)."""
        chosen = logits.float().argmax(dim=-1)
        for i, s in enumerate(seqs):
            if not is_greedy(s.params.temperature):
                try:
                    probs = nucleus_probs(logits[i:i + 1], s.params.temperature, s.params.top_p)
                    chosen[i] = torch.multinomial(probs, 1, generator=s.generator)[0, 0]
                except Exception as e:  # e.g. NaN logits: this sequence fails, its batch goes on
                    s.fail(f"sampling failed: {type(e).__name__}: {e}")
        want = [i for i, s in enumerate(seqs) if s.params.logprobs]
        lps: dict[int, TokenLogprob] = {}
        if want:
            top = max(seqs[i].params.top_logprobs for i in want)
            rows = torch.tensor(want, device=logits.device)
            for i, lp in zip(want, token_logprobs(logits[rows], chosen[rows], top)):
                lp.top = lp.top[:seqs[i].params.top_logprobs]
                lps[i] = lp
        for i, (s, t) in enumerate(zip(seqs, chosen.tolist())):
            if s.finish_reason is None:
                try:
                    s._accept(t, lps.get(i), self.stop_ids, self.block)
                except Exception as e:  # e.g. its stop-string or text decoding
                    s.fail(f"decoding failed: {type(e).__name__}: {e}")

    def _leave(self) -> None:
        """Drop finished sequences and compact the rest into rows 0..n-1, order kept."""
        keep = [s for s in self.active if s.finish_reason is None]
        if len(keep) == len(self.active):
            return
        slot_of = {id(s): i for i, s in enumerate(self.active)}
        for dst, s in enumerate(keep):
            src = slot_of[id(s)]
            if src != dst:  # src > dst, and row dst is free or already moved down
                self._cache.move_row(src, dst)
        self.active = keep


def prefill_groups(seqs: list[Sequence], budget: int) -> list[list[Sequence]]:
    """`seqs` in order, cut into groups whose padded size (rows x longest prompt) stays within
    `budget` tokens; a prompt longer than the budget forms a group of its own."""
    groups: list[list[Sequence]] = []
    longest = 0
    for s in seqs:
        grown = max(longest, len(s.prompt))
        if groups and grown * (len(groups[-1]) + 1) <= budget:
            groups[-1].append(s)
            longest = grown
        else:
            groups.append([s])
            longest = len(s.prompt)
    return groups


def rows_view(cache, first: int, n: int):
    """Rows [first, first + n) of a ragged KV cache as a ragged cache of their own. Its buffers
    and lengths are views, so what a forward writes through it lands in `cache`."""
    view = copy.copy(cache)
    view.k = [k[first:first + n] for k in cache.k]
    view.v = [v[first:first + n] for v in cache.v]
    view.lengths = cache.lengths[first:first + n]
    view.rows = n
    return view


@contextlib.contextmanager
def decode_threads(model) -> Iterator[None]:
    """One CPU thread while decoding a small model: each step is a few tiny matmuls, and
    intra-op threads then cost more in synchronization than they save (measured ~10x slower
    with 2 threads on a busy 2-core box). Restored afterwards."""
    device = next(model.parameters()).device
    small = device.type == "cpu" and model.config.n_embd <= 256
    before = torch.get_num_threads()
    if small:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if small:
            torch.set_num_threads(before)
