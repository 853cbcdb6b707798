"""The labs' report.html: the tables of results.md and figures in one self-contained file (figures
embedded as PNG). The VQA lab's: accuracy curves, a bar chart beside the paper's numbers, and
attention maps."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ..evaluate.report import png_b64
from ..utils import atomic_path, write_json


def _md_table_to_html(md: str) -> str:
    """results.md holds headings, paragraphs and pipe tables; render them (no Markdown library needed)."""
    parts, table = [], []

    def flush():
        if table:
            rows = [[c.strip() for c in r.strip("|").split("|")] for r in table if not set(r) <= set("|-: ")]
            head, *body = rows
            parts.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
                         + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
                         + "</table>")
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
        else:
            flush()
            heading = len(line) - len(line.lstrip("#"))
            if heading:
                parts.append(f"<h{heading + 1}>{html.escape(line[heading:].strip())}</h{heading + 1}>")
            elif line.strip():
                parts.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(parts)


def curves_figure(results: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for key, e in results["models"].items():
        pts = e["curve"]
        if not pts:
            continue
        for ax, metric in zip(axes, ("relational", "non-relational")):
            ax.plot([p["seconds"] / 60 for p in pts], [p.get(metric, 0) for p in pts], "o-", ms=3, label=key)
    for ax, metric in zip(axes, ("relational", "non-relational")):
        ax.set_title(f"{metric} accuracy (validation)")
        ax.set_xlabel("training minutes")
        ax.axhline(0.94 if metric == "relational" else 0.98, color="grey", ls="--", lw=0.8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[1].legend(fontsize=8)
    return fig


def bars_figure(results: dict):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results["models"]) + list(results["baselines"])
    rows = [e["test"].get("clean", e["test"].get("question masked")) for e in results["models"].values()]
    rows += list(results["baselines"].values())
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 3.6))
    for off, metric in ((-0.2, "relational"), (0.2, "non-relational")):
        ax.bar(x + off, [r.get(metric, 0) for r in rows], 0.4, label=metric)
    for name, paper in results["paper"].items():
        if name in results["models"]:
            i = names.index(name)
            ax.plot([i - 0.4, i], [paper["relational"]] * 2, "k-", lw=2)
            ax.plot([i, i + 0.4], [paper["non-relational"]] * 2, "k-", lw=2)
    ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy")
    ax.set_title("Sort-of-CLEVR test accuracy (black ticks: the paper's numbers)")
    ax.legend(fontsize=8)
    return fig


def write_vqa_report(results: dict, markdown: str, path: Path) -> Path:
    out = path.parent
    figures = [("Accuracy during training", png_b64(curves_figure(results))),
               ("Test accuracy by model", png_b64(bars_figure(results)))]
    extra = []
    if results.get("attention_examples"):
        extra.append("<h2>Where the question looks (cross-attention: each hop's weights over the regions)</h2>"
                     "<div class='grid'>")
        for ex in results["attention_examples"]:
            data = base64.b64encode((out / ex["image"]).read_bytes()).decode()
            extra.append(f"<figure><img src='data:image/png;base64,{data}' style='width:420px'></figure>")
        extra.append("</div>")
    return write_lab_page(path, "VQA fusion lab", f"data: {results['data']}", markdown, figures, "\n".join(extra))


def write_lab_page(path: Path, title: str, note: str, markdown: str, figures: list[tuple[str, str]],
                   extra_html: str = "") -> Path:
    """One self-contained HTML page: a lab's results.md, then its figures (titles, base64 PNGs)."""
    body = [f"<h1>{html.escape(title)}</h1><p class='note'>{html.escape(note)}</p>", _md_table_to_html(markdown)]
    for caption, png in figures:
        body.append(f"<h2>{html.escape(caption)}</h2><img src='data:image/png;base64,{png}' style='max-width:100%'>")
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1100px;color:#222}"
            "table{border-collapse:collapse;margin:1rem 0}"
            "td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}"
            "td:first-child,th:first-child{text-align:left}.note{color:#666}.grid{display:flex;flex-wrap:wrap;gap:.5rem}"
            "</style></head><body>" + "\n".join(body) + extra_html + "</body></html>")
    with atomic_path(path) as tmp:
        tmp.write_text(page)
    return path


def write_results_files(out: Path, results: dict, markdown: str) -> None:
    """A lab's results.json and results.md, each written whole."""
    write_json(out / "results.json", results)
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text(markdown)
