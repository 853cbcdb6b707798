"""Training aligned (contrastive) models.

One loop for one CPU, one GPU, or many processes under torchrun: `_train` reads the data, builds
(or resumes) the model, places it, and hands `ContrastiveSteps` to the step loop shared with the
VQA trainer (`engine.StepLoop`: the schedule runs on progress, steps or the time budget).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel

from ..backends import is_pretrained_source, load_trainable, save_model
from ..data.formats import load_records
from ..data.formats.shards import find_shards, is_shard_source
from ..data.pairs import ImageTextPairs
from ..data.schema import DataError, RecordSet
from ..data.streaming import StreamingPairs, shard_captions
from ..evaluate.run import evaluate_split
from ..losses import get_loss
from ..models.aligned import AlignedModel
from ..models.checkpoint import is_checkpoint
from ..models.factory import create_model
from ..utils import atomic_path, pick_device, resolve_precision, seed_everything
from .distributed import DistInfo, barrier, cleanup, init_distributed, share_resume_state
from .engine import StepLoop, TrainingProgress
from .init_from import init_towers
from .metrics import MetricsLog
from .optim import build_optimizer, clip_and_step

STATE_FILE = "training_state.pt"


@dataclass
class TrainConfig:
    data: str  # dataset directory (or any format the loaders read), or WebDataset shards (streamed)
    out: str  # checkpoint directory to write
    model: str = "shapes-cnn-small"  # preset name or JSON path
    loss: str = "clip"  # "clip" (InfoNCE) or "siglip"
    epochs: int = 10
    steps: int | None = None  # optimizer steps in all, instead of epochs: the same model on any machine
    time_budget: float | None = None  # seconds of training; the schedule is fitted to it
    batch_size: int = 128  # global batch, split across DDP ranks (128 beat 64 and 256 in 3-minute CPU runs)
    accum_steps: int = 1  # micro-batches per optimizer step (each is its own contrastive batch)
    lr: float | None = None  # None: 2e-3 from scratch, 1e-5 to fine-tune a pretrained model, 1e-3 for LoRA
    weight_decay: float = 0.1
    warmup: float = 0.05  # fraction of training
    grad_clip: float = 1.0
    precision: str = "auto"  # "bf16" autocast, "fp32", or "auto": bf16 where the hardware is fast at it
    hard_negatives: int = 3  # NegCLIP-style counterfactual captions per image (ShapesWorld data; 0: none)
    seed: int = 0
    device: str = "auto"
    eval_split: str = "val"
    eval_images: int = 1000  # gallery size for the per-epoch evaluation (0: skip)
    strict: bool = False  # stop at the first bad record instead of skipping it
    max_captions: int | None = None  # use at most this many captions per image
    resume: bool = False
    lora: int = 0  # LoRA rank for a pretrained model (0: no adapters)
    lock_image: bool = False  # freeze the image tower, projection included (LiT)
    lock_text: bool = False  # freeze the text tower, projection included
    init_from: list[str] = field(default_factory=list)  # checkpoints whose towers start training (polymodal pretrain)
    progress: bool = True
    log_every: int = 10  # steps between metric rows
    workers: int = 2  # DataLoader workers decoding shards (streaming only)
    save_every: int | None = None  # steps between mid-epoch checkpoints (resume continues the epoch's stream)
    sample_log: str | None = None  # JSON lines of each step's sample ids (rank 0), to check resumes
    extra: dict = field(default_factory=dict)


def _autocast(device: str, precision: str):
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train(cfg: TrainConfig) -> Path:
    """Train, evaluating every epoch; returns the checkpoint directory."""
    device = pick_device(cfg.device)
    dist_info = init_distributed(device)
    if dist_info.enabled and device.startswith("cuda"):
        device = f"cuda:{dist_info.local_rank}"
    try:
        return _train(cfg, device, dist_info)
    finally:
        cleanup(dist_info)


def _train(cfg: TrainConfig, device: str, info: DistInfo) -> Path:
    """Data, model, optimizer and schedule, then the step loop."""
    seed_everything(cfg.seed)
    out = Path(cfg.out)
    if cfg.batch_size % (info.world_size * cfg.accum_steps):
        raise ValueError(f"batch size {cfg.batch_size} must divide by world size x accum steps "
                         f"({info.world_size} x {cfg.accum_steps})")
    streaming = is_shard_source(cfg.data)  # shards are streamed; a dataset directory is decoded into memory
    data = None if streaming else load_records(cfg.data, strict=cfg.strict)
    train_set = None if streaming else data.split("train")
    if train_set is not None and not len(train_set):
        raise DataError(f"{cfg.data}: no records in split 'train' (splits: {data.splits})")
    texts = (lambda: shard_captions(find_shards(cfg.data))) if streaming else (lambda: (t for r in train_set
                                                                                         for t in r.text))
    model, state, pretrained = _build_model(cfg, texts, out, device)
    state = share_resume_state(state, info)  # ranks on hosts without --out resume with rank 0
    _check_model(cfg, model, pretrained, info)
    loss_fn = get_loss(cfg.loss)
    if streaming:
        pairs = StreamingPairs(cfg.data, model.config.image.image_size, cfg.workers, strict=cfg.strict,
                               world_size=info.world_size)
    else:
        pairs = _training_pairs(cfg, train_set, model, info)
    val = _validation_split(cfg, data) if info.is_main and data is not None else None
    if info.is_main and data is not None and len(data.skips):
        print(data.skips.summary())
    model, net = _place_model(model, device, info)
    lr = cfg.lr if cfg.lr is not None else _default_lr(cfg, pretrained)
    optimizer = build_optimizer(model, lr, cfg.weight_decay)
    progress, first_epoch, max_epochs = _schedule(cfg, pairs, state, info)
    if state:
        optimizer.load_state_dict(state["optimizer"])
    log = MetricsLog(out, info.is_main, resume=state is not None)
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
    loop = StepLoop(model, optimizer, progress, lr, cfg.warmup, show=cfg.progress and info.is_main)
    steps = ContrastiveSteps(cfg, model, net, optimizer, loss_fn, pairs, val, log, progress, info,
                             device, out, say=loop.say)
    steps.resume_at(state)
    loop.run(steps.batches, steps.step, steps.after_step, steps.end_epoch, first_epoch, max_epochs)
    log.close()
    if info.is_main and streaming and len(pairs.skips):
        print(pairs.skips.summary())
    return out


def _check_model(cfg: TrainConfig, model, pretrained: bool, info: DistInfo) -> None:
    """Options that do not fit the model fail before any data is decoded."""
    if cfg.init_from and (pretrained or Path(cfg.model).is_dir()):
        raise ValueError(f"--init-from starts a preset from pretrained towers; {cfg.model} is a whole model already")
    if cfg.lora and not pretrained:
        raise ValueError("--lora fine-tunes a pretrained model (hf:, open_clip: or a model directory), "
                         f"not '{cfg.model}'")
    if cfg.loss == "siglip" and model.logit_bias is None:
        raise ValueError(f"{cfg.model}: has no logit bias for the siglip loss; use --loss clip")
    if info.enabled and isinstance(model, AlignedModel):
        _check_same_tokenizer(model, info)


def _training_pairs(cfg: TrainConfig, train_set: RecordSet, model, info: DistInfo) -> ImageTextPairs:
    """The training split decoded at the model's image size (captions cut to `max_captions`)."""
    if cfg.max_captions:
        for r in train_set.records:
            r.text = r.text[: cfg.max_captions]
    pairs = ImageTextPairs(train_set, model.config.image.image_size, progress=cfg.progress and info.is_main)
    if hasattr(getattr(model, "text_tower", None), "warm_cache"):
        # A locked tower is a fixed function of the caption: embed every caption once, up front,
        # so the time budget is spent on what is trained.
        model.text_tower.warm_cache(model.tokenizer, [t for r in pairs.records for t in r.text],
                                    progress=cfg.progress and info.is_main)
    return pairs


def _validation_split(cfg: TrainConfig, data: RecordSet) -> RecordSet | None:
    """The first `eval_images` records of the split evaluated after every epoch (rank 0 only)."""
    if not cfg.eval_images or cfg.eval_split not in data.splits:
        return None
    val = data.split(cfg.eval_split)
    val.records = val.records[: cfg.eval_images]
    return val


def _place_model(model, device: str, info: DistInfo):
    """(model, net): the model in the memory layout that suits the device, and what the loop calls
    (wrapped in DDP under torchrun, with batch statistics of the global batch on GPUs)."""
    if device == "cpu":
        model = model.to(memory_format=torch.channels_last)
    if info.enabled and device.startswith("cuda"):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model, (DistributedDataParallel(model) if info.enabled else model)


def _schedule(cfg: TrainConfig, pairs: ImageTextPairs | StreamingPairs, state: dict | None, info: DistInfo):
    """(progress, first epoch, last epoch): the length of training in steps (or seconds), where
    a resumed run picks up."""
    steps_per_epoch = pairs.steps_per_epoch(cfg.batch_size)
    if steps_per_epoch == 0:
        raise DataError(f"{cfg.data}: {len(pairs)} training pairs are fewer than one batch of {cfg.batch_size}")
    total_steps = cfg.steps or steps_per_epoch * cfg.epochs
    progress = TrainingProgress(total_steps, cfg.time_budget, agree=lambda seconds: _agree(seconds, info))
    first_epoch = 0
    if state:
        progress.step, progress.elapsed, first_epoch = state["step"], state["elapsed"], state["epoch"]
    return progress, first_epoch, math.ceil(total_steps / steps_per_epoch)


def _build_model(cfg: TrainConfig, texts: Callable[[], Iterable[str]], out: Path, device: str):
    """(model, saved training state or None, whether the model is pretrained): resumed from `out`,
    loaded from a pretrained source, or created from a preset with a tokenizer from the captions
    (`texts()`: the training captions)."""
    state = None
    pretrained = is_pretrained_source(cfg.model)
    if cfg.resume and (out / STATE_FILE).exists() and (pretrained or is_checkpoint(out)):
        model = load_trainable(str(out), lock_image=cfg.lock_image, lock_text=cfg.lock_text, device=device)
        state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=False)
    elif pretrained or Path(cfg.model).is_dir():  # a polymodal checkpoint is fine-tuned as it is
        model = load_trainable(cfg.model, cfg.lora, cfg.lock_image, cfg.lock_text, device)
    else:
        model = create_model(cfg.model, texts=texts(), lock_image=cfg.lock_image,
                             lock_text=cfg.lock_text).to(device)
        if cfg.init_from:  # pretrained towers, fresh projections (train/init_from.py)
            model, _ = init_towers(model, cfg.init_from)
        if cfg.loss == "siglip" and model.logit_bias is None:
            # SigLIP starts from temperature 10 and bias -10 (Zhai et al.) so that the many
            # negative pairs do not swamp the first steps.
            model.logit_bias = torch.nn.Parameter(torch.tensor(-10.0, device=device))
            model.logit_scale.data.fill_(math.log(10))
            model.config.init_logit_bias, model.config.init_logit_scale = -10.0, math.log(10)
    return model, state, pretrained


def _default_lr(cfg: TrainConfig, pretrained: bool) -> float:
    """Fine-tuning pretrained towers must not wash out what pretraining learnt; freshly
    initialised LoRA adapters need much larger steps."""
    if not pretrained:
        return 2e-3
    return 1e-3 if cfg.lora else 1e-5


def _check_same_tokenizer(model, info: DistInfo) -> None:
    """Every rank learns the tokenizer from the same captions; make sure they got the same one."""
    mine = model.tokenizer.tok.to_str()
    theirs = [mine]
    torch.distributed.broadcast_object_list(theirs, src=0)
    if theirs[0] != mine:
        raise RuntimeError(f"rank {info.rank} built a different tokenizer from rank 0: the ranks read different data")


def _agree(elapsed: float, info: DistInfo) -> float:
    """Under DDP every rank takes the slowest rank's clock, so all stop on the same step."""
    if not info.enabled:
        return elapsed
    t = torch.tensor([elapsed], dtype=torch.float64)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return t.item()


@dataclass
class ContrastiveSteps:
    """What one contrastive step and the end of an epoch do, for `StepLoop` to run."""

    cfg: TrainConfig
    model: torch.nn.Module  # the bare model (its parameters, its tokenizer, what is saved)
    net: torch.nn.Module  # what the forward pass calls: the model, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    loss_fn: Callable
    pairs: ImageTextPairs | StreamingPairs
    val: RecordSet | None
    log: MetricsLog
    progress: TrainingProgress
    info: DistInfo
    device: str
    out: Path
    say: Callable[[str], None] = print
    epoch: int = 0
    _epoch_start: float = 0.0
    _seen: int = 0
    _position: object = None  # where this rank's stream stands in the epoch (the last batch's position)
    _saved_step: int = 0
    _ids: list[str] | None = None  # the last batch's record ids

    def resume_at(self, state: dict | None) -> None:
        """A run saved mid-epoch continues that epoch's stream after the last batch it had taken."""
        positions = (state or {}).get("position")
        if positions is not None and len(positions) != self.info.world_size:
            raise ValueError(f"the checkpoint was saved mid-epoch by {len(positions)} processes; "
                             f"resume with the same number (not {self.info.world_size})")
        self._position = positions[self.info.rank] if positions else None
        self._saved_step = self.progress.step

    def batches(self, epoch: int):
        self.epoch, self._epoch_start, self._seen = epoch, time.perf_counter(), 0
        return self.pairs.batches(self.cfg.batch_size, self.cfg.seed, epoch, self.info.rank, self.info.world_size,
                                  hard_negatives=self.cfg.hard_negatives, position=self._position)

    def step(self, batch) -> dict[str, float]:
        if self.cfg.save_every and self.progress.step % self.cfg.save_every == 0 \
                and self.progress.step != self._saved_step and self._position is not None:
            # Saved before this step, not after the last one, so a resumed epoch always has a batch left.
            with self.progress.paused():
                self._save_mid_epoch()
        self._position, self._ids = batch.position, batch.ids
        micro = self.cfg.batch_size // self.cfg.accum_steps // self.info.world_size
        return _step(self.net, self.model, batch, self.loss_fn, self.optimizer, self.cfg, self.device, micro)

    def _save_mid_epoch(self) -> None:
        positions = [self._position]
        if self.info.enabled:
            positions = [None] * self.info.world_size
            torch.distributed.all_gather_object(positions, self._position)
        if self.info.is_main:
            _save(self.model, self.optimizer, self.out, self.cfg, self.progress.step, self.epoch,
                  self.progress.elapsed, positions)
        self._saved_step = self.progress.step
        barrier(self.info)

    def after_step(self, losses: dict[str, float]) -> str:
        """Log every `log_every` steps; returns the progress bar's description."""
        self._seen += self.cfg.batch_size
        rate = self._seen / (time.perf_counter() - self._epoch_start)
        if self.cfg.sample_log and self.info.is_main:
            with open(self.cfg.sample_log, "a") as f:
                f.write(json.dumps({"step": self.progress.step, "epoch": self.epoch, "t": time.time(),
                                    "ids": self._ids}) + "\n")
        if self.progress.step % self.cfg.log_every == 0:
            self.log.log(self.progress.step, {
                **{f"train/{k}": v for k, v in losses.items()}, "train/lr": self.optimizer.param_groups[0]["lr"],
                "train/samples_per_s": rate, "train/logit_scale": self.model.logit_scale.exp().item()})
        return f"epoch {self.epoch + 1} loss {losses['loss']:.3f} {rate:,.0f} samples/s"

    def end_epoch(self, epochs_done: int) -> None:
        """Rank 0 evaluates on the validation split, logs and saves; then every rank waits for it."""
        self._position, self._saved_step = None, self.progress.step  # the next epoch starts from its beginning
        if self.info.is_main:
            metrics = _evaluate_epoch(self.model, self.val) if self.val is not None else {}
            self.log.log(self.progress.step, {**metrics, "epoch": epochs_done})
            if metrics:
                self.say(f"epoch {epochs_done}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
            _save(self.model, self.optimizer, self.out, self.cfg, self.progress.step, epochs_done,
                  self.progress.elapsed)
        barrier(self.info)


def _step(net, model, batch, loss_fn, optimizer, cfg: TrainConfig, device: str, micro: int) -> dict[str, float]:
    optimizer.zero_grad(set_to_none=True)
    totals: dict[str, float] = {}
    for start in range(0, len(batch.images), micro):
        images = batch.images[start:start + micro].to(device, non_blocking=True)
        if device == "cpu":
            images = images.contiguous(memory_format=torch.channels_last)
        text = model.tokenizer(batch.captions[start:start + micro]).to(device)
        k = len(batch.negatives) // len(batch.images) if batch.negatives else 0  # negatives per image
        negatives = model.tokenizer(batch.negatives[start * k:(start + micro) * k]).to(device) if k else None
        with _autocast(device, cfg.precision):
            out = net(images, text, negatives)
        terms = loss_fn(out)
        loss = sum(terms.values())
        (loss / cfg.accum_steps).backward()
        for k, v in {**terms, "loss": loss}.items():
            totals[k] = totals.get(k, 0.0) + v.item() / cfg.accum_steps
    clip_and_step(model, optimizer, cfg.grad_clip)
    return totals


def _evaluate_epoch(model, val) -> dict[str, float]:
    res = evaluate_split(model, val, progress=False)
    out = {}
    if "text_to_image" in res:
        out["val/t2i_R@1"] = res["text_to_image"]["R@1"]
        out["val/i2t_R@1"] = res["image_to_text"]["R@1"]
    for name, probe in res.get("probes", {}).items():
        out[f"val/{name}"] = probe["accuracy"]
    return out


def _save(model, optimizer, out: Path, cfg: TrainConfig, step: int, epoch: int, elapsed: float,
          position: list | None = None) -> None:
    """`epoch`: epochs done; `position`: per rank, where the current epoch's stream stands (None at an epoch's end)."""
    train_meta = {k: v for k, v in asdict(cfg).items() if k not in ("progress",)}
    save_model(model, out, extra={"training": train_meta, "step": step, "epoch": epoch})
    with atomic_path(out / STATE_FILE) as tmp:
        torch.save({"optimizer": optimizer.state_dict(), "step": step, "epoch": epoch, "elapsed": elapsed,
                    "position": position}, tmp)
