"""Static int8 quantization of a contract ONNX model with onnxruntime, calibrated on real FER+ faces.

`export.py --quantize int8` writes `<name>.int8.onnx` beside the float file: onnxruntime's
`quant_pre_process` (shape inference and graph optimisation, which folds the BatchNorm Mul/Add pairs
that tf2onnx leaves into the convolutions), then `quantize_static` in QDQ format with uint8
activations and int8 weights, its activation ranges calibrated on training faces. Accuracy is
reported on the validation faces, which the calibration never saw.

The int8 file keeps the contract (same tensor names and shapes, raw 0..255 pixels in) and the float
file's metadata_props, plus a note saying how it was quantized. Before it is kept, its top-1
predictions are compared with the float model's on the validation faces; below MIN_AGREEMENT the
quantization is refused and nothing is written. The report (size, latency at batch 1, throughput at
batch 64, validation accuracy, for both files) is printed and written to `quantization.json`.

This module imports neither TensorFlow nor Keras.
"""
import json
import tempfile
from pathlib import Path

import numpy as np

from ferkeras.deploy.contract import ContractSession, check_onnx_contract, load_onnx, to_contract_input
from ferkeras.errors import UserError, atomic_path, write_text_atomic
from ferkeras.export.onnx import write_metadata
from ferkeras.tables import text_table
from ferkeras.timing import Stopwatch, load_average, time_calls

QUANTIZE_CHOICES = ("int8",)
# onnxruntime's "entropy" is not offered: quantize_static gives its histogram 128 bins, as many as the
# quantized bins, so the KL search has one candidate, the full range, and the scales equal minmax's
# (measured: all 182 identical). Percentile and minmax scored the same within a few faces on Valid;
# minmax calibrates in half the time, so it is the default.
CALIBRATION_METHODS = ("minmax", "percentile")
DEFAULT_METHOD = "minmax"
DEFAULT_CALIBRATION_FACES = 500
CALIBRATION_BATCH = 50
CALIBRATION_SEED = 0
# Top-1 agreement with the float model below which the int8 model is refused. On the CPU recipe's
# ResNet50 every usable setting agreed on 92-93% of the validation faces with no loss of accuracy;
# the one that lost accuracy (8-bit per-channel weights, which saturate AVX2's int16 sums) agreed on
# 85.6% and lost 1.5 points; calibrating on blank faces agrees on about a third. Below 90% is refused.
MIN_AGREEMENT = 0.90
# Speed: float and int8 are timed in alternating rounds, so a machine shared with other jobs slows
# both alike and the ratio stays fair.
SPEED_ROUNDS = 5
LATENCY_RUNS_PER_ROUND = 10
THROUGHPUT_BATCH = 64
REPORT_NAME = "quantization.json"


# ----------------------------------------------------------------------------- choices and paths

def check_quantize_choice(value):
    if value not in QUANTIZE_CHOICES:
        raise UserError(f"--quantize: expected one of {', '.join(QUANTIZE_CHOICES)}, got {value!r}; "
                        "use --quantize int8 (onnxruntime static quantization)")


def check_calibration_options(faces, method):
    if not isinstance(faces, int) or faces < 1:
        raise UserError(f"--calibration_faces: expected a whole number of faces >= 1, got {faces!r}; "
                        f"a few hundred (default {DEFAULT_CALIBRATION_FACES}) is enough")
    if method not in CALIBRATION_METHODS:
        raise UserError(f"--calibration_method: expected one of {', '.join(CALIBRATION_METHODS)}, "
                        f"got {method!r}")


def int8_path(float_path):
    """model.onnx -> model.int8.onnx (model.tflite -> model.int8.tflite), in the same folder."""
    float_path = Path(float_path)
    return float_path.with_name(f"{float_path.stem}.int8{float_path.suffix}")


# ----------------------------------------------------------------------------- calibration faces

def calibration_faces(data_dir, count, seed=CALIBRATION_SEED):
    """A seeded random subset of `count` training faces, uint8 (count, 48, 48).

    Training faces, not validation ones: the accuracy reported afterwards is on faces the
    calibration did not see. Every face counts, whatever its votes: calibration needs no labels.
    """
    from ferkeras.data.ferplus import load_split, resolve_data_dir

    images = load_split(resolve_data_dir(data_dir), "train").images
    if count > len(images):
        raise UserError(f"--calibration_faces: asked for {count} faces, the training split has "
                        f"{len(images)}; ask for at most {len(images)}")
    picked = np.random.default_rng(seed).choice(len(images), count, replace=False)
    return images[np.sort(picked)]


def calibration_batch_size(count, fixed_batch=None):
    """Faces per calibration call: the model's fixed batch, else the largest divisor of `count` up to
    CALIBRATION_BATCH. onnxruntime's histogram calibrators (percentile) stack the outputs of all calls
    into one array, so every call must have the same size."""
    if fixed_batch:
        return fixed_batch
    return max(size for size in range(1, CALIBRATION_BATCH + 1) if count % size == 0)


class CalibrationReader:
    """onnxruntime's CalibrationDataReader protocol over prepared contract input, in equal batches
    (a tail shorter than `batch_size` is left out)."""

    def __init__(self, contract_input, input_name, batch_size):
        self.batches = [contract_input[start:start + batch_size]
                        for start in range(0, len(contract_input) - batch_size + 1, batch_size)]
        self.input_name = input_name
        self.rewind()

    def get_next(self):
        batch = next(self._pending, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self):
        self._pending = iter(self.batches)


# ----------------------------------------------------------------------------- quantizing

def quantization_settings(method, per_channel, overrides=None):
    """The keyword arguments of quantize_static for our defaults (measurements in the README);
    `overrides` replaces some of them (benchmarks/quantize_int8.py compares the alternatives).

    QDQ with uint8 activations and int8 weights is what onnxruntime's CPU kernels run fastest on AVX2
    (QOperator format ran as fast); int8 activations ran about 2x slower, uint8 weights 1.2-1.7x.
    Per-channel scales come with 7-bit weights (reduce_range), as onnxruntime advises for CPUs
    without VNNI: with 8-bit ones the int16 sums saturate and accuracy fell 1.5 points here.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    settings = {
        "quant_format": QuantFormat.QDQ,
        "activation_type": QuantType.QUInt8,
        "weight_type": QuantType.QInt8,
        "per_channel": per_channel,
        "reduce_range": per_channel,
        "calibrate_method": {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                             "percentile": CalibrationMethod.Percentile}[method],
    }
    settings.update(overrides or {})
    return settings


def describe_settings(settings, method, faces):
    import onnxruntime

    kind = {"QUInt8": "uint8", "QInt8": "int8"}
    weights = ("per-channel" if settings["per_channel"] else "per-tensor") + \
        (" 7-bit" if settings["reduce_range"] else "")
    return (f"int8 static quantization (onnxruntime {onnxruntime.__version__} quantize_static): "
            f"{settings['quant_format'].name}, {kind[settings['activation_type'].name]} activations, "
            f"{kind[settings['weight_type'].name]} weights {weights}, {method} calibration on {faces} FER+ "
            "training faces")


def quantize_to_proto(float_path, calibration_input, float_info, settings, work_dir):
    """quant_pre_process + quantize_static in `work_dir`; returns the int8 onnx.ModelProto."""
    import onnx
    from onnxruntime.quantization import quant_pre_process, quantize_static

    prepared, quantized = Path(work_dir) / "prepared.onnx", Path(work_dir) / "int8.onnx"
    # Symbolic shape inference is for transformers and needs sympy; ONNX's own inference covers CNNs.
    quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
    # A model with a fixed batch (the reference takes one face per call) is calibrated at that batch.
    batch_size = calibration_batch_size(len(calibration_input), float_info["batch"])
    batches = CalibrationReader(calibration_input, float_info["input_name"], batch_size)
    quantize_static(str(prepared), str(quantized), batches, **settings)
    return onnx.load(str(quantized))


def carry_metadata(float_model, int8_model, note, extra):
    """The float file's metadata_props and doc string, plus the quantization note and `extra`."""
    entries = {prop.key: prop.value for prop in float_model.metadata_props}
    entries["quantization"] = note
    entries.update(extra)
    write_metadata(int8_model, entries, (float_model.doc_string + " " if float_model.doc_string else "") +
                   "Quantized to int8; see metadata_props['quantization'].")


def top1_agreement(float_logits, int8_logits):
    return float((np.argmax(float_logits, axis=1) == np.argmax(int8_logits, axis=1)).mean())


def quantize_int8(float_path, out_path, calibration, eval_input, method=DEFAULT_METHOD, per_channel=False,
                  min_agreement=MIN_AGREEMENT, overrides=None, float_logits=None):
    """Quantize `float_path` to `out_path`, calibrated on `calibration` (uint8 faces (N, H, W)).

    The int8 model is checked (contract, tensor names, top-1 agreement with the float model on
    `eval_input`, contract input of faces the calibration did not see) in a scratch folder and only
    then written, atomically. `overrides` replaces quantize_static arguments of our defaults;
    `float_logits` are the float model's scores of `eval_input` when already known.
    Returns {path, agreement, settings, float_logits, int8_logits}.
    """
    import onnx

    float_info = check_onnx_contract(float_path)
    float_proto = load_onnx(float_path)
    calibration_input = to_contract_input(calibration)
    settings = quantization_settings(method, per_channel, overrides)
    if float_logits is None:
        float_logits = ContractSession(float_path, float_info).logits(eval_input)
    with tempfile.TemporaryDirectory(prefix="ferkeras-int8-") as work:
        proto = quantize_to_proto(float_path, calibration_input, float_info, settings, work)
        candidate = Path(work) / "candidate.onnx"
        onnx.save(proto, str(candidate))
        info = check_onnx_contract(candidate)
        if (info["input_name"], info["output_name"]) != (float_info["input_name"], float_info["output_name"]):
            raise RuntimeError(f"{float_path}: quantize_static renamed the tensors to {info['input_name']} -> "
                               f"{info['output_name']}; nothing was written")
        int8_logits = ContractSession(candidate, info).logits(eval_input)
    agreement = top1_agreement(float_logits, int8_logits)
    if agreement < min_agreement:
        other = next(m for m in CALIBRATION_METHODS if m != method)
        raise UserError(f"{float_path}: the int8 model agrees with the float one on only {agreement:.1%} of "
                        f"{len(eval_input)} validation faces (at least {min_agreement:.0%} required); nothing "
                        f"was written; try --calibration_method {other}, more calibration faces "
                        f"(--calibration_faces) or --per_channel, or accept it with a lower --min_agreement")
    note = describe_settings(settings, method, len(calibration))
    carry_metadata(float_proto, proto, note, {
        "quantized_from": Path(float_path).name,
        "quantization.top1_agreement": f"{agreement:.4f} on {len(eval_input)} validation faces",
    })
    with atomic_path(out_path) as tmp:
        onnx.save(proto, str(tmp))
        check_onnx_contract(tmp)
    return {"path": str(out_path), "agreement": agreement, "settings": note,
            "float_logits": float_logits, "int8_logits": int8_logits}


# ----------------------------------------------------------------------------- measuring

def compare_speed(paths, contract_input, rounds=SPEED_ROUNDS, runs_per_round=LATENCY_RUNS_PER_ROUND,
                  batch=THROUGHPUT_BATCH, threads=0):
    """Latency at batch 1 and throughput at `batch` of each ONNX file (see time_sessions).
    `threads`: onnxruntime intra-op threads (0: its default, one per core)."""
    sessions = {name: (ContractSession(path, intra_threads=threads), contract_input) for name, path in paths.items()}
    return time_sessions(sessions, rounds, runs_per_round, batch, threads)


def time_sessions(sessions, rounds=SPEED_ROUNDS, runs_per_round=LATENCY_RUNS_PER_ROUND, batch=THROUGHPUT_BATCH,
                  threads=0):
    """Latency at batch 1 (median of rounds x runs_per_round calls) and throughput at `batch` (median
    over rounds) of each session, timed in alternating rounds after one warm-up call of each size.

    `sessions` maps a name to (session, its input): a session has run_batch(batch) and
    logits(inputs, batch_size) (contract.ContractSession, tflite.TfliteSession), and its input is the
    faces in the layout it takes. `threads` is only recorded.
    """
    firsts = {name: (session, inputs[:1], inputs[:batch]) for name, (session, inputs) in sessions.items()}
    for session, one, many in firsts.values():
        session.run_batch(one)
        session.logits(many, batch_size=batch)
    latencies = {name: [] for name in sessions}
    rates = {name: [] for name in sessions}
    for _ in range(rounds):
        for name, (session, one, many) in firsts.items():
            latencies[name] += time_calls(lambda: session.run_batch(one), runs_per_round, warmup=0).walls
            # A fixed-batch model is fed its own batch size.
            rates[name].append(time_calls(lambda: session.logits(many, batch_size=batch), warmup=0)
                               .per_second(len(many)))
    load = load_average()
    return {name: {"latency_ms_batch1": float(np.median(latencies[name]) * 1000), "load_average_1min": load,
                   "throughput_batch64": float(np.median(rates[name])),
                   "latency_runs": len(latencies[name]), "throughput_batch": int(len(firsts[name][2])),
                   "threads": threads}
            for name in sessions}


def valid_metrics(logits, labels, vote_dist):
    from ferkeras.evaluate.metrics import classification_metrics
    from ferkeras.deploy.contract import softmax

    metrics = classification_metrics(labels, softmax(logits), vote_dist)
    return {key: metrics[key] for key in ("n", "accuracy", "balanced_accuracy", "macro_f1", "mean_kl")}


def measure_pair(paths, logits, eval_faces, threads=0):
    """Size, speed and validation metrics of both files.

    `paths` and `logits` map "float" / "int8" to the file and its scores of `eval_faces` = (faces,
    labels, vote dists).
    """
    faces, labels, vote_dist = eval_faces
    speed = compare_speed(paths, to_contract_input(faces), threads=threads)
    return {name: {"path": str(path), "size_bytes": Path(path).stat().st_size, **speed[name],
                   "valid": valid_metrics(logits[name], labels, vote_dist)}
            for name, path in paths.items()}


# ----------------------------------------------------------------------------- the command

def quantize_command(float_path, out=None, data_dir=None, calibration_faces_count=DEFAULT_CALIBRATION_FACES,
                     method=DEFAULT_METHOD, per_channel=False, min_agreement=MIN_AGREEMENT, threads=0):
    """What `export.py --quantize int8` does after the float export: write the int8 file (default
    <name>.int8.onnx beside the float one) and quantization.json beside it, print the side-by-side
    table; return the report. Calibration uses training faces of `data_dir`, the check and the scores
    its validation faces. `threads`: onnxruntime threads for the timing (0: one per core)."""
    check_calibration_options(calibration_faces_count, method)
    float_path = Path(float_path)
    check_onnx_contract(float_path)
    out_path = Path(out) if out else int8_path(float_path)
    if out_path.suffix.lower() != ".onnx":
        raise UserError(f"--out {out_path}: expected a file name ending in .onnx for the int8 model")
    if out_path.resolve() == float_path.resolve():
        raise UserError(f"--out {out_path}: would overwrite the float model; pick another name "
                        f"(default: {int8_path(float_path).name})")
    # Imported once the options are known to be good: evaluate.report loads TensorFlow, whose start-up
    # lines would precede the one-line error of a bad option or file.
    from ferkeras.evaluate.report import load_eval_split

    eval_faces = load_eval_split(data_dir, "valid")
    calibration = calibration_faces(data_dir, calibration_faces_count)
    print(f"quantizing {float_path} to int8: calibrating on {len(calibration)} training faces ({method}), "
          f"checking on {len(eval_faces[0])} validation faces ...", flush=True)
    with Stopwatch() as watch:
        result = quantize_int8(float_path, out_path, calibration, to_contract_input(eval_faces[0]), method,
                               per_channel, min_agreement)
    report = {"float": None, "int8": None, "settings": result["settings"], "calibration_faces": len(calibration),
              "calibration_method": method, "per_channel": per_channel,
              "top1_agreement": result["agreement"], "min_agreement": min_agreement,
              "quantize_and_check_seconds": watch.seconds}
    report.update(measure_pair({"float": float_path, "int8": out_path},
                               {"float": result["float_logits"], "int8": result["int8_logits"]}, eval_faces,
                               threads))
    json_path = out_path.parent / REPORT_NAME
    write_text_atomic(json_path, json.dumps(report, indent=2))
    print(format_quantization_report(report))
    print(f"wrote {out_path} and {json_path}")
    return report


def format_quantization_report(report):
    """The float / int8 table printed by `export.py --quantize int8`."""
    float_row, int8_row = report["float"], report["int8"]
    rows = [
        ("file", lambda r: Path(r["path"]).name),
        ("size (MB)", lambda r: f"{r['size_bytes'] / 1e6:.1f}"),
        ("latency batch 1 (ms)", lambda r: f"{r['latency_ms_batch1']:.2f}"),
        ("throughput batch 64 (img/s)", lambda r: f"{r['throughput_batch64']:.0f}"),
        ("valid accuracy", lambda r: f"{r['valid']['accuracy']:.2%}"),
        ("valid balanced accuracy", lambda r: f"{r['valid']['balanced_accuracy']:.2%}"),
        ("valid macro F1", lambda r: f"{r['valid']['macro_f1']:.3f}"),
    ]
    ratios = {
        "size (MB)": float_row["size_bytes"] / int8_row["size_bytes"],
        "latency batch 1 (ms)": float_row["latency_ms_batch1"] / int8_row["latency_ms_batch1"],
        "throughput batch 64 (img/s)": int8_row["throughput_batch64"] / float_row["throughput_batch64"],
    }
    load = float_row.get("load_average_1min")
    table = [("", "float", "int8", "int8 gain")]
    table += [(label, cell(float_row), cell(int8_row), f"{ratios[label]:.2f}x" if label in ratios else "")
              for label, cell in rows]
    lines = [f"FER+ valid, {float_row['valid']['n']} faces (majority protocol), onnxruntime CPU"
             + (f" (load average {load:.1f} while timing)" if load is not None else "") + f"; {report['settings']}",
             text_table(table, align="lrrr", min_widths=(0, 14, 14, 10))]
    change = (int8_row["valid"]["accuracy"] - float_row["valid"]["accuracy"]) * 100
    lines.append(f"accuracy change {change:+.2f} points; top-1 agreement with float "
                 f"{report['top1_agreement']:.2%} (refused below {report['min_agreement']:.0%})")
    return "\n".join(lines)
