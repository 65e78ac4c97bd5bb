"""Stage 1, data: FER+ faces and their labels, before any model sees them.

- `ferplus`: reads the Microsoft layout (FER2013Train/Valid/Test + label.csv) or Kaggle's fer2013.csv
  with fer2013new.csv, and caches decoded splits.
- `labels`: the label modes of Barsoum et al. 2016 (majority, probability, crossentropy, multi_target).
- `augment`: the albumentations recipes (`--augment`), random erasing.
- `batches`: the training batches (a Keras PyDataset keyed on seed, epoch and batch index), class weights.
- `user_faces`: your own labelled pictures for `--finetune_from`, cropped by the deploy face detector.

Imports: `ferkeras.deploy` only (for the face detector and the cache folder); no model code.
"""
