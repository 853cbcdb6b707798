"""Federated training of an aligned model: FedAvg and FedProx clients, strategies (with FedAvgM and
FedAdam, which apply server momentum or Adam to the mean update) and a simulation
driver over rounds.

Written by hand rather than on Flower (`flwr`), which the issue names: flwr 1.42 cannot be
installed beside polymodal's locked dependencies (it pins typer<0.21, rich<15, protobuf<7,
packaging<26, fastapi 0.138 / starlette 1.3 and ray==2.55.1 for its simulation engine; polymodal
has typer 0.29, rich 15, protobuf 7, fastapi 0.165 and ray 2.60). The shape follows Flower's so the
code reads the same and could move onto it: a client's `fit(parameters, config)` returns
`(parameters, num_examples, metrics)`, a strategy's `aggregate_fit(round, results)` returns the
new global parameters, and `run_simulation` drives rounds over clients made by `client_fn(cid)`.

Clients hold different modality mixes; each trains what its data can teach:
- "pairs": image-caption pairs, CLIP's symmetric InfoNCE (both towers and the temperature);
- "image": images without captions, SimCLR's NT-Xent between two augmented views (random
  translation and scale) of each image, through the image tower and its projection;
- "text": captions without images, grouped by the item they describe (ShapesWorld gives five per
  image): InfoNCE between two captions of the same item (paraphrases as positives, as in SimCSE's
  supervised form), through the text tower and its projection.
A one-modality client's loss keeps its tower's embeddings discriminative without moving the other
tower, and the strategy averages each parameter only over the clients that trained it (a client
reports the towers it trained in `metrics["towers"]`), so an image-only client does not pull the
text tower back towards the last round's weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.transforms import v2

from ..losses import clip_loss
from ..train.optim import build_optimizer, clip_and_step, lr_at, set_lr
from ..utils import progress_bar

Parameters = list[np.ndarray]
MODES = ("pairs", "image", "text")
SSL_TEMPERATURE = 0.1  # SimCLR's temperature for the one-modality losses


def get_parameters(model: torch.nn.Module) -> Parameters:
    """The model's state (parameters and buffers, BatchNorm statistics included) as numpy arrays."""
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def set_parameters(model: torch.nn.Module, parameters: Parameters) -> None:
    state = model.state_dict()
    if len(parameters) != len(state):
        raise ValueError(f"{len(parameters)} arrays for a model with {len(state)} state entries")
    model.load_state_dict({k: torch.from_numpy(np.asarray(p)) for k, p in zip(state, parameters)})


def tower_of(name: str) -> str:
    """Which tower a state entry belongs to: "image", "text", or "pairs" (the temperature and bias,
    which only cross-modal pairs can train)."""
    if name.startswith(("image", "normalize")):
        return "image"
    return "text" if name.startswith("text") else "pairs"


# -- the client ---------------------------------------------------------------------------------


@dataclass
class ClientData:
    """What one client holds: images (uint8) and/or caption lists, one row per item."""

    images: torch.Tensor | None  # (N, 3, S, S) uint8, None for a text-only client
    captions: list[list[str]] | None  # (N,) captions of each item, None for an image-only client

    @property
    def mode(self) -> str:
        if self.images is not None and self.captions is not None:
            return "pairs"
        return "image" if self.images is not None else "text"

    def __len__(self) -> int:
        return len(self.images) if self.images is not None else len(self.captions)


class AlignedClient:
    """Trains the shared model on one client's data for `config["local_steps"]` steps. With
    `config["mu"] > 0` the loss gets FedProx's proximal term mu/2 * ||w - w_global||^2."""

    def __init__(self, cid: str, model: torch.nn.Module, data: ClientData, batch_size: int = 64, seed: int = 0):
        self.cid, self.model, self.data = cid, model, data
        self.batch_size = min(batch_size, len(data))
        self.rng = np.random.default_rng([seed, int(cid) if cid.isdigit() else len(cid)])
        self.augment = v2.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(0.85, 1.15))
        self.optimizer: torch.optim.Optimizer | None = None

    def fit(self, parameters: Parameters, config: dict) -> tuple[Parameters, int, dict]:
        set_parameters(self.model, parameters)  # in place: a kept optimizer still holds these tensors
        global_weights = [p.detach().clone() for p in self.model.parameters()]
        optimizer = self.optimizer_for(config)
        self.model.train()
        steps, mu, losses = config["local_steps"], config.get("mu", 0.0), []
        for s in range(steps):
            # The cosine schedule runs over the whole federation (rounds x local steps).
            set_lr(optimizer, lr_at((config["round"] * steps + s) / (config["rounds"] * steps), config["lr"],
                                    config.get("warmup", 0.05)))
            optimizer.zero_grad(set_to_none=True)
            loss = self.local_loss()
            if mu > 0:
                loss = loss + mu / 2 * proximal_term(self.model, global_weights)
            loss.backward()
            clip_and_step(self.model, optimizer, 1.0)
            losses.append(loss.item())
        towers = ",".join(["image", "text", "pairs"] if self.data.mode == "pairs" else [self.data.mode])
        return get_parameters(self.model), len(self.data), {"loss": float(np.mean(losses)), "towers": towers}

    def optimizer_for(self, config: dict) -> torch.optim.Optimizer:
        """A fresh AdamW each round, or with `config["keep_optimizer"]` this client's own, whose moments
        carry over between rounds (a fresh one's first steps are sign-like and as large as the lr)."""
        if not (config.get("keep_optimizer") and self.optimizer is not None):
            self.optimizer = build_optimizer(self.model, config["lr"], config.get("weight_decay", 0.1))
        return self.optimizer

    def local_loss(self) -> torch.Tensor:
        rows = self.rng.choice(len(self.data), self.batch_size, replace=False)
        model, data = self.model, self.data
        if data.mode == "pairs":
            captions = [data.captions[i][self.rng.integers(len(data.captions[i]))] for i in rows]
            out = model(data.images[rows].to(model.device), model.tokenizer(captions).to(model.device))
            return clip_loss(out)["contrastive_loss"]
        if data.mode == "image":
            views = [torch.stack([self.augment(data.images[i]) for i in rows]) for _ in range(2)]  # 2 x (B, 3, S, S)
            a, b = (model.image_features(v.to(model.device)) for v in views)
        else:  # two different captions of each item
            pairs = [self.rng.choice(len(data.captions[i]), 2, replace=len(data.captions[i]) < 2) for i in rows]
            a, b = (model.text_features(model.tokenizer([data.captions[i][p[j]] for i, p in zip(rows, pairs)])
                                        .to(model.device)) for j in (0, 1))
        scale = torch.tensor(math.log(1 / SSL_TEMPERATURE), device=a.device)
        return clip_loss({"image_features": a, "text_features": b, "logit_scale": scale})["contrastive_loss"]


def proximal_term(model: torch.nn.Module, global_weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """||w - w_global||^2 over the trainable parameters (FedProx, Li et al. 2020)."""
    return sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_weights) if p.requires_grad)


# -- the strategies -----------------------------------------------------------------------------


@dataclass
class FitResult:
    parameters: Parameters
    num_examples: int
    metrics: dict


class FedAvg:
    """McMahan et al. (2017): the global model is the mean of the clients' models weighted by
    their example counts; each state entry is averaged over the clients that trained its tower."""

    mu = 0.0  # no proximal term

    def __init__(self, names: Sequence[str], local_steps: int = 10, lr: float = 2e-3, keep_optimizer: bool = False):
        self.names, self.local_steps, self.lr, self.keep_optimizer = list(names), local_steps, lr, keep_optimizer

    def configure_fit(self, server_round: int, rounds: int) -> dict:
        return {"round": server_round, "rounds": rounds, "local_steps": self.local_steps, "lr": self.lr,
                "mu": self.mu, "keep_optimizer": self.keep_optimizer}

    def aggregate_fit(self, server_round: int, results: Sequence[FitResult], current: Parameters) -> Parameters:
        out = []
        for i, name in enumerate(self.names):
            tower = tower_of(name)
            mine = [r for r in results if tower in r.metrics.get("towers", "image,text,pairs").split(",")]
            if not mine:  # no client trained it this round: it stays
                out.append(current[i])
                continue
            weights = np.array([r.num_examples for r in mine], dtype=np.float64)
            mean = sum(w * r.parameters[i].astype(np.float64) for w, r in zip(weights / weights.sum(), mine))
            if current[i].dtype.kind == "f" and "running_" not in name:  # weights, not BatchNorm statistics
                mean = self.server_step(i, current[i].astype(np.float64), mean)
            out.append(np.asarray(np.rint(mean) if current[i].dtype.kind in "iu" else mean, dtype=current[i].dtype))
        return out

    def server_step(self, i: int, current: np.ndarray, mean: np.ndarray) -> np.ndarray:
        """The new value of entry i from its current value and the clients' mean: FedAvg takes the mean."""
        return mean


class FedProx(FedAvg):
    """Li et al. (2020): FedAvg whose clients add mu/2 * ||w - w_global||^2 to their loss, which
    keeps each client's drift on its skewed data in check."""

    def __init__(self, names: Sequence[str], local_steps: int = 10, lr: float = 2e-3, mu: float = 0.01, **kw):
        super().__init__(names, local_steps, lr, **kw)
        self.mu = mu


class FedAvgM(FedAvg):
    """Hsu et al. (2019): the server treats mean - current as a step and applies it with momentum,
    v = beta v + delta, w += server_lr v, which smooths the clients' skewed, changing directions.
    beta 0 and server_lr 1 is FedAvg."""

    def __init__(self, names: Sequence[str], local_steps: int = 10, lr: float = 2e-3, beta: float = 0.5,
                 server_lr: float = 1.0, **kw):
        super().__init__(names, local_steps, lr, **kw)
        self.beta, self.server_lr, self.velocity = beta, server_lr, {}

    def server_step(self, i: int, current: np.ndarray, mean: np.ndarray) -> np.ndarray:
        self.velocity[i] = self.beta * self.velocity.get(i, 0.0) + (mean - current)
        return current + self.server_lr * self.velocity[i]


class FedAdam(FedAvg):
    """Reddi et al. (2021): the server applies Adam to the pseudo-gradient mean - current, so each
    weight moves by about server_lr a round whatever the clients' scale (tau: Adam's epsilon)."""

    def __init__(self, names: Sequence[str], local_steps: int = 10, lr: float = 2e-3, server_lr: float = 1e-2,
                 betas: tuple[float, float] = (0.9, 0.99), tau: float = 1e-3, **kw):
        super().__init__(names, local_steps, lr, **kw)
        self.server_lr, self.betas, self.tau, self.moments = server_lr, betas, tau, {}

    def server_step(self, i: int, current: np.ndarray, mean: np.ndarray) -> np.ndarray:
        delta, (b1, b2) = mean - current, self.betas
        m, v = self.moments.get(i, (0.0, 0.0))
        m, v = b1 * m + (1 - b1) * delta, b2 * v + (1 - b2) * delta**2
        self.moments[i] = (m, v)
        return current + self.server_lr * m / (np.sqrt(v) + self.tau)


STRATEGIES = {"fedavg": FedAvg, "fedprox": FedProx, "fedavgm": FedAvgM, "fedadam": FedAdam}


# -- the simulation driver ----------------------------------------------------------------------


@dataclass
class History:
    """Per round: the clients' mean training loss and whatever `evaluate_fn` measured."""

    rounds: list[dict] = field(default_factory=list)


def run_simulation(client_fn: Callable[[str], AlignedClient], num_clients: int, initial: Parameters,
                   strategy: FedAvg, rounds: int, evaluate_fn: Callable[[int, Parameters], dict] | None = None,
                   progress: bool = True) -> tuple[Parameters, History]:
    """Every client trains in every round, one after another (what Flower's simulation engine does
    on one process); the strategy aggregates; `evaluate_fn(round, parameters)` scores the result."""
    parameters, history = initial, History()
    with progress_bar(progress) as bar:
        task = bar.add_task("federated rounds", total=rounds * num_clients)
        for r in range(rounds):
            config = strategy.configure_fit(r, rounds)
            results = []
            for cid in range(num_clients):
                results.append(FitResult(*client_fn(str(cid)).fit(parameters, config)))
                bar.advance(task)
            parameters = strategy.aggregate_fit(r, results, parameters)
            row = {"round": r + 1, "loss": float(np.mean([x.metrics["loss"] for x in results]))}
            if evaluate_fn is not None:
                row.update(evaluate_fn(r + 1, parameters))
            history.rounds.append(row)
            bar.update(task, description=f"round {r + 1}/{rounds} loss {row['loss']:.3f}")
    return parameters, history
