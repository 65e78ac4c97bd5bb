"""Check the ONNX Model Zoo `emotion-ferplus-8.onnx` and score it beside our export on a FER+ split.

The reference (Barsoum et al. 2016, trained with CNTK) takes Input3 float32 [1, 1, 64, 64], raw
grayscale 0..255, and returns Plus692_Output_0 [1, 8] scores in FER+ order; its batch is fixed to 1,
so it is fed one face per call. Both models get exactly the same contract input
(`to_contract_input` of the same faces), so any difference in the numbers is the models'.
"""
import json
from pathlib import Path

import numpy as np

from ferkeras import CLASSES
from ferkeras.deploy.contract import ContractSession, check_onnx_contract, to_contract_input
from ferkeras.deploy.downloads import file_sha256
from ferkeras.errors import UserError, write_text_atomic
from ferkeras.tables import text_table
from ferkeras.timing import time_calls

# Published files, by Model Zoo version: (size in bytes, sha256).
KNOWN_REFERENCES = {
    "emotion-ferplus-8": (35_040_571, "a2a2ba6a335a3b29c21acb6272f962bd3d47f84952aaffa03b60986e04efa61c"),
}
LATENCY_REPEATS = 50
THROUGHPUT_BATCH = 64


def identify_reference(path):
    """Size and sha256 of the reference file, and which published version it is (None: unknown).

    An unknown file is allowed (another opset of the same model, a re-save), with a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: reference model not found; download emotion-ferplus-8.onnx from the "
                        "ONNX Model Zoo and pass its path to --check_reference")
    size, sha = path.stat().st_size, file_sha256(path)
    version = next((name for name, known in KNOWN_REFERENCES.items() if known == (size, sha)), None)
    warning = None
    if version is None:
        expected = "; ".join(f"{name}: {s:,} bytes, sha256 {h[:12]}..." for name, (s, h) in KNOWN_REFERENCES.items())
        warning = (f"{path} is not a published reference file ({size:,} bytes, sha256 {sha[:12]}...; "
                   f"expected {expected}); checking it anyway")
    return {"size_bytes": size, "sha256": sha, "version": version, "warning": warning}


# ----------------------------------------------------------------------------- speed

def latency_ms(session, repeats=LATENCY_REPEATS):
    """Median milliseconds for one face at batch 1 (after a warm-up call)."""
    face = np.full((1, 1, 64, 64), 128.0, dtype=np.float32)
    return time_calls(lambda: session.run_batch(face), repeats).median * 1000


def throughput(session, contract_input, batch=THROUGHPUT_BATCH):
    """Images per second over the faces fed `batch` at a time (one at a time for a fixed batch of 1)."""
    return time_calls(lambda: session.logits(contract_input, batch_size=batch),
                      warmup_call=lambda: session.logits(contract_input[:batch], batch_size=batch)
                      ).per_second(len(contract_input))


# ----------------------------------------------------------------------------- side by side

def score_model(path, info, contract_input, labels, vote_dist):
    """Metrics, predictions and speed of one contract model on prepared faces."""
    from ferkeras.evaluate.metrics import classification_metrics
    from ferkeras.deploy.contract import softmax

    session = ContractSession(path, info)
    probabilities = softmax(session.logits(contract_input, batch_size=THROUGHPUT_BATCH))
    speed_faces = contract_input[:max(THROUGHPUT_BATCH * 4, 1)]
    return {
        "path": str(path),
        "size_bytes": info["size_bytes"],
        "parameters": info["parameters"],
        "opset": info["opset"],
        "fixed_batch": info["batch"],
        "latency_ms_batch1": latency_ms(session),
        "throughput_batch64": throughput(session, speed_faces),
        "metrics": classification_metrics(labels, probabilities, vote_dist),
    }, probabilities.argmax(axis=1)


def disagreement_matrix(reference_predicted, our_predicted):
    """Counts of (reference class, our class) over the faces where the two disagree."""
    from ferkeras.evaluate.metrics import confusion_matrix

    differ = reference_predicted != our_predicted
    return confusion_matrix(reference_predicted[differ], our_predicted[differ])


def check_reference(reference, ours=None, data_dir=None, split="valid", out_dir=".", faces=None):
    """Verify the reference file, check both contracts, score both on `split`; write
    reference_check.json and reference_check.png in `out_dir`; return the report.

    `faces` = (faces, labels, vote distributions) replaces loading the split (for tests).
    """
    identity = identify_reference(reference)
    if identity["warning"]:
        print(f"warning: {identity['warning']}")
    ref_info = check_onnx_contract(reference, expect_names=True)
    our_info = check_onnx_contract(ours) if ours else None
    # Imported once the files are known to be good: evaluate.report loads TensorFlow, whose start-up
    # lines would precede the one-line error of a bad file.
    from ferkeras.evaluate.plots import plot_reference_check
    from ferkeras.evaluate.report import load_eval_split

    images, labels, vote_dist = faces if faces is not None else load_eval_split(data_dir, split)
    contract_input = to_contract_input(images)
    report = {"split": split, "faces": int(len(labels)), "reference": None, "ours": None}
    report["reference"], ref_predicted = score_model(reference, ref_info, contract_input, labels, vote_dist)
    report["reference"].update(identity)
    if our_info:
        report["ours"], our_predicted = score_model(ours, our_info, contract_input, labels, vote_dist)
        report["ours"]["metadata"] = our_info["metadata"]
        disagree = disagreement_matrix(ref_predicted, our_predicted)
        report["agreement"] = float((ref_predicted == our_predicted).mean())
        report["disagreement"] = disagree.tolist()
    else:
        disagree = None
    out_dir = Path(out_dir)
    json_path, png_path = out_dir / "reference_check.json", out_dir / "reference_check.png"
    write_text_atomic(json_path, json.dumps(report, indent=2))
    f1 = {name: [report[name]["metrics"]["per_class"][c]["f1"] for c in CLASSES]
          for name in ("reference", "ours") if report[name]}
    accuracies = ", ".join(f"{name} {report[name]['metrics']['accuracy']:.2%}" for name in f1)
    plot_reference_check(f1, disagree, png_path, f"FER+ {split} ({report['faces']} faces): {accuracies}")
    print(format_reference_report(report))
    print(f"wrote {json_path} and {png_path}")
    return report


def format_reference_report(report):
    """The side-by-side table printed by `export.py --check_reference`."""
    names = [name for name in ("reference", "ours") if report[name]]
    rows = [("file", lambda r: Path(r["path"]).name),
            ("size (MB)", lambda r: f"{r['size_bytes'] / 1e6:.1f}"),
            ("parameters", lambda r: f"{r['parameters']:,}"),
            ("opset", lambda r: str(r["opset"])),
            ("batch", lambda r: "fixed 1" if r["fixed_batch"] == 1 else str(r["fixed_batch"] or "dynamic")),
            ("accuracy", lambda r: f"{r['metrics']['accuracy']:.2%}"),
            ("balanced accuracy", lambda r: f"{r['metrics']['balanced_accuracy']:.2%}"),
            ("macro F1", lambda r: f"{r['metrics']['macro_f1']:.3f}"),
            ("mean KL(votes||pred)", lambda r: f"{r['metrics']['mean_kl']:.3f}")]
    rows += [(f"F1 {c}", lambda r, c=c: "-" if r["metrics"]["per_class"][c]["f1"] is None
              else f"{r['metrics']['per_class'][c]['f1']:.3f}") for c in CLASSES]
    rows += [("latency batch 1 (ms)", lambda r: f"{r['latency_ms_batch1']:.2f}"),
             ("throughput batch 64 (img/s)", lambda r: f"{r['throughput_batch64']:.0f}")]
    table = [("", *names)] + [(label, *(cell(report[n]) for n in names)) for label, cell in rows]
    column = max(14, *(len(value) for row in table for value in row[1:]))  # one width for both models
    lines = [f"FER+ {report['split']}, {report['faces']} faces (majority protocol), onnxruntime CPU",
             text_table(table, align="l" + "r" * len(names), min_widths=(0,) + (column,) * len(names))]
    if report.get("agreement") is not None:
        lines.append(f"top-1 agreement: {report['agreement']:.2%} "
                     f"({int(np.sum(report['disagreement']))} faces differ; rows reference, columns ours "
                     "in reference_check.png)")
    return "\n".join(lines)
