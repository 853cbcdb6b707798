"""Federated training of an aligned model on Flower (`flwr`): the client side. `AlignedClient`
trains the shared model on one client's data; `client_app` wraps clients in a Flower `ClientApp`
that answers the server's train messages (Flower's Message API: an `ArrayRecord` of the global
state and a `ConfigRecord` in, the trained state and a `MetricRecord` out). The strategies and the
simulation driver are in `federated_server.py`.

Clients hold different modality mixes; each trains what its data can teach:
- "pairs": image-caption pairs, CLIP's symmetric InfoNCE (both towers and the temperature);
- "image": images without captions, SimCLR's NT-Xent between two augmented views (random
  translation and scale) of each image, through the image tower and its projection;
- "text": captions without images, grouped by the item they describe (ShapesWorld gives five per
  image): InfoNCE between two captions of the same item (paraphrases as positives, as in SimCSE's
  supervised form), through the text tower and its projection.
A one-modality client's loss keeps its tower's embeddings discriminative without moving the other
tower, and the strategy averages each parameter only over the clients that trained it (a client
reports the towers it trained as 0/1 metrics `trained-image`, `trained-text`, `trained-pairs`), so
an image-only client does not pull the text tower back towards the last round's weights.

What a client keeps between rounds lives where Flower keeps it, in the node's `Context.state`
(with `keep_optimizer`: AdamW's moments); its batches are drawn from a generator seeded by
(seed, client, round), so a client needs no other memory across rounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torchvision.transforms import v2

from ..losses import clip_loss
from ..train.optim import build_optimizer, clip_and_step, lr_at, set_lr

Parameters = list[np.ndarray]
MODES = ("pairs", "image", "text")  # what a client holds; mode M trains the parts `tower_of` calls M
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
    """Trains the shared model on one client's data for `config["local_steps"]` steps. With a
    proximal weight mu > 0 (`config["proximal-mu"]`, Flower's FedProx key, or `config["mu"]`) the loss
    gets FedProx's proximal term mu/2 * ||w - w_global||^2."""

    def __init__(self, cid: str, model: torch.nn.Module, data: ClientData, batch_size: int = 64, seed: int = 0):
        self.cid, self.model, self.data, self.seed = cid, model, data, seed
        self.batch_size = min(batch_size, len(data))
        self.rng = np.random.default_rng([seed, self.number])
        self.augment = v2.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(0.85, 1.15))
        self.optimizer: torch.optim.Optimizer | None = None

    @property
    def number(self) -> int:
        return int(self.cid) if self.cid.isdigit() else len(self.cid)

    def fit(self, parameters: Parameters, config: dict) -> tuple[Parameters, int, dict]:
        set_parameters(self.model, parameters)  # in place: a kept optimizer still holds these tensors
        global_weights = [p.detach().clone() for p in self.model.parameters()]
        optimizer = self.optimizer_for(config)
        self.model.train()
        self.rng = np.random.default_rng([self.seed, self.number, config["round"]])  # no state across rounds
        steps, mu, losses = config["local_steps"], config.get("proximal-mu", config.get("mu", 0.0)), []
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
        trained = MODES if self.data.mode == "pairs" else (self.data.mode,)
        metrics = {"loss": float(np.mean(losses)), **{f"trained-{t}": float(t in trained) for t in MODES}}
        return get_parameters(self.model), len(self.data), metrics

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


# -- the Flower ClientApp -----------------------------------------------------------------------


def client_app(make_client: Callable[[int], AlignedClient]) -> ClientApp:
    """A Flower `ClientApp` whose train handler fits `make_client(partition_id)` to the global state.

    `make_client` travels to the simulation's workers (Ray actors) with every message, so it should
    be small and picklable and load its data there (see `federated_shapes.ShapesClients`)."""
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        client = make_client(int(context.node_config["partition-id"]))
        config = dict(msg.content["config"])
        config["round"] = int(config["server-round"]) - 1  # Flower counts rounds from 1
        if config.get("keep_optimizer") and "optimizer" in context.state:
            client.optimizer = restore_optimizer(client, config, context.state["optimizer"])
        parameters, n, metrics = client.fit(msg.content["arrays"].to_numpy_ndarrays(), config)
        if config.get("keep_optimizer"):
            context.state["optimizer"] = optimizer_record(client.optimizer)
        names = msg.content["arrays"].keys()
        reply = RecordDict({"arrays": ArrayRecord(dict(zip(names, map(torch.from_numpy, parameters)))),
                            "metrics": MetricRecord({**metrics, "num-examples": n})})
        return Message(reply, reply_to=msg)

    return app


def optimizer_record(optimizer: torch.optim.Optimizer) -> ArrayRecord:
    """AdamW's per-parameter state (step, moments) as one flat ArrayRecord, for `Context.state`."""
    state = optimizer.state_dict()["state"]
    return ArrayRecord({f"{i}.{k}": torch.as_tensor(v) for i, s in state.items() for k, v in s.items()})


def restore_optimizer(client: AlignedClient, config: dict, record: ArrayRecord) -> torch.optim.Optimizer:
    optimizer = build_optimizer(client.model, config["lr"], config.get("weight_decay", 0.1))
    state: dict[int, dict] = {}
    for key, value in record.to_torch_state_dict().items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
    return optimizer
