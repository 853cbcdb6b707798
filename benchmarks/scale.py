"""Issue 16's results file, assembled from its three benchmarks' own files:

    python benchmarks/stream.py      # -> results/scale_stream.json (streaming: memory, throughput, resume)
    python benchmarks/search_1m.py   # -> results/scale_ann.json    (1M real items, text and image queries)
    python benchmarks/int8.py        # -> results/scale_int8.json   (ViT-B/32 int8 against open_clip float32)
    python benchmarks/scale.py       # -> results/scale.json        (the keys the issue names, and each part whole)
"""

from __future__ import annotations

import json
from pathlib import Path

from polymodal.utils import write_json

RESULTS = Path(__file__).parent / "results"
PARTS = {
    "scale_stream.json": ("stream_memory_ratio", "stream_throughput_ratio", "resume_identical"),
    "scale_ann.json": ("ann_text_recall10", "ann_text_speedup", "ann_image_recall10", "ann_image_speedup",
                       "bytes_per_vector", "build_s"),
    "scale_int8.json": ("int8_speedup", "int8_cosine", "fp32_limit_images_per_s"),
}


def main() -> None:
    scale: dict = {}
    for name, keys in PARTS.items():
        part = json.loads((RESULTS / name).read_text())
        scale |= {key: part[key] for key in keys}
        scale[name.removesuffix(".json").removeprefix("scale_")] = part
    write_json(RESULTS / "scale.json", scale)
    for key, value in scale.items():
        if not isinstance(value, dict):
            print(f"{key:26s} {value}")


if __name__ == "__main__":
    main()
