"""Model card (README.md with model-index metadata) for a trained hubert-gpt checkpoint."""

from .render import render_card

__all__ = ["render_card"]
