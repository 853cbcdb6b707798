"""ONNX export of any model with the common interface, and `OnnxModel`, which runs an export
through ONNX Runtime behind the same interface.

An export directory holds `image.onnx` (uint8 pixels (B, 3, S, S) -> (B, E) unit vectors; the
mean/std normalisation is inside the graph), `text.onnx` (int64 ids (B, L) -> (B, E)), both with a
dynamic batch axis, the tokenizer, and `polymodal_onnx.json` with the preprocessing (image size,
mean/std, resize mode, interpolation), the tokenizer settings and the similarity scale. With int8,
`image.int8.onnx` / `text.int8.onnx` hold quantised copies (int8 weights, 7-bit without VNNI) that `OnnxModel` uses
unless told otherwise: dynamic (activations quantised per batch at run time) or, given calibration inputs, static
(QDQ: activation ranges fixed from the calibration data). `openvino.py` adds OpenVINO graphs to the same directory.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ExportError
from ..models.interface import EncoderInterface
from ..utils import atomic_path, write_json
from .base import BackendConfig, ImageSpec
from .cpu import has_vnni

ONNX_FILE = "polymodal_onnx.json"
OPSET = 18


class _ImageGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:  # (B, 3, S, S) uint8 -> (B, E)
        return self.model.image_features(pixels)


class _TextGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, L) int64 -> (B, E)
        return self.model.text_features(ids)


def image_spec_of(model) -> ImageSpec:
    """The preprocessing of any model with the common interface (a polymodal checkpoint included)."""
    image = model.config.image
    if isinstance(image, ImageSpec):
        return image
    return ImageSpec(image_size=image.image_size, mean=tuple(image.mean), std=tuple(image.std),
                     resize="shortest", interpolation="bicubic", crop_offset="floor", long_side="round")


@dataclass
class Calibration:
    """Inputs that fix the activation ranges of static int8 graphs (see `calibration.py`)."""

    pixels: np.ndarray  # (N, 3, S, S) uint8
    ids: np.ndarray  # (M, L) int64, padded to the text graph's length

    def batches(self, name: str, size: int = 8) -> list[np.ndarray]:
        data = self.pixels if name == "image" else self.ids
        return [data[i:i + size] for i in range(0, len(data), size)]


def calibration_for(model, images, texts: list[str]) -> Calibration:
    """The model's own preprocessing of calibration images and captions."""
    pixels = np.stack([model.config.image.pixels(img) for img in images])
    ids = _pad_to(model.tokenizer(texts), model.tokenizer.context_length, _pad_id(model.tokenizer))
    return Calibration(pixels=pixels, ids=ids.numpy().astype(np.int64))


def export_onnx(model, out: str | Path, int8: bool = False, batch: int = 2, calibration: Calibration | None = None,
                extra: Callable[[Path, dict], None] | None = None) -> Path:
    """Write the two encoders, the tokenizer and the metadata to `out` (replaced whole, atomically).
    int8 graphs are statically quantised when `calibration` is given, else dynamically. `extra(dir,
    meta)` adds files (other engines' graphs) to the staging directory before it is renamed."""
    out = Path(out)
    if out.exists() and not (out / ONNX_FILE).is_file() and any(out.iterdir()):
        raise ExportError(f"{out}: exists and is not an ONNX export; choose an empty or new directory")
    model = model.float().eval()
    lora = getattr(model, "lora", None)
    if lora is not None:  # the graph needs plain weights; merging leaves the outputs unchanged
        model.merge_lora()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.mkdir()
        image = image_spec_of(model)
        pixels = torch.randint(0, 256, (batch, 3, image.image_size, image.image_size), dtype=torch.uint8)
        # Traced attention keeps the sequence length of the example as a constant, so the text graph
        # takes ids padded to the full context; padding does not change any supported tower's output.
        pad_id = _pad_id(model.tokenizer)
        ids = _pad_to(model.tokenizer(["a photo of a cat", "two dogs"] * (batch // 2) + ["x"] * (batch % 2)),
                      model.tokenizer.context_length, pad_id)
        _export(_ImageGraph(model), pixels, tmp / "image.onnx", "pixels")
        _export(_TextGraph(model), ids, tmp / "text.onnx", "ids")
        tokenizer = _save_tokenizer(model, tmp / "tokenizer")
        bias = getattr(model, "logit_bias", None)
        meta = {"model_id": model.model_id, "embed_dim": model.embed_dim, "image": asdict(image),
                "tokenizer": tokenizer, "similarity_scale": float(model.logit_scale.detach().exp().clamp(max=100)),
                "logit_bias": None if bias is None else float(bias.detach()), "int8": int8, "opset": OPSET,
                "text_length": int(ids.shape[1]), "text_pad_id": pad_id}
        if int8:
            meta["int8_mode"] = "static" if calibration is not None else "dynamic"
            for name in ("image", "text"):
                if calibration is None:
                    quantize_int8(tmp / f"{name}.onnx", tmp / f"{name}.int8.onnx")
                else:
                    quantize_static_int8(tmp / f"{name}.onnx", tmp / f"{name}.int8.onnx",
                                         calibration.batches(name), "pixels" if name == "image" else "ids")
        if extra is not None:
            extra(tmp, meta)
        write_json(tmp / ONNX_FILE, meta)
    return out


def _export(module: nn.Module, example: torch.Tensor, path: Path, input_name: str) -> None:
    """torch.onnx's TorchScript exporter: one self-contained file, and it traces the attention of
    both transformers and open_clip without help (measured: the dynamo exporter also works but
    takes several times longer on a CPU)."""
    import warnings

    axes = {input_name: {0: "batch"}, "embedding": {0: "batch"}}
    if input_name == "ids":
        axes[input_name][1] = "length"
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # The fused inference kernel of nn.MultiheadAttention has no ONNX form; the plain path does.
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), str(path), input_names=[input_name], output_names=["embedding"],
                              dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _pad_id(tokenizer) -> int:
    """The id that pads a caption: the Hugging Face tokenizer's own, 0 ([PAD]) for polymodal's."""
    hf = getattr(tokenizer, "tok", None)
    return int(getattr(hf, "pad_token_id", None) or 0)


def _pad_to(ids: torch.Tensor, length: int, pad_id: int) -> torch.Tensor:
    """(B, L) -> (B, length), padded on the right."""
    return F.pad(ids, (0, length - ids.shape[1]), value=pad_id) if ids.shape[1] < length else ids


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 quantisation of the matrix products: signed 8-bit weights per output channel.
    Without VNNI, ONNX Runtime multiplies uint8 activations by int8 weights with an instruction
    whose 16-bit sums saturate; 7-bit weights avoid that (measured on a tiny CLIP, AVX2: text
    cosine against float32 0.895 with 8 bits, 0.999 with 7)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                     reduce_range=not has_vnni(), op_types_to_quantize=["MatMul", "Gemm"])


def quantize_static_int8(src: Path, dst: Path, batches: list[np.ndarray], input_name: str) -> None:
    """Static int8 (QDQ format) of the matrix products: activation ranges from the calibration
    batches (min-max), signed 8-bit weights per output channel, 7-bit without VNNI as above.
    Measured on ViT-B/32 (benchmarks/int8.py): QOperator runs at the same speed as QDQ, and
    quantising every op type instead of MatMul/Gemm lowers the cosine without a gain."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{input_name: b} for b in batches])

        def get_next(self):
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory() as scratch:
        # Shape inference and constant folding first, as ONNX Runtime's quantisation guide asks.
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=not has_vnni(), activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])


def _save_tokenizer(model, directory: Path) -> dict:
    from ..modalities.text import Tokenizer as PolymodalTokenizer
    from .hf import HFTokenizer
    from .open_clip import OpenClipTokenizer

    directory.mkdir()
    tok = model.tokenizer
    if isinstance(tok, HFTokenizer):
        tok.save(directory)
        return {"kind": "hf", "context_length": tok.context_length, "pad_to_context": tok.pad_to_context}
    if isinstance(tok, OpenClipTokenizer):
        write_json(directory / "open_clip_config.json", {"model_cfg": model.model_cfg})
        return {"kind": "open_clip"}
    if isinstance(tok, PolymodalTokenizer):
        tok.save(directory / "tokenizer.json")
        return {"kind": "polymodal", "context_length": tok.context_length}
    raise ValueError(f"cannot export the tokenizer of {model.model_id} ({type(tok).__name__})")


def _load_tokenizer(directory: Path, spec: dict):
    kind = spec.get("kind")
    if kind == "hf":
        from transformers import AutoTokenizer

        from .hf import HFTokenizer

        return HFTokenizer(AutoTokenizer.from_pretrained(str(directory)), spec["context_length"],
                           spec["pad_to_context"])
    if kind == "open_clip":
        import open_clip

        from .open_clip import OpenClipTokenizer

        return OpenClipTokenizer(open_clip.get_tokenizer(f"local-dir:{directory}"))
    if kind == "polymodal":
        from ..modalities.text import Tokenizer

        return Tokenizer.from_file(directory / "tokenizer.json", spec["context_length"])
    raise ExportError(f"{directory}: unknown tokenizer kind {kind!r}")


def session_options(threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    return opts


class OnnxModel(EncoderInterface):
    """An ONNX export run through ONNX Runtime, with the common interface (encode_image,
    encode_text, preprocess, similarity, embed_dim, model_id). Another engine subclasses it and
    overrides `engine`, `exported_int8` and `_open_sessions`."""

    engine = "onnx"

    def __init__(self, directory: Path, int8: bool | None = None, threads: int | None = None):
        self.directory = Path(directory)
        try:
            meta = json.loads((self.directory / ONNX_FILE).read_text())
            image = ImageSpec(**meta["image"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ExportError(f"{self.directory / ONNX_FILE}: not a valid ONNX export description ({err})") from None
        self.meta = meta
        self.int8 = self.exported_int8(meta) if int8 is None else int8
        if self.int8 and not self.exported_int8(meta):
            raise ExportError(f"{self.directory}: exported without int8 for {self.engine} (export again with --int8)")
        self.config = BackendConfig(embed_dim=meta["embed_dim"], image=image, init_logit_bias=meta.get("logit_bias"))
        self.tokenizer = _load_tokenizer(self.directory / "tokenizer", meta["tokenizer"])
        self.model_id = f"{self.engine}{'-int8' if self.int8 else ''}:{self.directory.resolve()}"
        self.image_session, self.text_session = self._open_sessions(threads)

    @staticmethod
    def exported_int8(meta: dict) -> bool:
        return bool(meta.get("int8"))

    def _open_sessions(self, threads: int | None):
        """(image, text) sessions, each with `run(None, {input: array}) -> [array]`."""
        import onnxruntime as ort

        suffix = ".int8.onnx" if self.int8 else ".onnx"
        opts = session_options(threads)
        try:
            return tuple(ort.InferenceSession(str(self.directory / f"{name}{suffix}"), opts,
                                              providers=["CPUExecutionProvider"]) for name in ("image", "text"))
        except Exception as err:  # onnxruntime raises its own exception types for missing/corrupt files
            raise ExportError(f"{self.directory}: cannot load the ONNX graphs ({str(err).splitlines()[0]})") from None

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def eval(self) -> OnnxModel:
        return self

    def to(self, device) -> OnnxModel:
        if str(device) != "cpu":
            raise ValueError(f"{self.model_id}: runs on the CPU through ONNX Runtime (asked for {device})")
        return self

    def _to_uint8(self, image) -> np.ndarray:
        return self.config.image.pixels(image)

    def _embed_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.dtype != torch.uint8:  # [0, 1] floats, as the PyTorch models also accept
            pixels = (pixels.float() * 255).round().clamp(0, 255).to(torch.uint8)
        return torch.from_numpy(self.image_session.run(None, {"pixels": pixels.numpy()})[0])

    def _embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        ids = _pad_to(ids, self.meta.get("text_length", 0), self.meta.get("text_pad_id", 0))
        return torch.from_numpy(self.text_session.run(None, {"ids": ids.numpy().astype(np.int64)})[0])

    def _similarity_scale(self) -> torch.Tensor:
        return torch.tensor(self.meta["similarity_scale"])


def load_onnx(directory: str | Path, int8: bool | None = None) -> OnnxModel:
    return OnnxModel(Path(directory), int8=int8)
