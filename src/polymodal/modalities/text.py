"""Text: the tokenizer and the text towers (a transformer or a GRU trained from scratch, a GRU
over the bundled MiniLM's word vectors, and the bundled all-MiniLM-L6-v2 sentence encoder)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import TextTowerConfig
from .image import EncoderOutput
from .minilm import minilm_path, minilm_word_vectors

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]


class Tokenizer:
    """A Hugging Face `tokenizers` tokenizer that returns padded id tensors.

    Both towers use BERT's layout: "[CLS] words [SEP]", id 0 is padding.
    """

    def __init__(self, tokenizer, context_length: int):
        self.tok = tokenizer
        self.context_length = context_length
        self.tok.no_padding()  # we pad per batch, to the longest caption
        self.tok.enable_truncation(context_length)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, context_length: int) -> Tokenizer:
        """A WordPiece tokenizer whose vocabulary is the most frequent words of `texts` plus every
        character seen (alone and as a '##' continuation), so an unseen word still splits into
        known pieces. Built directly rather than with the `tokenizers` trainer, which breaks
        ties in hash order and so gives different ids in different processes (DDP ranks)."""
        from collections import Counter

        from tokenizers import Tokenizer as HFTokenizer, decoders, models, normalizers, pre_tokenizers, processors

        normalizer, pre = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
        words: Counter[str] = Counter()
        for text in texts:
            words.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
        chars = sorted({c for w in words for c in w})
        pieces = chars + ["##" + c for c in chars]
        budget = max(0, vocab_size - len(SPECIALS) - len(pieces))
        frequent = [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])) if len(w) > 1][:budget]
        vocab = {p: i for i, p in enumerate(SPECIALS + pieces + sorted(frequent))}
        tok = HFTokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
        tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre, decoders.WordPiece()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[(s, vocab[s]) for s in ("[CLS]", "[SEP]")])
        return cls(tok, context_length)

    @classmethod
    def from_file(cls, path: str | Path, context_length: int) -> Tokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_file(str(path)), context_length)

    def save(self, path: str | Path) -> None:
        self.tok.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """(B,) strings -> (B, L) int64 ids, padded with 0 to the longest in the batch."""
        if isinstance(texts, str):
            texts = [texts]
        encoded = self.tok.encode_batch(list(texts))
        length = max(len(e.ids) for e in encoded)
        ids = np.zeros((len(encoded), length), dtype=np.int64)
        for row, e in enumerate(encoded):
            ids[row, : len(e.ids)] = e.ids
        return torch.from_numpy(ids)


class TextTransformer(nn.Module):
    """A small bidirectional transformer over word pieces, pooled at [CLS] or by the mean of its
    tokens (whose residual stream carries each word straight through, so it learns as fast as a
    bag of words while attention adds word order)."""

    def __init__(self, cfg: TextTowerConfig, vocab_size: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.width, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(1, cfg.context_length, cfg.width) * 0.02)
        block = nn.TransformerEncoderLayer(cfg.width, cfg.heads, 4 * cfg.width, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)
        if cfg.pool not in ("cls", "mean"):
            raise ValueError(f"unknown text pool '{cfg.pool}' (cls or mean)")
        self.pool = cfg.pool
        self.output_dim = cfg.width

    def forward(self, ids: torch.Tensor) -> EncoderOutput:
        pad = ids == 0  # (B, L)
        x = self.embed(ids) + self.pos[:, : ids.shape[1]]  # (B, L, D)
        x = self.norm(self.blocks(x, src_key_padding_mask=pad))
        if self.pool == "cls":
            return EncoderOutput(tokens=x, pooled=x[:, 0])
        keep = (~pad).unsqueeze(-1).to(x.dtype)  # (B, L, 1)
        return EncoderOutput(tokens=x, pooled=(x * keep).sum(1) / keep.sum(1))


class TextGRU(nn.Module):
    """A bidirectional GRU over word pieces, mean-pooled.

    Why recurrent and not a transformer: a recurrent state carries "red" straight into "circle",
    so each word's output is bound to its neighbours from the first step. The scratch transformer
    (2 layers, mean-pooled) stayed a bag of words under the same training: 0.50 on the attribute
    binding probe where this tower reached 0.78 after 300 steps (benchmarks/README.md).

    The backward direction reads each caption reversed within its own length, so padding never
    reaches a real token and an embedding does not depend on what it was batched with."""

    def __init__(self, cfg: TextTowerConfig, vocab_size: int, embed: nn.Module | None = None):
        super().__init__()
        if cfg.width % 2:
            raise ValueError(f"text width {cfg.width} must be even (half for each direction)")
        self.embed = embed or nn.Embedding(vocab_size, cfg.width, padding_idx=0)  # ids -> (B, L, width)
        self.forward_rnn = nn.GRU(cfg.width, cfg.width // 2, batch_first=True)
        self.backward_rnn = nn.GRU(cfg.width, cfg.width // 2, batch_first=True)
        self.norm = nn.LayerNorm(cfg.width)
        self.output_dim = cfg.width

    def forward(self, ids: torch.Tensor) -> EncoderOutput:
        keep = ids != 0  # (B, L)
        lengths = keep.sum(1, keepdim=True)  # (B, 1)
        pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)  # (1, L)
        # Each row's first `length` positions reversed, padding left in place (an involution).
        flip = torch.where(pos < lengths, lengths - 1 - pos, pos)  # (B, L)
        x = self.embed(ids)  # (B, L, D)
        ahead, _ = self.forward_rnn(x)  # (B, L, D/2)
        index = flip.unsqueeze(-1).expand(-1, -1, x.shape[-1])
        back, _ = self.backward_rnn(x.gather(1, index))  # (B, L, D/2), in reversed order
        back = back.gather(1, index[..., : back.shape[-1]])
        tokens = self.norm(torch.cat([ahead, back], dim=-1))  # (B, L, D)
        mask = keep.unsqueeze(-1).to(tokens.dtype)
        return EncoderOutput(tokens=tokens, pooled=(tokens * mask).sum(1) / mask.sum(1).clamp(min=1))


class MiniLMWordEmbedding(nn.Module):
    """Word-piece ids -> the bundled MiniLM's frozen vector for each piece, projected to `width`.

    Only the projection learns, so a word the captions never used keeps its pretrained place
    among its synonyms: held-out wording lost 0.30 of R@1 with it where a learnt table lost 0.97
    (benchmarks/README.md). The vectors are derived from the installed MiniLM, not saved."""

    def __init__(self, width: int):
        super().__init__()
        vectors = minilm_word_vectors()  # (V, 384)
        self.register_buffer("vectors", vectors, persistent=False)
        self.proj = nn.Linear(vectors.shape[1], width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(nn.functional.embedding(ids, self.vectors))  # (B, L, width)


class BagOfWords(nn.Module):
    """Mean of word-piece embeddings: blind to word order by construction. A baseline that shows
    what the compositional probes measure (it cannot tell "red circle, blue square" from
    "blue circle, red square")."""

    def __init__(self, cfg: TextTowerConfig, vocab_size: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.width, padding_idx=0)
        self.mlp = nn.Sequential(nn.LayerNorm(cfg.width), nn.Linear(cfg.width, cfg.width), nn.GELU())
        self.output_dim = cfg.width

    def forward(self, ids: torch.Tensor) -> EncoderOutput:
        mask = (ids != 0).unsqueeze(-1).float()  # (B, L, 1)
        x = self.embed(ids)  # (B, L, D)
        pooled = self.mlp((x * mask).sum(1) / mask.sum(1).clamp(min=1))
        return EncoderOutput(tokens=x, pooled=pooled)


class MiniLMText(nn.Module):
    """The bundled all-MiniLM-L6-v2 (a BERT) with mean pooling, as sentence-transformers pools it.

    Locked (LiT), its pooled outputs never change, so they are cached by token ids: each caption
    pays the 6-layer forward pass once per run, not once per epoch.
    """

    def __init__(self, cfg: TextTowerConfig):
        super().__init__()
        from transformers import BertModel

        self.bert = BertModel.from_pretrained(str(minilm_path()))  # its pooler is unused but keeps loading quiet
        self.locked = cfg.locked
        if self.locked:
            self.bert.requires_grad_(False)
        self.output_dim = self.bert.config.hidden_size
        self._cache: dict[bytes, torch.Tensor] = {}

    def train(self, mode: bool = True):
        super().train(mode)
        if self.locked:
            self.bert.eval()  # no dropout in a locked tower
        return self

    def _encode(self, ids: torch.Tensor) -> EncoderOutput:
        mask = (ids != 0).long()
        hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, 384)
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        return EncoderOutput(tokens=hidden, pooled=pooled)

    def forward(self, ids: torch.Tensor) -> EncoderOutput:
        if not self.locked:
            return self._encode(ids)
        keys = [row[row != 0].numpy().tobytes() for row in ids.cpu()]
        first_row = {}
        for row, key in enumerate(keys):
            if key not in self._cache:
                first_row.setdefault(key, row)
        if first_row:
            with torch.no_grad():
                pooled = self._encode(ids[list(first_row.values())]).pooled.float().cpu()
            self._cache.update(zip(first_row, pooled))
        pooled = torch.stack([self._cache[k] for k in keys]).to(ids.device)  # (B, 384)
        return EncoderOutput(tokens=pooled.unsqueeze(1), pooled=pooled)

    def warm_cache(self, tokenizer: Tokenizer, texts: list[str], batch_size: int = 256, progress: bool = True) -> None:
        """Embed `texts` into the cache (locked tower only)."""
        from ..utils import progress_bar

        if not self.locked:
            return
        unique = list(dict.fromkeys(texts))
        device = next(self.bert.parameters()).device
        with progress_bar(progress) as bar, torch.no_grad():
            task = bar.add_task("embedding captions (locked text tower)", total=len(unique))
            for i in range(0, len(unique), batch_size):
                self.forward(tokenizer(unique[i:i + batch_size]).to(device))
                bar.advance(task, min(batch_size, len(unique) - i))


def build_text_tower(cfg: TextTowerConfig, vocab_size: int) -> nn.Module:
    if cfg.kind == "transformer":
        return TextTransformer(cfg, vocab_size)
    if cfg.kind == "gru":
        return TextGRU(cfg, vocab_size)
    if cfg.kind == "minilm-gru":
        return TextGRU(cfg, vocab_size, embed=MiniLMWordEmbedding(cfg.width))
    if cfg.kind == "minilm":
        return MiniLMText(cfg)
    if cfg.kind == "bow":
        return BagOfWords(cfg, vocab_size)
    raise ValueError(f"unknown text tower '{cfg.kind}' (known: transformer, gru, minilm-gru, minilm, bow)")


def build_tokenizer(cfg: TextTowerConfig, texts: Iterable[str] | None = None) -> Tokenizer:
    """The MiniLM towers bring its vocabulary; a scratch tower learns one from `texts`."""
    if cfg.kind in ("minilm", "minilm-gru"):
        return Tokenizer.from_file(minilm_path() / "tokenizer.json", cfg.context_length)
    if texts is None:
        raise ValueError("a text tower trained from scratch needs captions to build its tokenizer")
    return Tokenizer.train(texts, cfg.vocab_size, cfg.context_length)
