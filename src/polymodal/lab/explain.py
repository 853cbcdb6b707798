"""Where does the model look? The attention of one question over the image, as a heat-map PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..modalities.image_files import load_image
from ..utils import atomic_path


def read_image(path: str | Path, size: int) -> torch.Tensor:
    """(1, 3, size, size) uint8; a clear DataError (from `load_image`) for any unreadable file."""
    im = load_image(path).resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None]


@torch.no_grad()
def ask(model, images: torch.Tensor, questions: list[str]) -> dict:
    """Answer every question about one image (1, 3, H, W): answers, probabilities, attention (Q, hops, N)."""
    model.eval()
    if not questions or not all(q.strip() for q in questions):
        raise ValueError("empty question")
    ids = model.vocab(questions)[None]  # (1, Q, L)
    out = model(images, ids)
    probs = out["logits"][0].softmax(-1)  # (Q, A)
    best = probs.argmax(-1)
    return {"answers": [model.answers[i] for i in best.tolist()],
            "probabilities": probs.max(-1).values.tolist(),
            "attention": out["attention"][0] if "attention" in out else None}


def attention_figure(image: torch.Tensor, attention: torch.Tensor, title: str):
    """The image, then the image overlaid with each hop's attention grid (hops, N) (upsampled, no
    smoothing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hops = attention.reshape(-1, attention.shape[-1])  # (hops, N)
    grid = int(round(hops.shape[1] ** 0.5))
    img = image[0].permute(1, 2, 0).numpy()
    size = img.shape[0]
    fig, axes = plt.subplots(1, 1 + len(hops), figsize=(3.2 * (1 + len(hops)), 3.6))
    for ax in axes:
        ax.imshow(img, interpolation="nearest")
        ax.axis("off")
    for i, (ax, weights) in enumerate(zip(axes[1:], hops)):
        heat = weights.reshape(grid, grid).numpy()
        shown = ax.imshow(heat, cmap="inferno", alpha=0.6, extent=(0, size, size, 0), interpolation="nearest")
        fig.colorbar(shown, ax=ax, fraction=0.046)
        if len(hops) > 1:
            ax.set_title(f"hop {i + 1}", fontsize=9)
    fig.suptitle(title, fontsize=9)
    return fig


def explain(model, image_path: str | Path, question: str, out: str | Path) -> dict:
    """Answer `question` about the image and write the attention heat-map to `out` (PNG)."""
    if not getattr(model, "has_attention", False):
        raise ValueError(f"the '{model.config.fusion}' model has no attention over the image; "
                         "explain needs an attention model (xattn)")
    images = read_image(image_path, model.config.image_size)
    result = ask(model, images, [question])
    title = f"{question}\nanswer: {result['answers'][0]} ({result['probabilities'][0]:.0%})"
    fig = attention_figure(images, result["attention"][0], title)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import matplotlib.pyplot as plt

    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return {"question": question, "answer": result["answers"][0], "probability": result["probabilities"][0],
            "image": str(out)}
