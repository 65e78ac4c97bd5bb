"""Stage 6, deployment: what runs a shipped model file. TensorFlow-free and Keras-free.

- `contract`: the ONNX contract (float32 gray NCHW [N, 1, 64, 64], raw 0..255, 8 scores), its check,
  an onnxruntime session over it, and `softmax`.
- `faces`: face detectors (YuNet, Haar) and the FER+ framing of their boxes.
- `predict`: `predict.py` (pictures and videos in, one row per face out) and `EmotionPredictor`.
- `tflite`: the same contract through a TFLite interpreter.
- `downloads`: model files found in the cache or downloaded once, with their sha256 checked.

Imports: nothing of ferkeras but `ferkeras.errors`; no TensorFlow, no Keras (tests/test_layers.py).
"""
