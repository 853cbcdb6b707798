"""OpenVINO as a second engine for an export directory, and the choice between engines.

`export_openvino` writes the ONNX export (`onnx.py`: graphs, with int8 also ONNX Runtime's dynamic
int8 copies, tokenizer, metadata) and, beside it, the same two encoders as OpenVINO IR:
`image.xml`/`.bin`, `text.xml`/`.bin` (float32) and, with int8, `image.int8.xml`/`text.int8.xml`,
statically quantised by NNCF from calibration inputs. `OpenVinoModel` runs them behind the
interface `OnnxModel` offers; `load_export` picks the engine that is fastest on this CPU
(`cpu.choose_engine`) among those the directory holds.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import numpy as np

from ..errors import ExportError
from .cpu import choose_engine, has_vnni
from .onnx import ONNX_FILE, Calibration, OnnxModel, export_onnx

ENGINES = ("openvino", "onnx")


def export_openvino(model, out: str | Path, int8: bool = False, calibration: Calibration | None = None) -> Path:
    """The ONNX export plus OpenVINO IR of both encoders (int8 ones need `calibration`)."""
    if int8 and calibration is None:
        raise ValueError("OpenVINO int8 needs calibration inputs (see polymodal.backends.calibration)")

    def add_openvino(tmp: Path, meta: dict) -> None:
        import openvino as ov

        for name in ("image", "text"):
            # The ONNX reader of the runtime, not ov.convert_model, which sends usage telemetry.
            graph = ov.Core().read_model(str(tmp / f"{name}.onnx"))
            ov.save_model(graph, str(tmp / f"{name}.xml"), compress_to_fp16=False)
            if int8:
                quantized = quantize_nncf(graph, calibration.batches(name), transformer=True)
                ov.save_model(quantized, str(tmp / f"{name}.int8.xml"), compress_to_fp16=False)
        meta["openvino"] = {"version": ov.__version__, "int8": int8, "overflow_fix": _overflow_fix_name()}

    # ONNX Runtime's dynamic int8 too: the engine is chosen where the export runs (cpu.FASTEST_ENGINE).
    return export_onnx(model, out, int8=int8, extra=add_openvino)


def _overflow_fix_name() -> str:
    # Without VNNI, oneDNN's 8-bit products pass through saturating 16-bit sums: NNCF then keeps
    # every layer's weights in 7 bits ("enable"); with VNNI only the first layer needs it.
    return "first_layer" if has_vnni() else "enable"


def quantize_nncf(graph, batches: list[np.ndarray], transformer: bool = True):
    """NNCF post-training quantisation (min-max ranges over the batches, SmoothQuant and bias
    correction for transformers) of an OpenVINO model."""
    with _no_telemetry():
        import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    fix = OverflowFix.FIRST_LAYER if _overflow_fix_name() == "first_layer" else OverflowFix.ENABLE
    return nncf.quantize(graph, nncf.Dataset(batches), subset_size=sum(len(b) for b in batches),
                         model_type=nncf.ModelType.TRANSFORMER if transformer else None,
                         advanced_parameters=AdvancedQuantizationParameters(overflow_fix=fix))


@contextlib.contextmanager
def _no_telemetry():
    """NNCF sends usage statistics (openvino_telemetry) from the moment it is imported unless the
    user opted out or it runs in CI; polymodal uses no network at run time, so it imports NNCF as
    its CI does (the choice is made once, at import)."""
    saved = {name: os.environ.get(name) for name in ("CI", "NNCF_CI")}
    os.environ.update(CI="true", NNCF_CI="1")
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value


class _CompiledSession:
    """A compiled OpenVINO model with ONNX Runtime's `run(None, feeds)` call."""

    def __init__(self, compiled):
        self.compiled = compiled

    def run(self, _outputs, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self.compiled(list(feeds.values()))
        return [result[self.compiled.output(0)]]


class OpenVinoModel(OnnxModel):
    """The OpenVINO graphs of an export directory, with the common interface."""

    engine = "openvino"

    @staticmethod
    def exported_int8(meta: dict) -> bool:
        return bool(meta.get("openvino", {}).get("int8"))

    def _open_sessions(self, threads: int | None):
        import openvino as ov

        if "openvino" not in self.meta:
            raise ExportError(f"{self.directory}: has no OpenVINO graphs (export with `polymodal export openvino`)")
        suffix = ".int8.xml" if self.int8 else ".xml"
        # One stream and float32 precision: the hint that serves one batch at a time, with the
        # float32 graphs' numbers (the default may pick bf16 on CPUs that have it).
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        core = ov.Core()
        try:
            return tuple(_CompiledSession(core.compile_model(str(self.directory / f"{name}{suffix}"), "CPU", config))
                         for name in ("image", "text"))
        except RuntimeError as err:  # OpenVINO reports missing or damaged files as RuntimeError
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ExportError(f"{self.directory}: cannot load the OpenVINO graphs ({reason})") from None

    def to(self, device) -> OpenVinoModel:
        if str(device) != "cpu":
            raise ValueError(f"{self.model_id}: runs on the CPU through OpenVINO (asked for {device})")
        return self


def engines_in(directory: Path) -> list[str]:
    """The engines an export directory has graphs for, OpenVINO first."""
    try:
        meta = json.loads((Path(directory) / ONNX_FILE).read_text())
    except (OSError, ValueError) as err:
        raise ExportError(f"{Path(directory) / ONNX_FILE}: not a valid export description ({err})") from None
    return (["openvino"] if "openvino" in meta else []) + ["onnx"]


def load_export(directory: str | Path, int8: bool | None = None, engine: str = "auto",
                threads: int | None = None) -> OnnxModel:
    """An export directory run by `engine` ('openvino', 'onnx', or 'auto': the fastest on this CPU
    among the engines it holds with the precision asked; int8 where exported, unless int8=False)."""
    directory = Path(directory)
    available = engines_in(directory)
    if engine == "auto":
        meta = json.loads((directory / ONNX_FILE).read_text())
        classes = {"openvino": OpenVinoModel, "onnx": OnnxModel}
        if int8 is None:  # int8 wherever any engine has it
            int8 = any(classes[e].exported_int8(meta) for e in available)
        if int8:
            available = [e for e in available if classes[e].exported_int8(meta)] or available
        engine = choose_engine(available)
    elif engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r} ({', '.join(ENGINES)} or auto)")
    model_class = OpenVinoModel if engine == "openvino" else OnnxModel
    return model_class(directory, int8=int8, threads=threads)
