"""Whisper (Hugging Face transformers) as a transcription backend: `WhisperForConditionalGeneration`
with the checkpoint's own `WhisperProcessor` (log-mel features and tokenizer).

Sources: `hf:<repo id>` (the local cache; the hub only when it can be reached) or a directory as
`save_pretrained` writes it (model and processor). Decoding is transformers' own `generate`,
greedy, in English (transcribe, not translate), so the text is the library's token for token.
Clips up to 30 s go through the short-form path (one window each, batched); longer ones through
transformers' long-form algorithm (sequential 30 s windows placed by timestamps).
transformers is imported inside the functions that need it: it is an optional extra and slow.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from ..modalities.audio_files import SAMPLE_RATE
from .hub import cache_only_when_offline

WINDOW_SECONDS = 30.0  # Whisper's encoder reads exactly one 30 s window of log-mel frames


class WhisperTranscriber:
    """Transcribes 16 kHz mono waveforms with a Whisper model. The text is Whisper's own (cased,
    punctuated, stripped of its leading space); `evaluate.wer.normalise_text` turns it into the
    lower-case words that pocketsphinx writes and the text towers read."""

    def __init__(self, model, processor, model_id: str, batch_size: int = 8):
        self.model = model.eval()
        self.processor = processor
        self.model_id = model_id
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return self.model.device

    def generate_kwargs(self, long_form: bool = False) -> dict:
        """What `generate` is given: greedy; English transcription where the model is
        multilingual (an English-only model takes no language or task); timestamps for long
        form, which places its windows by them."""
        config = self.model.generation_config
        kwargs: dict = {"do_sample": False, "num_beams": 1}
        if getattr(config, "is_multilingual", hasattr(config, "lang_to_id")):
            kwargs.update(language="en", task="transcribe")
        if long_form:
            kwargs["return_timestamps"] = True
        return kwargs

    @torch.inference_mode()
    def transcribe(self, waves: Sequence[np.ndarray]) -> list[str]:
        """(N,) float32 16 kHz mono waveforms -> their transcripts, in order."""
        waves = [np.asarray(w, dtype=np.float32) for w in waves]
        if any(w.ndim != 1 for w in waves):
            raise ValueError("a waveform must be (N,) mono samples at 16 kHz")
        texts: list[str] = [""] * len(waves)
        limit = WINDOW_SECONDS * SAMPLE_RATE
        for long_form in (False, True):  # short clips batch together; long ones only with each other
            group = [i for i, w in enumerate(waves) if (len(w) > limit) == long_form]
            for start in range(0, len(group), self.batch_size):
                batch = group[start:start + self.batch_size]
                for i, text in zip(batch, self._transcribe_batch([waves[i] for i in batch], long_form)):
                    texts[i] = text
        return texts

    def _transcribe_batch(self, waves: list[np.ndarray], long_form: bool) -> list[str]:
        # Short form: every clip padded to the 30 s window. Long form: padded to the longest, with
        # the attention mask that tells generate where each clip ends (transformers' recipe).
        padding = {"truncation": False, "padding": "longest", "return_attention_mask": True} if long_form else {}
        inputs = self.processor(waves, sampling_rate=SAMPLE_RATE, return_tensors="pt", **padding)
        features = inputs.input_features.to(self.device, self.model.dtype)  # (B, n_mels, frames)
        mask = {"attention_mask": inputs.attention_mask.to(self.device)} if long_form else {}
        with _quiet_transformers():  # its notes on deprecated config fields are not the user's to act on
            ids = self.model.generate(features, **mask, **self.generate_kwargs(long_form))
        ids = ids["sequences"] if isinstance(ids, dict) else ids
        return [text.strip() for text in self.processor.batch_decode(ids, skip_special_tokens=True)]


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)


def is_whisper_dir(path: str | Path) -> bool:
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("model_type") == "whisper"
    except (OSError, ValueError, AttributeError):
        return False


def load_whisper(source: str | Path, device: str = "cpu", batch_size: int = 8,
                 model_id: str | None = None) -> WhisperTranscriber:
    """`source`: a repo id (cache, or the hub when reachable) or a local model directory."""
    from transformers import AutoConfig, WhisperForConditionalGeneration, WhisperProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per weight file is noise for a CLI
    source = str(source)
    local = Path(source).is_dir()
    if not local and Path(source).exists():
        raise CheckpointError(f"{source}: a file, not a Whisper model directory")
    # float32 on the CPU (float16 products are unusable there); on a GPU the checkpoint's own dtype
    dtype = torch.float32 if torch.device(device).type == "cpu" else "auto"
    with cache_only_when_offline() as online:
        try:
            model_type = AutoConfig.from_pretrained(source).model_type
            if model_type == "whisper":
                processor = WhisperProcessor.from_pretrained(source)
                model = WhisperForConditionalGeneration.from_pretrained(source, dtype=dtype)
        except (OSError, ValueError, TypeError) as err:
            raise _load_error(source, local, online, err) from None
    if model_type != "whisper":
        raise CheckpointError(f"{source}: a '{model_type}' model, not Whisper (config.json model_type)")
    name = model_id or (f"hf:{Path(source).resolve()}" if local else f"hf:{source}")
    return WhisperTranscriber(model.to(device), processor, name, batch_size)


def _load_error(source: str, local: bool, online: bool, err: Exception) -> CheckpointError:
    """One line: what is wrong with a directory, or where a repo id could not be found."""
    if local:
        return CheckpointError(f"{source}: not a complete Whisper model directory ({_first_line(err)})")
    where = "not in the Hugging Face cache" + ("" if online else " and the hub cannot be reached (offline)")
    return CheckpointError(f"hf:{source}: {where}; download it where there is a network "
                           f"(`hf download {source} --local-dir DIR`) and pass DIR")


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else err.__class__.__name__
