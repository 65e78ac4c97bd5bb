"""Stage 4, evaluation: scores of a run, a model file or an ensemble on a FER+ split.

- `metrics`: accuracy, balanced accuracy, per-class recall, confusion matrix, KL to the votes.
- `tta`: test-time augmentation views (flip, shifted crops).
- `ensemble`: members' probabilities averaged.
- `report`: `evaluate.py` (report.json, confusion matrix picture, text table).
- `compare`: `evaluate.py --compare`, runs side by side; `plots`: the pictures.

Imports: `ferkeras.deploy`, `ferkeras.data`, `ferkeras.models`, `ferkeras.train` (a run's folder).
"""
