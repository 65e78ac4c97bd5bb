"""Ensembles and test-time augmentation as one Keras model, so that export.py writes them as one ONNX file.

    faces (N, 64, 64, 1) -> views (the faces; with TTA their mirror, then five 90% crops)
                         -> every member on every view -> softmax -> mean -> log

The output is the log of the averaged probabilities: the contract's "scores", whose softmax (what
predict.py and every other reader does) is the average itself. The views are the ones
`ferkeras.evaluate.report.tta_views` makes for `evaluate.py --tta`, on the contract's 64x64 input; each
member resizes them to its own side in its preprocessing layer, as it does any face.

An ensemble with an .onnx member (a shipped file, an int8 copy, the Model Zoo reference) has no Keras
graph to build: `export_ensemble_command` hands it to `ferkeras.export.onnx_ensemble`, which merges the
members' ONNX graphs instead.
"""
import keras
import numpy as np
from keras import ops

from ferkeras import NUM_CLASSES
from ferkeras.deploy.contract import INPUT_SIZE
from ferkeras.errors import UserError
from ferkeras.evaluate.tta import TTA_CHOICES, crop_boxes, tta_views
from ferkeras.train.distribute import float32_model
from ferkeras.export.weight_average import AVERAGE_CHOICES


@keras.saving.register_keras_serializable(package="ferkeras")
class LogOfMean(keras.layers.Layer):
    """log(mean of the inputs), floored so that a zero probability stays finite."""

    def call(self, probabilities):
        return ops.log(ops.maximum(ops.mean(ops.stack(probabilities, axis=0), axis=0), 1e-12))

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]


def tta_view_tensors(faces, tta):
    """The TTA views of a (N, 64, 64, 1) KerasTensor, as `evaluation.tta_views` makes them in numpy."""
    if tta not in TTA_CHOICES:
        raise UserError(f"--tta: expected one of {', '.join(TTA_CHOICES)}, got {tta!r}")
    views = [faces]
    if tta != "none":
        views.append(ops.flip(faces, axis=2))
    if tta == "crops":
        views += [faces[:, top:top + side, left:left + side, :]
                  for top, left, side in crop_boxes(INPUT_SIZE, INPUT_SIZE)]
    return views


def averaged_model(members, tta="none"):
    """One Keras model averaging the probabilities of `members` (ferkeras models) over the TTA views."""
    if not members:
        raise UserError("an ensemble needs at least one model")
    faces = keras.Input((INPUT_SIZE, INPUT_SIZE, 1), dtype="float32", name="faces")
    probabilities = []
    for index, member in enumerate(members):
        if member.output_shape[-1] != NUM_CLASSES:
            raise UserError(f"member {index + 1} ({member.name}) scores {member.output_shape[-1]} classes, "
                            f"expected {NUM_CLASSES}")
        # A mixed-precision member computes in float32 inside the file, as a single export does: onnxruntime
        # refuses a bfloat16 graph, and the contract is float32.
        member = float32_model(member)
        # A fresh Functional over the member's own layers, so that members of one architecture (same
        # model name) can sit side by side in one graph.
        renamed = keras.Model(member.inputs[0], member.outputs[0], name=f"member{index + 1}_{member.name}")
        for view in tta_view_tensors(faces, tta):
            logits = renamed(view, training=False)
            probabilities.append(keras.layers.Activation("softmax", dtype="float32")(logits))
    if len(probabilities) == 1:
        return members[0]
    scores = LogOfMean(name="log_mean_probabilities", dtype="float32")(probabilities)
    return keras.Model(faces, scores, name=f"ferkeras_ensemble_{len(members)}x{len(probabilities) // len(members)}")


def default_ensemble_out(paths, tta):
    """ensemble.onnx for several members; beside a single member, its TTA graph."""
    from pathlib import Path

    if len(paths) > 1:
        return Path("ensemble.onnx")
    source = Path(paths[0])
    if source.suffix.lower() == ".onnx":
        return source.with_name(f"{source.stem}.tta-{tta}.onnx")
    return source.parent.parent / f"model.tta-{tta}.onnx"  # runs/<name>/checkpoints/<which>.keras


def export_ensemble_command(runs=(), models=(), checkpoint="best_acc", tta="none", out=None,
                            average="probabilities", **export_options):
    """What `export.py --run a --run b ... [--model c.onnx ...] [--tta crops]` does: one verified ONNX file
    averaging them. Keras members only: one Keras graph, converted; any .onnx member: the members' ONNX
    graphs merged (ferkeras.export.onnx_ensemble). `average="weights"`: one network whose weights are the
    members' mean (ferkeras.export.weight_average), saved as <out>.keras too."""
    from pathlib import Path

    from ferkeras.evaluate.ensemble import ensemble_members

    from ferkeras.train.run_folder import run_config
    from ferkeras.export.onnx import export_onnx
    from ferkeras.models.weights import load_model_file

    if average not in AVERAGE_CHOICES:
        raise UserError(f"--average: expected one of {', '.join(AVERAGE_CHOICES)}, got {average!r}")
    paths = ensemble_members(runs, models, checkpoint)
    suffixes = {p.suffix.lower() for p in paths}
    if not suffixes <= {".keras", ".onnx"}:
        odd = next(p for p in paths if p.suffix.lower() not in (".keras", ".onnx"))
        raise UserError(f"{odd}: an ensemble member must be a .keras or .onnx file, got {odd.suffix or 'no suffix'}; "
                        "give --run runs/<name>, --model FILE.keras or --model FILE.onnx for each member")
    out = Path(out) if out is not None else default_ensemble_out(paths, tta)
    if out.suffix.lower() != ".onnx":
        raise UserError(f"--out {out}: expected a file name ending in .onnx")
    if out.resolve() in {p.resolve() for p in paths}:
        raise UserError(f"--out {out}: is one of the members; give the ensemble another file name")
    data_dir = export_options.pop("data_dir", None) or next(
        (run_config(r).data_dir for r in runs if run_config(r).data_dir), None)
    if average == "weights":
        # The soup is the first member's network: its run's recipe is what the file's metadata says.
        first_run = run_config(runs[0]) if runs else None
        return export_weight_average(paths, out, tta, data_dir, export_options,
                                     first_run.to_dict() if first_run else {})
    if ".onnx" in suffixes:
        from ferkeras.export.onnx_ensemble import export_onnx_ensemble

        report = export_onnx_ensemble(paths, out, tta, data_dir=data_dir, **export_options)
    else:
        combined = averaged_model([load_model_file(p) for p in paths], tta)
        config = {"name": f"average of {len(paths)} model(s), TTA {tta}", "members": [str(p) for p in paths],
                  "tta": tta}
        report = export_onnx(combined, out, config, source=paths[0], data_dir=data_dir, **export_options)
    print_ensemble_report(out, report, len(paths), tta, "probabilities averaged")
    return report


def export_weight_average(paths, out, tta, data_dir, export_options, first_config):
    """`--average weights`: the members' mean weights as one network, <out>.keras and <out> (.onnx)."""
    from ferkeras.errors import atomic_path
    from ferkeras.export.onnx import export_onnx
    from ferkeras.export.weight_average import average_weights
    from ferkeras.models.weights import load_model_file

    onnx_members = [p for p in paths if p.suffix.lower() == ".onnx"]
    if onnx_members:
        raise UserError(f"{onnx_members[0]}: --average weights needs Keras members (--run, or --model FILE.keras); "
                        "an .onnx file's weights cannot be averaged here")
    soup = average_weights([load_model_file(p) for p in paths], names=[str(p) for p in paths])
    config = {**first_config, "name": f"weight average of {len(paths)} model(s), TTA {tta}",
              "members": [str(p) for p in paths], "average": "weights", "tta": tta}
    report = export_onnx(averaged_model([soup], tta), out, config, source=paths[0], data_dir=data_dir,
                         **export_options)
    keras_out = out.with_suffix(".keras")  # written once the file has passed its parity check
    with atomic_path(keras_out) as tmp:
        soup.save(tmp)
    report["keras"] = str(keras_out)
    print_ensemble_report(out, report, len(paths), tta, f"weights averaged (also {keras_out})")
    return report


def print_ensemble_report(out, report, members, tta, how):
    views = len(tta_views(np.zeros((1, INPUT_SIZE, INPUT_SIZE), np.uint8), tta))
    print(f"wrote {out} ({report['size_bytes'] / 1e6:.1f} MB, {report['parameters']:,} parameters): "
          f"{members} member(s) x {views} view(s), {how}")
    parity = report["parity"]
    print(f"parity on {parity['source']}: max softmax difference {parity['max_softmax_diff']:.2e}, "
          f"top-1 agreement {parity['top1_agreement']:.2%}")
    return report
