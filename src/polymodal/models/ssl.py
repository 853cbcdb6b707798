"""Self-supervised objectives that pretrain one tower of an aligned model before alignment.

- `SimCLR`: two augmented views of each image, NT-Xent over their projections (Chen et al. 2020);
- `MaskedAutoencoder`: a ViT sees a quarter of its patches, a light decoder reconstructs the
  normalised pixels of the rest (He et al. 2022);
- `MaskedLanguageModel`: 15 % of caption tokens masked and predicted (BERT), for a scratch text tower.

Each wraps the tower it trains (shared with the `AlignedModel`, so training it trains the model)
and a head that is thrown away after pretraining. `forward` returns {"<name>_loss": tensor}, as
the contrastive losses do; `diagnose` returns the figures that say whether it learnt anything.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .aligned import AlignedModel

# The text towers' special ids (modalities/text.py: [PAD], [UNK], [CLS], [SEP]); words start after them.
PAD_ID, UNK_ID, FIRST_WORD_ID = 0, 1, 4


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent: each of the 2B views must pick its partner among the other 2B - 1. Written here:
    a few lines of cross-entropy, where the libraries that ship it (lightly, pytorch-metric-learning)
    are not dependencies."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=-1)  # (2B, P)
    logits = z @ z.T / temperature  # (2B, 2B)
    logits.fill_diagonal_(float("-inf"))  # a view is not its own partner
    b = len(z1)
    partner = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    return F.cross_entropy(logits, partner)


class ViewAugment:
    """Two random views of a uint8 batch (B, 3, S, S), cheap on a CPU: a random resized crop per
    image (torchvision v2; about 0.25 ms an image at 64 px), then per-image brightness and contrast
    jitter done batched by hand (torchvision's ColorJitter draws one factor per call, and per-image
    calls cost four times the crop). No flips and no hue jitter: captions name sides and colours, so
    the tower must not learn to ignore them."""

    def __init__(self, image_size: int, min_scale: float = 0.35, jitter: float = 0.4):
        from torchvision.transforms import v2  # torchvision takes seconds to import: only SimCLR needs it

        self.crop = v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0), antialias=True)
        self.jitter = jitter

    def view(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 -> (B, 3, S, S) float in [0, 1]."""
        x = torch.stack([self.crop(img) for img in images]).float() / 255.0
        b = len(x)
        brightness = 1 + self.jitter * (2 * torch.rand(b, 1, 1, 1) - 1)
        contrast = 1 + self.jitter * (2 * torch.rand(b, 1, 1, 1) - 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
        return ((x * brightness - mean * brightness) * contrast + mean * brightness).clamp(0, 1)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view(images), self.view(images)


class SimCLR(nn.Module):
    """The image tower and an MLP projection head (dropped after pretraining), trained with NT-Xent."""

    tower = "image"

    def __init__(self, model: AlignedModel, proj_dim: int = 64, temperature: float = 0.2):
        super().__init__()
        self.normalize, self.encoder = model.normalize, model.image_tower
        width = model.image_tower.output_dim
        self.head = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, proj_dim))
        self.temperature = temperature

    def project(self, views: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float in [0, 1] -> (B, P)."""
        return self.head(self.encoder(self.normalize(views)).pooled)

    def forward(self, views: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        z = self.project(torch.cat(views))  # (2B, P): one pass, so BatchNorm sees both views together
        z1, z2 = z.chunk(2)
        return {"nt_xent_loss": nt_xent(z1, z2, self.temperature)}

    @torch.no_grad()
    def diagnose(self, views: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        """Cosine similarity of the tower's pooled vectors for two views of one image against views
        of different images, and how often a view's nearest other view is its partner."""
        pooled = F.normalize(self.encoder(self.normalize(torch.cat(views))).pooled.float(), dim=-1)
        a, b = pooled.chunk(2)  # (B, D) each
        sim = a @ b.T  # (B, B)
        off = ~torch.eye(len(a), dtype=torch.bool, device=sim.device)
        return {"positive_cosine": sim.diag().mean().item(), "negative_cosine": sim[off].mean().item(),
                "view_top1": (sim.argmax(1) == torch.arange(len(a), device=sim.device)).float().mean().item()}


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, N, patch*patch*3), patches in the row-major order of the ViT's conv stem."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


class MaskedAutoencoder(nn.Module):
    """MAE over polymodal's `ViTEncoder`: the encoder runs on the kept patches only (its patch
    stem, class token, position embeddings, blocks and norm, reused as they are); a light
    decoder fills in mask tokens and predicts each masked patch's pixels. Written here because
    the libraries' MAEs (timm, transformers' ViTMAE) bring their own ViT, not the tower to align."""

    tower = "image"

    def __init__(self, model: AlignedModel, mask_ratio: float = 0.75, decoder_width: int = 64,
                 decoder_layers: int = 1, norm_pix: bool = True):
        super().__init__()
        cfg = model.config.image
        if cfg.kind != "vit":
            raise ValueError(f"mae needs a ViT image tower; this model's is a {cfg.kind} "
                             f"(use a vit preset such as shapes-vit-tiny, or --objective simclr)")
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask ratio must lie strictly between 0 and 1, not {mask_ratio}")
        self.normalize, self.encoder = model.normalize, model.image_tower
        self.patch, self.mask_ratio, self.norm_pix = cfg.patch_size, mask_ratio, norm_pix
        n_patches = (cfg.image_size // cfg.patch_size) ** 2
        self.embed = nn.Linear(self.encoder.width, decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_width))
        self.pos = nn.Parameter(torch.randn(1, n_patches + 1, decoder_width) * 0.02)
        block = nn.TransformerEncoderLayer(decoder_width, max(1, decoder_width // 32), 4 * decoder_width,
                                           dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, decoder_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(decoder_width)
        self.predict = nn.Linear(decoder_width, cfg.patch_size**2 * 3)

    def _encode_kept(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised, (B, K) kept patch indices -> (B, 1+K, D) encoded."""
        vit = self.encoder
        tokens = vit.patch(x).flatten(2).transpose(1, 2) + vit.pos[:, 1:]  # (B, N, D)
        kept = tokens.gather(1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))  # (B, K, D)
        cls = (vit.cls + vit.pos[:, :1]).expand(len(x), -1, -1)  # (B, 1, D)
        return vit.norm(vit.blocks(torch.cat([cls, kept], dim=1)))

    def _decode(self, encoded: torch.Tensor, keep: torch.Tensor, n: int) -> torch.Tensor:
        """(B, 1+K, D), (B, K) -> (B, N, patch*patch*3) predicted pixels of every patch."""
        y = self.embed(encoded)  # (B, 1+K, Dd)
        full = self.mask_token.to(y.dtype).expand(len(y), n, -1)  # (B, N, Dd)
        full = full.scatter(1, keep.unsqueeze(-1).expand(-1, -1, y.shape[-1]), y[:, 1:])
        seq = torch.cat([y[:, :1], full], dim=1) + self.pos  # (B, 1+N, Dd)
        return self.predict(self.norm(self.blocks(seq)))[:, 1:]

    def _target(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised -> (B, N, patch*patch*3), each patch normalised on its own
        where norm_pix (MAE's better-representations variant; a flat patch becomes all zeros)."""
        target = patchify(x, self.patch)
        if self.norm_pix:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return target

    def _masked_errors(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-patch squared error (B, N), mask (B, N) 1 where hidden, target (B, N, P))."""
        x = self.normalize(images)
        n = (x.shape[-1] // self.patch) ** 2
        n_keep = max(1, round(n * (1 - self.mask_ratio)))
        keep = torch.rand(len(x), n, device=x.device).argsort(1)[:, :n_keep]  # (B, K): a random subset per image
        hidden = torch.ones(len(x), n, device=x.device).scatter(1, keep, 0.0)  # (B, N)
        pred = self._decode(self._encode_kept(x, keep), keep, n)
        target = self._target(x)
        return ((pred.float() - target) ** 2).mean(-1), hidden, target

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        err, hidden, _ = self._masked_errors(images)
        return {"reconstruction_loss": (err * hidden).sum() / hidden.sum()}

    @torch.no_grad()
    def diagnose(self, images: torch.Tensor) -> dict[str, float]:
        """Mean squared error on masked patches against predicting every masked patch as the mean
        masked patch of the batch."""
        err, hidden, target = self._masked_errors(images)
        masked = target[hidden.bool()]  # (M, P)
        baseline = ((masked - masked.mean(0)) ** 2).mean()
        return {"masked_mse": ((err * hidden).sum() / hidden.sum()).item(), "mean_baseline_mse": baseline.item()}


class MaskedLanguageModel(nn.Module):
    """BERT's masked language modelling for a text tower trained from scratch: 15 % of the word
    tokens are chosen; 80 % of those become the mask, 10 % a random word, 10 % stay; the tower's
    output at each chosen position predicts the original token. The mask is [UNK]: the tokenizer
    has no [MASK], and a vocabulary built from the captions never needs [UNK] for them."""

    tower = "text"

    def __init__(self, model: AlignedModel, mask_prob: float = 0.15):
        super().__init__()
        kind = model.config.text.kind
        if kind in ("bow", "minilm"):
            why = "its tokens are its word embeddings, blind to context" if kind == "bow" else "it is pretrained"
            raise ValueError(f"mlm pretrains a scratch text tower (transformer, gru, minilm-gru); not '{kind}': {why}")
        if not 0 < mask_prob < 1:
            raise ValueError(f"mask probability must lie strictly between 0 and 1, not {mask_prob}")
        self.encoder, self.mask_prob = model.text_tower, mask_prob
        width, self.vocab_size = model.text_tower.output_dim, model.tokenizer.vocab_size
        self.head = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width),
                                  nn.Linear(width, self.vocab_size))

    def mask(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) ids -> (corrupted ids (B, L), chosen positions (B, L) bool)."""
        words = ids >= FIRST_WORD_ID
        chosen = (torch.rand(ids.shape, device=ids.device) < self.mask_prob) & words
        if not chosen.any():  # a tiny batch can draw none; predict one word rather than nothing
            chosen.view(-1)[words.view(-1).nonzero()[0]] = True
        roll = torch.rand(ids.shape, device=ids.device)
        random_words = torch.randint(FIRST_WORD_ID, max(FIRST_WORD_ID + 1, self.vocab_size), ids.shape,
                                     device=ids.device)
        corrupted = torch.where(chosen & (roll < 0.8), torch.full_like(ids, UNK_ID), ids)
        corrupted = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_words, corrupted)
        return corrupted, chosen

    def _logits(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits at the chosen positions (M, V), their original ids (M,))."""
        corrupted, chosen = self.mask(ids)
        tokens = self.encoder(corrupted).tokens  # (B, L, W)
        return self.head(tokens[chosen]), ids[chosen]

    def forward(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, targets = self._logits(ids)
        return {"mlm_loss": F.cross_entropy(logits.float(), targets)}

    @torch.no_grad()
    def diagnose(self, ids: torch.Tensor) -> dict[str, float]:
        """Accuracy on the chosen tokens against always answering the most frequent of them."""
        logits, targets = self._logits(ids)
        majority = torch.bincount(targets).max().item() / len(targets)
        return {"masked_accuracy": (logits.argmax(-1) == targets).float().mean().item(), "majority_rate": majority}


OBJECTIVES = {"simclr": SimCLR, "mae": MaskedAutoencoder, "mlm": MaskedLanguageModel}


def build_objective(name: str, model: AlignedModel, **options) -> nn.Module:
    if name not in OBJECTIVES:
        raise ValueError(f"unknown pretraining objective '{name}' (known: {', '.join(OBJECTIVES)})")
    return OBJECTIVES[name](model, **options)
