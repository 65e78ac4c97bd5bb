"""Stage 3, training: one run of `train.py`, from options to a run folder of checkpoints.

- `config`: the option table, the single source of argparse flags, YAML recipes, `--help` and the
  typed `Config` every stage reads.
- `run_folder`: `RunFolder`, the one place that knows a run folder's file names.
- `run`: the training run itself (fit, callbacks, checkpoints, exact `--resume`).
- `frozen_cache`: `--cache_frozen`, the frozen prefix's outputs computed once per view.
- `distill`: `--teacher` distillation; `distribute`: `--strategy` (mirrored, multi-worker);
  `finetune`: `--finetune_from` on your own faces; `plots`: the training curves.

Imports: `ferkeras.deploy`, `ferkeras.data`, `ferkeras.models`.
"""
