"""A federated experiment on an image-caption dataset: split its training split among clients
(IID, or skewed by class), give each client a modality mix, run FedAvg, FedAvgM, FedProx or
FedAdam, and train the same model centrally on the union of the data at equal rounds for comparison.

Centralised training is the same simulation with one client that holds every pair and draws
batches as large as all federated clients' together (batch size x clients), for as many steps per
round as one client takes: equal data, equal rounds, equal sequential steps, equal examples seen
and the same learning-rate schedule (FedAvg on IID data with one local step is
exactly this). The tokenizer is built once from every training caption (a shared vocabulary, as
federated language models assume).

Both run on Flower's simulation engine (`federated_server.run_simulation`). The clients' data does
not travel with the messages: each simulation worker loads the training split once from the dataset
directory (`ShapesClients`, cached per process as Flower's examples cache their partitions) and
takes its client's rows by the node's `partition-id`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from flwr.app import ArrayRecord

from ..data.formats import load_records
from ..data.pairs import ImageTextPairs
from ..data.schema import DataError
from ..evaluate.retrieval import retrieval_metrics
from ..evaluate.run import caption_table
from ..evaluate.zeroshot import attribute_zero_shot
from ..models.factory import create_model
from ..utils import seed_everything
from .federated import MODES, AlignedClient, ClientData, client_app
from .federated_server import STRATEGIES, make_strategy, run_simulation


@dataclass
class FederatedConfig:
    data: str  # dataset directory (its "train" split is shared out, "test" evaluates)
    model: str = "shapes-cnn-tiny"
    # FedAvgM (FedAvg + server momentum 0.5) by default: on 8 label-skewed ShapesWorld clients it reaches
    # 0.93 of centralised R@1 where plain FedAvg reaches 0.72 (benchmarks/README.md, issue 17).
    strategy: str = "fedavgm"  # fedavg, fedprox, fedavgm (server momentum) or fedadam (server Adam)
    clients: int = 8
    rounds: int = 10
    local_steps: int = 10  # optimizer steps per client per round
    batch_size: int = 64
    lr: float = 2e-3
    mu: float = 0.01  # FedProx's proximal weight
    partition: str = "label-skew"  # "iid", or "label-skew": each client holds about two classes
    label: str = "shape"  # the attribute that skews the partition (ShapesWorld: of the first object)
    modalities: str = "pairs"  # comma-separated, cycled over the clients: pairs, image, text
    train_limit: int | None = None  # use only the first N training items
    test_limit: int | None = 1000
    seed: int = 0
    progress: bool = True
    # After the rest: the command line passes the fields above by position.
    server_momentum: float = 0.5  # FedAvgM's beta (0.9 with server lr 1 diverged there)
    server_lr: float | None = None  # FedAvgM's (default 1) or FedAdam's (default 1e-2) step on the mean update
    keep_optimizer: bool = False  # each client (and the centralised baseline) keeps its AdamW across rounds


def item_label(record, attribute: str) -> str:
    """The record's class for a label-skewed split: its `labels`, else its first object's attribute."""
    if record.labels is not None:
        return str(record.labels)
    objects = record.attributes.get("objects") or [{}]
    return str(objects[0].get(attribute, "?"))


def partition(labels: np.ndarray, clients: int, scheme: str, seed: int) -> list[np.ndarray]:
    """Indices of each client. "iid": a random equal split; "label-skew": McMahan et al.'s shards,
    the items sorted by label and cut into 2 x clients shards, two random shards per client."""
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        return np.array_split(rng.permutation(len(labels)), clients)
    if scheme != "label-skew":
        raise ValueError(f"unknown partition '{scheme}' (iid or label-skew)")
    order = np.argsort(labels, kind="stable")
    shards = np.array_split(order, 2 * clients)
    picks = rng.permutation(2 * clients).reshape(clients, 2)
    return [np.concatenate([shards[a], shards[b]]) for a, b in picks]


def client_modes(spec: str, clients: int) -> list[str]:
    modes = [m.strip() for m in spec.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"--modalities '{spec}': a comma-separated list of {', '.join(MODES)}")
    return [modes[i % len(modes)] for i in range(clients)]


def client_data(pairs: ImageTextPairs, rows: np.ndarray, mode: str) -> ClientData:
    images = pairs.images[torch.as_tensor(rows)] if mode in ("pairs", "image") else None
    captions = [pairs.records[i].text for i in rows] if mode in ("pairs", "text") else None
    return ClientData(images, captions)


class Evaluator:
    """Retrieval R@1 both ways and attribute zero-shot accuracy of the global model on the test split."""

    def __init__(self, model, pairs: ImageTextPairs):
        self.model, self.pairs = model, pairs
        self.texts, self.owner = caption_table(pairs.records)
        self.task = pairs.kind.attribute_task(pairs.records)

    def __call__(self, server_round: int, arrays: ArrayRecord) -> dict:
        self.model.load_state_dict(arrays.to_torch_state_dict())
        image_emb = self.model.encode_image(self.pairs.images)  # (N, E)
        text_emb = self.model.encode_text(self.texts)  # (C, E)
        r = retrieval_metrics(image_emb, text_emb, self.owner, self.pairs.records, self.pairs.kind)
        out = {"t2i_R@1": r["text_to_image"]["R@1"], "i2t_R@1": r["image_to_text"]["R@1"]}
        if self.task is not None and self.task.images:
            zs = attribute_zero_shot(self.model, image_emb, self.task)["mean_ensemble"]
            out.update({f"zeroshot_{a}": zs[a] for a in ("shape", "colour") if a in zs})
        return out


def load_split(data: str, split: str, limit: int | None, image_size: int, progress: bool) -> ImageTextPairs:
    records = load_records(data).split(split)
    if not len(records):
        raise DataError(f"{data}: needs a 'train' and a 'test' split (has no '{split}')")
    records.records = records.records[:limit]
    return ImageTextPairs(records, image_size, progress=progress)


_LOADED: dict[tuple, tuple] = {}  # this process's (model, training pairs), by ShapesClients.source


@dataclass
class ShapesClients:
    """Makes client `i` of a federation inside a simulation worker: small and picklable (it travels
    with every message); the training split and a model are loaded once per worker process."""

    data: str
    model: str
    train_limit: int | None
    image_size: int
    shares: list[np.ndarray]  # each client's training rows
    modes: list[str]
    batch_size: int
    seed: int

    @property
    def source(self) -> tuple:
        return self.data, self.model, self.train_limit, self.image_size

    def __call__(self, i: int) -> AlignedClient:
        if self.source not in _LOADED:
            train = load_split(self.data, "train", self.train_limit, self.image_size, progress=False)
            _LOADED[self.source] = create_model(self.model, texts=(t for r in train.records for t in r.text)), train
        model, train = _LOADED[self.source]
        return AlignedClient(str(i), model, client_data(train, self.shares[i], self.modes[i]), self.batch_size,
                             self.seed)


def run_federated(cfg: FederatedConfig, centralised: bool = True) -> dict:
    """Train federated (and, with `centralised`, centrally at equal rounds and data); returns the
    config, the per-round history of each and the final metrics."""
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy '{cfg.strategy}' ({', '.join(STRATEGIES)})")
    modes = client_modes(cfg.modalities, cfg.clients)
    seed_everything(cfg.seed)
    image_size = create_model(cfg.model, texts=["a"]).config.image.image_size
    train = load_split(cfg.data, "train", cfg.train_limit, image_size, cfg.progress)
    test = load_split(cfg.data, "test", cfg.test_limit, image_size, cfg.progress)
    model = create_model(cfg.model, texts=(t for r in train.records for t in r.text))
    model.eval()  # encode_image restores the mode it finds
    initial = ArrayRecord(model.state_dict())
    labels = np.array([item_label(r, cfg.label) for r in train.records])
    shares = partition(labels, cfg.clients, cfg.partition, cfg.seed)
    if min(len(s) for s in shares) < 2:
        raise DataError(f"{cfg.data}: {len(train)} training items are too few for {cfg.clients} clients")
    clients = ShapesClients(cfg.data, cfg.model, cfg.train_limit, image_size, shares, modes, cfg.batch_size, cfg.seed)
    evaluate = Evaluator(model, test)
    out = {"config": asdict(cfg), "clients": [{"mode": m, "items": len(s), "classes": int(len(set(labels[s])))}
                                              for m, s in zip(modes, shares)]}
    config = {"rounds": cfg.rounds, "local_steps": cfg.local_steps, "lr": cfg.lr, "keep_optimizer": cfg.keep_optimizer}
    strategy = make_strategy(cfg.strategy, cfg.clients, **strategy_options(cfg))
    out["federated"] = _timed(lambda: run_simulation(client_app(clients), cfg.clients, initial, strategy, cfg.rounds,
                                                     config, evaluate, cfg.progress))
    if centralised:
        everyone = replace(clients, shares=[np.arange(len(train))], modes=["pairs"],
                           batch_size=cfg.batch_size * cfg.clients)
        out["centralised"] = _timed(lambda: run_simulation(client_app(everyone), 1, initial, make_strategy("fedavg", 1),
                                                           cfg.rounds, config, evaluate, cfg.progress))
        fed, cen = out["federated"]["final"], out["centralised"]["final"]
        out["ratio_t2i_R@1"] = fed["t2i_R@1"] / max(cen["t2i_R@1"], 1e-9)
        out["ratio_i2t_R@1"] = fed["i2t_R@1"] / max(cen["i2t_R@1"], 1e-9)
    return out


def strategy_options(cfg: FederatedConfig) -> dict:
    """The chosen strategy's own settings from the config, under Flower's names."""
    options = {}
    if cfg.strategy == "fedprox":
        options["proximal_mu"] = cfg.mu
    if cfg.strategy == "fedavgm":
        options["server_momentum"] = cfg.server_momentum
        options["server_learning_rate"] = 1.0 if cfg.server_lr is None else cfg.server_lr
    if cfg.strategy == "fedadam":
        options["eta"] = 1e-2 if cfg.server_lr is None else cfg.server_lr
    return options


def _timed(run) -> dict:
    start = time.perf_counter()
    _, history = run()
    return {"seconds": time.perf_counter() - start, "rounds": history.rounds, "final": history.rounds[-1]}
