"""The text decoder and the decoding layer: shapes, causality, the KV cache, greedy / beam /
sampling, stop sequences, batching, streaming, and parity with `transformers.generate`."""

from __future__ import annotations

import math

import pytest
import torch

from polymodal.models.generative import (
    DecoderConfig,
    GenerationConfig,
    HFCausalLM,
    TextDecoder,
    generate,
    stream,
)
from polymodal.models.generative.decoding import filter_logits

VOCAB, IMAGE_WIDTH, IMAGE_TOKENS = 50, 24, 5


@pytest.fixture(scope="module")
def decoder() -> TextDecoder:
    torch.manual_seed(0)
    model = TextDecoder(DecoderConfig(vocab_size=VOCAB, width=32, layers=2, heads=4, max_positions=64,
                                      image_width=IMAGE_WIDTH)).eval()
    # larger weights than the training initialisation, so the logits are far apart and greedy
    # choices do not hinge on rounding
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, IMAGE_TOKENS, IMAGE_WIDTH, generator=torch.Generator().manual_seed(seed))


PROMPTS = [[3, 7, 1], [5], [9, 2, 4, 4, 8, 1], [11, 12]]


class Markov:
    """A `CausalLM` whose next-token distribution depends only on the last token."""

    def __init__(self, probs: torch.Tensor):
        self.logprobs = probs.clamp_min(1e-12).log()  # (V, V): row = last token

    def __call__(self, ids, attention_mask, positions, cache=None, use_cache=True):
        return self.logprobs[ids], None  # (B, T, V)

    def reorder_cache(self, cache, index):
        return cache


def test_decoder_shapes_and_cache(decoder):
    ids = torch.randint(0, VOCAB, (3, 7))
    out = decoder(ids, images(3), use_cache=True)
    assert out.logits.shape == (3, 7, VOCAB)
    assert out.cache.length == 7
    assert out.cache.self_kv[0][0].shape == (3, 4, 7, 8)  # (B, H, T, Dh)
    assert out.cache.cross_kv[0][0].shape == (3, 4, IMAGE_TOKENS, 8)
    assert decoder(ids, images(3)).cache is None
    with pytest.raises(ValueError, match="image_tokens"):
        decoder(ids)
    with pytest.raises(ValueError, match="longer than the decoder's 64 positions"):
        generate(decoder.bind(images(1)), [[1] * 60], GenerationConfig(max_new_tokens=10))


def test_causal_mask_future_tokens_do_not_change_earlier_logits(decoder):
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(2))
    changed = ids.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % VOCAB
    a, b = decoder(ids, images(2)).logits, decoder(changed, images(2)).logits
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert (a[:, 5:] - b[:, 5:]).abs().max() > 1e-3  # the changed positions do change
    # and the image matters
    assert (decoder(ids, images(2, seed=9)).logits[:, :5] - a[:, :5]).abs().max() > 1e-3


def test_kv_cache_gives_the_same_logits_and_tokens(decoder):
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))
    full = decoder(ids, images(2)).logits
    out = decoder(ids[:, :4], images(2), use_cache=True)
    steps = [out.logits]
    for t in range(4, 9):
        out = decoder(ids[:, t:t + 1], None, cache=out.cache, use_cache=True)  # images from the cache
        steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-4)
    bound = decoder.bind(images(len(PROMPTS)))
    cached = generate(bound, PROMPTS, GenerationConfig(max_new_tokens=12))
    uncached = generate(bound, PROMPTS, GenerationConfig(max_new_tokens=12, use_cache=False))
    assert cached.tokens == uncached.tokens
    assert all(len(t) == 12 for t in cached.tokens) and cached.finish_reasons == ["length"] * 4


def test_batched_generation_equals_single_calls(decoder):
    imgs = images(len(PROMPTS))
    batched = generate(decoder.bind(imgs), PROMPTS, GenerationConfig(max_new_tokens=10))
    for i, prompt in enumerate(PROMPTS):
        single = generate(decoder.bind(imgs[i:i + 1]), [prompt], GenerationConfig(max_new_tokens=10))
        assert batched.tokens[i] == single.tokens[0]
    beam = GenerationConfig(max_new_tokens=6, num_beams=3)
    batched_beam = generate(decoder.bind(imgs), PROMPTS, beam)
    for i, prompt in enumerate(PROMPTS):
        assert batched_beam.tokens[i] == generate(decoder.bind(imgs[i:i + 1]), [prompt], beam).tokens[0]


def toy_chain() -> torch.Tensor:
    """0 = end, 1 = A, 2 = B, 3 = start. Greedy takes A (0.6) then ends (0.4): p = 0.24; the best
    sequence is B (0.4) then end (0.9): p = 0.36."""
    probs = torch.zeros(4, 4)
    probs[3] = torch.tensor([0.0, 0.6, 0.4, 0.0])
    probs[1] = torch.tensor([0.4, 0.3, 0.3, 0.0])
    probs[2] = torch.tensor([0.9, 0.05, 0.05, 0.0])
    probs[0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    return probs


def test_beam_search_finds_the_best_sequence_greedy_misses():
    model, stop = Markov(toy_chain()), ((0,),)
    greedy = generate(model, [[3]], GenerationConfig(max_new_tokens=5, stop_sequences=stop))
    assert greedy.tokens == [[1]]
    for penalty in (0.0, 1.0):
        beam = generate(model, [[3], [3]], GenerationConfig(max_new_tokens=5, stop_sequences=stop, num_beams=2,
                                                            length_penalty=penalty))
        assert beam.tokens == [[2], [2]] and beam.finish_reasons == ["stop", "stop"]
        assert beam.scores[0] == pytest.approx(math.log(0.36) / 2**penalty)


def test_beam_search_matches_exhaustive_search_on_a_random_chain():
    probs = torch.rand(6, 6, generator=torch.Generator().manual_seed(4)) ** 3
    probs /= probs.sum(1, keepdim=True)
    best, best_seq = -math.inf, None
    for seq in torch.cartesian_prod(*[torch.arange(6)] * 3).tolist():  # every 3-token continuation
        logp = sum(math.log(probs[a, b]) for a, b in zip([5] + seq, seq))
        best, best_seq = max((best, best_seq), (logp, seq))
    out = generate(Markov(probs), [[5]], GenerationConfig(max_new_tokens=3, num_beams=36, length_penalty=0.0))
    assert out.tokens == [best_seq] and out.scores[0] == pytest.approx(best)


def test_top_k_and_top_p_sample_only_allowed_tokens():
    logits = torch.tensor([4.0, 3.0, 2.5, 2.0, 1.0, 0.5, 0.0, -1.0])
    probs = logits.softmax(0)
    model = Markov(probs.expand(8, 8).clone())
    prompts = [[0]] * 64
    top_k = generate(model, prompts, GenerationConfig(max_new_tokens=8, do_sample=True, top_k=3, seed=0))
    seen_k = {t for row in top_k.tokens for t in row}
    assert seen_k == {0, 1, 2}  # all three used, nothing else
    nucleus = int((probs.cumsum(0) < 0.8).sum()) + 1  # the smallest set with 0.8 of the mass
    top_p = generate(model, prompts, GenerationConfig(max_new_tokens=8, do_sample=True, top_p=0.8, seed=0))
    assert {t for row in top_p.tokens for t in row} == set(range(nucleus))
    hot = generate(model, prompts, GenerationConfig(max_new_tokens=8, do_sample=True, temperature=5.0, seed=0))
    assert len({t for row in hot.tokens for t in row}) == 8
    again = generate(model, prompts, GenerationConfig(max_new_tokens=8, do_sample=True, top_k=3, seed=0))
    assert again.tokens == top_k.tokens  # the seed fixes the draw
    assert torch.isinf(filter_logits(logits[None], 2, None)).sum() == 6


def counting_model(vocab: int = 10) -> Markov:
    """Next token = last token + 1 (mod vocab), certainly."""
    return Markov(torch.eye(vocab).roll(1, dims=1))


def test_stop_sequences_stop_and_are_removed():
    model = counting_model()
    config = GenerationConfig(max_new_tokens=20, stop_sequences=[[9, 9], [4, 5]])
    out = generate(model, [[0], [6], [5]], config)
    assert out.tokens == [[1, 2, 3], [7, 8, 9, 0, 1, 2, 3], [6, 7, 8, 9, 0, 1, 2, 3]]
    assert out.finish_reasons == ["stop"] * 3
    limited = generate(model, [[0]], GenerationConfig(max_new_tokens=4, stop_sequences=[[4, 5]]))
    assert limited.tokens == [[1, 2, 3, 4]] and limited.finish_reasons == ["length"]


def test_streaming_yields_the_same_tokens(decoder):
    model = counting_model()
    config = GenerationConfig(max_new_tokens=20, stop_sequences=[[4, 5]])
    steps = list(stream(model, [[0], [6]], config))
    assert steps[:4] == [[[1], [7]], [[2], [8]], [[3], [9]], [[], [0]]]  # 4 is held back: it may start 4, 5
    joined = [[t for step in steps for t in step[row]] for row in range(2)]
    assert joined == generate(model, [[0], [6]], config).tokens
    bound = decoder.bind(images(len(PROMPTS)))
    config = GenerationConfig(max_new_tokens=15, do_sample=True, top_p=0.9, seed=3, stop_sequences=[[7]])
    steps = list(stream(bound, PROMPTS, config))
    joined = [[t for step in steps for t in step[row]] for row in range(len(PROMPTS))]
    assert joined == generate(bound, PROMPTS, config).tokens
    assert len(steps) > 1


def test_bad_settings_are_one_clear_error():
    with pytest.raises(ValueError, match="temperature"):
        GenerationConfig(temperature=0)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        generate(counting_model(), [[1], []])
    with pytest.raises(ValueError, match="cannot stream"):
        next(stream(counting_model(), [[1]], GenerationConfig(num_beams=2)))


def test_greedy_matches_transformers_generate():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                     bos_token_id=96, eos_token_id=96, pad_token_id=0, initializer_range=0.2)
    model = transformers.GPT2LMHeadModel(config).eval()
    prompts = [[5, 17, 3, 40], [8, 1], [60, 61, 62]]
    ours = generate(HFCausalLM(model), prompts, GenerationConfig(max_new_tokens=12, stop_sequences=[[96]]))
    width = max(map(len, prompts))
    ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    theirs = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12)
    for row, tokens in enumerate(theirs[:, width:].tolist()):
        expected = tokens[: tokens.index(96)] if 96 in tokens else tokens
        assert ours.tokens[row] == expected
    beam = generate(HFCausalLM(model), prompts[:1], GenerationConfig(max_new_tokens=6, num_beams=3))
    assert len(beam.tokens[0]) == 6  # the HF cache reorders through the protocol
