"""Synthetic datasets that polymodal generates itself, so that everything runs offline."""
