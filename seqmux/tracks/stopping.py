"""Early stopping on the validation loss, one rule for every track.

The weights of the lowest validation loss are kept. Training stops after ``patience`` records
(epochs, or record intervals of steps) without a loss lower than the reference by more than the
fraction ``min_improvement``; the reference is the loss at the last such improvement. The run has
*converged* when patience ran out, or when the best record is not the last one; it has not when the
loss was still falling at the end of the budget (the tracks then log a warning and write
``converged: false``).
"""

import math


class EarlyStopping:
    """``update(step, loss, model)`` after each record; True when training should stop."""

    def __init__(self, patience=0, min_improvement=0.0):
        self.patience, self.min_improvement = int(patience), float(min_improvement)
        self.best_loss, self.best_step, self.best_state = math.inf, None, None
        self.reference, self.bad, self.stopped, self.last_step = math.inf, 0, False, None

    def update(self, step, loss, model):
        """Record the validation ``loss`` at ``step``; keeps a copy of ``model``'s weights when it is
        the lowest so far. Returns whether patience ran out."""
        self.last_step = step
        if loss < self.best_loss:
            self.best_loss, self.best_step = float(loss), step
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if loss < self.reference * (1.0 - self.min_improvement):
            self.reference, self.bad = float(loss), 0
        else:
            self.bad += 1
        self.stopped = bool(self.patience) and self.bad >= self.patience
        return self.stopped

    def restore(self, model):
        """Load the best weights into ``model`` (when any loss was finite)."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        return model

    @property
    def converged(self):
        return bool(self.stopped or self.best_step != self.last_step)

    def facts(self, unit="step"):
        """``{"best_<unit>", "<unit>s_done", "converged"}`` for metrics and checkpoints."""
        return {f"best_{unit}": self.best_step, f"{unit}s_done": self.last_step, "converged": self.converged}
