"""The HTML report: metrics, text-to-image search results, a similarity heat-map, the loss curve;
for a captioner, its caption metrics and example images with their captions, facts marked.

One self-contained file (figures are embedded PNGs), so it can be mailed or archived as is.
"""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from jinja2 import Template  # noqa: E402
from PIL import Image  # noqa: E402

from ..utils import atomic_path  # noqa: E402
from .caption_facts import stated_facts  # noqa: E402
from .captioning import CAPTION_COLUMNS, CaptionedSplit, caption_rows  # noqa: E402
from .run import summary_lines  # noqa: E402

TEMPLATE = Template("""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
 table { border-collapse: collapse; margin: 1rem 0; } td, th { border: 1px solid #ccc; padding: .3rem .6rem; text-align: right; }
 th:first-child, td:first-child { text-align: left; }
 .query { margin: 1.2rem 0; } .query h3 { font-size: 1rem; margin: .2rem 0; }
 .grid { display: flex; gap: .4rem; } .grid figure { margin: 0; text-align: center; font-size: .75rem; }
 .grid img { width: 96px; height: 96px; image-rendering: pixelated; border: 3px solid #ddd; }
 .grid img.hit { border-color: #2a2; } .grid img.miss { border-color: #c33; }
 .note { color: #666; font-size: .9rem; }
 tr.hit td:nth-child(4) { color: #2a2; font-weight: bold; } tr.miss td:nth-child(6) { color: #c33; font-weight: bold; }
 table.captions td, table.captions th { text-align: left; vertical-align: top; } table.captions ul { margin: 0; padding-left: 1rem; }
 .fact { display: inline-block; margin: .1rem; padding: 0 .3rem; border-radius: 3px; font-size: .8rem; }
 .fact.true { background: #dfd; color: #161; } .fact.false { background: #fdd; color: #a11; }
</style></head><body>
<h1>{{ title }}</h1>
<p class="note">{{ subtitle }}</p>
<h2>Metrics</h2>
{{ metrics_table }}
{% if extra_lines %}<ul>{% for line in extra_lines %}<li>{{ line|e }}</li>{% endfor %}</ul>{% endif %}
{% if queries %}<h2>Text &rarr; image search</h2>
<p class="note">Each query describes a scene of the gallery (test and test_unseen together); the top results, green where
the image makes every fact of the query true.</p>
{% for q in queries %}<div class="query"><h3>&ldquo;{{ q.text }}&rdquo;{% if q.unseen %} <em>(unseen combination)</em>{% endif %}
{% if q.matches is defined %}<span class="note">&mdash; {{ q.matches }} matching image{{ 's' if q.matches != 1 }} in the gallery</span>{% endif %}</h3>
<div class="grid">{% for r in q.results %}<figure><img class="{{ r.cls }}" src="data:image/png;base64,{{ r.png }}"><figcaption>{{ '%.3f' % r.score }}</figcaption></figure>{% endfor %}</div></div>{% endfor %}{% endif %}
{% if probes %}<h2>Probe pairs</h2>
<p class="note">One test image per probe family, its true caption and the same caption with one thing changed, with the model's
similarity for each; green: the true caption scores higher.</p>
<table class="probes"><tr><th>family</th><th>image</th><th>true caption</th><th>score</th><th>changed caption</th><th>score</th></tr>
{% for p in probes %}<tr class="{{ p.cls }}"><td>{{ p.family }}</td><td><img src="data:image/png;base64,{{ p.png }}" style="width:64px;image-rendering:pixelated"></td>
<td style="text-align:left">{{ p.true }}</td><td>{{ '%.3f' % p.true_score }}</td><td style="text-align:left">{{ p.false }}</td><td>{{ '%.3f' % p.false_score }}</td></tr>{% endfor %}</table>{% endif %}
{% if captions %}<h2>Captions</h2>
<p class="note">The first images of each split with the model's caption and the reference captions; each fact the caption
states, checked against the scene: green true, red false.</p>
<table class="captions"><tr><th>split</th><th>image</th><th>generated caption</th><th>facts</th><th>reference captions</th></tr>
{% for c in captions %}<tr><td>{{ c.split|e }}</td><td><img src="data:image/png;base64,{{ c.png }}" style="width:96px;image-rendering:pixelated"></td>
<td>{{ c.caption|e }}</td><td>{% if c.facts is none %}<span class="note">no scene</span>{% else %}{% for kind, words, ok in c.facts %}<span class="fact {{ 'true' if ok else 'false' }}" title="{{ kind }}">{{ '&#10003;' if ok else '&#10007;' }} {{ words|e }}</span>{% endfor %}{% endif %}</td>
<td><ul>{% for ref in c.references %}<li>{{ ref|e }}</li>{% endfor %}</ul></td></tr>{% endfor %}</table>{% endif %}
{% for fig in figures %}<h2>{{ fig.title }}</h2><img src="data:image/png;base64,{{ fig.png }}" style="max-width:100%">{% endfor %}
</body></html>
""")


def png_b64(fig_or_image) -> str:
    buf = io.BytesIO()
    if hasattr(fig_or_image, "savefig"):
        fig_or_image.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig_or_image)
    else:
        fig_or_image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def metrics_table(results: dict) -> str:
    """The retrieval table, or the caption table for a captioner's results."""
    if caption_rows(results):
        return caption_table(results)
    rows = ["<table><tr><th>split</th><th>images</th><th>t&rarr;i R@1</th><th>R@5</th><th>R@10</th><th>median rank</th>"
            "<th>i&rarr;t R@1</th><th>R@5</th><th>R@10</th></tr>"]
    for split, r in results.items():
        if not isinstance(r, dict) or "text_to_image" not in r:
            continue
        t, i = r["text_to_image"], r["image_to_text"]
        cells = [split, r["n_images"], *(f"{t[k]:.3f}" for k in ("R@1", "R@5", "R@10")), f"{t['median_rank']:.0f}",
                 *(f"{i[k]:.3f}" for k in ("R@1", "R@5", "R@10"))]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return "\n".join(rows) + "</table>"


def caption_table(results: dict) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ("split", "captions", *CAPTION_COLUMNS, "unparsed spans"))
    rows = ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in caption_rows(results)]
    return f"<table class=\"caption-metrics\"><tr>{head}</tr>\n" + "\n".join(rows) + "</table>"


def caption_examples(captioned: dict[str, CaptionedSplit], per_split: int = 4) -> list[dict]:
    """Rows of the report's caption table: the first images of each split, with their caption,
    references and stated facts (None where the record has no scene)."""
    rows = []
    for split, done in captioned.items():
        for record, image, caption in list(zip(done.records, done.images, done.captions))[:per_split]:
            facts = stated_facts(caption, record.attributes) if "objects" in record.attributes else None
            rows.append({"split": split, "png": png_b64(Image.fromarray(image.permute(1, 2, 0).numpy())),
                         "caption": caption, "facts": facts, "references": record.text})
    return rows


def loss_curve(metrics_csv: Path):
    steps, losses, evals = [], [], {}
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            if row["name"] == "train/loss":
                steps.append(int(row["step"]))
                losses.append(float(row["value"]))
            elif row["name"].startswith("val/"):
                evals.setdefault(row["name"], []).append((int(row["step"]), float(row["value"])))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(steps, losses, label="training loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if evals:
        ax2 = ax.twinx()
        for name, pts in evals.items():
            ax2.plot(*zip(*pts), "o--", label=name)
        ax2.set_ylabel("validation")
        ax2.set_ylim(0, 1)
        ax2.legend(loc="center right", fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    return fig


def similarity_heatmap(sims: torch.Tensor, captions: list[str], thumbs: list):
    """sims: (I, T) with I images (columns show them as thumbnails) and T captions."""
    n_img, n_txt = sims.shape
    fig, axes = plt.subplots(2, 1, figsize=(1.0 * n_img + 4, 0.45 * n_txt + 2.2),
                             gridspec_kw={"height_ratios": [1.3, 0.45 * n_txt]})
    axes[0].imshow(np.concatenate([np.asarray(t) for t in thumbs], axis=1))
    axes[0].axis("off")
    im = axes[1].imshow(sims.T.numpy(), cmap="viridis", aspect="auto")
    axes[1].set_yticks(range(n_txt), [c if len(c) < 60 else c[:57] + "..." for c in captions], fontsize=8)
    axes[1].set_xticks(range(n_img), [str(i) for i in range(n_img)])
    for i in range(n_img):
        for t in range(n_txt):
            axes[1].text(i, t, f"{sims[i, t]:.2f}", ha="center", va="center", fontsize=7, color="w")
    fig.colorbar(im, ax=axes[1], fraction=0.02)
    return fig


def write_report(path: Path, title: str, subtitle: str, results: dict, queries: list[dict], figures: list[dict],
                 probes: list[dict] | None = None, captions: list[dict] | None = None) -> Path:
    """`probes`: rows of the probe-pair table (family, png, true, true_score, false, false_score, cls);
    `captions`: rows of the caption table (`caption_examples`)."""
    page = TEMPLATE.render(title=title, subtitle=subtitle, metrics_table=metrics_table(results),
                           extra_lines=summary_lines(results), queries=queries, figures=figures, probes=probes,
                           captions=captions)
    with atomic_path(path) as tmp:
        tmp.write_text(page)
    return path


def write_eval_report(path: Path, title: str, results: dict, captioned: dict[str, CaptionedSplit] | None = None) -> Path:
    """The report of `polymodal eval`: the metrics, and for a captioner example captions."""
    subtitle = "caption metrics and example captions" if captioned else "retrieval and probe metrics"
    return write_report(path, html.escape(title), subtitle, results, [], [], captions=caption_examples(captioned or {}))
