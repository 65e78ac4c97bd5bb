"""Stage 5, export: a trained model as a deployable file, each checked against the Keras model.

- `onnx`: the ONNX file with the Model Zoo emotion-ferplus-8 contract, its metadata and parity check.
- `int8`: the int8 ONNX copy (static quantization calibrated on training faces).
- `tflite`: float and int8 TFLite (LiteRT) files.
- `ensemble`: several runs (and TTA views) as one graph.
- `onnx_ensemble`: several exported .onnx files (and TTA views) merged into one graph.
- `reference`: `export.py --check_reference`, the Model Zoo file scored like ours.

Imports: every stage above it.
"""
