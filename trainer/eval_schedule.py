"""Which epochs the training loop evaluates (``train.eval_every``) and when it stops early (PSL's rule).

Both read the history of the evaluated epochs' selection scores, which is rebuilt from metrics.csv on a
resume (:func:`trainer.results.evaluated`), so a resumed run decides as the interrupted one would have.
Patience counts epochs since the best evaluated epoch; an epoch at which training would stop is evaluated
first, as its score may be the improvement that lets training go on. With ``every`` 1 every epoch is
evaluated and the rule is PSL's as it was.
"""
from __future__ import annotations

import numpy as np


def best_epoch(history: dict[int, float]) -> int:
    """The first evaluated epoch with the highest score (``np.argmax``'s choice, NaN included)."""
    epochs = sorted(history)
    return epochs[int(np.argmax([history[e] for e in epochs]))]


class EvalSchedule:
    """``history``: evaluated epoch (1-based) → selection score; :meth:`record` adds to it."""

    def __init__(self, every: int, epochs: int, patience: int | None, history: dict[int, float]) -> None:
        self.every, self.epochs, self.patience = every, epochs, patience
        self.history = dict(history)

    def record(self, epoch: int, score: float) -> None:
        self.history[epoch] = score

    def stalled(self, epoch: int) -> bool:
        """Whether, at the end of ``epoch``, the score has not improved for ``patience`` epochs."""
        return bool(self.patience and self.history) and epoch - best_epoch(self.history) >= self.patience

    def due(self, epoch: int) -> bool:
        """Whether ``epoch`` (1-based) is evaluated: every ``every`` epochs, the last one, and one after which
        training would stop early."""
        return epoch % self.every == 0 or epoch == self.epochs or self.stalled(epoch)
