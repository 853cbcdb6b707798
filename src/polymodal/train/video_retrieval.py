"""Training and scoring text <-> video retrieval (`models.video_tower`) on captioned clips.

A new aligned model (an architecture preset, its image tower at the clips' frame size, its text
tower's tokenizer built from the captions) learns, with CLIP's loss, to put each clip near its
captions; one caption is drawn per clip per step. The score is R@1 both ways on the test split,
beside text -> image R@1 with each clip's first frame alone (what the motion adds), counting a
clip as right when its events equal the query's (`moving_shapes.clip_key`).
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..config import get_model_config
from ..data.formats import load_records
from ..data.schema import DataError
from ..data.synthetic.moving_shapes import clip_key
from ..errors import CheckpointError
from ..losses import clip_loss
from ..models.checkpoint import load_checkpoint, save_checkpoint
from ..models.factory import create_model
from ..models.video_tower import VideoTextModel
from ..utils import atomic_path, seed_everything, write_json
from .engine import StepLoop, TrainingProgress
from .optim import build_optimizer, clip_and_step
from .video_generator import load_clips


@dataclass
class VideoRetrievalConfig:
    data: str
    out: str
    model: str = "shapes-cnn-small"  # the aligned architecture preset
    image_size: int = 32  # the side the image tower reads frames at (Moving ShapesWorld's clips: 32 px)
    temporal: str = "attention"  # or "mean": order-blind pooling, the baseline
    steps: int = 1500
    time_budget: float | None = None
    batch_size: int = 64
    lr: float = 1e-3
    warmup: float = 0.05
    seed: int = 0
    progress: bool = True


def train_video_retrieval(cfg: VideoRetrievalConfig) -> dict:
    """Train on DATA's train split, save to `cfg.out`, and return the steps, seconds and the test
    split's R@1 (text -> video, video -> text, text -> first frame)."""
    seed_everything(cfg.seed)
    data = load_records(cfg.data)
    records, clips = load_clips(data.split("train"), cfg.image_size, cfg.progress)  # (N, T, 3, S, S)
    if len(records) < cfg.batch_size:
        raise DataError(f"{cfg.data}: {len(records)} training clips are fewer than one batch of {cfg.batch_size}")
    config = get_model_config(cfg.model)
    config = dataclasses.replace(config, image=dataclasses.replace(config.image, image_size=cfg.image_size))
    model = VideoTextModel(create_model(config, texts=[c for r in records for c in r.text]), clips.shape[1],
                           cfg.temporal)
    optimizer = build_optimizer(model, cfg.lr, 0.05)
    progress, rng = TrainingProgress(cfg.steps, cfg.time_budget), random.Random(cfg.seed)

    def step(index: torch.Tensor) -> dict[str, float]:
        captions = [rng.choice(records[i].text) for i in index.tolist()]
        loss = clip_loss(model(clips[index], model.aligned.tokenizer(captions)))["contrastive_loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_and_step(model, optimizer, 1.0)
        return {"loss": loss.item()}

    def batches(epoch: int):
        order = torch.randperm(len(records), generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
        return order[: len(order) - len(order) % cfg.batch_size].split(cfg.batch_size)

    StepLoop(model, optimizer, progress, cfg.lr, cfg.warmup, show=cfg.progress).run(
        batches, step, lambda losses: f"loss {losses['loss']:.3f}")
    result = {"steps": progress.step, "seconds": round(progress.elapsed, 1), "clips": len(records),
              **evaluate_video_retrieval(model, data.split("test"))}
    save_video_text_model(model, cfg.out, {"training": asdict(cfg) | {"progress": None}, **result})
    return result


def evaluate_video_retrieval(model: VideoTextModel, test) -> dict:
    """R@1 on the test clips: each clip's first caption as the query."""
    records, clips = load_clips(test, model.aligned.config.image.image_size, progress=False)
    keys = [clip_key(r.attributes) for r in records]
    queries = model.encode_text([r.text[0] for r in records])  # (N, E)
    videos, first_frames = model.encode_video(clips), model.aligned.encode_image(clips[:, 0])  # (N, E) each

    def recall_at_1(similarity: torch.Tensor) -> float:  # (N queries, N items): item i answers query i
        return sum(keys[j] == keys[i] for i, j in enumerate(similarity.argmax(1).tolist())) / len(keys)

    return {"text_to_video_r1": recall_at_1(queries @ videos.T), "video_to_text_r1": recall_at_1(videos @ queries.T),
            "text_to_image_r1": recall_at_1(queries @ first_frames.T), "test_clips": len(keys)}


def save_video_text_model(model: VideoTextModel, directory: str | Path, extra: dict) -> Path:
    """aligned/ (a polymodal checkpoint), temporal.safetensors and config.json, written whole."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    temporal = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith("aligned.")}
    with atomic_path(directory, merge=True) as staging:
        save_checkpoint(model.aligned, staging / "aligned")
        save_file(temporal, str(staging / "temporal.safetensors"))
        write_json(staging / "config.json", {"kind": "video-text", "frames": model.frames,
                                              "temporal": model.temporal, **extra})
    return directory


def load_video_text_model(directory: str | Path) -> VideoTextModel:
    directory = Path(directory)
    try:
        meta = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        raise CheckpointError(f"{directory}: not a video-text model (no readable config.json)") from None
    if meta.get("kind") != "video-text":
        raise CheckpointError(f"{directory}: not a video-text model (config.json kind is {meta.get('kind')!r})")
    model = VideoTextModel(load_checkpoint(directory / "aligned"), meta["frames"], meta["temporal"])
    model.load_state_dict(load_file(str(directory / "temporal.safetensors")), strict=False)
    return model.eval()
