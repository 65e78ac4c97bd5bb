"""ONNX (onnxruntime) versus Keras inference speed of an exported run, on real validation faces.

    python benchmarks/inference_speed.py --run runs/<name> --data_dir PATH

Prints latency per image at batch 1 and throughput at batch 64 for both, and writes inference_speed.json
into the run folder. Keras gets the same 64x64 contract input the ONNX file takes.
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ferkeras  # noqa: E402
from ferkeras.errors import run_cli, write_text_atomic  # noqa: E402


def best_of(fn, repeats):
    fn()  # warm-up: graph tracing and allocator growth are not inference
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    ferkeras.import_keras_quietly()
    import onnxruntime as ort
    from ferkeras.contract import INPUT_NAME, to_contract_input
    from ferkeras.data import load_split
    from ferkeras.models import load_model_file

    run = Path(args.run)
    faces = to_contract_input(load_split(args.data_dir, "valid").images[:64])
    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    model = load_model_file(run / "model.keras")
    nhwc = faces.transpose(0, 2, 3, 1)
    results = {
        "onnx_batch1_ms": 1000 * best_of(lambda: session.run(None, {INPUT_NAME: faces[:1]}), args.repeats * 4),
        "keras_batch1_ms": 1000 * best_of(lambda: model.predict_on_batch(nhwc[:1]), args.repeats * 4),
        "onnx_batch64_img_s": 64 / best_of(lambda: session.run(None, {INPUT_NAME: faces}), args.repeats),
        "keras_batch64_img_s": 64 / best_of(lambda: model.predict_on_batch(nhwc), args.repeats),
        "onnx_file_mb": (run / "model.onnx").stat().st_size / 1e6,
    }
    for key, value in results.items():
        print(f"{key:22s} {value:8.1f}")
    write_text_atomic(run / "inference_speed.json", json.dumps(results, indent=2))


if __name__ == "__main__":
    run_cli(main)
