"""The errors polymodal raises for a problem the user can fix: each is one clear line naming the
file (or name) and the reason, and the CLI prints it as `error: <message>` with exit status 2.

Each also subclasses ValueError, as every one of them did before they had their own names, so
code that catches ValueError (the server's 400 handler, callers' own code) keeps working.
"""

from __future__ import annotations


class PolymodalError(Exception):
    """The base of every error worth one line to the user."""


class DataError(PolymodalError, ValueError):
    """A dataset problem: a bad file, a bad record, a bad format, a missing split."""


class CheckpointError(PolymodalError, ValueError):
    """A model that cannot be loaded or saved: a missing or damaged checkpoint directory or file
    (polymodal, Hugging Face, open_clip, VQA, LoRA adapters) or an unknown pretrained model."""


class ExportError(PolymodalError, ValueError):
    """An ONNX export that cannot be written or read back."""


class ConversationError(PolymodalError, ValueError):
    """A conversation a chat model cannot take (empty, not ending with a user turn, too long)."""


class IndexFormatError(PolymodalError, ValueError):
    """An index directory that is missing, damaged or not an index."""


class ConfigError(PolymodalError, ValueError):
    """A configuration that names a field the config does not have."""
