"""Sizing chunks so that temporaries stay under a budget of elements, whatever the data's width."""
from __future__ import annotations

__all__ = ["chunk_length"]


def chunk_length(budget: int, per_item: int) -> int:
    """How many items (rows, columns) of ``per_item`` elements each fit in ``budget`` elements.

    At least one, so that a single item wider than the budget is still processed.
    """
    return max(1, budget // max(per_item, 1))
