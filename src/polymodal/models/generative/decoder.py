"""A small decoder-only causal transformer that can cross-attend to image tokens (the CoCa
captioning decoder), with a KV cache, built on `F.scaled_dot_product_attention`.

Pre-norm blocks, learned absolute positions (given per row, so left-padded batches keep each
row's positions starting at 0), and the output projection tied to the token embedding.
Self-attention keys/values are cached per layer; cross-attention keys/values are computed once
per image and kept in the same cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DecoderConfig:
    vocab_size: int = 1000
    width: int = 256
    layers: int = 4
    heads: int = 4
    max_positions: int = 256  # the longest prompt + generation the learned positions cover
    mlp_ratio: float = 4.0
    image_width: int | None = None  # width of the image tokens to cross-attend to; None: text only
    dropout: float = 0.0


@dataclass
class KVCache:
    """Per-layer keys/values: `self_kv` grows by the tokens fed; `cross_kv` (image) is fixed."""

    self_kv: list[tuple[torch.Tensor, torch.Tensor]]  # each (B, H, T_past, Dh)
    cross_kv: list[tuple[torch.Tensor, torch.Tensor]] | None  # each (B, H, T_img, Dh)

    @property
    def length(self) -> int:
        return self.self_kv[0][0].shape[2] if self.self_kv else 0

    def select(self, index: torch.Tensor) -> KVCache:
        """The cache of rows `index` (beam reordering and expansion: repeated rows allowed)."""

        def pick(pairs):
            return [(k.index_select(0, index), v.index_select(0, index)) for k, v in pairs]

        return KVCache(pick(self.self_kv), pick(self.cross_kv) if self.cross_kv is not None else None)


@dataclass
class DecoderOutput:
    logits: torch.Tensor  # (B, T, V)
    cache: KVCache | None


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)  # (B, H, T, Dh)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dh)  # (B, T, D)


class SelfAttention(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.heads, self.dropout = cfg.heads, cfg.dropout
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.out = nn.Linear(cfg.width, cfg.width)

    def forward(self, x, mask, past=None):
        # x (B, T, D); mask (B, 1, T, T_past + T) True = may attend; past: (k, v) or None
        q, k, v = (_heads(part, self.heads) for part in self.qkv(x).chunk(3, dim=-1))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, H, T, Dh)
        return self.out(_merge(y)), (k, v)


class CrossAttention(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.heads, self.dropout = cfg.heads, cfg.dropout
        self.q = nn.Linear(cfg.width, cfg.width)
        self.kv = nn.Linear(cfg.image_width, 2 * cfg.width)
        self.out = nn.Linear(cfg.width, cfg.width)

    def image_kv(self, image_tokens):
        # image_tokens (B, T_img, D_img) -> k, v each (B, H, T_img, Dh)
        k, v = self.kv(image_tokens).chunk(2, dim=-1)
        return _heads(k, self.heads), _heads(v, self.heads)

    def forward(self, x, kv):
        q = _heads(self.q(x), self.heads)  # (B, H, T, Dh)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, kv[0], kv[1], dropout_p=p)
        return self.out(_merge(y))


class Block(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.ln_self = nn.LayerNorm(cfg.width)
        self.attn = SelfAttention(cfg)
        self.cross = CrossAttention(cfg) if cfg.image_width else None
        self.ln_cross = nn.LayerNorm(cfg.width) if cfg.image_width else None
        self.ln_mlp = nn.LayerNorm(cfg.width)
        hidden = int(cfg.mlp_ratio * cfg.width)
        self.mlp = nn.Sequential(nn.Linear(cfg.width, hidden), nn.GELU(), nn.Linear(hidden, cfg.width),
                                 nn.Dropout(cfg.dropout))

    def forward(self, x, mask, past=None, image_kv=None):
        y, kv = self.attn(self.ln_self(x), mask, past)
        x = x + y
        if self.cross is not None:
            x = x + self.cross(self.ln_cross(x), image_kv)
        return x + self.mlp(self.ln_mlp(x)), kv


class TextDecoder(nn.Module):
    """`forward(ids, image_tokens)` for training (logits for every position); `bind(image_tokens)`
    for decoding (the `CausalLM` protocol of `decoding.py`)."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.tokens = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positions = nn.Embedding(cfg.max_positions, cfg.width)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_final = nn.LayerNorm(cfg.width)
        self.apply(_init_weights)

    @property
    def device(self) -> torch.device:
        return self.tokens.weight.device

    def image_cache(self, image_tokens: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's cross-attention keys/values for `image_tokens` (B, T_img, D_img)."""
        return [block.cross.image_kv(image_tokens) for block in self.blocks]

    def forward(self, ids, image_tokens=None, attention_mask=None, positions=None, cache=None,
                use_cache=False) -> DecoderOutput:
        # ids (B, T); attention_mask (B, T_past + T), 1 = a real token, 0 = padding;
        # positions (B, T), default past length + 0..T-1; image_tokens (B, T_img, D_img)
        b, t = ids.shape
        past = cache.length if cache is not None else 0
        if past + t > self.cfg.max_positions:  # a row's positions never exceed the sequence length
            raise ValueError(f"sequence of {past + t} tokens is longer than the decoder's "
                             f"{self.cfg.max_positions} positions: shorten the prompt or max_new_tokens")
        if positions is None:
            positions = torch.arange(past, past + t, device=ids.device).expand(b, t)
        cross_kv = self._cross_kv(image_tokens, cache)
        mask = causal_mask(attention_mask, b, t, past, ids.device)  # (B, 1, T, T_past + T)
        x = self.drop(self.tokens(ids) + self.positions(positions))  # (B, T, D)
        new_self_kv = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, mask, cache.self_kv[i] if cache is not None else None,
                          cross_kv[i] if cross_kv is not None else None)
            new_self_kv.append(kv)
        logits = self.ln_final(x) @ self.tokens.weight.T  # (B, T, V), tied embedding
        return DecoderOutput(logits, KVCache(new_self_kv, cross_kv) if use_cache else None)

    def _cross_kv(self, image_tokens, cache):
        if self.cfg.image_width is None:
            return None
        if cache is not None and cache.cross_kv is not None:
            return cache.cross_kv  # computed once per image
        if image_tokens is None:
            raise ValueError("this decoder cross-attends to images: image_tokens (B, T_img, D) are required")
        return self.image_cache(image_tokens)

    def bind(self, image_tokens: torch.Tensor | None = None) -> BoundDecoder:
        """This decoder, conditioned on `image_tokens` (one image per prompt row), as a `CausalLM`."""
        return BoundDecoder(self, image_tokens)


class BoundDecoder:
    """A `TextDecoder` plus its images, callable as the `CausalLM` protocol of `decoding.py`."""

    def __init__(self, decoder: TextDecoder, image_tokens: torch.Tensor | None):
        self.decoder, self.image_tokens = decoder, image_tokens

    @property
    def device(self) -> torch.device:
        return self.decoder.device

    def __call__(self, ids, attention_mask, positions, cache=None, use_cache=True):
        out = self.decoder(ids, self.image_tokens, attention_mask, positions, cache, use_cache)
        return out.logits, out.cache

    def reorder_cache(self, cache: KVCache, index: torch.Tensor) -> KVCache:
        return cache.select(index)


def causal_mask(attention_mask, b: int, t: int, past: int, device) -> torch.Tensor | None:
    """(B, 1, T, T_past + T) booleans: query i sees key j when j is at or before it and is not
    padding; every query sees itself, so a padding query gets a defined (ignored) output
    instead of a softmax over nothing (NaN). None when a single new token sees every key (a
    cached decoding step without padding): attention then needs no mask, and building one is
    a good part of a small model's step."""
    if t == 1 and (attention_mask is None or bool(attention_mask.all())):
        return None
    total = past + t
    query_at = torch.arange(past, total, device=device)[:, None]  # (T, 1)
    key_at = torch.arange(total, device=device)[None, :]  # (1, T_past + T)
    mask = (key_at <= query_at)[None].expand(b, t, total)  # (B, T, T_past + T)
    if attention_mask is not None:
        mask = (mask & attention_mask.bool()[:, None, :]) | (key_at == query_at)
    return mask[:, None]


def _init_weights(module: nn.Module) -> None:
    # GPT-2's initialisation: small normal weights, zero biases
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
