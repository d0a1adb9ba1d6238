"""The error that stops training when a loss or the weights stop being finite."""

from __future__ import annotations


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss (or weights).

    Attributes:
      step: the optimizer step whose loss (or resulting weights) is not finite (1-based:
        the number of updates applied when it was detected).
      terms: the names of the non-finite loss terms, e.g. ``("loss_mask",)``, or
        ``("weights",)``.
    """

    def __init__(self, step: int, terms: tuple[str, ...], detail: str = "") -> None:
        self.step = step
        self.terms = terms
        message = f"non-finite {', '.join(terms)} at step {step}"
        super().__init__(f"{message}: {detail}" if detail else message)
