"""Five ways to fuse an image and a question, each over the same two encoders.

Every model maps uint8 images (B, 3, H, W) and question ids (B, Q, L) - all the questions about
each image - to answer logits (B, Q, A). The image is encoded once per image, not per question.
Attention models also return `attention` (B, Q, hops, N): how much each hop of the question looks
at each region.
"""

from __future__ import annotations

import abc
import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from ...registry import Registry
from .encoders import ImageGridEncoder, QuestionEncoder

FUSIONS: Registry[type] = Registry("fusion model")


@dataclass
class FusionConfig:
    fusion: str = "xattn"  # late, early, film, xattn or rn
    image_size: int = 75
    width: int = 32  # channels of the first CNN stage (doubles once, then `dim`)
    dim: int = 64  # token width of both encoders and of the fusion layers
    pool: int = 1  # average the 10x10 region grid by this factor (2: 5x5 regions)
    objects: int = 0  # keep only the k most salient cells, the objects (0: the whole grid; not for film)
    heads: int = 4
    question_layers: int = 1
    layers: int = 2  # fusion depth: transformer layers (early), attention hops (xattn), FiLM blocks, g-MLP layers (rn)
    hidden: int = 256  # width of the MLPs (late, rn's g and f, answer head)
    rn_question: str = "first"  # rn: where the question enters g ("first": the paper; "last": FiLM on g's output)
    relation_dim: int = 32  # rn: width of g's output
    lr: float = 1e-3  # the peak learning rate this preset was tuned with (training's default)

    @classmethod
    def from_dict(cls, d: dict) -> FusionConfig:
        d = {k: v for k, v in d.items() if k != "name"}
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown fusion config keys: {', '.join(sorted(unknown))}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def salient_cells(colours: torch.Tensor, k: int) -> torch.Tensor:
    """Cell mean colours (B, N, 3) -> indices (B, k), in raster order, of the k cells whose colour is
    furthest from the image's median cell colour: on a plain background, the objects' cells."""
    saliency = (colours - colours.median(dim=1, keepdim=True).values).norm(dim=-1)  # (B, N)
    return saliency.topk(k, dim=1).indices.sort(dim=1).values


class FusionModel(nn.Module, metaclass=abc.ABCMeta):
    """Shared parts: the two encoders and the answer head; subclasses define `fuse`."""

    has_attention = False
    grid_only = False  # needs the whole region grid (no `objects`)

    def __init__(self, config: FusionConfig, vocab_size: int, question_length: int, n_answers: int):
        super().__init__()
        self.config = config
        c = config
        self.image_encoder = ImageGridEncoder(c.dim, c.width, c.image_size, c.pool)
        if c.objects and self.grid_only:
            raise ValueError(f"{c.fusion} needs the whole region grid (objects must be 0)")
        if not 0 <= c.objects <= self.image_encoder.grid ** 2:
            raise ValueError(f"objects must be between 0 and {self.image_encoder.grid ** 2}, not {c.objects}")
        self.question_encoder = QuestionEncoder(vocab_size, question_length, c.dim, c.heads, c.question_layers)
        self.n_regions = c.objects or self.image_encoder.grid ** 2
        self.head = mlp([self.fused_dim(), c.hidden, n_answers])

    def fused_dim(self) -> int:
        return self.config.dim

    def forward(self, images: torch.Tensor, questions: torch.Tensor) -> dict[str, torch.Tensor]:
        regions = self.encode_image(images)  # (B, N, D)
        q_tokens, q_pooled, q_pad = self.question_encoder(questions)  # (B, Q, L, D), (B, Q, D), (B, Q, L)
        fused, attention = self.fuse(regions, q_tokens, q_pooled, q_pad)  # (B, Q, F)
        out = {"logits": self.head(fused)}  # (B, Q, A)
        if attention is not None:
            out["attention"] = attention
        return out

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """The region tokens (B, N, D), or with `objects` = k only the k cells whose mean colour
        differs most from the image's median cell colour (its background), in raster order:
        the objects at the grid's resolution, with few tokens and no background to wade through."""
        regions = self.image_encoder(images)  # (B, N, D)
        if not self.config.objects:
            return regions
        keep = salient_cells(self.image_encoder.cell_colours(images), self.config.objects)  # (B, k)
        return regions.gather(1, keep[..., None].expand(-1, -1, regions.shape[-1]))  # (B, k, D)

    @abc.abstractmethod
    def fuse(self, regions, q_tokens, q_pooled, q_pad):
        """The fusion design itself, which each registered subclass defines: regions (B, N, D),
        question tokens (B, Q, L, D), pooled question (B, Q, D) and its padding mask (B, Q, L) ->
        fused (B, Q, fused_dim()) and attention over the regions (B, Q, hops, N), or None."""


@FUSIONS.register("late")
class LateFusion(FusionModel):
    """The paper's CNN+MLP baseline: the flattened region grid and the pooled question,
    concatenated, through an MLP. Nothing lets one object's features meet another's."""

    def __init__(self, config, *args):
        super().__init__(config, *args)
        c = config
        self.image_proj = nn.Linear(self.n_regions * c.dim, c.hidden)
        self.mlp = mlp([c.hidden + c.dim, c.hidden, c.hidden])

    def fused_dim(self):
        return self.config.hidden

    def fuse(self, regions, q_tokens, q_pooled, q_pad):
        img = self.image_proj(regions.flatten(1))  # (B, H)
        img = img.unsqueeze(1).expand(-1, q_pooled.shape[1], -1)  # (B, Q, H)
        return F.relu(self.mlp(torch.cat([img, q_pooled], dim=-1))), None


@FUSIONS.register("early")
class EarlyFusion(FusionModel):
    """Image regions and question tokens in one sequence through one transformer (per question),
    the image as a prefix: the question's tokens attend, in one softmax through the same weights,
    to the regions and to each other, while the regions stay what the image encoder made them (as
    image tokens stay fixed in a prefix cache), so their keys and values are computed once per
    image and layer. The answer reads the mean of the question's tokens.

    Letting the regions attend too (to each other and to the question, once per question) made
    every run slower and less steady: 80-93 % relational after 30 minutes on the 5x5 grid, where
    the fixed prefix on the 10x10 grid (lr 5e-4) ended at 94.6-96 % at three seeds, and sharing
    the image's keys and values among its questions makes it 1.6x as fast (benchmarks/README.md,
    early 2-27)."""

    def __init__(self, config, *args):
        super().__init__(config, *args)
        c = config
        self.modality = nn.Parameter(torch.zeros(2, c.dim))
        layer = nn.TransformerEncoderLayer(c.dim, c.heads, 4 * c.dim, dropout=0.0, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, c.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.dim)

    def fuse(self, regions, q_tokens, q_pooled, q_pad):
        L = int((~q_pad).sum(-1).max())  # the longest question in the batch: later columns are padding
        words, q_pad = q_tokens[:, :, :L] + self.modality[1], q_pad[:, :, :L]  # (B, Q, L, D)
        image = regions + self.modality[0]  # (B, N, D), the same at every layer
        for layer in self.transformer.layers:
            words = _prefixed_layer(layer, words, image, q_pad)
        words = self.norm(words)
        keep = (~q_pad).unsqueeze(-1).float()  # (B, Q, L, 1)
        return (words * keep).sum(2) / keep.sum(2), None


def _prefixed_layer(layer: nn.TransformerEncoderLayer, words: torch.Tensor, image: torch.Tensor,
                    pad: torch.Tensor) -> torch.Tensor:
    """A pre-norm encoder layer's outputs (B, Q, L, D) for the question tokens `words` of the
    sequences [image; words], without repeating the image's projections per question: its keys and
    values (from `image` (B, N, D)) are computed once and shared by the image's Q questions. `pad`
    (B, Q, L) masks the questions' padding; dropout is 0 in these models."""
    (B, Q, _, D), N, h = words.shape, image.shape[1], layer.self_attn.num_heads
    w, b = layer.self_attn.in_proj_weight, layer.self_attn.in_proj_bias  # rows: query, key, value

    def split(x):  # (..., T, D) -> (..., h, T, D / h)
        return x.unflatten(-1, (h, D // h)).transpose(-3, -2)

    q, k_words, v_words = map(split, F.linear(layer.norm1(words), w, b).chunk(3, dim=-1))  # (B, Q, h, L, d)
    k_image, v_image = map(split, F.linear(layer.norm1(image), w[D:], b[D:]).chunk(2, dim=-1))  # (B, h, N, d)
    k = torch.cat([k_image.unsqueeze(1).expand(-1, Q, -1, -1, -1), k_words], dim=-2)  # (B, Q, h, N + L, d)
    v = torch.cat([v_image.unsqueeze(1).expand(-1, Q, -1, -1, -1), v_words], dim=-2)
    visible = torch.cat([pad.new_ones(B, Q, N), ~pad], dim=-1)[:, :, None, None]  # (B, Q, 1, 1, N + L)
    read = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)  # (B, Q, h, L, d)
    words = words + layer.self_attn.out_proj(read.transpose(-3, -2).flatten(-2))
    return words + layer.linear2(layer.activation(layer.linear1(layer.norm2(words))))


@FUSIONS.register("film")
class FiLMFusion(FusionModel):
    """FiLM (Perez et al. 2018): the question scales and shifts the image features channel-wise
    inside residual conv blocks; then a max over regions.

    Block i's 3x3 convolution is dilated by 2^i, so three blocks see 15x15 cells, the whole 10x10
    grid: "the object furthest from the red one" needs the red one's position everywhere (with two
    undilated blocks, 5x5 cells, furthest stayed at 79 % after 30 minutes)."""

    grid_only = True

    def __init__(self, config, *args):
        super().__init__(config, *args)
        c = config
        self.convs = nn.ModuleList(nn.Conv2d(c.dim, c.dim, 3, padding=2 ** i, dilation=2 ** i)
                                   for i in range(c.layers))
        self.norms = nn.ModuleList(nn.BatchNorm2d(c.dim, affine=False) for _ in range(c.layers))
        self.film = nn.Linear(c.dim, 2 * c.dim * c.layers)
        self.out = nn.Conv2d(c.dim, c.dim, 1)

    def fuse(self, regions, q_tokens, q_pooled, q_pad):
        B, N, D = regions.shape
        Q, g = q_pooled.shape[1], self.image_encoder.grid
        x = regions.transpose(1, 2).reshape(B, 1, D, g, g).expand(-1, Q, -1, -1, -1).reshape(B * Q, D, g, g)
        gammas, betas = self.film(q_pooled).reshape(B * Q, self.config.layers, 2, D).unbind(2)
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            h = norm(conv(x)) * (1 + gammas[:, i, :, None, None]) + betas[:, i, :, None, None]
            x = x + F.relu(h)
        x = F.relu(self.out(x)).amax(dim=(2, 3))  # (B*Q, D)
        return x.reshape(B, Q, D), None


class RegionAttention(nn.Module):
    """Multi-head attention of one query per question to the regions of *its own* image. Keys and
    values are computed once per image and shared by all Q questions about it."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, regions: torch.Tensor):
        B, Q, D = query.shape
        h, d = self.heads, D // self.heads
        q = query.reshape(B, Q, h, d).transpose(1, 2) / math.sqrt(d)  # (B, h, Q, d)
        k = self.k(regions).reshape(B, -1, h, d).transpose(1, 2)  # (B, h, N, d)
        v = self.v(regions).reshape(B, -1, h, d).transpose(1, 2)
        weights = torch.softmax(q @ k.transpose(-1, -2), dim=-1)  # (B, h, Q, N)
        read = (weights @ v).transpose(1, 2).reshape(B, Q, D)
        return read, weights.mean(1)  # (B, Q, D), (B, Q, N)


@FUSIONS.register("xattn")
class CrossAttentionFusion(FusionModel):
    """Stacked cross-modal attention (after Yang et al. 2016, stacked attention networks): the
    question attends to the image regions `layers` times, and each hop's query is computed from the
    question and what the earlier hops read, so a second hop can look for "the object closest to
    what the first one found". The answer sees the question, every read and the mean of all
    regions (what counting needs). `attention` holds every hop's weights: on Sort-of-CLEVR the
    first finds the object the question names, the second the one it asks about."""

    has_attention = True
    grid_only = True  # its attention maps are drawn over the grid

    def __init__(self, config, *args):
        super().__init__(config, *args)
        c = config
        self.region_norm = nn.LayerNorm(c.dim)
        self.queries = nn.ModuleList(mlp([c.dim * (1 + i), 2 * c.dim, c.dim]) for i in range(c.layers))
        self.hops = nn.ModuleList(RegionAttention(c.dim, c.heads) for _ in range(c.layers))
        self.combine = nn.Linear(c.dim * (c.layers + 2), c.hidden)

    def fused_dim(self):
        return self.config.hidden

    def fuse(self, regions, q_tokens, q_pooled, q_pad):
        regions = self.region_norm(regions)  # (B, N, D)
        reads, maps = [q_pooled], []
        for query, hop in zip(self.queries, self.hops):
            read, weights = hop(query(torch.cat(reads, dim=-1)), regions)  # (B, Q, D), (B, Q, N)
            reads.append(read)
            maps.append(weights)
        everything = regions.mean(1, keepdim=True).expand_as(q_pooled)  # (B, Q, D)
        fused = F.relu(self.combine(torch.cat(reads + [everything], dim=-1)))
        return fused, torch.stack(maps, dim=2)  # (B, Q, hops, N)


@FUSIONS.register("rn")
class RelationNetwork(FusionModel):
    """Relation network (Santoro et al. 2017): f(mean over region pairs (i, j) of g(o_i, o_j, q)).

    g's first layer is linear in its concatenated input, so it splits into W_a o_i + W_b o_j (+ W_q q):
    each term is computed once per region (or question) and the N^2 pairs only add and apply the
    later layers, which end in `relation_dim` features. Where the question enters g is `rn_question`:
    - "first" (the paper): in g's first layer, so every later layer runs once per question;
    - "last": g's layers run once per image and the question scales and shifts (FiLM) their output
      before the last ReLU and the mean over pairs: Q times less pair work, but the question can
      no longer pick the pairs, and binding a question's colour to its object took 16-22 minutes.
    With `objects` (the preset: 16 of the 10x10 cells) the pairs are those of the objects: 256
    pairs at the grid's full resolution instead of 625 of a 5x5 average, nearly all of them
    meaningful. The mean over pairs is layer-normalised before f: without it, over a grid of
    mostly background, the relation network learnt nothing from the image in 5 minutes."""

    def __init__(self, config, *args):
        super().__init__(config, *args)
        c = config
        self.g_a, self.g_b = nn.Linear(c.dim, c.hidden), nn.Linear(c.dim, c.hidden, bias=False)
        if c.layers < 2:
            raise ValueError("rn needs layers >= 2: g's first layer and its output layer")
        relation_dim = c.relation_dim
        widths = [c.hidden] * (c.layers - 1) + [relation_dim]
        if c.rn_question == "first":
            self.g_q = nn.Linear(c.dim, c.hidden, bias=False)
            self.g_rest = nn.Sequential(*[m for a, b in zip(widths[:-1], widths[1:])
                                          for m in (nn.Linear(a, b), nn.ReLU())])
        elif c.rn_question == "last":
            self.g_film = nn.Linear(c.dim, 2 * relation_dim)
            self.g_rest = nn.Sequential(*[m for a, b in zip(widths[:-1], widths[1:])
                                          for m in (nn.ReLU(), nn.Linear(a, b))])
        else:
            raise ValueError(f"rn_question must be 'first' or 'last', not '{c.rn_question}'")
        self.relation_norm = nn.LayerNorm(relation_dim)
        self.f = mlp([relation_dim, c.hidden, c.hidden])

    def fused_dim(self):
        return self.config.hidden

    def fuse(self, regions, q_tokens, q_pooled, q_pad):
        a, b = self.g_a(regions), self.g_b(regions)  # (B, N, H)
        if self.config.rn_question == "first":
            q = self.g_q(q_pooled)  # (B, Q, H)
            pairs = a[:, None, :, None] + b[:, None, None, :] + q[:, :, None, None]  # (B, Q, N, N, H)
            relations = self.g_rest(F.relu(pairs)).mean(dim=(2, 3))  # (B, Q, H)
        else:
            pairs = self.g_rest(a[:, :, None] + b[:, None, :]).flatten(1, 2)  # (B, N*N, R), before the last ReLU
            gamma, beta = self.g_film(q_pooled).chunk(2, dim=-1)  # (B, Q, R) each
            relations = F.relu(pairs[:, None] * (1 + gamma[:, :, None]) + beta[:, :, None]).mean(2)  # (B, Q, R)
        return F.relu(self.f(self.relation_norm(relations))), None


def build_fusion_model(config: FusionConfig, vocab_size: int, question_length: int, n_answers: int) -> FusionModel:
    return FUSIONS.get(config.fusion)(config, vocab_size, question_length, n_answers)
