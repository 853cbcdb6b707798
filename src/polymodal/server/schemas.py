"""Request and response bodies of the REST API (pydantic: validated, and documented in /docs)."""

from __future__ import annotations

from typing import List, Optional

from pydantic import BaseModel, ConfigDict, Field


class Hit(BaseModel):
    id: int
    score: float
    path: str
    caption: Optional[str] = None
    modality: str
    url: str = Field(description="Where the server serves the item's file.")


class SearchRequest(BaseModel):
    text: str = Field(min_length=1, description="A sentence describing the images to find.")
    k: int = Field(10, ge=1, le=1000)


class SearchResponse(BaseModel):
    query: str
    hits: List[Hit]


class EmbedTextRequest(BaseModel):
    texts: List[str] = Field(min_length=1, max_length=1024)


class EmbedResponse(BaseModel):
    model_id: str
    dim: int
    embeddings: List[List[float]]


class Label(BaseModel):
    label: str
    probability: float


class ClassifyResponse(BaseModel):
    labels: List[Label]


class Health(BaseModel):
    status: str
    items: int
    model_id: str
    dim: int
    kind: str


class KnnRequest(BaseModel):
    """clip-retrieval's /knn-service body, as its ClipClient sends it. Options polymodal has no use
    for (safety model, violence detector, aesthetic weighting, mclip) are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    text: Optional[str] = None
    image: Optional[str] = Field(None, description="base64-encoded image file")
    image_url: Optional[str] = None
    embedding_input: Optional[List[float]] = None
    modality: str = "image"
    num_images: int = Field(40, ge=1, le=10000)
    num_result_ids: Optional[int] = Field(None, ge=1)
    indice_name: Optional[str] = None
    deduplicate: bool = True
    use_safety_model: bool = False
    use_violence_detector: bool = False
    use_mclip: bool = False
    aesthetic_score: Optional[int] = None
    aesthetic_weight: Optional[float] = None
