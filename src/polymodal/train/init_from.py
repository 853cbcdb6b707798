"""Start alignment from pretrained towers (`polymodal train --init-from DIR`).

Each DIR is a polymodal checkpoint: one written by `polymodal pretrain` gives the tower its
config.json names as pretrained; any other gives both towers. Only towers are copied: the
projections into the shared space and the temperature start fresh, as alignment must learn them.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CheckpointError
from ..models.aligned import AlignedModel
from ..models.checkpoint import load_checkpoint

TOWERS = ("image", "text")


def pretrained_towers(directory: str | Path) -> list[str]:
    """The towers a checkpoint brings: those its pretraining trained, or both."""
    meta = json.loads((Path(directory) / "config.json").read_text())
    return list(meta.get("pretraining", {}).get("towers", TOWERS))


def init_towers(model: AlignedModel, sources: list[str | Path]) -> tuple[AlignedModel, list[str]]:
    """(the model with each source's towers copied in, lines saying what came from where).

    A text tower is only meaningful with the tokenizer it was trained with, so the model takes
    that checkpoint's tokenizer (rebuilt around it where it differs from the captions' own)."""
    donors: dict[str, tuple[str, AlignedModel]] = {}  # tower -> (source, its checkpoint)
    for source in sources:
        donor = load_checkpoint(source)
        for tower in pretrained_towers(source):
            if tower in donors:
                raise CheckpointError(f"{source}: its {tower} tower would replace the one from {donors[tower][0]}")
            _check_same_architecture(model, donor, tower, source)
            donors[tower] = (str(source), donor)
    if "text" in donors:
        tokenizer = donors["text"][1].tokenizer
        if tokenizer.tok.to_str() != model.tokenizer.tok.to_str():
            model = AlignedModel(model.config, tokenizer).to(next(model.parameters()).device)
    for tower, (_, donor) in donors.items():
        getattr(model, f"{tower}_tower").load_state_dict(getattr(donor, f"{tower}_tower").state_dict())
    return model, [f"{tower} tower from {source}" for tower, (source, _) in donors.items()]


def _check_same_architecture(model: AlignedModel, donor: AlignedModel, tower: str, source) -> None:
    mine, theirs = getattr(model.config, tower), getattr(donor.config, tower)
    if mine != theirs:
        raise CheckpointError(f"{source}: its {tower} tower ({theirs.kind}, width {theirs.width}, {theirs.layers} "
                              f"layers) differs from the model being trained ({mine.kind}, width {mine.width}, "
                              f"{mine.layers} layers); pass the preset it was pretrained with as --model")
