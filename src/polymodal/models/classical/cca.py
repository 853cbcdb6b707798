"""Linear and kernel CCA behind one scikit-learn-style interface.

    cca = LinearCCA(dim=16, reg=0.1).fit(X, Y)      # X (N, Dx), Y (N, Dy)
    zx, zy = cca.transform(X, Y)                      # (N, 16) canonical variates each
    cca.score(X, Y)                                   # (16,) canonical correlations
    cca.save("runs/cca"); LinearCCA.load("runs/cca")  # cca.json + cca.safetensors

The fit is cca-zoo's `RidgeCCA` (canonical ridge: each view's covariance shrunk towards the
identity by `reg`); kernel CCA maps each view through scikit-learn's Nystroem approximation of an
RBF kernel first, so it costs O(N m^2) for m landmarks instead of the O(N^3) of exact kernel CCA.
A fitted model keeps only the arrays of its projection, so loading needs neither library's object.
"""

from __future__ import annotations

import abc
import json
from pathlib import Path
from typing import ClassVar

import numpy as np
from safetensors.numpy import load_file, save_file

from ...errors import CheckpointError
from ...utils import atomic_path, write_json

ESTIMATOR_JSON, ESTIMATOR_WEIGHTS = "cca.json", "cca.safetensors"


def canonical_correlations(zx: np.ndarray, zy: np.ndarray) -> np.ndarray:
    """(N, K) and (N, K) paired variates -> (K,) Pearson correlation of each pair of columns."""
    zx, zy = zx - zx.mean(0), zy - zy.mean(0)
    norms = np.linalg.norm(zx, axis=0) * np.linalg.norm(zy, axis=0)
    return (zx * zy).sum(0) / np.maximum(norms, 1e-12)


def floating(V) -> np.ndarray:
    """float32 stays float32 (half the time of the large products: kernel CCA's features); the
    rest becomes float64."""
    V = np.asarray(V)
    return V if V.dtype == np.float32 else V.astype(np.float64)


def as_views(X, Y) -> tuple[np.ndarray, np.ndarray]:
    X, Y = floating(X), floating(Y)
    if X.ndim != 2 or Y.ndim != 2:
        raise ValueError(f"CCA takes two 2-D views (samples, features), got shapes {X.shape} and {Y.shape}")
    if len(X) != len(Y):
        raise ValueError(f"the two views must pair up sample for sample: {len(X)} rows against {len(Y)}")
    if not (np.isfinite(X).all() and np.isfinite(Y).all()):
        raise ValueError("CCA views contain NaN or infinite values")
    return X, Y


class Standardizer:
    """Each feature to zero mean and unit variance (constant features stay 0): the ridge shrinks
    towards the identity, which only means the same thing for every feature in common units."""

    def __init__(self, mean: np.ndarray | None = None, scale: np.ndarray | None = None):
        self.mean, self.scale = mean, scale

    def fit(self, X: np.ndarray) -> Standardizer:
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(X)
        self.mean, self.scale = scaler.mean_, scaler.scale_
        return self

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mean) / self.scale).astype(X.dtype, copy=False)


class CCAEstimator(abc.ABC):
    """What every CCA shares: `transform`, `score`, save/load. A subclass implements `fit`,
    `transform_x` / `transform_y` (one view to its (N, dim) variates), `params` (its constructor's
    arguments) and `_arrays` / `_restore` (its fitted state)."""

    method: ClassVar[str]
    correlations_: np.ndarray  # (dim,) canonical correlations on the training pairs
    registry: ClassVar[dict[str, type[CCAEstimator]]] = {}  # method -> class, for `load`

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        CCAEstimator.registry[cls.method] = cls

    @abc.abstractmethod
    def params(self) -> dict:
        """The constructor's keyword arguments: `type(self)(**params())` is the same unfitted model."""

    @abc.abstractmethod
    def fit(self, X, Y) -> CCAEstimator:
        """Fit on paired views X (N, Dx) and Y (N, Dy); returns self."""

    @abc.abstractmethod
    def transform_x(self, X: np.ndarray) -> np.ndarray:
        """(N, Dx) -> (N, dim) canonical variates of the first view."""

    @abc.abstractmethod
    def transform_y(self, Y: np.ndarray) -> np.ndarray:
        """(N, Dy) -> (N, dim) canonical variates of the second view."""

    def transform(self, X=None, Y=None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Either view, or both -> their (N, dim) canonical variates (None for a view not given)."""
        return (None if X is None else self.transform_x(floating(X)),
                None if Y is None else self.transform_y(floating(Y)))

    def fit_transform(self, X, Y) -> tuple[np.ndarray, np.ndarray]:
        return self.fit(X, Y).transform(X, Y)

    def score(self, X, Y) -> np.ndarray:
        """(dim,) canonical correlations of the pairs (X, Y), component by component."""
        X, Y = as_views(X, Y)
        return canonical_correlations(*self.transform(X, Y))

    # -- persistence ------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """`cca.json` (method and parameters) + `cca.safetensors` (arrays), each written whole."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        arrays = {k: np.ascontiguousarray(v) for k, v in self._arrays().items()}
        with atomic_path(directory / ESTIMATOR_WEIGHTS) as tmp:
            save_file(arrays, str(tmp))
        write_json(directory / ESTIMATOR_JSON, {"method": self.method, "params": self.params()})
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> CCAEstimator:
        """The estimator saved in `directory`, whatever its method (called on any subclass)."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / ESTIMATOR_JSON).read_text())
            arrays = load_file(str(directory / ESTIMATOR_WEIGHTS))
            estimator = CCAEstimator.registry[meta["method"]](**meta["params"])
            estimator._restore(arrays)
        except FileNotFoundError as err:
            raise CheckpointError(f"{directory}: not a saved CCA ({Path(err.filename).name} is missing)") from None
        except (ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{directory / ESTIMATOR_JSON}: not a valid saved CCA ({err})") from None
        return estimator

    @abc.abstractmethod
    def _arrays(self) -> dict[str, np.ndarray]:
        """The fitted state, as named arrays for safetensors."""

    @abc.abstractmethod
    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        """Set the fitted state from what `_arrays` returned."""


class LinearCCA(CCAEstimator):
    """Regularised linear CCA. `reg` in [0, 1] shrinks each view's covariance towards the identity
    (0: classical CCA, 1: PLS); `standardize` scales every feature to unit variance first."""

    method = "linear"

    def __init__(self, dim: int = 16, reg: float = 0.1, standardize: bool = True):
        if dim < 1:
            raise ValueError(f"CCA needs dim >= 1, got {dim}")
        if not 0.0 <= reg <= 1.0:
            raise ValueError(f"CCA regularisation must lie in [0, 1], got {reg}")
        self.dim, self.reg, self.standardize = int(dim), float(reg), bool(standardize)

    def params(self) -> dict:
        return {"dim": self.dim, "reg": self.reg, "standardize": self.standardize}

    def fit(self, X, Y) -> LinearCCA:
        from cca_zoo.linear import RidgeCCA

        X, Y = as_views(X, Y)
        narrowest = min(X.shape[1], Y.shape[1], len(X) - 1)
        if self.dim > narrowest:
            raise ValueError(f"dim {self.dim} is more canonical components than the data allow: views of "
                             f"{X.shape[1]} and {Y.shape[1]} features, {len(X)} samples (at most {narrowest})")
        self.scalers = [Standardizer().fit(X), Standardizer().fit(Y)] if self.standardize else None
        views = [s(v) for s, v in zip(self.scalers, (X, Y))] if self.scalers else [X, Y]
        model = RidgeCCA(n_components=self.dim, shrinkage=self.reg).fit(views)
        self.means = [np.asarray(m, np.float64) for m in model.means_]  # (Dx,), (Dy,)
        self.weights = [np.asarray(w, np.float64) for w in model.weights_]  # (Dx, k), (Dy, k)
        if self.weights[0].shape[1] < self.dim:
            raise ValueError(f"the views have rank {self.weights[0].shape[1]}, fewer than dim {self.dim}: "
                             "lower --dim or use richer features")
        self.correlations_ = self.score(X, Y)
        return self

    def _project(self, view: int, V: np.ndarray) -> np.ndarray:
        if V.ndim != 2 or V.shape[1] != len(self.means[view]):
            raise ValueError(f"view {'XY'[view]} has {V.shape[-1]} features, the CCA was fitted on "
                             f"{len(self.means[view])}")
        if self.scalers:
            V = self.scalers[view](V)
        return (V - self.means[view]) @ self.weights[view]  # (N, k)

    def transform_x(self, X: np.ndarray) -> np.ndarray:
        return self._project(0, X)

    def transform_y(self, Y: np.ndarray) -> np.ndarray:
        return self._project(1, Y)

    def _arrays(self) -> dict[str, np.ndarray]:
        out = {"mean_x": self.means[0], "mean_y": self.means[1], "weights_x": self.weights[0],
               "weights_y": self.weights[1], "correlations": self.correlations_}
        if self.scalers:
            out.update({"scale_mean_x": self.scalers[0].mean, "scale_x": self.scalers[0].scale,
                        "scale_mean_y": self.scalers[1].mean, "scale_y": self.scalers[1].scale})
        return out

    def _restore(self, a: dict[str, np.ndarray]) -> None:
        self.means, self.weights = [a["mean_x"], a["mean_y"]], [a["weights_x"], a["weights_y"]]
        self.correlations_ = a["correlations"]
        self.scalers = ([Standardizer(a["scale_mean_x"], a["scale_x"]), Standardizer(a["scale_mean_y"], a["scale_y"])]
                        if self.standardize else None)


class NystroemRBF:
    """One view's approximate RBF kernel feature map (scikit-learn's `Nystroem`), with the bandwidth
    set by the median heuristic (gamma = 1 / median squared distance) when not given."""

    def __init__(self, landmarks: int, gamma: float | None = None, seed: int = 0):
        self.landmarks, self.gamma, self.seed = landmarks, gamma, seed

    def fit(self, X: np.ndarray) -> NystroemRBF:
        from sklearn.kernel_approximation import Nystroem

        self.scaler = Standardizer().fit(X)
        Xs = self.scaler(X)
        if self.gamma is None:
            self.gamma = median_gamma(Xs, self.seed)
        m = min(self.landmarks, len(X))
        nystroem = Nystroem(kernel="rbf", gamma=self.gamma, n_components=m, random_state=self.seed).fit(Xs)
        self.components, self.normalization = nystroem.components_, nystroem.normalization_  # (m, D), (m, m)
        return self

    def __call__(self, X: np.ndarray) -> np.ndarray:
        from sklearn.metrics.pairwise import rbf_kernel

        # Nystroem.transform on the saved state (loading keeps arrays, not a pickled estimator),
        # in float32: the (N, m) x (m, m) product is most of a kernel CCA's fit.
        kernel = rbf_kernel(self.scaler(X), self.components, gamma=self.gamma).astype(np.float32)  # (N, m)
        return kernel @ self.normalization.T.astype(np.float32)  # (N, m)


def median_gamma(X: np.ndarray, seed: int = 0, sample: int = 1000) -> float:
    """1 / the median squared distance between sampled rows: a bandwidth at the data's own scale."""
    from sklearn.metrics.pairwise import euclidean_distances

    rows = np.random.default_rng(seed).permutation(len(X))[:sample]
    d2 = euclidean_distances(X[rows], squared=True)
    median = float(np.median(d2[np.triu_indices(len(rows), 1)])) if len(rows) > 1 else 1.0
    return 1.0 / max(median, 1e-12)


class KernelCCA(CCAEstimator):
    """Kernel CCA with an RBF kernel per view, approximated by `landmarks` Nystroem features, then
    regularised linear CCA on those features. `gamma_x` / `gamma_y`: None picks them from the data."""

    method = "kernel"

    def __init__(self, dim: int = 16, reg: float = 0.1, landmarks: int = 500, gamma_x: float | None = None,
                 gamma_y: float | None = None, seed: int = 0):
        self.linear = LinearCCA(dim, reg)
        self.dim, self.reg, self.landmarks, self.seed = int(dim), float(reg), int(landmarks), int(seed)
        self.gamma_x, self.gamma_y = gamma_x, gamma_y

    def params(self) -> dict:
        return {"dim": self.dim, "reg": self.reg, "landmarks": self.landmarks, "gamma_x": self.gamma_x,
                "gamma_y": self.gamma_y, "seed": self.seed}

    def fit(self, X, Y) -> KernelCCA:
        X, Y = as_views(X, Y)
        self.maps = [NystroemRBF(self.landmarks, self.gamma_x, self.seed).fit(X),
                     NystroemRBF(self.landmarks, self.gamma_y, self.seed + 1).fit(Y)]
        self.gamma_x, self.gamma_y = self.maps[0].gamma, self.maps[1].gamma
        self.linear.fit(self.maps[0](X), self.maps[1](Y))
        self.correlations_ = self.linear.correlations_
        return self

    def transform_x(self, X: np.ndarray) -> np.ndarray:
        return self.linear.transform_x(self.maps[0](X))

    def transform_y(self, Y: np.ndarray) -> np.ndarray:
        return self.linear.transform_y(self.maps[1](Y))

    def _arrays(self) -> dict[str, np.ndarray]:
        out = {f"linear.{k}": v for k, v in self.linear._arrays().items()}
        for side, m in zip("xy", self.maps):
            out.update({f"{side}.components": m.components, f"{side}.normalization": m.normalization,
                        f"{side}.mean": m.scaler.mean, f"{side}.scale": m.scaler.scale})
        return out

    def _restore(self, a: dict[str, np.ndarray]) -> None:
        self.linear._restore({k.removeprefix("linear."): v for k, v in a.items() if k.startswith("linear.")})
        self.correlations_ = self.linear.correlations_
        self.maps = []
        for side, gamma in zip("xy", (self.gamma_x, self.gamma_y)):
            m = NystroemRBF(self.landmarks, gamma, self.seed)
            m.scaler = Standardizer(a[f"{side}.mean"], a[f"{side}.scale"])
            m.components, m.normalization = a[f"{side}.components"], a[f"{side}.normalization"]
            self.maps.append(m)

