"""Text decoding: greedy, sampling (temperature, top-k, top-p), beam search, stop sequences,
batched prompts of different lengths, and token streaming, against the small `CausalLM`
protocol, so polymodal's own `TextDecoder` and a Hugging Face causal LM (`HFCausalLM`) decode
through the same code.

Batches of prompts of different lengths are left-padded with an attention mask, and each row
gets its own positions (0 at its first real token). Left padding keeps every row's newest token
in the same column, so one step feeds one (B, 1) tensor and the cache stays one rectangular
tensor per layer; the per-row positions make a padded row compute what it computes alone
(Hugging Face's `generate` does the same).

Written here rather than taken from `transformers.generate` because that runs only
`transformers` models; the protocol below is what lets the same loop drive both.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


class CausalLM(Protocol):
    """Next-token logits for `ids` given what came before (kept in `cache`)."""

    def __call__(self, ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor,
                 cache: Any = None, use_cache: bool = True) -> tuple[torch.Tensor, Any]:
        """ids (B, T) new tokens; attention_mask (B, T_past + T), 1 = real token, 0 = padding;
        positions (B, T). Returns logits (B, T, V) and the cache extended by `ids`."""
        ...

    def reorder_cache(self, cache: Any, index: torch.Tensor) -> Any:
        """The cache of rows `index` (B',), rows may repeat (beam search)."""
        ...


@dataclass(frozen=True)
class GenerationConfig:
    max_new_tokens: int = 32
    do_sample: bool = False  # False: greedy (or beam search with num_beams > 1)
    temperature: float = 1.0
    top_k: int | None = None  # sample only among the k most likely tokens
    top_p: float | None = None  # sample only within the smallest set holding this much probability
    num_beams: int = 1
    length_penalty: float = 1.0  # beam score = sum of log-probs / length ** length_penalty
    stop_sequences: tuple[tuple[int, ...], ...] = ()  # token-id sequences; each ends a row, removed
    pad_token_id: int = 0
    use_cache: bool = True
    seed: int | None = None  # seeds a torch.Generator when none is passed

    def __post_init__(self):
        object.__setattr__(self, "stop_sequences", tuple(tuple(int(t) for t in s) for s in self.stop_sequences))
        problems = [
            (self.max_new_tokens < 1, "max_new_tokens must be at least 1"),
            (self.temperature <= 0, "temperature must be above 0 (use do_sample=False for greedy)"),
            (self.top_k is not None and self.top_k < 1, "top_k must be at least 1"),
            (self.top_p is not None and not 0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (self.num_beams < 1, "num_beams must be at least 1"),
            (self.num_beams > 1 and self.do_sample, "beam search does not sample: set do_sample=False"),
            (any(not s for s in self.stop_sequences), "a stop sequence is empty"),
        ]
        for bad, message in problems:
            if bad:
                raise ValueError(f"GenerationConfig: {message}")


@dataclass
class Generation:
    tokens: list[list[int]]  # new tokens per prompt, the stop sequence that ended it removed
    finish_reasons: list[str]  # per prompt: "stop" (a stop sequence) or "length" (max_new_tokens)
    scores: list[float] | None = None  # beam search: each answer's length-normalised log-probability


class HFCausalLM:
    """A Hugging Face causal LM (`GPT2LMHeadModel`, `LlamaForCausalLM`, ...) as a `CausalLM`."""

    def __init__(self, model):
        self.model = model
        # transformers 5.x renamed `past_key_values` to `cache`; take whichever this version has
        params = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"

    @property
    def device(self) -> torch.device:
        return self.model.device

    def __call__(self, ids, attention_mask, positions, cache=None, use_cache=True):
        out = self.model(input_ids=ids, attention_mask=attention_mask.long(), position_ids=positions,
                         use_cache=use_cache, **{self.cache_arg: cache})
        return out.logits, getattr(out, self.cache_arg)  # the output field has the same name

    def reorder_cache(self, cache, index):
        cache.reorder_cache(index)
        return cache


def generate(model: CausalLM, prompts: Sequence[Sequence[int]], config: GenerationConfig | None = None,
             generator: torch.Generator | None = None) -> Generation:
    """Decode every prompt (token-id lists of any lengths) in one batch."""
    config = config or GenerationConfig()
    if config.num_beams > 1:
        return beam_search(model, prompts, config)
    *_, rows = _token_steps(model, prompts, config, generator)  # the rows after the last step
    return Generation([rows.answer(i) for i in range(rows.n)], rows.reasons())


def stream(model: CausalLM, prompts: Sequence[Sequence[int]], config: GenerationConfig | None = None,
           generator: torch.Generator | None = None) -> Iterator[list[list[int]]]:
    """Yield, after each decoding step, each prompt's newly final tokens (often one, sometimes
    none). Tokens that could be the start of a stop sequence are held back until they are known
    not to be, so the concatenated stream equals `generate(...).tokens`."""
    config = config or GenerationConfig()
    if config.num_beams > 1:
        raise ValueError("beam search cannot stream: its best answer is known only at the end")
    rows, sent = None, [0] * len(prompts)
    for rows in _token_steps(model, prompts, config, generator):
        yield _release(rows, sent, final=False)
    if rows is not None:
        tail = _release(rows, sent, final=True)
        if any(tail):
            yield tail


def _release(rows: _Rows, sent: list[int], final: bool) -> list[list[int]]:
    out = []
    for i in range(rows.n):
        ready = rows.answer(i) if final or rows.stopped[i] else rows.safe_prefix(i)
        out.append(ready[sent[i]:])
        sent[i] = max(sent[i], len(ready))
    return out


@dataclass
class _Rows:
    """Each row's generated tokens, and the length of the stop sequence that ended it (0: none)."""

    n: int
    stop_sequences: tuple[tuple[int, ...], ...]
    tokens: list[list[int]] = field(default_factory=list)
    stop_len: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.tokens = [[] for _ in range(self.n)]
        self.stop_len = [0] * self.n

    @property
    def stopped(self) -> list[bool]:
        return [length > 0 for length in self.stop_len]

    def add(self, step_tokens: list[int]) -> None:
        for i, token in enumerate(step_tokens):
            if not self.stop_len[i]:
                self.tokens[i].append(token)
                self.stop_len[i] = stop_length(self.tokens[i], self.stop_sequences)

    def answer(self, i: int) -> list[int]:
        return self.tokens[i][: len(self.tokens[i]) - self.stop_len[i]]

    def safe_prefix(self, i: int) -> list[int]:
        """Row i's tokens less any tail that a stop sequence could still complete."""
        seq, held = self.tokens[i], 0
        for stop in self.stop_sequences:
            for k in range(min(len(stop) - 1, len(seq)), held, -1):
                if tuple(seq[-k:]) == stop[:k]:
                    held = k
                    break
        return seq[: len(seq) - held]

    def reasons(self) -> list[str]:
        return ["stop" if s else "length" for s in self.stopped]


def stop_length(seq: list[int], stop_sequences) -> int:
    """The length of the stop sequence `seq` ends with (0 if none)."""
    for stop in stop_sequences:
        if len(seq) >= len(stop) and tuple(seq[-len(stop):]) == stop:
            return len(stop)
    return 0


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T_max) ids and attention mask, each prompt right-aligned."""
    if not prompts:
        raise ValueError("no prompts to decode")
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty: give at least one token (a start token)")
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, prompt in enumerate(prompts):
        ids[i, width - len(prompt):] = torch.as_tensor(list(prompt), dtype=torch.long)
        mask[i, width - len(prompt):] = 1
    return ids.to(device), mask.to(device)


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) positions counting real tokens from 0; padding gets 0 (its output is never used)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """logits (B, V) with the tokens outside top-k and outside the top-p nucleus set to -inf."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        ordered, order = logits.sort(dim=-1, descending=True)
        probs = ordered.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the more likely tokens
        ordered = ordered.masked_fill(before >= top_p, float("-inf"))  # the top token always stays
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, ordered)
    return logits


def next_tokens(logits: torch.Tensor, config: GenerationConfig, generator) -> torch.Tensor:
    """(B,) the next token of each row from its logits (B, V)."""
    if not config.do_sample:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits / config.temperature, config.top_k, config.top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _device(model) -> torch.device:
    return torch.device(getattr(model, "device", "cpu"))


def _token_steps(model: CausalLM, prompts, config: GenerationConfig, generator) -> Iterator[_Rows]:
    """Greedy or sampled decoding; yields the rows after each step until all stop or the limit."""
    device = _device(model)
    if generator is None and config.seed is not None:
        generator = torch.Generator(device).manual_seed(config.seed)
    ids, mask = left_pad(prompts, config.pad_token_id, device)  # (B, T)
    positions = positions_from_mask(mask)  # (B, T)
    rows = _Rows(len(prompts), config.stop_sequences)
    cache, feed, feed_positions = None, ids, positions
    for _ in range(config.max_new_tokens):
        if config.use_cache:
            token, cache = _next(model, (feed, mask, feed_positions, cache, True), config, generator)
        else:  # the whole sequence again each step
            token, _ = _next(model, (ids, mask, positions, None, False), config, generator)
        token = token.masked_fill(torch.tensor(rows.stopped, device=device), config.pad_token_id)  # (B,)
        rows.add(token.tolist())
        yield rows
        if all(rows.stopped):
            return
        feed, feed_positions = token[:, None], positions[:, -1:] + 1  # (B, 1)
        ids, positions = torch.cat([ids, feed], 1), torch.cat([positions, feed_positions], 1)
        mask = torch.cat([mask, torch.ones_like(feed)], 1)


# here, not around the loop: a grad mode set across a `yield` leaks to the caller; inference
# mode rather than no_grad, as it skips autograd's bookkeeping on every op of the step
@torch.inference_mode()
def _next(model: CausalLM, inputs: tuple, config: GenerationConfig, generator):
    logits, cache = model(*inputs)
    return next_tokens(logits[:, -1].float(), config, generator), cache


@dataclass
class _Beams:
    """Beam-search state of one prompt: its finished answers, best first, at most `size`."""

    size: int
    length_penalty: float
    finished: list[tuple[float, list[int], str]] = field(default_factory=list)
    done: bool = False

    def add(self, logprob: float, seq: list[int], answer: list[int], reason: str) -> None:
        self.finished.append((logprob / len(seq) ** self.length_penalty, answer, reason))
        self.finished.sort(key=lambda item: -item[0])
        del self.finished[self.size:]

    def settle(self, best_live_logprob: float, length: int) -> None:
        """Done once it holds `size` answers that the best live beam can no longer beat (the
        usual heuristic: that beam scored at its current length)."""
        if len(self.finished) == self.size:
            self.done = best_live_logprob / length ** self.length_penalty <= self.finished[-1][0]


def beam_search(model: CausalLM, prompts: Sequence[Sequence[int]], config: GenerationConfig) -> Generation:
    """The `num_beams` most likely continuations of each prompt, scored by log-probability over
    length ** length_penalty; returns the best answer of each prompt."""
    b, k, device = len(prompts), config.num_beams, _device(model)
    ids, mask = left_pad(prompts, config.pad_token_id, device)
    positions = positions_from_mask(mask)
    beams = [_Beams(k, config.length_penalty) for _ in range(b)]
    with torch.no_grad():  # no yield inside: beam search returns only at the end
        logits, cache = model(ids, mask, positions, None, use_cache=True)
        expand = torch.arange(b, device=device).repeat_interleave(k)  # every prompt's row k times
        cache, mask, positions = model.reorder_cache(cache, expand), mask[expand], positions[:, -1:][expand]
        logits = logits[:, -1:][expand]  # (B * K, 1, V)
        scores = torch.full((b, k), float("-inf"), device=device)
        scores[:, 0] = 0.0  # one live beam per prompt at the start, so the first k picks differ
        history: list[list[int]] = [[] for _ in range(b * k)]
        feed = None  # each beam's newest token (B * K, 1), fed from the second step
        for step in range(config.max_new_tokens):
            if step:
                logits, cache = model(feed, mask, positions, cache, use_cache=True)
            logprobs = logits[:, -1].float().log_softmax(dim=-1)  # (B * K, V)
            src, token, scores = _beam_step(scores, logprobs, history, beams, config)
            if all(beam.done for beam in beams):
                break
            cache = model.reorder_cache(cache, src)
            history = [history[i] + [t] for i, t in zip(src.tolist(), token.tolist())]
            feed, positions = token[:, None], positions + 1  # (B * K, 1)
            mask = torch.cat([mask[src], torch.ones_like(feed)], 1)
    return _best_answers(beams, history, scores)


def _beam_step(scores, logprobs, history, beams: list[_Beams], config: GenerationConfig):
    """Extend every live beam by one token: the (B * K,) source rows, tokens and new (B, K) scores."""
    b, k = scores.shape
    vocab = logprobs.shape[-1]
    totals = (scores.reshape(-1, 1) + logprobs).reshape(b, k * vocab)  # (B, K * V)
    top, index = totals.topk(min(2 * k, k * vocab), dim=-1)  # 2K: K may finish and K stay live
    src, token, new_scores = [], [], []
    for row, beam in enumerate(beams):
        live = [] if beam.done else _live_candidates(row, top[row].tolist(), index[row].tolist(),
                                                      vocab, history, beam, config)
        live += [(row * k, config.pad_token_id, float("-inf"))] * (k - len(live))
        if not beam.done and live[0][2] > float("-inf"):
            beam.settle(live[0][2], len(history[live[0][0]]) + 1)
        src += [s for s, _, _ in live]
        token += [t for _, t, _ in live]
        new_scores += [score for _, _, score in live]
    device = scores.device
    return (torch.tensor(src, device=device), torch.tensor(token, device=device),
            torch.tensor(new_scores, device=device).reshape(b, k))


def _live_candidates(row, top, index, vocab, history, beam: _Beams, config) -> list[tuple[int, int, float]]:
    """Row's best candidates in order: those that end in a stop sequence (among the first K, as
    in the usual algorithm) become answers; the first K others stay live beams."""
    k, live = beam.size, []
    for rank, (score, flat) in enumerate(zip(top, index)):
        if score == float("-inf"):
            break
        src, token = row * k + flat // vocab, flat % vocab
        seq = history[src] + [token]
        stop = stop_length(seq, config.stop_sequences)
        if stop and rank < k:
            beam.add(score, seq, seq[: len(seq) - stop], "stop")
        elif not stop:
            live.append((src, token, score))
            if len(live) == k:
                break
    return live


def _best_answers(beams: list[_Beams], history, scores) -> Generation:
    k = beams[0].size
    for row, beam in enumerate(beams):
        if not beam.done:  # out of new tokens: the live beams are answers too
            for j, score in enumerate(scores[row].tolist()):
                if score > float("-inf"):
                    beam.add(score, history[row * k + j], history[row * k + j], "length")
    best = [beam.finished[0] for beam in beams]
    return Generation([a for _, a, _ in best], [r for _, _, r in best], [s for s, _, _ in best])
