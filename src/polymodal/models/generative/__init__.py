"""Generation: the text decoder (CoCa-style captioning decoder) and the decoding layer that the
captioner and the image-grounded chat model use."""

from .decoder import BoundDecoder, DecoderConfig, KVCache, TextDecoder
from .decoding import CausalLM, Generation, GenerationConfig, HFCausalLM, beam_search, generate, stream

__all__ = [
    "BoundDecoder", "CausalLM", "DecoderConfig", "Generation", "GenerationConfig", "HFCausalLM", "KVCache",
    "TextDecoder", "beam_search", "generate", "stream",
]
