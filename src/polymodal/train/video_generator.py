"""Training the text-to-video model (`models.generative.video_diffusion`) on captioned clips.

The text-to-image trainer's recipe (`train.generator`), with frames for images:
1. the autoencoder learns to reconstruct single frames (every frame of every training clip, as a
   stack of images, through `train_autoencoder`), unless `vae` names a pipeline directory (image
   or video) whose autoencoder to reuse;
2. every frame is encoded once (latent mean and spread kept, a latent drawn per step), and the
   3-D UNet learns to predict DDPM's noise on whole clips of latents from the caption's MiniLM
   token states, with caption dropout for classifier-free guidance and EMA weights saved, through
   the image trainer's `train_unet`: its step is shape-agnostic, a clip is (C, T, s, s) where an
   image is (C, s, s).

`spatial_from` names a text-to-image pipeline whose UNet initialises the spatial layers (see
`init_spatial_from_image_unet`; the `moving-shapes-video-shared` preset lines up with
`shapes-diffusion-small`). Clips come from `attributes["clip"]` (a filmstrip PNG, as
Moving-ShapesWorld writes them); a record without a readable clip is skipped and named.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.formats import load_records
from ..data.schema import DataError, Record, RecordSet
from ..data.synthetic.moving_shapes import load_clip
from ..errors import CheckpointError
from ..models.generative.diffusion import quiet_loading
from ..models.generative.video_diffusion import (
    VideoDiffusionConfig,
    assemble_video,
    build_video_unet,
    build_video_vae,
    get_video_diffusion_config,
    init_spatial_from_image_unet,
)
from ..utils import pick_device, progress_bar, seed_everything
from .generator import GeneratorTrainConfig, encode_latents, train_autoencoder, train_unet
from .metrics import MetricsLog

MAX_IN_MEMORY_BYTES = 8 * 2**30


@dataclass
class VideoTrainConfig:
    data: str
    out: str
    model: str = "moving-shapes-video-small"  # a preset name or a VideoDiffusionConfig JSON file
    steps: int = 6000  # UNet steps
    time_budget: float | None = None  # seconds for the UNet stage; whichever of steps / budget ends first
    batch_size: int = 16  # clips
    lr: float = 5e-4
    warmup: float = 0.02
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    vae: str | None = None  # a pipeline directory whose autoencoder to reuse (stage 1 skipped)
    spatial_from: str | None = None  # a text-to-image pipeline whose UNet initialises the spatial layers
    vae_steps: int = 4000  # autoencoder steps (of vae_batch_size frames)
    vae_time_budget: float | None = None
    vae_batch_size: int = 8
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def stage_config(self) -> GeneratorTrainConfig:
        """The image trainer's config with this one's values: what its stages read."""
        shared = {f.name for f in dataclasses.fields(GeneratorTrainConfig)}
        return GeneratorTrainConfig(**{k: v for k, v in asdict(self).items() if k in shared and k != "model"})


def train_video_generator(cfg: VideoTrainConfig) -> dict:
    """Train on the train split of `cfg.data` and save a diffusers TextToVideoSDPipeline directory to
    `cfg.out`; returns the steps, seconds and clips/s of the UNet stage (and the autoencoder's), the
    final losses, and the clips used and skipped."""
    seed_everything(cfg.seed)
    if not 0 <= cfg.caption_dropout <= 1:
        raise ValueError(f"caption dropout is a probability, not {cfg.caption_dropout}")
    config = get_video_diffusion_config(cfg.model)
    train_set = load_records(cfg.data).split("train")
    records, clips = load_clips(train_set, config.image_size, cfg.progress)  # (N, T, 3, S, S) uint8
    if len(records) < cfg.batch_size:
        raise DataError(f"{cfg.data}: {len(records)} training clips are fewer than one batch of {cfg.batch_size}")
    config = dataclasses.replace(config, frames=clips.shape[1])
    result: dict = {"clips": len(records), "frames": config.frames, "skipped": len(train_set.skips)}
    if train_set.skips and cfg.progress:
        print(train_set.skips.summary())
    vae, config = frame_autoencoder(cfg, config)
    unet = build_video_unet(config)
    if cfg.spatial_from:  # before the autoencoder's minutes: UNets that do not line up fail now
        result["spatial_tensors_copied"] = copy_spatial_layers(unet, cfg.spatial_from)
    device = pick_device(cfg.device)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    log = MetricsLog(Path(cfg.out), enabled=True, resume=False)
    frames = clips.flatten(0, 1)  # (N * T, 3, S, S): the autoencoder sees frames as images
    if cfg.vae:
        result["vae_from"] = str(Path(cfg.vae).resolve())
    else:
        vae_result = train_autoencoder(vae, frames, cfg.stage_config(), device, log)
        vae_result["vae_frames_per_s"] = vae_result.pop("vae_samples_per_s")
        result |= vae_result
    mean, spread = (clip_latents(x, len(records)) for x in encode_latents(vae.to(device), frames, cfg.progress))
    vae.register_to_config(scaling_factor=float(1 / (mean + spread * torch.randn_like(mean)).std()))
    model = assemble_video(config, unet, vae.cpu())
    unet_result = train_unet(model, mean, spread, [r.text for r in records], cfg.stage_config(), device, log)
    unet_result["train_clips_per_s"] = unet_result.pop("train_samples_per_s")
    result |= unet_result
    log.close()
    training = {k: v for k, v in asdict(cfg).items() if k != "progress"}
    model.save(cfg.out, extra={"training": training, **result})
    return result


def frame_autoencoder(cfg: VideoTrainConfig, config: VideoDiffusionConfig) -> tuple[nn.Module, VideoDiffusionConfig]:
    """A new autoencoder, or the one `cfg.vae` names with the config updated to its levels (they
    set the latent grid, so the UNet's size and the pipeline's)."""
    if not cfg.vae:
        return build_video_vae(config), config
    vae = load_vae(cfg.vae)
    return vae, dataclasses.replace(config, vae_channels=tuple(vae.config.block_out_channels),
                                    latent_channels=vae.config.latent_channels)


def clip_latents(latents: torch.Tensor, clips: int) -> torch.Tensor:
    """Per-frame latents (N * T, C, s, s) -> the 3-D UNet's clip layout (N, C, T, s, s)."""
    return latents.unflatten(0, (clips, -1)).transpose(1, 2).contiguous()


def load_clips(data: RecordSet, image_size: int, progress: bool) -> tuple[list[Record], torch.Tensor]:
    """The records with a caption and a readable clip of the first clip's length, and their frames
    as one (N, T, 3, S, S) uint8 tensor, resized to `image_size` where they differ. Others are
    skipped into `data.skips`, with the reason."""
    usable = [r for r in data.records if r.text]
    if not usable:
        raise DataError(f"{data.root}: no 'train' records with a caption to train the video generator on")
    kept: list[Record] = []
    arrays: list[np.ndarray] = []
    with progress_bar(progress, transient=True) as bar:
        task = bar.add_task("loading clips", total=len(usable))
        for record in usable:
            clip = read_clip(data, record, arrays[0].shape[0] if arrays else None)
            if clip is not None:
                kept.append(record)
                arrays.append(clip)
                if len(arrays) == 1:
                    check_memory(data, len(usable), clip.nbytes)
            bar.advance(task)
    if not arrays:
        raise DataError(f"{data.root}: none of the {len(usable)} captioned records has a readable clip "
                        f"(attributes['clip']: a filmstrip PNG)")
    clips = torch.from_numpy(np.stack(arrays)).permute(0, 1, 4, 2, 3)  # (N, T, 3, H, W)
    if clips.shape[-1] != image_size or clips.shape[-2] != image_size:
        clips = resize_frames(clips, image_size)
    return kept, clips.contiguous()


def check_memory(data: RecordSet, clips: int, clip_bytes: int) -> None:
    """Refuse, before decoding them all, clips that would not fit in memory as one tensor."""
    if clips * clip_bytes > MAX_IN_MEMORY_BYTES:
        raise DataError(f"{data.root}: {clips} clips need {clips * clip_bytes / 2**30:.1f} GiB in memory "
                        f"(limit {MAX_IN_MEMORY_BYTES / 2**30:.0f} GiB); train on a subset")


def read_clip(data: RecordSet, record: Record, frames: int | None) -> np.ndarray | None:
    """One record's (T, H, W, 3) uint8 frames, or None (skipped, with the reason)."""
    relative = record.attributes.get("clip")
    if not isinstance(relative, str):
        data.skips.skip(f"record {record.id}", "no clip (attributes['clip'])")
        return None
    path = data.path(relative)
    try:
        clip = load_clip(path)
    except (OSError, ValueError) as err:  # missing, unreadable, or not a strip of square frames
        data.skips.skip(str(path), str(err).splitlines()[0] if str(err) else err.__class__.__name__)
        return None
    if frames is not None and len(clip) != frames:
        data.skips.skip(str(path), f"{len(clip)} frames, where the first clip has {frames}")
        return None
    return clip


def resize_frames(clips: torch.Tensor, image_size: int) -> torch.Tensor:
    """(N, T, 3, H, W) uint8 -> (N, T, 3, S, S) uint8, area-averaged (antialiased) bilinear."""
    n, t = clips.shape[:2]
    x = F.interpolate(clips.flatten(0, 1).float(), size=(image_size, image_size), mode="bilinear",
                      antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).unflatten(0, (n, t))


def load_vae(directory: str):
    """The autoencoder of any diffusers pipeline directory (text-to-image or text-to-video)."""
    from diffusers import AutoencoderKL

    if not (Path(directory) / "vae").is_dir():
        raise CheckpointError(f"{directory}: no vae/ folder (give a pipeline directory from "
                              "`polymodal train-generator` or `train-video-generator`)")
    with quiet_loading():
        return AutoencoderKL.from_pretrained(directory, subfolder="vae", local_files_only=True)


def copy_spatial_layers(unet, directory: str) -> int:
    """Initialise the 3-D UNet's spatial layers from a text-to-image pipeline's UNet; the count copied."""
    from diffusers import UNet2DConditionModel

    if not (Path(directory) / "unet").is_dir():
        raise CheckpointError(f"{directory}: no unet/ folder (give a pipeline directory from "
                              "`polymodal train-generator`)")
    with quiet_loading():
        image_unet = UNet2DConditionModel.from_pretrained(directory, subfolder="unet", local_files_only=True)
    try:
        return init_spatial_from_image_unet(unet, image_unet)
    except ValueError as err:
        raise ValueError(f"{directory}: {err} (moving-shapes-video-shared lines up with shapes-diffusion-small)") \
            from None
