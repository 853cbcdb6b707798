"""Reading the user's turns with a pretrained sentence encoder (the bundled MiniLM), for the chat
model's `question_encoder: "minilm"`.

Why: a language model trained here from scratch knows only the words and sentence frames of its
training questions. Asked "which hue does the dot have?" or "count the boxes in the picture.", it
has never seen "hue", "dot" or "count", and answers at random (benchmarks/README.md). MiniLM was
trained on a billion sentence pairs to put paraphrases together, so its contextual states of an
unseen wording sit near those of the wording training used. The chat model reads each user turn
as MiniLM's states (one per word piece, [CLS] and [SEP] included), projected into the LM's width
by a learnt layer, in place of the LM's own token embeddings.

MiniLM stays frozen and outside the checkpoint (its weights come from the installed package, as
`MiniLMWordEmbedding`'s do); its states are a pure function of the text, so one instance serves
every chat model of the process and caches them per text: each question pays the 6-layer
forward pass once per process.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import torch
from tokenizers import Tokenizer
from torch import nn

from ...modalities.minilm import minilm_path

MAX_TURN_PIECES = 64  # MiniLM pieces read per user turn ([CLS] and [SEP] included); longer turns are cut
STATE_WIDTH = 384  # all-MiniLM-L6-v2's hidden size
# Texts whose states are kept (oldest dropped first): about 23 KB a question, so ~1 GB at most,
# which holds a training set's questions (ShapesWorld's 40,000 images ask ~22,000 distinct ones)
# while a long-running server's memory stays bounded.
CACHED_TEXTS = 50_000


class FrozenMiniLM:
    """The bundled MiniLM as a frozen text -> (pieces, 384) function, cached per text. A plain
    object, not an `nn.Module`, so that its weights stay out of the model's state dict."""

    def __init__(self):
        from transformers import BertModel  # the minilm extra's: imported only where it is needed

        path = minilm_path()
        self.bert = BertModel.from_pretrained(str(path)).eval().requires_grad_(False)
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TURN_PIECES)
        self.tokenizer.no_padding()
        self.cache: dict[str, torch.Tensor] = {}

    def length(self, text: str) -> int:
        """How many states `text` reads as (its pieces, [CLS] and [SEP] included)."""
        return len(self.tokenizer.encode(text).ids)

    @torch.no_grad()
    def states(self, texts: Sequence[str], batch_size: int = 256) -> list[torch.Tensor]:
        """Each text's (pieces, 384) contextual states, computed for the texts not yet cached."""
        found = {t: self.cache[t] for t in texts if t in self.cache}
        todo = list(dict.fromkeys(t for t in texts if t not in found))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            encodings = self.tokenizer.encode_batch(chunk)
            width = max(len(e.ids) for e in encodings)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)  # MiniLM's [PAD] is 0
            for row, e in enumerate(encodings):
                ids[row, :len(e.ids)] = torch.tensor(e.ids)
            hidden = self.bert(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state  # (b, L, 384)
            for row, (text, e) in enumerate(zip(chunk, encodings)):
                found[text] = self.cache[text] = hidden[row, :len(e.ids)].clone()
        for oldest in list(self.cache)[:max(0, len(self.cache) - CACHED_TEXTS)]:
            del self.cache[oldest]
        return [found[t] for t in texts]


@lru_cache(maxsize=1)
def frozen_minilm() -> FrozenMiniLM:
    """The process's one FrozenMiniLM (loaded once, its cache shared by every chat model)."""
    return FrozenMiniLM()


class TurnReader(nn.Module):
    """User turns -> states in the LM's width: frozen MiniLM, then a learnt LayerNorm + Linear."""

    def __init__(self, lm_width: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(STATE_WIDTH), nn.Linear(STATE_WIDTH, lm_width))
        self.encoder = frozen_minilm()

    def length(self, text: str) -> int:
        return self.encoder.length(text)

    def forward(self, slots: torch.Tensor, turns: Sequence[Sequence[str]]) -> torch.Tensor:
        """slots (B, L) True where a user turn's pieces go; turns[b]: row b's user turns in order ->
        (N, D_lm), the projected states of the N slots in row-major order. A row cut short (the
        context's room) keeps the states of the slots it still has."""
        states = self.encoder.states([t for row in turns for t in row])
        flat, k = [], 0
        for row, count in zip(turns, slots.sum(1).tolist()):
            flat += [torch.cat(states[k:k + len(row)])[:count]] if row else []
            k += len(row)
        read = torch.cat(flat) if flat else torch.zeros(0, STATE_WIDTH)  # (N, 384)
        return self.proj(read.to(slots.device))
