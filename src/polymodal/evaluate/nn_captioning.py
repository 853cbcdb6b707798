"""The nearest-neighbour captioning baseline (as in Devlin et al. 2015, "Exploring nearest neighbor
approaches for image captioning"): each test image gets the caption of the training image nearest
to it in an aligned model's image space. It writes nothing new, so it shows how much of a
captioner's score retrieval alone reaches; it is scored by the captioners' own functions
(`evaluate_captioner` takes a `NearestNeighbourCaptioner` as it takes a captioner)."""

from __future__ import annotations

import torch

from ..data.pairs import ImageTextPairs
from ..data.schema import RecordSet
from ..models.generative.decoding import GenerationConfig

# Test images compared with the whole training set this many at a time: 1024 x 40,000 cosine
# similarities are 160 MB; an exact search, as the baseline should be, without an index.
QUERY_CHUNK = 1024


class NearestNeighbourCaptioner:
    """`caption(images)` by retrieval: the first caption of the most similar training image (cosine
    similarity of `model`'s unit image embeddings)."""

    def __init__(self, model, train: RecordSet, progress: bool = False):
        pairs = ImageTextPairs(train, model.config.image.image_size, progress=progress, need_text=True)
        self.model = model
        self.config = model.config  # images are decoded at the aligned model's size
        self.train_embeddings = model.encode_image(pairs.images)  # (N, E)
        self.train_captions = [r.text[0] for r in pairs.records]  # (N,)

    def nearest(self, images) -> torch.Tensor:
        """(B,) index of the nearest training image of each image (uint8 (B, 3, S, S) or PIL)."""
        if len(images) == 0:
            return torch.empty(0, dtype=torch.long)
        queries = self.model.encode_image(images)  # (B, E)
        return torch.cat([(chunk @ self.train_embeddings.T).argmax(dim=1)  # (b, N) -> (b,)
                          for chunk in queries.split(QUERY_CHUNK)])

    def caption(self, images, config: GenerationConfig | None = None) -> list[str]:
        """One caption per image; `config` is taken for the captioners' interface and unused."""
        return [self.train_captions[i] for i in self.nearest(images).tolist()]


def nearest_neighbour_captions(model, train_records: RecordSet, test_records: RecordSet) -> list[str]:
    """The baseline's caption of each readable test image, in order (an unreadable one is skipped
    and logged in `test_records.skips`)."""
    captioner = NearestNeighbourCaptioner(model, train_records)
    test = ImageTextPairs(test_records, model.config.image.image_size, progress=False, need_text=False)
    return captioner.caption(test.images)
