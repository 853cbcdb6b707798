"""Text-to-video latent diffusion on `diffusers`: a factorised space-time UNet, small enough for a CPU.

    model = create_text_to_video("moving-shapes-video-small")       # untrained parts
    clips = model.generate(["a red circle moves to the left"], n=4, steps=25)  # 4 clips of 8 PIL frames
    write_video_grid(clips, columns=4, path="clips.gif")
    model.save("runs/t2v"); model = load_text_to_video("runs/t2v")  # a diffusers pipeline directory

The Video LDM / ModelScope design, on diffusers' own parts: each frame goes through the image
model's `AutoencoderKL` on its own (32 px -> an 8 x 8 x 4 latent), and the denoiser is a
`UNet3DConditionModel`: the text-to-image UNet's spatial layers (2-D resnets, a spatial transformer
that cross-attends to the prompt) applied to every frame, with a temporal convolution after each
resnet and a temporal self-attention after each spatial transformer that mix the frames at every
latent position. The temporal convolutions start as identity (diffusers zero-initialises their
last layer), so spatial weights copied from a trained image UNet (`init_spatial_from_image_unet`)
begin by doing what they did for still images. The temporal attention has no position embedding:
the order of frames reaches the network through the temporal convolutions (kernel 3, zero padded).

The prompt is read by the bundled MiniLM (frozen BertModel); its 384-wide token states go straight
into the cross-attention (`cross_attention_dim=384`: the 3-D UNet has no `text_proj`). The directory
`save` writes is a standard `TextToVideoSDPipeline` (diffusers keeps it under `deprecated/` since
0.33, but it still loads and runs): `diffusers.DiffusionPipeline.from_pretrained(dir)` loads it and
its `__call__` gives our clips. That pipeline takes one clip per prompt, so `n` clips per prompt
are asked for as the prompt repeated `n` times.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from ...data.synthetic.moving_shapes import save_clip_gif
from ...errors import CheckpointError
from ...utils import progress_bar
from .diffusion import (
    METADATA,
    DiffusionConfig,
    build_vae,
    check_request,
    config_from_dict,
    encode_prompts,
    is_diffusers_pipeline,
    load_minilm_text_encoder,
    preset_or_file,
    quiet_loading,
    sampling_with,
    save_pipeline,
    text_width,
    training_scheduler,
)

MAX_CLIPS = 64  # per call: prompts x n
MAX_FRAMES = 64
FOREIGN_FRAMES = 16  # frames for a pipeline without our metadata (TextToVideoSDPipeline's default)


@dataclass
class VideoDiffusionConfig:
    frames: int = 8  # frames a clip; the data's at training time (any count samples, this is the default)
    image_size: int = 32  # frame side in pixels
    latent_channels: int = 4
    vae_channels: tuple[int, ...] = (16, 32, 64)  # as the image model's: latents at image_size / 4
    # Training speed at batch 16 (8 frames, 8x8 latents, one CPU thread): (32, 64, 64) 18.9 clips/s,
    # (32, 64, 128) 16.4, (48, 96, 96) 13.5, (64, 128, 128) (shapes-diffusion-small's levels) 9.0.
    unet_channels: tuple[int, ...] = (32, 64, 64)
    cross_attention: tuple[bool, ...] = (False, True, True)  # per UNet level, finest first
    layers_per_block: int = 1
    # Heads of every spatial and temporal attention (diffusers' UNet3DConditionModel calls this
    # `attention_head_dim`, but uses it as the head count); a head is channels / heads wide.
    attention_heads: int = 2
    max_text_tokens: int = 24  # prompts are padded / cut to this many MiniLM pieces

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> VideoDiffusionConfig:
        return config_from_dict(cls, data)

    def image_config(self) -> DiffusionConfig:
        """The text-to-image config that lines up with this one: the same autoencoder (what
        `build_video_vae` builds), and a UNet whose every spatial layer has a namesake here, with
        the same head width at the widest level (see `init_spatial_from_image_unet`)."""
        return DiffusionConfig(image_size=self.image_size, latent_channels=self.latent_channels,
                               vae_channels=self.vae_channels, unet_channels=self.unet_channels,
                               cross_attention=self.cross_attention, layers_per_block=self.layers_per_block,
                               attention_head_dim=self.unet_channels[-1] // self.attention_heads,
                               max_text_tokens=self.max_text_tokens)


PRESETS = {
    "moving-shapes-video-small": VideoDiffusionConfig(),
    # shapes-diffusion-small's levels (heads 32 wide, as its): its trained spatial layers initialise all of this one's.
    "moving-shapes-video-shared": VideoDiffusionConfig(unet_channels=(64, 128, 128), attention_heads=4),
    "moving-shapes-video-tiny": VideoDiffusionConfig(vae_channels=(8, 16, 16), unet_channels=(16, 32, 32),
                                                     attention_heads=2),
}


def get_video_diffusion_config(name: str) -> VideoDiffusionConfig:
    return preset_or_file(name, PRESETS, VideoDiffusionConfig, "video generator")


def build_video_vae(config: VideoDiffusionConfig):
    """The per-frame autoencoder: exactly the image model's."""
    return build_vae(config.image_config())


def build_video_unet(config: VideoDiffusionConfig):
    from diffusers import UNet3DConditionModel

    down = tuple("CrossAttnDownBlock3D" if a else "DownBlock3D" for a in config.cross_attention)
    up = tuple("CrossAttnUpBlock3D" if a else "UpBlock3D" for a in reversed(config.cross_attention))
    return UNet3DConditionModel(
        sample_size=config.image_size // 2 ** (len(config.vae_channels) - 1),
        in_channels=config.latent_channels, out_channels=config.latent_channels,
        block_out_channels=config.unet_channels, down_block_types=down, up_block_types=up,
        layers_per_block=config.layers_per_block, cross_attention_dim=text_width(),
        attention_head_dim=config.attention_heads, norm_num_groups=min(config.unet_channels) // 2)


def init_spatial_from_image_unet(video_unet: nn.Module, image_unet: nn.Module, identity_temporal: bool = True) -> int:
    """Copy a trained `UNet2DConditionModel`'s weights into the spatial layers of a
    `UNet3DConditionModel`; returns how many tensors were written.

    diffusers names the 3-D UNet's spatial layers as the 2-D UNet's (`conv_in`, `time_embedding`,
    `down_blocks.i.resnets.j`, `down_blocks.i.attentions.j`, `downsamplers`, `mid_block.resnets /
    attentions`, `up_blocks...`, `conv_norm_out`, `conv_out`), so with the same levels, channels
    and cross-attention pattern (`shapes-diffusion-small` and `moving-shapes-video-shared`) every
    spatial tensor has a namesake of the same shape, and is copied; the spatial transformers'
    `proj_in` / `proj_out` are 1x1 convolutions in the 2-D UNet and linear layers in the 3-D one,
    and are copied as such. The temporal layers (`transformer_in`, `temp_convs`,
    `temp_attentions`) have none and keep their initialisation. The temporal convolutions start
    as identity; with `identity_temporal` the temporal attentions' output projections are zeroed
    too (AnimateDiff's motion modules start so), and the video UNet begins as exactly the image
    UNet applied to each frame, and learns motion from there.

    The one mismatch is the text path: the 2-D UNet maps MiniLM's 384-wide states to its width with
    `encoder_hid_proj` (text_proj, P s + b) before the cross-attention's keys and values, and the
    3-D UNet reads the states directly. That map is folded in where shapes allow: K' = K P (a
    constant added to every key shifts every logit of a query equally, so b drops out), V' = V P,
    and V b (a constant added to every value passes through the attention whole) goes into the
    output projection's bias. The cross-attention then computes exactly what the image UNet's did.

    UNets that do not line up (fewer than half the image UNet's tensors with a namesake of the
    same shape) are refused with a ValueError, and nothing is copied.
    """
    target = video_unet.state_dict()
    source = {name: _as_linear(tensor, target.get(name)) for name, tensor in image_unet.state_dict().items()}
    copied = {name: tensor for name, tensor in source.items()
              if name in target and target[name].shape == tensor.shape}
    if len(copied) < len(source) // 2:  # a stray bias of the same size is no lineage
        raise ValueError(f"the UNets do not line up: {len(copied)} of the image UNet's {len(source)} tensors have "
                         "a namesake of the same shape (give both the same levels, widths and attention pattern)")
    copied |= _fold_text_proj(source, target)
    video_unet.load_state_dict(copied, strict=False)
    if identity_temporal:
        for name, module in video_unet.named_modules():
            if name.endswith("proj_out") and (".temp_attentions." in name or name.startswith("transformer_in")):
                nn.init.zeros_(module.weight)
                nn.init.zeros_(module.bias)
    return len(copied)


def _as_linear(tensor: torch.Tensor, like: torch.Tensor | None) -> torch.Tensor:
    """A 1x1 convolution's (O, I, 1, 1) weight as the (O, I) linear weight `like` has in its place."""
    if like is not None and tensor.dim() == 4 and tensor.shape[2:] == (1, 1) and like.shape == tensor.shape[:2]:
        return tensor.flatten(1)
    return tensor


def _fold_text_proj(source: dict, target: dict) -> dict:
    """The 3-D cross-attention's to_k / to_v / to_out.0.bias with the 2-D text_proj folded in."""
    weight, bias = source.get("encoder_hid_proj.weight"), source.get("encoder_hid_proj.bias")  # (W, 384), (W,)
    if weight is None:
        return {}
    folded = {}
    for name in source:
        if not name.endswith("attn2.to_k.weight"):
            continue
        stem = name.removesuffix("to_k.weight")
        k, v = source[name], source[stem + "to_v.weight"]  # (C, W) each
        out_w = source[stem + "to_out.0.weight"]  # (C, C)
        wanted = {stem + "to_k.weight": k @ weight, stem + "to_v.weight": v @ weight}  # (C, 384) each
        if bias is not None and stem + "to_out.0.bias" in source:
            wanted[stem + "to_out.0.bias"] = source[stem + "to_out.0.bias"] + out_w @ (v @ bias)  # (C,)
        if all(n in target and target[n].shape == t.shape for n, t in wanted.items()):
            folded |= wanted
    return folded


class TextToVideoModel:
    """A diffusers TextToVideoSDPipeline behind polymodal's `generate` (ours or a user's)."""

    def __init__(self, pipeline, source: str, config: VideoDiffusionConfig | None = None, meta: dict | None = None):
        self.pipeline, self.source, self.config, self.meta = pipeline, source, config, meta or {}
        self.pipeline.set_progress_bar_config(disable=True)  # ours is a rich bar over the steps

    @property
    def image_size(self) -> int:
        return self.pipeline.unet.config.sample_size * self.pipeline.vae_scale_factor

    @property
    def frames(self) -> int:
        return self.config.frames if self.config else FOREIGN_FRAMES

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        return encode_prompts(self.pipeline, prompts)

    def generate(self, prompts: str | Sequence[str], n: int = 1, steps: int = 25, guidance: float = 3.0,
                 seed: int = 0, scheduler: str = "dpm++", frames: int | None = None,
                 progress: bool = False) -> list[list[Image.Image]]:
        """`n` clips per prompt, prompt-major, each a list of `frames` PIL frames (default: the
        model's); the same seed gives the same clips. guidance <= 1 turns classifier-free guidance off."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        frames = self.frames if frames is None else frames
        check_request(prompts, n, steps, guidance, scheduler, self.image_size)
        check_clips(len(prompts) * n, frames)
        with sampling_with(self.pipeline, scheduler), progress_bar(progress, transient=True) as bar:
            task = bar.add_task(f"denoising {len(prompts) * n} clip(s) ({scheduler}, {steps} steps)", total=steps)
            out = self.pipeline([p for p in prompts for _ in range(n)], num_frames=frames,
                                num_inference_steps=steps, guidance_scale=guidance, height=self.image_size,
                                width=self.image_size, output_type="pil",
                                generator=torch.Generator().manual_seed(seed),
                                callback=lambda step, timestep, latents: bar.advance(task))
        return out.frames

    def save(self, directory: str | Path, extra: dict | None = None) -> Path:
        return save_pipeline(self.pipeline, directory, {"kind": "text-to-video", **self.meta, **(extra or {})},
                             self.config)


def check_clips(clips: int, frames: int) -> None:
    """One clear line for a clip request too large to serve (check_request covers the rest)."""
    if clips > MAX_CLIPS:
        raise ValueError(f"prompts x n must be at most {MAX_CLIPS} clips, not {clips}")
    if not 1 <= frames <= MAX_FRAMES:
        raise ValueError(f"frames must be between 1 and {MAX_FRAMES}, not {frames}")


def write_video_grid(clips: Sequence[Sequence[Image.Image]], columns: int, path: str | Path,
                     fps: float = 4.0) -> Path:
    """The clips as ONE animated GIF whose frame t is the grid (`columns` a row) of every clip's
    frame t, written whole or not at all."""
    path = Path(path)
    if path.suffix.lower() != ".gif":
        raise ValueError(f"{path}: a video grid is written as an animated GIF (use .gif, not {path.suffix!r})")
    if not clips or len({len(c) for c in clips}) != 1:
        raise ValueError("the clips of a grid need the same number of frames (and at least one clip)")
    width, height = clips[0][0].size
    rows = -(-len(clips) // columns)
    grid = np.zeros((len(clips[0]), rows * height, columns * width, 3), np.uint8)  # (T, H', W', 3)
    for i, clip in enumerate(clips):
        y, x = (i // columns) * height, (i % columns) * width
        grid[:, y:y + height, x:x + width] = np.stack([np.asarray(f.convert("RGB")) for f in clip])
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_clip_gif(grid, path, fps)


def assemble_video(config: VideoDiffusionConfig, unet, vae, meta: dict | None = None) -> TextToVideoModel:
    """A TextToVideoModel from trained parts and the bundled MiniLM."""
    from diffusers import TextToVideoSDPipeline

    encoder, tokenizer = load_minilm_text_encoder(config.max_text_tokens)
    with quiet_loading():  # its deprecation note: it is diffusers' standard text-to-video layout all the same
        pipeline = TextToVideoSDPipeline(vae=vae.eval(), text_encoder=encoder, tokenizer=tokenizer,
                                         unet=unet.eval(), scheduler=training_scheduler())
    return TextToVideoModel(pipeline, "polymodal", config, meta)


def create_text_to_video(preset: str | VideoDiffusionConfig) -> TextToVideoModel:
    config = preset if isinstance(preset, VideoDiffusionConfig) else get_video_diffusion_config(preset)
    return assemble_video(config, build_video_unet(config), build_video_vae(config))


def is_text_to_video_pipeline(path: str | Path) -> bool:
    """A diffusers pipeline directory whose UNet is a 3-D one (ours or a ModelScope-style one)."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return False
    try:
        return json.loads(index.read_text()).get("unet", [None, None])[1] == "UNet3DConditionModel"
    except (ValueError, AttributeError, IndexError, TypeError):
        return False


def load_text_to_video(directory: str | Path, device: str = "cpu") -> TextToVideoModel:
    """A diffusers text-to-video pipeline directory: one polymodal trained, or a user's own."""
    from diffusers import DiffusionPipeline, UNet3DConditionModel

    directory = Path(directory)
    if not is_diffusers_pipeline(directory):
        raise CheckpointError(f"{directory}: not a diffusers pipeline directory (no model_index.json)")
    try:
        with quiet_loading():
            pipeline = DiffusionPipeline.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{directory}: not a loadable diffusers pipeline ({err.__class__.__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(getattr(pipeline, "unet", None), UNet3DConditionModel):
        raise CheckpointError(f"{directory}: a {type(pipeline).__name__}, not a text-to-video pipeline")
    meta = json.loads((directory / METADATA).read_text()) if (directory / METADATA).is_file() else {}
    config = VideoDiffusionConfig.from_dict(meta["config"]) if meta.get("config") else None
    return TextToVideoModel(pipeline.to(device), str(directory.resolve()), config, meta)
