"""The paradigms lab's results.json, results.md (tables) and report.html (tables and plots)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..evaluate.report import png_b64  # noqa: E402
from ..paradigms.fewshot import SHOTS  # noqa: E402
from .report import write_lab_page, write_results_files  # noqa: E402

ALIGNMENT_COLUMNS = [("t2i R@1", "t2i_R@1"), ("R@5", "t2i_R@5"), ("R@10", "t2i_R@10"), ("i2t R@1", "i2t_R@1"),
                     ("R@5", "i2t_R@5"), ("R@10", "i2t_R@10"), ("unseen t2i R@1", "unseen_t2i_R@1"),
                     ("unseen i2t R@1", "unseen_i2t_R@1")]
FEWSHOT_METHODS = {"linear_probe": "linear probe", "prototype": "prototype", "tip_adapter": "Tip-Adapter"}


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + [
        "| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]


def alignment_table(rows: list[dict]) -> list[str]:
    """Every aligned model, best text->image R@1 first: the honest ordering, whatever it is."""
    ordered = sorted(rows, key=lambda r: -r.get("t2i_R@1", 0.0))
    body = [[r["family"], r["method"], *(r.get(key) for _, key in ALIGNMENT_COLUMNS), round(r["seconds"]),
             r.get("rounds", "-")] for r in ordered]
    return _table(["family", "method", *(t for t, _ in ALIGNMENT_COLUMNS), "fit/train s", "rounds"], body)


def federated_lines(fed: dict) -> list[str]:
    clients = ", ".join(f"{c['items']} items / {c['classes']} classes" for c in fed["clients"])
    return [f"{len(fed['clients'])} clients ({clients}), {fed['rounds']} communication rounds.", "",
            "Text->image R@1 / centralised: " + "; ".join(
                f"{name} **{ratio:.3f}**" for name, ratio in fed["ratios"].items() if name != "centralised")
            + " (target >= 0.9)."]


def fewshot_table(fewshot: dict) -> list[str]:
    rows = []
    for task, curve in fewshot["curves"].items():
        zero = curve["zero_shot"]
        for method, label in FEWSHOT_METHODS.items():
            if method in curve["methods"]:
                points = curve["methods"][method]
                rows.append([task, label, zero, *(points[k]["mean"] for k in SHOTS)])
    lines = _table(["task", "classifier", "zero-shot", *(f"{k}-shot" for k in SHOTS)], rows)
    return lines + ["", f"Tip-Adapter at 4 shots minus zero-shot (shape): {fewshot['tip4_minus_zeroshot']:+.3f}; "
                        f"minus the linear probe at 4 shots: {fewshot['tip4_minus_linear4']:+.3f} (targets >= 0)."]


def digits_table(digits: dict) -> list[str]:
    rows = [[m, digits[m]["R@1"], digits[m]["R@5"], digits[m]["same_digit@1"], digits[m]["test_corr_top1"],
             digits[m]["fit_seconds"]] for m in ("linear", "kernel", "deep")]
    n = digits["n"]
    return (_table(["CCA", "R@1", "R@5", "same digit @1", "top canonical corr (test)", "fit s"], rows)
            + ["", f"{n['train']} training, {n['val']} validation, {n['test']} test pairs. {digits['verdict']}."])


def results_markdown(results: dict) -> str:
    cfg = results["config"]
    lines = ["# Learning paradigms lab", "",
             f"ShapesWorld {results['data']}, preset {cfg['model']}, {cfg['budget']:.0f} s of training per aligned "
             f"model; the whole lab took {results['lab_minutes']:.1f} minutes."]
    if results["alignment"]:
        lines += ["", "## Alignment on the same splits (test; unseen colour-shape combinations)", "",
                  *alignment_table(results["alignment"])]
    if "federated" in results:
        lines += ["", "## Federated training", "", *federated_lines(results["federated"])]
    if "fewshot" in results:
        lines += ["", "## Few-shot adaptation (test accuracy, mean over support draws)", "",
                  *fewshot_table(results["fewshot"])]
    if "digits" in results:
        lines += ["", "## Two-view digits (left half -> right half)", "", *digits_table(results["digits"])]
    return "\n".join(lines) + "\n"


def recall_bars(rows: list[dict]):
    ordered = sorted(rows, key=lambda r: -r.get("t2i_R@1", 0.0))
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(ordered) + 1.2))
    y = range(len(ordered))
    ax.barh([i - 0.2 for i in y], [r.get("t2i_R@1", 0) for r in ordered], 0.4, label="text->image R@1")
    ax.barh([i + 0.2 for i in y], [r.get("i2t_R@1", 0) for r in ordered], 0.4, label="image->text R@1")
    ax.set_yticks(list(y), [r["method"] for r in ordered])
    ax.invert_yaxis()
    ax.set_xlabel("R@1 on test")
    ax.legend(loc="lower right")
    return fig


def fewshot_figure(fewshot: dict):
    curves = fewshot["curves"]
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), squeeze=False)
    for ax, (task, curve) in zip(axes[0], curves.items()):
        for method, label in FEWSHOT_METHODS.items():
            if method in curve["methods"]:
                points = curve["methods"][method]
                ax.errorbar(SHOTS, [points[k]["mean"] for k in SHOTS], [points[k]["std"] for k in SHOTS],
                            label=label, marker="o", capsize=3)
        if curve["zero_shot"] is not None:
            ax.axhline(curve["zero_shot"], color="k", linestyle="--", label="zero-shot")
        ax.axhline(curve["chance"], color="grey", linestyle=":", label="chance")
        ax.set_xscale("log", base=2)
        ax.set_title(task)
        ax.set_xlabel("shots per class")
    axes[0][0].set_ylabel("test accuracy")
    axes[0][0].legend(fontsize=8)
    return fig


def federated_figure(fed: dict):
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for name, run in fed["runs"].items():
        ax.plot([r["round"] for r in run["rounds"]], [r["t2i_R@1"] for r in run["rounds"]], marker=".", label=name)
    ax.set_xlabel("communication round")
    ax.set_ylabel("text->image R@1")
    ax.legend()
    return fig


def write_paradigms_results(results: dict, out: Path) -> None:
    markdown = results_markdown(results)
    write_results_files(out, results, markdown)
    figures = []
    if results["alignment"]:
        figures.append(("R@1 by method", png_b64(recall_bars(results["alignment"]))))
    if "fewshot" in results:
        figures.append(("Few-shot learning curves", png_b64(fewshot_figure(results["fewshot"]))))
    if "federated" in results:
        figures.append(("Federated training by round", png_b64(federated_figure(results["federated"]))))
    write_lab_page(out / "report.html", "Learning paradigms lab", f"data: {results['data']}", markdown, figures)
