"""Spoken captions in the shared space (issue 14): audio towers bound onto a trained image-text
model, against text queries and a speech-recognition cascade, on the 10,000-image gallery.

    python benchmarks/audio.py --data runs/audio/data --base runs/composition_long3/long_polymodal_model \
        [--budget 15m] [--out runs/audio] [--cascade-queries 1000] [--reuse]

DATA is a ShapesWorld dataset with spoken captions (`polymodal data speak`; `--prepare SRC` links
SRC's images into DATA, copies its manifest (`--train-records` of its training records, its val
and test splits) and speaks it). BASE is the image-text model (the composition
benchmark's 15-minute model). Two audio towers are bound onto it, its towers
locked (ImageBind's recipe):
- direct: image-audio and text-audio terms, for `--budget`;
- emergent: image-audio only, for as many steps as direct took; its audio->text R@1 measures
  alignment no audio-text pair taught.

Every test record's spoken caption is a query against the 10,000 test images, clean and mixed
with pink noise at 20 dB and 5 dB (a fixed seed); text->image uses the same captions as text.
Seen and held-out voices are scored apart. The cascade (pocketsphinx with a trigram model of the
training captions, then the text tower) and end-to-end audio run on the first
`--cascade-queries` queries of each condition, against the whole gallery. Throughput: 3-second
clips embedded a batch of 64 at a time on all cores. Writes benchmarks/results/audio.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from polymodal import load
from polymodal.backends.pocketsphinx_asr import PocketsphinxTranscriber
from polymodal.cli_options import parse_duration
from polymodal.data import load_records
from polymodal.data.pairs import ImageTextPairs
from polymodal.data.schema import RecordSet
from polymodal.data.speak import SpeakConfig, add_noise, speak_dataset
from polymodal.data.spoken import SpokenClips, spoken_text
from polymodal.evaluate.retrieval import first_hit_ranks, relevance
from polymodal.evaluate.wer import word_error_rate
from polymodal.train.audio import AudioTrainConfig, train_audio
from polymodal.utils import write_json

RESULTS = Path(__file__).resolve().parent / "results" / "audio.json"
SNRS = {"clean": None, "snr20": 20.0, "snr5": 5.0}
console = Console()


def prepare(source: Path, data: Path, train_records: int) -> None:
    """DATA = SRC's manifest (its first `train_records` training records, val and test) and
    dataset.json, its images linked (not copied), then spoken."""
    data.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "dataset.json", data / "dataset.json")
    kept, train = [], 0
    for line in (source / "manifest.jsonl").read_text().splitlines():
        split = json.loads(line)["split"]
        train += split == "train"
        if split in ("val", "test") or (split == "train" and train <= train_records):
            kept.append(line)
    (data / "manifest.jsonl").write_text("\n".join(kept) + "\n")
    if not (data / "images").exists():
        os.symlink((source / "images").resolve(), data / "images")
    speak_dataset(data, SpeakConfig())


def bind(args, out: Path, pairs: tuple[str, ...], steps: int, budget: float | None) -> dict:
    if args.reuse and (out / "config.json").is_file():
        return json.loads((out / "config.json").read_text()).get("audio_training", {})
    return train_audio(AudioTrainConfig(data=str(args.data), out=str(out), model=args.base,
                                        audio_tower=args.audio_tower, pairs=pairs, steps=steps, time_budget=budget))


class TestSet:
    """The test split's spoken queries, images, captions and scene-level relevance."""

    def __init__(self, data: RecordSet, image_size: int):
        self.clips = SpokenClips(data, need_image=True)
        self.records = self.clips.records
        self.images = ImageTextPairs(RecordSet(data.root, self.records, data.skips), image_size,
                                     need_text=False).images
        self.texts = [spoken_text(r) for r in self.records]
        owner = np.arange(len(self.records))
        self.images_for_query, self.texts_for_query = relevance(self.records, owner)
        self.seen = np.array([(r.attributes.get("speech") or {}).get("seen_voice", True) for r in self.records])

    def waves(self, snr: float | None, seed: int = 0) -> list[np.ndarray]:
        """Every query, mixed with pink noise at `snr` dB (None: clean); the same noise every run."""
        waves = [self.clips.wave(k) for k in range(len(self.clips))]
        rng = np.random.default_rng(seed)
        return waves if snr is None else [add_noise(w, snr, rng, "pink") for w in waves]


def scored(model_dir: Path, score, reuse: bool) -> dict:
    """The model's end-to-end scores: from MODEL/audio_scores.json with --reuse, else `score()`
    (saved there for the next --reuse)."""
    cache = model_dir / "audio_scores.json"
    if reuse and cache.is_file():
        return json.loads(cache.read_text())
    result = score()
    write_json(cache, result)
    return result


def r_at_1(queries: torch.Tensor, gallery: torch.Tensor, relevant, rows=None) -> float:
    if rows is not None:
        queries, relevant = queries[rows], [relevant[i] for i in rows]
    (ranks,) = first_hit_ranks(queries, gallery, relevant)
    return float((ranks == 1).mean())


def end_to_end(model, test: TestSet, waves_by_snr: dict) -> dict:
    image, text = model.encode_image(test.images), model.encode_text(test.texts)
    out = {"text_to_image_R1": r_at_1(text, image, test.images_for_query)}
    for name, waves in waves_by_snr.items():
        audio = model.encode_audio(waves)
        out[f"audio_to_image_R1_{name}"] = r_at_1(audio, image, test.images_for_query)
        out[f"audio_to_text_R1_{name}"] = r_at_1(audio, text, test.texts_for_query)
        if name == "clean":
            for group, rows in (("seen", np.flatnonzero(test.seen)), ("unseen", np.flatnonzero(~test.seen))):
                out[f"audio_to_image_R1_{group}_voices"] = r_at_1(audio, image, test.images_for_query, rows)
    return out


def cascade(model, test: TestSet, waves_by_snr: dict, captions: list[str], n: int) -> dict:
    """pocketsphinx -> text tower, against end-to-end audio, on the first `n` queries."""
    asr = PocketsphinxTranscriber.from_texts(captions, workers=2)
    image = model.encode_image(test.images)
    rows = list(range(min(n, len(test.records))))
    table = {}
    for name, waves in waves_by_snr.items():
        start = time.perf_counter()
        heard = asr.transcribe([waves[k] for k in rows])
        seconds = time.perf_counter() - start
        heard_emb = model.encode_text([h if h.strip() else "nothing" for h in heard])
        audio = model.encode_audio([waves[k] for k in rows])
        relevant = [test.images_for_query[k] for k in rows]
        table[name] = {"wer": word_error_rate([test.texts[k] for k in rows], heard).wer,
                       "cascade_R1": r_at_1(heard_emb, image, relevant),
                       "end_to_end_R1": r_at_1(audio, image, relevant),
                       "asr_utterances_per_s": len(rows) / seconds}
    return table


def throughput(model, test: TestSet, repeats: int = 3, clips: int = 512) -> float:
    """Median clips/s embedding 3-second clips (each test clip cut or padded to 3 s), batch 64."""
    waves = [np.pad(test.clips.wave(k)[:48000], (0, max(0, 48000 - len(test.clips.wave(k)))))
             for k in range(min(clips, len(test.clips)))]
    model.encode_audio(waves[:64])  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.encode_audio(waves)
        rates.append(len(waves) / (time.perf_counter() - start))
    return float(np.median(rates))


def report(fig: dict) -> None:
    t = Table(title="spoken caption -> image, 10,000-image gallery (R@1)")
    for col in ("model", "text->image", "audio clean", "audio 20 dB", "audio 5 dB", "seen voices", "unseen voices",
                "audio->text"):
        t.add_column(col)
    for name, m in (("direct", fig["direct"]), ("emergent", fig["emergent"]), *fig["designs"].items()):
        t.add_row(name, *(f"{m[k]:.3f}" for k in ("text_to_image_R1", "audio_to_image_R1_clean",
                                                   "audio_to_image_R1_snr20", "audio_to_image_R1_snr5",
                                                   "audio_to_image_R1_seen_voices", "audio_to_image_R1_unseen_voices",
                                                   "audio_to_text_R1_clean")))
    console.print(t)
    c = Table(title=f"cascade (pocketsphinx -> text tower) against end-to-end, {fig['cascade_queries']} queries")
    for col in ("condition", "WER", "cascade R@1", "end-to-end R@1", "ASR utterances/s"):
        c.add_column(col)
    for name, row in fig["cascade"].items():
        c.add_row(name, f"{row['wer']:.3f}", f"{row['cascade_R1']:.3f}", f"{row['end_to_end_R1']:.3f}",
                  f"{row['asr_utterances_per_s']:.1f}")
    console.print(c)
    console.print({k: fig[k] for k in ("clean_gap", "snr5_gap", "unseen_voice_gap", "emergent_ratio", "clips_per_s")})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--base", required=True, help="the image-text checkpoint the audio towers are bound onto")
    ap.add_argument("--prepare", type=Path, default=None, help="a ShapesWorld dataset to link into DATA and speak")
    ap.add_argument("--train-records", type=int, default=20000, help="with --prepare: training records to speak")
    ap.add_argument("--out", type=Path, default=Path("runs/audio"))
    ap.add_argument("--audio-tower", default="shapes-cnn-audio", help="the preset whose audio tower is bound")
    ap.add_argument("--budget", type=parse_duration, default=900.0, help="training time of each audio tower")
    ap.add_argument("--cascade-queries", type=int, default=1000)
    ap.add_argument("--reuse", action="store_true", help="reuse audio towers already trained under OUT, and "
                                                          "their scores")
    ap.add_argument("--design", action="append", default=[], metavar="NAME=DIR",
                    help="another bound model (e.g. another audio tower) scored end to end beside direct")
    args = ap.parse_args()
    if args.prepare:
        prepare(args.prepare, args.data, args.train_records)
    data = load_records(args.data)
    runs = {"direct": ("image-audio", "text-audio"), "emergent": ("image-audio",)}
    training = {"direct": bind(args, args.out / "direct", runs["direct"], 10**6, args.budget)}
    # The same number of steps for the emergent tower, however busy the machine was meanwhile.
    training["emergent"] = bind(args, args.out / "emergent", runs["emergent"], training["direct"]["steps"], None)
    models = {name: load(args.out / name) for name in runs}
    designs = dict(d.split("=", 1) for d in args.design)
    test = TestSet(data.split("test"), models["direct"].config.image.image_size)
    waves = {name: test.waves(snr) for name, snr in SNRS.items()}
    fig = {name: scored(args.out / name, lambda m=m: end_to_end(m, test, waves), args.reuse)
           for name, m in models.items()}
    # Designs scored in earlier runs stay in the table (each names its model and training).
    earlier = json.loads(RESULTS.read_text()).get("designs", {}) if RESULTS.is_file() else {}
    fig["designs"] = earlier | {
        name: {**scored(Path(path), lambda p=path: end_to_end(load(p), test, waves), args.reuse), "model": path,
               "training": json.loads((Path(path) / "config.json").read_text()).get("audio_training")}
        for name, path in designs.items()}
    direct = fig["direct"]
    captions = [t for r in data.split("train") for t in r.text]
    fig |= {
        "text_to_image_R1": direct["text_to_image_R1"],
        "audio_to_image_R1_clean": direct["audio_to_image_R1_clean"],
        "clean_gap": direct["text_to_image_R1"] - direct["audio_to_image_R1_clean"],
        "audio_to_image_R1_snr5": direct["audio_to_image_R1_snr5"],
        "snr5_gap": direct["text_to_image_R1"] - direct["audio_to_image_R1_snr5"],
        "unseen_voice_gap": direct["audio_to_image_R1_seen_voices"] - direct["audio_to_image_R1_unseen_voices"],
        "emergent_ratio": fig["emergent"]["audio_to_text_R1_clean"] / max(direct["audio_to_text_R1_clean"], 1e-9),
        "cascade_queries": min(args.cascade_queries, len(test.records)),
        "cascade": cascade(models["direct"], test, waves, captions, args.cascade_queries),
        "clips_per_s": throughput(models["direct"], test), "threads": torch.get_num_threads(),
        "training": training, "gallery": len(test.records),
    }
    fig["wer"] = {name: row["wer"] for name, row in fig["cascade"].items()}
    report(fig)
    write_json(RESULTS, fig)


if __name__ == "__main__":
    main()
