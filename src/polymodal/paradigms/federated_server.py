"""Federated training of an aligned model on Flower (`flwr`): the server side. Flower's strategies
(FedAvg, FedProx, FedAvgM, FedAdam from `flwr.serverapp.strategy`) with polymodal's per-tower
aggregation, and `run_simulation`, which runs a `ServerApp` against a `ClientApp` on Flower's
simulation engine (Ray actors on this machine) and returns the global state and a per-round history.

Per-tower aggregation: each state entry (a model's `state_dict` key) is averaged, weighted by the
clients' example counts, over the clients that trained its tower this round (`trained-image`,
`trained-text`, `trained-pairs` in their metrics); an entry no client trained stays. The server
step then turns that mean into the new value: FedAvg takes it, FedAvgM applies mean - current
with momentum, FedAdam with Adam. BatchNorm statistics are plainly averaged and integer buffers
rounded. Flower's own aggregation averages every entry over every client, which would pull an
image-only client's untrained (stale) text tower into the global text tower.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp, strategy as flower
from flwr.simulation import run_simulation as flower_simulation

from ..utils import progress_bar
from .federated import tower_of


class TowerAveraging:
    """Mixed into a Flower strategy: aggregate_train averages each entry over the clients that
    trained its tower, then applies the strategy's `server_step`."""

    current: ArrayRecord | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.current = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, failed = self._check_and_log_replies(replies, is_train=True)
        if failed:  # Flower would go on with the clients that answered; a failed client is a bug here
            raise RuntimeError(f"round {server_round}: a client failed: {failed[0].error.reason}")
        return self.aggregate_records([m.content for m in valid]) if valid else (None, None)

    def aggregate_records(self, contents: list[RecordDict]) -> tuple[ArrayRecord, MetricRecord]:
        """The new global state and the round's metrics from the replies' contents."""
        return tower_mean(contents, self.current, self.server_step), mean_metrics(contents)

    def server_step(self, name: str, current: np.ndarray, mean: np.ndarray) -> np.ndarray:
        """The new value of an entry from its current value and the clients' mean: FedAvg takes the mean."""
        return mean


def tower_mean(contents: list[RecordDict], current: ArrayRecord,
               server_step: Callable[[str, np.ndarray, np.ndarray], np.ndarray]) -> ArrayRecord:
    """Each entry's example-weighted mean over the replies whose client trained its tower."""
    metrics = [next(iter(c.metric_records.values())) for c in contents]
    arrays = [next(iter(c.array_records.values())) for c in contents]
    out = {}
    for name, now in current.items():
        now = now.numpy()
        tower = f"trained-{tower_of(name)}"
        mine = [(m["num-examples"], a) for m, a in zip(metrics, arrays) if m.get(tower, 1.0) > 0]
        if not mine:  # no client trained it this round: it stays
            out[name] = Array(now)
            continue
        weights = np.array([n for n, _ in mine], dtype=np.float64)
        mean = sum(w * a[name].numpy().astype(np.float64) for w, (_, a) in zip(weights / weights.sum(), mine))
        if now.dtype.kind == "f" and "running_" not in name:  # weights, not BatchNorm statistics
            mean = server_step(name, now.astype(np.float64), mean)
        out[name] = Array(np.asarray(np.rint(mean) if now.dtype.kind in "iu" else mean, dtype=now.dtype))
    return ArrayRecord(out)


def mean_metrics(contents: list[RecordDict]) -> MetricRecord:
    """The clients' mean training loss (unweighted: each client's loss counts once)."""
    losses = [next(iter(c.metric_records.values()))["loss"] for c in contents]
    return MetricRecord({"loss": float(np.mean(losses))})


class FedAvg(TowerAveraging, flower.FedAvg):
    """McMahan et al. (2017): the global model is the mean of the clients' models weighted by
    their example counts (here per tower)."""


class FedProx(TowerAveraging, flower.FedProx):
    """Li et al. (2020): FedAvg whose clients add mu/2 * ||w - w_global||^2 to their loss (Flower
    sends mu as `proximal-mu`), which keeps each client's drift on its skewed data in check."""


class FedAvgM(TowerAveraging, flower.FedAvgM):
    """Hsu et al. (2019): the server treats mean - current as a step and applies it with momentum,
    v = beta v + delta, w += server_lr v, which smooths the clients' skewed, changing directions.
    Momentum 0 and server lr 1 is FedAvg."""

    def __init__(self, **options):
        super().__init__(**options)
        self.velocity: dict[str, np.ndarray] = {}

    def server_step(self, name: str, current: np.ndarray, mean: np.ndarray) -> np.ndarray:
        self.velocity[name] = self.server_momentum * self.velocity.get(name, 0.0) + (mean - current)
        return current + self.server_learning_rate * self.velocity[name]


class FedAdam(TowerAveraging, flower.FedAdam):
    """Reddi et al. (2021): the server applies Adam to the pseudo-gradient mean - current, so each
    weight moves by about eta (the server lr) a round whatever the clients' scale (tau: Adam's epsilon)."""

    def __init__(self, **options):
        super().__init__(**options)
        self.moments: dict[str, tuple] = {}

    def server_step(self, name: str, current: np.ndarray, mean: np.ndarray) -> np.ndarray:
        delta, (m, v) = mean - current, self.moments.get(name, (0.0, 0.0))
        m, v = self.beta_1 * m + (1 - self.beta_1) * delta, self.beta_2 * v + (1 - self.beta_2) * delta**2
        self.moments[name] = (m, v)
        return current + self.eta * m / (np.sqrt(v) + self.tau)


STRATEGIES = {"fedavg": FedAvg, "fedprox": FedProx, "fedavgm": FedAvgM, "fedadam": FedAdam}


def make_strategy(name: str, clients: int, **options) -> TowerAveraging:
    """A strategy that trains every one of `clients` clients each round, without client-side evaluation.
    options: FedProx's proximal_mu, FedAvgM's server_momentum and server_learning_rate, FedAdam's eta."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy '{name}' ({', '.join(STRATEGIES)})")
    with quiet_flower():  # Flower warns that fraction_evaluate=0 skips client-side evaluation
        return STRATEGIES[name](fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=clients,
                                min_available_nodes=clients, **options)


# -- the simulation driver ----------------------------------------------------------------------


@dataclass
class History:
    """Per round: the clients' mean training loss and whatever `evaluate_fn` measured."""

    rounds: list[dict] = field(default_factory=list)


def run_simulation(client: ClientApp, num_clients: int, initial: ArrayRecord, strategy: TowerAveraging,
                   rounds: int, train_config: dict, evaluate_fn: Callable[[int, ArrayRecord], dict] | None = None,
                   progress: bool = True, cpus: int | None = None) -> tuple[ArrayRecord, History]:
    """Run `rounds` rounds of `strategy` over `num_clients` simulated clients on Flower's simulation
    engine, one Ray actor per CPU (`cpus`, default: the CPUs this process may use). `train_config`
    goes to every client each round (Flower adds `server-round`); `evaluate_fn(round, arrays)`
    scores the global model after each round on the server."""
    history, final = History(), {}
    cpus = cpus or len(os.sched_getaffinity(0))
    with progress_bar(progress) as bar:
        task = bar.add_task("federated rounds", total=rounds)

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            if server_round == 0 or evaluate_fn is None:  # Flower also scores the initial model
                return None
            bar.advance(task)
            return MetricRecord(evaluate_fn(server_round, arrays))

        server = ServerApp()

        @server.main()
        def main(grid: Grid, context: Context) -> None:
            final["result"] = strategy.start(grid, initial, rounds, train_config=ConfigRecord(train_config),
                                             evaluate_fn=evaluate)

        with quiet_flower():
            flower_simulation(server, client, num_clients, backend_config={
                "init_args": {"num_cpus": cpus, "logging_level": "ERROR", "log_to_driver": False},
                "client_resources": {"num_cpus": 1, "num_gpus": 0}})
    if "result" not in final:
        raise RuntimeError("the Flower simulation ended without a result (see the log above)")
    result = final["result"]
    for r in range(1, rounds + 1):
        row = {"round": r, "loss": float(result.train_metrics_clientapp[r]["loss"])}
        row.update(dict(result.evaluate_metrics_serverapp.get(r, {})))
        history.rounds.append(row)
    return result.arrays, history


@contextmanager
def quiet_flower() -> Iterator[None]:
    """Flower logs every round at INFO (and warns that its Python `run_simulation` is deprecated in
    favour of `flwr run`, and Ray about a future default); polymodal shows a progress bar instead
    and keeps Flower's errors."""
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)
