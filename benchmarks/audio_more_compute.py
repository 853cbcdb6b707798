"""What more samples give the audio binding (issue 14, a diagnostic beside `audio.py`): the audio
benchmark's data rebuilt from scratch (the same generator and seed: the manifest's MD5 is printed
to compare), the default audio tower bound onto BASE on a GPU for BUDGET seconds with batches of
BATCH, then scored exactly as `audio.py` scores it. Run where a GPU is; the targets themselves are
measured on 2 CPU cores by `audio.py`.

    python benchmarks/audio_more_compute.py --base runs/composition_long3/long_polymodal_model \
        [--budget 250] [--batch 256] [--work /tmp/audio_more]

Writes benchmarks/results/audio_more_compute.json.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import torch
from audio import SNRS, TestSet, end_to_end, prepare

from polymodal import load
from polymodal.data import load_records
from polymodal.data.synthetic.shapes import ShapesConfig, generate
from polymodal.train.audio import AudioTrainConfig, train_audio
from polymodal.utils import pick_device, write_json

RESULTS = Path(__file__).resolve().parent / "results" / "audio_more_compute.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the composition benchmark's 15-minute model")
    ap.add_argument("--budget", type=float, default=250.0, help="seconds of binding")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--work", type=Path, default=Path("/tmp/audio_more"))
    args = ap.parse_args()
    source, data = args.work / "source", args.work / "data"
    if not (source / "manifest.jsonl").exists():  # the composition benchmark's ShapesWorld
        generate(source, ShapesConfig(n_train=40000, n_val=1000, n_test=10000, n_unseen=2000), progress=False)
    manifest_md5 = hashlib.md5((source / "manifest.jsonl").read_bytes()).hexdigest()
    if not (data / "manifest.jsonl").exists():
        prepare(source, data, 20000)
    training = train_audio(AudioTrainConfig(data=str(data), out=str(args.work / "direct"), model=args.base,
                                            pairs=("image-audio", "text-audio"), steps=10**6, time_budget=args.budget,
                                            batch_size=args.batch, progress=False))
    model = load(args.work / "direct").to(pick_device())
    test = TestSet(load_records(data).split("test"), model.config.image.image_size)
    scores = end_to_end(model, test, {name: test.waves(snr) for name, snr in SNRS.items()})
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    result = {"device": device, "manifest_md5": manifest_md5, "batch_size": args.batch, "training": training,
              "scores": scores, "clean_gap": scores["text_to_image_R1"] - scores["audio_to_image_R1_clean"],
              "snr5_gap": scores["text_to_image_R1"] - scores["audio_to_image_R1_snr5"],
              "unseen_voice_gap": scores["audio_to_image_R1_seen_voices"] - scores["audio_to_image_R1_unseen_voices"],
              "date": time.strftime("%Y-%m-%d")}
    print(result)
    write_json(RESULTS, result)


if __name__ == "__main__":
    main()
