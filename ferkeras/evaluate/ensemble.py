"""Ensembles: several model files scored as one (`evaluate.py --run a --run b ...`)."""
import numpy as np

from ferkeras.deploy.contract import Predictor, softmax
from ferkeras.train.run_folder import model_file


class EnsemblePredictor(Predictor):
    """Several predictors as one: scores are log of the members' mean softmax, so that a softmax of them
    (what every reader of scores does) is the average of the members' probabilities."""

    kind = "ensemble"

    def __init__(self, members):
        self.members = list(members)
        self.batch_size = max(getattr(m, "batch_size", 64) for m in self.members)

    def logits(self, faces):
        mean = np.mean([softmax(member.logits(faces)) for member in self.members], axis=0)
        return np.log(np.maximum(mean, 1e-12)).astype(np.float32)

    def describe(self):
        members = [member.describe() for member in self.members]
        return {"format": "ensemble", "members": members,
                "parameters": sum(int(m.get("parameters") or 0) for m in members)}


def ensemble_members(runs, models, checkpoint="best_acc"):
    """The model files of an ensemble: each --run's checkpoint, then each --model."""
    return [model_file(run=r, checkpoint=checkpoint) for r in runs] + \
        [model_file(model=m) for m in models]
