"""Classical alignment: the CCA family (linear, kernel, deep) behind one scikit-learn-style
interface, the features it aligns, and the encoder that puts a fitted CCA behind polymodal's
common model interface (`polymodal eval`, `polymodal index build`)."""

from .cca import CCAEstimator, KernelCCA, LinearCCA, canonical_correlations
from .deep import DeepCCA

__all__ = ["CCAEstimator", "DeepCCA", "KernelCCA", "LinearCCA", "canonical_correlations"]
