"""Deep CCA (Andrew et al. 2013): two MLP towers trained so that their outputs are maximally
correlated, then a linear CCA on those outputs gives the canonical space.

The objective is written here in torch because it has to be differentiable, and cca-zoo's deep
models need PyTorch Lightning, which polymodal does not use; the towers train in polymodal's
`StepLoop` (warm-up + cosine schedule on steps or a time budget, rich progress bar).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...train.engine import StepLoop, TrainingProgress
from ...train.optim import build_optimizer, clip_and_step
from ...utils import pick_device
from .cca import CCAEstimator, LinearCCA, Standardizer, as_views


def total_correlation(h1: torch.Tensor, h2: torch.Tensor, k: int | None = None, eps: float = 1e-3) -> torch.Tensor:
    """Sum of the top `k` canonical correlations of two batches of outputs (B, O) and (B, O):
    the singular values of S11^-1/2 S12 S22^-1/2, each covariance ridged by `eps` (computed in
    float64: the inverse square roots are badly conditioned in float32)."""
    h1, h2 = h1.double(), h2.double()
    n = h1.shape[0]
    h1, h2 = h1 - h1.mean(0), h2 - h2.mean(0)
    s11 = h1.T @ h1 / (n - 1) + eps * torch.eye(h1.shape[1], dtype=h1.dtype, device=h1.device)  # (O, O)
    s22 = h2.T @ h2 / (n - 1) + eps * torch.eye(h2.shape[1], dtype=h2.dtype, device=h2.device)
    s12 = h1.T @ h2 / (n - 1)
    t = _inverse_sqrt(s11, eps) @ s12 @ _inverse_sqrt(s22, eps)
    return torch.linalg.svdvals(t)[:k].sum()


def _inverse_sqrt(s: torch.Tensor, eps: float) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(s)
    return vectors @ torch.diag(values.clamp_min(eps).rsqrt()) @ vectors.T


def mlp(in_dim: int, hidden: int, layers: int, out_dim: int) -> nn.Sequential:
    dims = [in_dim] + [hidden] * layers
    blocks: list[nn.Module] = []
    for a, b in zip(dims, dims[1:]):
        blocks += [nn.Linear(a, b), nn.GELU()]
    return nn.Sequential(*blocks, nn.Linear(dims[-1], out_dim))


class DeepCCANet(nn.Module):
    def __init__(self, in_x: int, in_y: int, hidden: int, layers: int, out_dim: int):
        super().__init__()
        self.tower_x = mlp(in_x, hidden, layers, out_dim)
        self.tower_y = mlp(in_y, hidden, layers, out_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tower_x(x), self.tower_y(y)  # (B, O), (B, O)


class DeepCCA(CCAEstimator):
    """Two MLP towers (`layers` hidden layers of `hidden` units, `out_dim` outputs, default `dim`)
    trained for `steps` on batches of `batch_size` pairs to maximise their total correlation;
    then a linear CCA (ridge `reg`) of the towers' outputs. `history_` holds the mean canonical
    correlation of each training batch."""

    method = "deep"

    def __init__(self, dim: int = 16, hidden: int = 256, layers: int = 2, out_dim: int | None = None,
                 steps: int = 500, batch_size: int = 512, lr: float = 1e-3, weight_decay: float = 1e-4,
                 eps: float = 1e-3, reg: float = 1e-3, seed: int = 0, device: str = "auto",
                 in_x: int | None = None, in_y: int | None = None, progress: bool = True):
        self.dim, self.hidden, self.layers, self.out_dim = int(dim), int(hidden), int(layers), int(out_dim or dim)
        if self.out_dim < self.dim:
            raise ValueError(f"deep CCA's towers need at least dim ({self.dim}) outputs, got out_dim {self.out_dim}")
        self.steps, self.batch_size, self.lr, self.weight_decay = int(steps), int(batch_size), lr, weight_decay
        self.eps, self.reg, self.seed, self.device = eps, reg, int(seed), device
        self.in_x, self.in_y, self.progress = in_x, in_y, progress

    def params(self) -> dict:
        keys = ("dim", "hidden", "layers", "out_dim", "steps", "batch_size", "lr", "weight_decay", "eps", "reg",
                "seed", "in_x", "in_y")
        return {k: getattr(self, k) for k in keys}

    def fit(self, X, Y, time_budget: float | None = None) -> DeepCCA:
        X, Y = as_views(X, Y)
        if len(X) <= 2 * self.out_dim:
            raise ValueError(f"deep CCA needs more than {2 * self.out_dim} pairs for {self.out_dim} outputs, "
                             f"got {len(X)}")
        torch.manual_seed(self.seed)
        self.in_x, self.in_y = X.shape[1], Y.shape[1]
        self.scalers = [Standardizer().fit(X), Standardizer().fit(Y)]
        self.net = DeepCCANet(self.in_x, self.in_y, self.hidden, self.layers, self.out_dim)
        self.history_ = self._train(self.scalers[0](X), self.scalers[1](Y), time_budget)
        self.linear = LinearCCA(self.dim, self.reg).fit(*self._outputs(X, Y))
        self.correlations_ = self.linear.correlations_
        return self

    def _train(self, X: np.ndarray, Y: np.ndarray, time_budget: float | None) -> list[float]:
        device = pick_device(self.device)
        net = self.net.to(device)
        x = torch.as_tensor(X, dtype=torch.float32, device=device)  # (N, Dx)
        y = torch.as_tensor(Y, dtype=torch.float32, device=device)  # (N, Dy)
        batch = min(self.batch_size, len(x))
        optimizer = build_optimizer(net, self.lr, self.weight_decay)
        loop = StepLoop(net, optimizer, TrainingProgress(self.steps, time_budget), self.lr, warmup=0.05,
                        show=self.progress)
        order = torch.Generator().manual_seed(self.seed)
        history: list[float] = []

        def epoch_batches(epoch: int):
            perm = torch.randperm(len(x), generator=order)
            for start in range(0, len(x) - batch + 1, batch):  # full batches only: a covariance needs rows
                yield perm[start:start + batch].to(device)

        def train_step(rows: torch.Tensor) -> dict[str, float]:
            optimizer.zero_grad(set_to_none=True)
            mean_corr = total_correlation(*net(x[rows], y[rows]), self.out_dim, self.eps) / self.out_dim
            (-mean_corr).backward()
            clip_and_step(net, optimizer, 5.0)
            history.append(float(mean_corr.detach()))
            return {"corr": history[-1]}

        loop.run(epoch_batches, train_step, lambda losses: f"deep CCA: mean correlation {losses['corr']:.3f}")
        self.net = net.cpu().eval()
        return history

    @torch.no_grad()
    def _outputs(self, X: np.ndarray | None, Y: np.ndarray | None, chunk: int = 4096):
        """Raw views -> the towers' (N, O) outputs (float64 numpy), None for a view not given."""
        self.net.eval()
        out = []
        for view, scaler, tower in ((X, self.scalers[0], self.net.tower_x), (Y, self.scalers[1], self.net.tower_y)):
            if view is None:
                out.append(None)
                continue
            v = torch.as_tensor(scaler(view), dtype=torch.float32)
            out.append(torch.cat([tower(v[i:i + chunk]) for i in range(0, len(v), chunk)]).double().numpy())
        return out

    def transform_x(self, X: np.ndarray) -> np.ndarray:
        return self.linear.transform_x(self._outputs(X, None)[0])

    def transform_y(self, Y: np.ndarray) -> np.ndarray:
        return self.linear.transform_y(self._outputs(None, Y)[1])

    def _arrays(self) -> dict[str, np.ndarray]:
        out = {f"linear.{k}": v for k, v in self.linear._arrays().items()}
        out.update({f"net.{k}": v.detach().cpu().numpy() for k, v in self.net.state_dict().items()})
        for side, s in zip("xy", self.scalers):
            out.update({f"{side}.mean": s.mean, f"{side}.scale": s.scale})
        return out

    def _restore(self, a: dict[str, np.ndarray]) -> None:
        self.linear = LinearCCA(self.dim, self.reg)
        self.linear._restore({k.removeprefix("linear."): v for k, v in a.items() if k.startswith("linear.")})
        self.correlations_ = self.linear.correlations_
        self.net = DeepCCANet(self.in_x, self.in_y, self.hidden, self.layers, self.out_dim)
        self.net.load_state_dict({k.removeprefix("net."): torch.from_numpy(v) for k, v in a.items()
                                  if k.startswith("net.")})
        self.net.eval()
        self.scalers = [Standardizer(a["x.mean"], a["x.scale"]), Standardizer(a["y.mean"], a["y.scale"])]
