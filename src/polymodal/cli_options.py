"""Option parsers that several areas' commands share. They live here, below `cli.py` (which
imports every area's command module), so that an area never has to import `cli.py` back."""

from __future__ import annotations

import typer


def parse_duration(text: str) -> float:
    """'180', '180s', '3m', '1.5h' -> seconds (a typer `parser=` for --time-budget)."""
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        seconds = float(text[:-1]) * units[text[-1]] if text[-1:] in units else float(text)
    except (ValueError, IndexError):
        seconds = -1.0
    if not seconds > 0:  # also refuses nan
        raise typer.BadParameter(f"'{text}' is not a duration (e.g. 90s, 3m, 1h)")
    return seconds
