"""Hugging Face CLAP (transformers' `ClapModel`) as an aligned audio–text backend.

CLAP embeds sounds and texts into one space, so it searches audio by text (and text by audio)
and classifies sounds zero-shot by text prompts; it has no image tower. It shares polymodal's
audio interface: `encode_audio`, `encode_text`, `similarity_audio`, `embed_dim`, `modalities`.

Inputs go through the checkpoint's own `ClapProcessor`: its feature extractor (48 kHz log-mels,
clips padded and cut to its `max_length_s` its own way) and its RoBERTa tokenizer. Two things
are pinned down that the extractor leaves to chance, so that a clip gets the same embedding
every time and in any batch (an index and a query must agree): the crops it takes of a long
clip come from a fixed seed, and `is_longer` says whether the clip is long, never a random pick.

Sources: `hf:<repo id>` (the cache, or the hub when it can be reached) and a local model
directory (`config.json` with `model_type` clap, model and processor as `save_pretrained` writes
them). transformers is imported inside the functions that need it: it is an optional extra.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError
from ..modalities.audio_files import SAMPLE_RATE, load_audio, resample
from ..models.interface import EncoderInterface, inference
from .hf import HFTokenizer
from .hf_vlm import load_error, read_config  # the same config peek and load errors as the VLMs
from .hub import cache_only_when_offline

MODEL_TYPE = "clap"
CROP_SEED = 0  # the extractor's random crops of a long clip, drawn the same way for every clip
_NUMPY_RNG = threading.Lock()  # the extractor draws from numpy's global RNG, which threads share


def is_clap(source: str | Path) -> bool:
    """Whether `source` (a directory, or a repo id in the cache / on the hub) is a CLAP model."""
    return read_config(str(source)).get("model_type") == MODEL_TYPE


def is_clap_dir(path: str | Path) -> bool:
    return Path(path).is_dir() and is_clap(path)


@dataclass
class ClapSpec:
    """What callers read about the model: the shared space's width and the audio window it sees."""

    embed_dim: int
    sampling_rate: int  # the feature extractor's (48 kHz for every CLAP checkpoint)
    max_seconds: float  # shorter clips are repeated and padded to this, longer ones cut (or fused)


class ClapBackend(EncoderInterface, nn.Module):
    """A `ClapModel` with its processor behind polymodal's audio–text interface."""

    backend = "clap"
    modalities = ("audio", "text")

    def __init__(self, model, processor, model_id: str):
        super().__init__()
        self.model = model
        self.feature_extractor = processor.feature_extractor
        self.model_id = model_id
        text = model.config.text_config
        # RoBERTa numbers positions from pad_token_id + 1, so this many tokens fit its position table
        context = min(processor.tokenizer.model_max_length, text.max_position_embeddings - text.pad_token_id - 1)
        self.tokenizer = HFTokenizer(processor.tokenizer, context, pad_to_context=False)
        self.pad_id = processor.tokenizer.pad_token_id  # what it pads with: the attention mask is rebuilt from it
        fe = self.feature_extractor
        self.config = ClapSpec(embed_dim=model.config.projection_dim, sampling_rate=fe.sampling_rate,
                               max_seconds=fe.nb_max_samples / fe.sampling_rate)

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale_a.device

    # -- audio -----------------------------------------------------------------------------------

    def encode_audio(self, audio: Sequence[np.ndarray | str | Path], batch_size: int = 64) -> torch.Tensor:
        """Audio clips ((N,) float32 arrays at 16 kHz, or file paths) -> (B, E) unit vectors."""
        waves = [load_audio(a) if isinstance(a, (str, Path)) else _check_wave(a, i) for i, a in enumerate(audio)]
        out = torch.empty(len(waves), self.embed_dim)
        with inference(self):
            for i in range(0, len(waves), batch_size):
                features, is_longer = self._features(waves[i:i + batch_size])
                out[i:i + batch_size] = self._embed_features(features, is_longer)
        return out

    def _features(self, waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """16 kHz clips -> the extractor's (B, C, T, F) log-mels and (B, 1) `is_longer`. Each clip
        is featurised on its own under the fixed seed, so its crops do not depend on its batch."""
        mels, longer = [], []
        for wave in waves:
            wave = resample(wave, SAMPLE_RATE, self.config.sampling_rate)
            with _seeded_numpy(CROP_SEED):
                # a list, as a batch: the extractor then computes in float64, as for any batch
                mels.append(self.feature_extractor([wave], sampling_rate=self.config.sampling_rate,
                                                   return_tensors="pt")["input_features"])
            longer.append(self._is_longer(len(wave)))
        return torch.cat(mels), torch.tensor(longer).reshape(-1, 1)

    def _is_longer(self, samples: int) -> bool:
        """What the extractor decides for one clip, before it marks a random clip of an all-short
        batch as long (with fusion, that would change the clip's embedding by its batch): longer
        than max_length_s, and with fusion, longer by at least one hop (a spectrogram frame)."""
        fe = self.feature_extractor
        if samples <= fe.nb_max_samples:
            return False
        return fe.truncation != "fusion" or samples // fe.hop_length != fe.nb_max_samples // fe.hop_length

    def _embed_features(self, features: torch.Tensor, is_longer: torch.Tensor) -> torch.Tensor:
        device = self.device
        out = self.model.get_audio_features(input_features=features.to(device), is_longer=is_longer.to(device))
        return F.normalize(_projected(out), dim=-1).float().cpu()

    # -- text (EncoderInterface.encode_text batches and tokenizes) --------------------------------

    def _embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids, padded by the tokenizer -> (B, E); the attention mask is the tokenizer's, rebuilt."""
        ids = ids.to(self.device)
        out = self.model.get_text_features(input_ids=ids, attention_mask=(ids != self.pad_id).long())
        return F.normalize(_projected(out), dim=-1).float().cpu()

    def _similarity_scale(self) -> torch.Tensor:
        """CLAP's own audio-to-text temperature (its `logits_per_audio`); the text side has another."""
        return self.model.logit_scale_a.detach().exp().cpu()

    # -- no images -------------------------------------------------------------------------------

    def encode_image(self, images, batch_size: int = 256) -> torch.Tensor:
        raise ValueError(f"{self.model_id}: has no image tower (it embeds audio and text)")

    def preprocess(self, images) -> torch.Tensor:
        raise ValueError(f"{self.model_id}: has no image tower (it embeds audio and text)")


def _projected(out) -> torch.Tensor:
    """transformers 4 returns the projected features; 5 an output whose pooler_output they are."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _check_wave(wave, index: int) -> np.ndarray:
    """An array clip must be mono and not empty (the extractor would divide by its length)."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1 or wave.size == 0:
        raise ValueError(f"audio clip {index}: expected a non-empty (N,) mono waveform at {SAMPLE_RATE} Hz, "
                         f"got shape {wave.shape}")
    return wave


@contextlib.contextmanager
def _seeded_numpy(seed: int):
    """numpy's global RNG seeded within the block, and the caller's state restored after it."""
    with _NUMPY_RNG:
        state = np.random.get_state()
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)


def load_clap(source: str, model_id: str | None = None) -> ClapBackend:
    """`source`: a repo id on the hub / in its cache, or a local CLAP model directory."""
    from safetensors import SafetensorError
    from transformers import ClapModel, ClapProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per weight file is noise for a CLI
    local = Path(source).is_dir()
    if not local and (Path(source).is_absolute() or source.startswith((".", "~"))):
        raise CheckpointError(f"{source}: no such CLAP model directory")
    if local and not is_clap(source):
        raise CheckpointError(f"{source}: not a CLAP model directory (config.json's model_type is not '{MODEL_TYPE}')")
    with cache_only_when_offline() as online:
        try:
            model = ClapModel.from_pretrained(source, dtype=torch.float32)
            processor = ClapProcessor.from_pretrained(source)
        except (OSError, ValueError) as err:
            raise load_error(source, local, online, err) from None
        except (SafetensorError, RuntimeError) as err:  # a truncated weight file; weights that do not fit the config
            raise CheckpointError(f"{source}: damaged CLAP model ({type(err).__name__}: {_first_line(err)})") from None
    name = model_id or (f"hf:{Path(source).resolve()}" if local else f"hf:{source}")
    return ClapBackend(model.eval(), processor, name)


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
