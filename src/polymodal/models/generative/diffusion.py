"""Text-to-image latent diffusion on `diffusers`, small enough to train on a laptop CPU.

    model = create_text_to_image("shapes-diffusion-small")            # untrained parts
    images = model.generate(["a red circle left of a blue square"], n=4, steps=25, guidance=3.0)
    model.save("runs/t2i"); model = load_text_to_image("runs/t2i")  # a diffusers pipeline directory

The parts are diffusers' own: an `AutoencoderKL` trained on the data set (64 px -> a 16 x 16 x 4
latent grid, so the UNet works on 16x fewer positions: throughput is what limits training on a
CPU), a `UNet2DConditionModel` that cross-attends to the prompt's token states, and diffusers'
schedulers (DDPM to train; DDPM, DDIM, DPM-Solver++ or Euler to sample). The prompt is read by the
bundled MiniLM (frozen, `transformers`' BertModel), or with `text_encoder="scratch"` by a small
BERT trained with the UNet; the UNet's `text_proj` maps its states to the cross-attention width.

The directory `save` writes is a standard `StableDiffusionPipeline` (model_index.json, unet/, vae/,
text_encoder/, tokenizer/, scheduler/): `diffusers.StableDiffusionPipeline.from_pretrained(dir)`
loads and runs it, and `load_text_to_image` loads any such directory a user already has (a local
Stable Diffusion) behind the same `generate`. Prompts are padded to the tokenizer's
`model_max_length` and encoded without a mask, as that pipeline does, so training sees exactly
the states sampling will.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from ...errors import CheckpointError
from ...modalities.minilm import minilm_path
from ...utils import atomic_path, progress_bar, write_json

SCHEDULERS = ("ddpm", "ddim", "dpm++", "euler")
METADATA = "polymodal.json"  # what made a pipeline directory: our config and training record
MAX_SIDE = 1024  # pixels: a larger request is refused, not attempted
MAX_IMAGES = 256  # per call: prompts x n


@dataclass
class DiffusionConfig:
    image_size: int = 64
    latent_channels: int = 4
    vae_channels: tuple[int, ...] = (16, 32, 64)  # one level per entry: latents at image_size / 2**(len - 1)
    unet_channels: tuple[int, ...] = (64, 128, 128)
    cross_attention: tuple[bool, ...] = (False, True, True)  # per UNet level, finest first
    layers_per_block: int = 1
    attention_head_dim: int = 32
    max_text_tokens: int = 24  # prompts are padded / cut to this many MiniLM pieces
    # "minilm": the bundled MiniLM, frozen; "scratch": a small BERT on MiniLM's word pieces, trained
    # with the UNet from random weights (GLIDE's choice): its states are free to bind each colour
    # word to its shape word, which frozen sentence-embedding states leave to the cross-attention.
    text_encoder: str = "minilm"
    scratch_text_width: int = 128
    scratch_text_layers: int = 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DiffusionConfig:
        return config_from_dict(cls, data)


PRESETS = {
    "shapes-diffusion-small": DiffusionConfig(),
    # For tests: 32 px images through a factor-2 autoencoder, which learns in seconds.
    "shapes-diffusion-tiny": DiffusionConfig(image_size=32, vae_channels=(16, 32), unet_channels=(32, 32, 64),
                                             attention_head_dim=16),
}


def config_from_dict(cls, data: dict):
    """A config dataclass from JSON fields (lists back to tuples; unknown keys ignored, so a newer
    file still loads)."""
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known})


def preset_or_file(name: str, presets: dict, cls, what: str):
    """A preset by name, or a JSON file of `cls`'s fields by path."""
    path = Path(name)
    if path.suffix == ".json" and path.is_file():
        return config_from_dict(cls, json.loads(path.read_text()))
    if name not in presets:
        raise ValueError(f"unknown {what} preset {name!r}; presets: {', '.join(presets)} (or a JSON file)")
    return presets[name]


def get_diffusion_config(name: str) -> DiffusionConfig:
    return preset_or_file(name, PRESETS, DiffusionConfig, "generator")


def build_vae(config: DiffusionConfig):
    from diffusers import AutoencoderKL

    levels = len(config.vae_channels)
    # No attention in the VAE's middle: flat-coloured shapes need none, and it costs a third of a step.
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * levels,
                         up_block_types=("UpDecoderBlock2D",) * levels, block_out_channels=config.vae_channels,
                         latent_channels=config.latent_channels, layers_per_block=1,
                         norm_num_groups=min(config.vae_channels), sample_size=config.image_size,
                         mid_block_add_attention=False)


def build_unet(config: DiffusionConfig):
    from diffusers import UNet2DConditionModel

    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in config.cross_attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(config.cross_attention))
    return UNet2DConditionModel(
        sample_size=config.image_size // 2 ** (len(config.vae_channels) - 1),
        in_channels=config.latent_channels, out_channels=config.latent_channels,
        block_out_channels=config.unet_channels, down_block_types=down, up_block_types=up,
        layers_per_block=config.layers_per_block, cross_attention_dim=config.unet_channels[-1],
        encoder_hid_dim=text_states_width(config), encoder_hid_dim_type="text_proj",
        attention_head_dim=config.attention_head_dim, norm_num_groups=min(config.unet_channels) // 2)


def text_width() -> int:
    return 384  # MiniLM's hidden size


def text_states_width(config: DiffusionConfig) -> int:
    return config.scratch_text_width if config.text_encoder == "scratch" else text_width()


def training_scheduler():
    """DDPM with Stable Diffusion's noise schedule (scaled linear betas, 1,000 steps, epsilon)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False,
                         steps_offset=1)


@contextlib.contextmanager
def quiet_loading():
    """Loading reports and per-file bars from diffusers and transformers are noise for a CLI (the
    pipeline's own note that its text encoder is not CLIP's, too: it is meant to be MiniLM)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as hf_logging

    levels = hf_logging.get_verbosity(), diffusers_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    diffusers_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(levels[0])
        diffusers_logging.set_verbosity(levels[1])


def load_minilm_text_encoder(max_tokens: int):
    """The bundled MiniLM as a frozen BertModel and its tokenizer, cut at `max_tokens` pieces."""
    from transformers import BertModel

    with quiet_loading():
        encoder = BertModel.from_pretrained(minilm_path()).eval().requires_grad_(False)
    return encoder, minilm_tokenizer(max_tokens)


def minilm_tokenizer(max_tokens: int):
    from transformers import BertTokenizerFast

    with quiet_loading():
        return BertTokenizerFast.from_pretrained(minilm_path(), model_max_length=max_tokens)


def build_text_encoder(config: DiffusionConfig):
    """The prompt reader `config.text_encoder` names and its tokenizer; a scratch encoder is
    trainable (requires grad), MiniLM frozen."""
    from transformers import BertConfig, BertModel

    if config.text_encoder == "minilm":
        return load_minilm_text_encoder(config.max_text_tokens)
    if config.text_encoder != "scratch":
        raise ValueError(f"unknown text encoder {config.text_encoder!r} (minilm or scratch)")
    tokenizer = minilm_tokenizer(config.max_text_tokens)
    width = config.scratch_text_width
    shape = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=width, intermediate_size=4 * width,
                       num_hidden_layers=config.scratch_text_layers, num_attention_heads=max(1, width // 32),
                       max_position_embeddings=config.max_text_tokens, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0)
    encoder = BertModel(shape, add_pooling_layer=False)
    return encoder.eval(), tokenizer


class TextToImageModel:
    """A diffusers text-to-image pipeline behind polymodal's `generate` (ours or a user's)."""

    def __init__(self, pipeline, source: str, config: DiffusionConfig | None = None, meta: dict | None = None):
        self.pipeline, self.source, self.config, self.meta = pipeline, source, config, meta or {}
        self.pipeline.set_progress_bar_config(disable=True)  # ours is a rich bar over the steps

    @property
    def image_size(self) -> int:
        unet = self.pipeline.unet
        return unet.config.sample_size * self.pipeline.vae_scale_factor

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        return encode_prompts(self.pipeline, prompts)

    def generate(self, prompts: str | Sequence[str], n: int = 1, steps: int = 25, guidance: float = 3.0,
                 seed: int = 0, scheduler: str = "dpm++", size: int | None = None,
                 progress: bool = False) -> list[Image.Image]:
        """`n` images per prompt, prompt-major; the same seed gives the same images. guidance <= 1
        turns classifier-free guidance off (the conditional prediction alone)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        size = size or self.image_size
        check_request(prompts, n, steps, guidance, scheduler, size)
        with sampling_with(self.pipeline, scheduler), progress_bar(progress, transient=True) as bar:
            task = bar.add_task(f"denoising ({scheduler}, {steps} steps)", total=steps)

            def advance(pipe, step, timestep, kwargs):
                bar.advance(task)
                return kwargs

            out = self.pipeline(prompts, num_images_per_prompt=n, num_inference_steps=steps,
                                guidance_scale=guidance, height=size, width=size, output_type="pil",
                                generator=torch.Generator().manual_seed(seed), callback_on_step_end=advance)
        return out.images

    def save(self, directory: str | Path, extra: dict | None = None) -> Path:
        return save_pipeline(self.pipeline, directory, {"kind": "text-to-image", **self.meta, **(extra or {})},
                             self.config)


@torch.inference_mode()
def encode_prompts(pipeline, prompts: Sequence[str]) -> torch.Tensor:
    """(B, L, D) token states exactly as a Stable Diffusion-style pipeline computes them (padded, no mask)."""
    return pipeline.text_encoder(prompt_ids(pipeline.tokenizer, prompts).to(pipeline.device))[0]


def prompt_ids(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """(B, L) token ids, padded to the tokenizer's `model_max_length` as the pipeline pads them."""
    return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def save_pipeline(pipeline, directory: str | Path, meta: dict, config=None) -> Path:
    """The pipeline directory (diffusers' layout) plus polymodal.json (`meta` and the config),
    written whole or not at all."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory, merge=True) as staging:
        pipeline.save_pretrained(staging, safe_serialization=True)
        write_json(staging / METADATA, {**meta, "config": config.to_dict() if config else None})
    return directory


def write_grid(images: Sequence[Image.Image], columns: int, path: str | Path) -> Path:
    """The images as one grid (`columns` a row), written whole or not at all; the format is the
    file name's (png, jpg, webp ...)."""
    path = Path(path)
    formats = Image.registered_extensions()
    if path.suffix.lower() not in formats:
        raise ValueError(f"{path}: unknown image format {path.suffix!r} (use .png, .jpg or .webp)")
    width, height = images[0].size
    rows = -(-len(images) // columns)
    grid = Image.new("RGB", (columns * width, rows * height))
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * width, (i // columns) * height))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        grid.save(tmp, format=formats[path.suffix.lower()])
    return path


def check_request(prompts: list[str], n: int, steps: int, guidance: float, scheduler: str, size: int) -> None:
    """One clear line for a request that cannot be served, before any work."""
    if not prompts or any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise ValueError("empty prompt: every prompt needs at least one word")
    if n < 1 or len(prompts) * n > MAX_IMAGES:
        raise ValueError(f"n must be 1 or more, and prompts x n at most {MAX_IMAGES} (got {len(prompts)} x {n})")
    if steps < 1 or steps > 1000:
        raise ValueError(f"steps must be between 1 and 1000, not {steps}")
    if not 0 <= guidance <= 50:
        raise ValueError(f"guidance must be between 0 and 50, not {guidance}")
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
    if not 8 <= size <= MAX_SIDE or size % 8:  # diffusers' pipelines need a multiple of 8
        raise ValueError(f"size must be a multiple of 8 between 8 and {MAX_SIDE} pixels, not {size}")


def make_scheduler(name: str, config):
    """A sampling scheduler from the training scheduler's config (same betas)."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    kinds = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "euler": EulerDiscreteScheduler,
             "dpm++": DPMSolverMultistepScheduler}
    extra = {"algorithm_type": "dpmsolver++", "solver_order": 2} if name == "dpm++" else {}
    # Without diffusers' record of which values were defaults, every setting carries over as it
    # stands, so a model samples alike before and after a reload. "trailing" spacing starts every
    # sampler at the last training timestep (pure noise), and makes DDPM at 1,000 steps visit each
    # timestep once (Stable Diffusion's "leading" + offset 1 would ask for timestep 1,000).
    config = {k: v for k, v in dict(config).items() if k != "_use_default_values"}
    return kinds[name].from_config(config, timestep_spacing="trailing", **extra)


@contextlib.contextmanager
def sampling_with(pipeline, scheduler: str):
    """Inside the block the pipeline samples with `scheduler` (made from the one it was trained and
    saved with); that one is back afterwards, error or not."""
    trained_with = pipeline.scheduler
    pipeline.scheduler = make_scheduler(scheduler, trained_with.config)
    try:
        yield pipeline
    finally:
        pipeline.scheduler = trained_with


def assemble(config: DiffusionConfig, unet, vae, meta: dict | None = None) -> TextToImageModel:
    """A TextToImageModel from trained parts and the prompt reader the config names (a scratch
    one untrained: `train_unet` trains it with the UNet)."""
    from diffusers import StableDiffusionPipeline

    encoder, tokenizer = build_text_encoder(config)
    pipeline = StableDiffusionPipeline(vae=vae.eval(), text_encoder=encoder, tokenizer=tokenizer, unet=unet.eval(),
                                       scheduler=training_scheduler(), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    return TextToImageModel(pipeline, "polymodal", config, meta)


def create_text_to_image(preset: str | DiffusionConfig) -> TextToImageModel:
    config = preset if isinstance(preset, DiffusionConfig) else get_diffusion_config(preset)
    return assemble(config, build_unet(config), build_vae(config))


def is_diffusers_pipeline(path: str | Path) -> bool:
    return (Path(path) / "model_index.json").is_file()


def load_text_to_image(directory: str | Path, device: str = "cpu") -> TextToImageModel:
    """A diffusers text-to-image pipeline directory: one polymodal trained, or a user's own."""
    from diffusers import DiffusionPipeline

    directory = Path(directory)
    if not is_diffusers_pipeline(directory):
        raise CheckpointError(f"{directory}: not a diffusers pipeline directory (no model_index.json)")
    try:
        with quiet_loading():
            pipeline = DiffusionPipeline.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{directory}: not a loadable diffusers pipeline ({err.__class__.__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if not all(hasattr(pipeline, part) for part in ("unet", "vae", "text_encoder", "tokenizer")):
        raise CheckpointError(f"{directory}: a {type(pipeline).__name__}, not a text-to-image pipeline")
    meta = {}
    if (directory / METADATA).is_file():
        meta = json.loads((directory / METADATA).read_text())
    config = DiffusionConfig.from_dict(meta["config"]) if meta.get("config") else None
    return TextToImageModel(pipeline.to(device), str(directory.resolve()), config, meta)
