"""Training the text-to-image model (`models.generative.diffusion`) on any captioned dataset.

Two stages, latent diffusion's recipe:
1. the autoencoder (diffusers' `AutoencoderKL`) learns to reconstruct the training images
   (L1 + MSE + a small KL term), unless `vae` names a pipeline whose autoencoder to reuse;
2. every training image is encoded once (its latent mean and spread are kept, a latent is drawn
   per step), the latents are scaled to unit spread (the pipeline's `scaling_factor`), and the UNet
   learns to predict DDPM's noise from the noisy latent, the timestep and the caption's MiniLM token
   states; a caption is replaced by the empty prompt with probability `caption_dropout`, which
   trains the unconditional branch classifier-free guidance needs. EMA weights are what is saved.

MiniLM is frozen, so each caption's states are computed once and kept (float16) while they fit in
`TEXT_CACHE` captions; a scratch text encoder is trained with the UNet (same optimizer and EMA).
Both stages run on the shared step loop (warm-up + cosine on progress,
`--steps` or a time budget, whichever ends first).
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data.formats import load_records
from ..data.pairs import ImageTextPairs
from ..data.schema import DataError
from ..models.generative.diffusion import (
    TextToImageModel,
    assemble,
    build_unet,
    build_vae,
    get_diffusion_config,
    load_text_to_image,
    prompt_ids,
    training_scheduler,
)
from ..utils import pick_device, progress_bar, seed_everything
from .engine import StepLoop, TrainingProgress
from .metrics import MetricsLog
from .optim import clip_and_step

TEXT_CACHE = 200_000  # captions whose token states are kept (24 x 384 float16: 18 KB each)


@dataclass
class GeneratorTrainConfig:
    data: str
    out: str
    model: str = "shapes-diffusion-small"  # a preset name or a DiffusionConfig JSON file
    steps: int = 6000  # UNet steps
    time_budget: float | None = None  # seconds for the UNet stage; whichever of steps / budget ends first
    batch_size: int = 32
    lr: float = 5e-4
    warmup: float = 0.02
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    vae: str | None = None  # a pipeline directory whose autoencoder to reuse (stage 1 skipped)
    vae_steps: int = 4000
    vae_time_budget: float | None = None
    vae_batch_size: int = 8  # small batches: more steps per image seen, and the autoencoder learns faster per second
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    seed: int = 0
    device: str = "auto"
    progress: bool = True


def train_generator(cfg: GeneratorTrainConfig) -> dict:
    """Train on the train split of `cfg.data` and save a diffusers pipeline directory to `cfg.out`;
    returns the steps, seconds and samples/s of each stage and the final losses."""
    seed_everything(cfg.seed)
    if not 0 <= cfg.caption_dropout <= 1:
        raise ValueError(f"caption dropout is a probability, not {cfg.caption_dropout}")
    config = get_diffusion_config(cfg.model)
    train_set = load_records(cfg.data).split("train")
    if not train_set.records:
        raise DataError(f"{cfg.data}: no 'train' split to train the generator on")
    pairs = ImageTextPairs(train_set, config.image_size, progress=cfg.progress)
    if len(pairs) < cfg.batch_size:
        raise DataError(f"{cfg.data}: {len(pairs)} training images are fewer than one batch of {cfg.batch_size}")
    device = pick_device(cfg.device)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    log = MetricsLog(Path(cfg.out), enabled=True, resume=False)
    result: dict = {"images": len(pairs)}
    if cfg.vae:
        vae = load_text_to_image(cfg.vae).pipeline.vae
        result["vae_from"] = str(Path(cfg.vae).resolve())
    else:
        vae = build_vae(config)
        result |= train_autoencoder(vae, pairs.images, cfg, device, log)
    mean, spread = encode_latents(vae.to(device), pairs.images, cfg.progress)
    vae.register_to_config(scaling_factor=float(1 / (mean + spread * torch.randn_like(mean)).std()))
    model = assemble(config, build_unet(config), vae.cpu())
    result |= train_unet(model, mean, spread, [r.text for r in pairs.records], cfg, device, log)
    log.close()
    training = {k: v for k, v in asdict(cfg).items() if k != "progress"}
    model.save(cfg.out, extra={"training": training, **result})
    return result


def pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> float in [-1, 1], the VAE's range."""
    return images.float() / 127.5 - 1


def train_autoencoder(vae: nn.Module, images: torch.Tensor, cfg: GeneratorTrainConfig, device: str,
                      log: MetricsLog) -> dict:
    vae.to(device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    progress = TrainingProgress(cfg.vae_steps, cfg.vae_time_budget)
    last = {}

    def step(index: torch.Tensor) -> dict[str, float]:
        x = pixels(images[index]).to(device)  # (B, 3, S, S)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + cfg.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_and_step(vae, optimizer, 1.0)
        return {"loss": loss.item()}

    def after_step(losses: dict[str, float]) -> str:
        last.update(losses)
        if progress.step % 20 == 0 or progress.done:
            log.log(progress.step, {"autoencoder/loss": losses["loss"]})
        return f"autoencoder: loss {losses['loss']:.4f}"

    StepLoop(vae, optimizer, progress, cfg.vae_lr, cfg.warmup, show=cfg.progress).run(
        lambda epoch: index_batches(len(images), cfg.vae_batch_size, cfg.seed, epoch), step, after_step)
    vae.eval()
    return {"vae_steps": progress.step, "vae_seconds": round(progress.elapsed, 1), "vae_loss": last["loss"],
            "vae_samples_per_s": round(progress.step * cfg.vae_batch_size / max(progress.elapsed, 1e-9), 1)}


def index_batches(n: int, batch_size: int, seed: int, epoch: int):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return order[: n - n % batch_size].split(batch_size)


@torch.no_grad()
def encode_latents(vae: nn.Module, images: torch.Tensor, progress: bool,
                   batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's latent mean and standard deviation, (N, C, s, s) each, on the VAE's device."""
    device = next(vae.parameters()).device
    means, spreads = [], []
    with progress_bar(progress, transient=True) as bar:
        task = bar.add_task("encoding latents", total=len(images))
        for chunk in images.split(batch_size):
            posterior = vae.encode(pixels(chunk).to(device)).latent_dist
            means.append(posterior.mean)
            spreads.append(posterior.std)
            bar.advance(task, len(chunk))
    return torch.cat(means), torch.cat(spreads)


class TextStates:
    """Captions -> a frozen text encoder's (B, L, D) token states, computed once per caption."""

    def __init__(self, model: TextToImageModel, device: str, limit: int = TEXT_CACHE):
        self.model, self.device, self.limit = model, device, limit
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(c for c in captions if c not in self.cache))
        fresh = dict(zip(missing, self.model.encode_prompts(missing).to(torch.float16))) if missing else {}
        for caption, states in fresh.items():
            if len(self.cache) < self.limit:
                self.cache[caption] = states
        return torch.stack([self.cache.get(c, fresh.get(c)) for c in captions]).float().to(self.device)


class TrainedTextStates:
    """Captions -> a trainable text encoder's (B, L, D) token states, with gradients; the token
    ids are computed once per caption."""

    def __init__(self, model: TextToImageModel, device: str):
        self.encoder, self.tokenizer, self.device = model.pipeline.text_encoder, model.pipeline.tokenizer, device
        self.ids: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(c for c in captions if c not in self.ids))
        if missing:
            self.ids.update(zip(missing, prompt_ids(self.tokenizer, missing)))
        return self.encoder(torch.stack([self.ids[c] for c in captions]).to(self.device))[0]


def prompt_reader(model: TextToImageModel, device: str) -> tuple[list[nn.Module], TextStates | TrainedTextStates]:
    """The modules training updates besides the UNet (a trainable text encoder, or none) and the
    captions -> states function to train with."""
    encoder = model.pipeline.text_encoder.to(device)
    if any(p.requires_grad for p in encoder.parameters()):
        return [encoder], TrainedTextStates(model, device)
    return [], TextStates(model, device)


def caption_batches(captions: list[list[str]], batch_size: int, seed: int, epoch: int, dropout: float):
    """One shuffled epoch of (indices, one caption per image; "" where the caption is dropped)."""
    rng = random.Random(f"{seed}/{epoch}/captions")
    for index in index_batches(len(captions), batch_size, seed, epoch):
        yield index, ["" if rng.random() < dropout else rng.choice(captions[i]) for i in index.tolist()]


def train_unet(model: TextToImageModel, mean: torch.Tensor, spread: torch.Tensor, captions: list[list[str]],
               cfg: GeneratorTrainConfig, device: str, log: MetricsLog) -> dict:
    from diffusers.training_utils import EMAModel

    unet, scheduler = model.pipeline.unet.to(device).train(), training_scheduler()
    text_modules, states = prompt_reader(model, device)
    trained = nn.ModuleList([unet, *text_modules])  # the UNet, and the text encoder when it learns too
    scale = model.pipeline.vae.config.scaling_factor
    ema = EMAModel(trained.parameters(), decay=cfg.ema_decay, use_ema_warmup=True)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=cfg.lr, weight_decay=0.01)
    progress, last = TrainingProgress(cfg.steps, cfg.time_budget), {}

    def step(batch) -> dict[str, float]:
        index, texts = batch
        latents = (mean[index] + spread[index] * torch.randn_like(mean[index])) * scale  # (B, C, s, s)
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(index),), device=latents.device)
        pred = unet(scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=states(texts)).sample
        loss = F.mse_loss(pred, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_and_step(trained, optimizer, 1.0)
        ema.step(trained.parameters())
        return {"loss": loss.item()}

    def after_step(losses: dict[str, float]) -> str:
        last.update(losses)
        if progress.step % 20 == 0 or progress.done:
            log.log(progress.step, {"unet/loss": losses["loss"], "unet/lr": optimizer.param_groups[0]["lr"]})
        return f"UNet: loss {losses['loss']:.4f}"

    StepLoop(trained, optimizer, progress, cfg.lr, cfg.warmup, show=cfg.progress).run(
        lambda epoch: caption_batches(captions, cfg.batch_size, cfg.seed, epoch, cfg.caption_dropout),
        step, after_step)
    ema.copy_to(trained.parameters())
    model.pipeline.to("cpu")
    trained.eval()
    return {"steps": progress.step, "seconds": round(progress.elapsed, 1), "loss": last["loss"],
            "train_samples_per_s": round(progress.step * cfg.batch_size / max(progress.elapsed, 1e-9), 1)}
