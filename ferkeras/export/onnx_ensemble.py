"""Ensembles of exported files: one contract ONNX file that runs several .onnx members and averages them.

    python export.py --model models/ferplus-small.onnx --model runs/facenet/model.onnx --out ensemble.onnx
    python export.py --model models/ferplus-small.onnx --run runs/fernet_m --tta flip --out ensemble.onnx

`ferkeras.export.ensemble` builds an ensemble of Keras models as one Keras graph and converts it; a
shipped file, an int8 copy or the Model Zoo reference has no Keras model, so here the members' ONNX
graphs themselves are copied into one graph:

    Input3 [N,1,64,64] -> views (the faces; with TTA their mirror, then five 90% crops resized to 64)
                       -> every member on every view -> Softmax -> Mean -> Log -> Plus692_Output_0

Each copy of a member on a view gets its own tensor names (`m<member>v<view>_...`) and shares the
member's weights (`m<member>_...`), so TTA costs arithmetic, not file size. A Keras member (`--run`,
FILE.keras) is exported to ONNX first, with its own parity check. The merged file is then checked
against the members themselves, scored one by one with onnxruntime on the same views (made by
the graph's own view nodes, each checked against the views `evaluate.py --tta` makes in numpy), before
it is moved into place.
"""
import tempfile
from pathlib import Path

import numpy as np

from ferkeras.deploy.contract import (INPUT_NAME, INPUT_SIZE, OUTPUT_NAME, ContractSession, check_onnx_contract,
                                      load_onnx, softmax, to_contract_input)
from ferkeras.errors import UserError, atomic_path
from ferkeras.evaluate.tta import TTA_CHOICES, crop_boxes, tta_views

# Slice with steps (the mirror) needs opset 10, Resize with `sizes` and no `scales` 13.
MIN_OPSET = {"none": 7, "flip": 10, "crops": 13}
MAX_SOFTMAX_DIFF = 1e-4
_CONTROL_FLOW = ("If", "Loop", "Scan")


# ----------------------------------------------------------------------------- the members

def load_member(path, index):
    """(the member's ModelProto, its contract info); members with control flow are refused, since
    their subgraphs name outer tensors that renaming would have to follow."""
    info = check_onnx_contract(path)
    model = load_onnx(path)
    if model.graph.sparse_initializer or any(n.op_type in _CONTROL_FLOW for n in model.graph.node):
        raise UserError(f"{path} (member {index + 1}): has control flow or sparse weights, which an ONNX "
                        "ensemble cannot copy; export that model from its Keras checkpoint with --run")
    return model, info


def default_opset(model):
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)


def at_opset(model, opset, path):
    """The member converted to `opset` of the default domain (the one opset the merged graph declares)."""
    from onnx import version_converter

    if default_opset(model) == opset:
        return model
    # IR 3 (the reference's) lists the weights among the inputs too, and some exporters of its day left
    # them out; the converter wants IR 4's layout: weights as initializers only.
    weights = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    model.ir_version = max(model.ir_version, 4)
    try:
        return version_converter.convert_version(model, opset)
    except Exception as exc:  # the converter raises bare RuntimeErrors and ValueErrors per operator
        raise UserError(f"{path}: cannot convert its graph from opset {default_opset(model)} to {opset} for the "
                        f"ensemble ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); re-export it with "
                        f"export.py --opset {opset}") from None


def ensemble_batch(infos):
    """The ensemble's batch dimension: dynamic, unless a member fixes it (the reference takes 1 face)."""
    fixed = {info["batch"] for info in infos if info["batch"] is not None}
    if len(fixed) > 1:
        listing = ", ".join(f"{info['path']} ({info['batch']})" for info in infos if info["batch"] is not None)
        raise UserError(f"members fix different batch sizes ({listing}); an ensemble runs them on the same faces, "
                        "so their batch sizes must agree; re-export them with a dynamic batch")
    return fixed.pop() if fixed else None


# ----------------------------------------------------------------------------- building the graph

def view_nodes(input_name, tta):
    """Nodes and weights that make the TTA views of the contract input; returns (nodes, initializers,
    the view tensors' names), the input itself first, in the order of `ferkeras.evaluate.tta.tta_views`."""
    from onnx import helper, numpy_helper

    if tta not in TTA_CHOICES:
        raise UserError(f"--tta: expected one of {', '.join(TTA_CHOICES)}, got {tta!r}")
    ints = lambda name, values: numpy_helper.from_array(np.array(values, np.int64), name)
    nodes, weights, views = [], [], [input_name]
    if tta == "none":
        return nodes, weights, views
    # The mirror: columns read from the last to the first.
    weights += [ints("tta_flip_starts", [-1]), ints("tta_flip_ends", [np.iinfo(np.int64).min]),
                ints("tta_width_axis", [3]), ints("tta_flip_steps", [-1])]
    nodes.append(helper.make_node("Slice", [input_name, "tta_flip_starts", "tta_flip_ends", "tta_width_axis",
                                            "tta_flip_steps"], ["tta_view_flip"], name="tta_flip"))
    views.append("tta_view_flip")
    if tta == "crops":
        # Each crop is resized back to the contract's 64 px (bilinear, half-pixel centres: OpenCV's
        # INTER_LINEAR, what evaluate.py's crops get from to_contract_input).
        weights += [ints("tta_spatial_axes", [2, 3]), ints("tta_side", [INPUT_SIZE, INPUT_SIZE]),
                    ints("tta_batch_channel_start", [0]), ints("tta_batch_channel_end", [2]),
                    ints("tta_first_axis", [0])]
        nodes += [helper.make_node("Shape", [input_name], ["tta_input_shape"], name="tta_shape"),
                  helper.make_node("Slice", ["tta_input_shape", "tta_batch_channel_start", "tta_batch_channel_end",
                                             "tta_first_axis"], ["tta_batch_channel"], name="tta_batch_channel"),
                  helper.make_node("Concat", ["tta_batch_channel", "tta_side"], ["tta_sizes"], axis=0,
                                   name="tta_sizes")]
        for number, (top, left, side) in enumerate(crop_boxes(INPUT_SIZE, INPUT_SIZE), start=1):
            weights += [ints(f"tta_crop{number}_starts", [top, left]),
                        ints(f"tta_crop{number}_ends", [top + side, left + side])]
            nodes += [helper.make_node("Slice", [input_name, f"tta_crop{number}_starts", f"tta_crop{number}_ends",
                                                 "tta_spatial_axes"], [f"tta_crop{number}"],
                                       name=f"tta_crop{number}"),
                      helper.make_node("Resize", [f"tta_crop{number}", "", "", "tta_sizes"],
                                       [f"tta_view_crop{number}"], mode="linear",
                                       coordinate_transformation_mode="half_pixel", name=f"tta_resize{number}")]
            views.append(f"tta_view_crop{number}")
    return nodes, weights, views


def member_copy(model, info, view, tensor_prefix, weight_prefix):
    """The member's nodes reading `view` instead of its input, every tensor renamed with `tensor_prefix`
    and every weight with `weight_prefix`; returns (nodes, the name of its scores tensor)."""
    from onnx import NodeProto

    weights = {init.name for init in model.graph.initializer}

    def renamed(name):
        if not name:  # an omitted optional input stays omitted
            return name
        if name == info["input_name"]:
            return view
        return (weight_prefix if name in weights else tensor_prefix) + name

    nodes = []
    for node in model.graph.node:
        copy = NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [renamed(name) for name in node.input]
        copy.output[:] = [renamed(name) for name in node.output]
        copy.name = tensor_prefix + (node.name or node.op_type)
        nodes.append(copy)
    return nodes, renamed(info["output_name"])


def merged_opsets(models, opset):
    """The merged graph's opset imports: `opset` for the default domain, the highest asked for any other
    (onnxruntime's com.microsoft operators in an int8 file, for instance)."""
    from onnx import helper

    versions = {"": opset}
    for model in models:
        for entry in model.opset_import:
            if entry.domain not in ("", "ai.onnx"):
                versions[entry.domain] = max(versions.get(entry.domain, 0), entry.version)
    return [helper.make_opsetid(domain, version) for domain, version in versions.items()]


def merge_members(paths, tta="none", input_name=INPUT_NAME, output_name=OUTPUT_NAME):
    """One onnx.ModelProto that averages the probabilities of the contract files `paths` over the TTA views.

    The output is the log of the averaged probabilities: the contract's scores, whose softmax is the
    average itself (as in `ferkeras.export.ensemble`).
    """
    from onnx import TensorProto, helper, numpy_helper

    if not paths:
        raise UserError("an ensemble needs at least one model")
    if tta not in TTA_CHOICES:
        raise UserError(f"--tta: expected one of {', '.join(TTA_CHOICES)}, got {tta!r}")
    loaded = [load_member(path, index) for index, path in enumerate(paths)]
    opset = max([MIN_OPSET[tta]] + [default_opset(model) or 7 for model, _ in loaded])
    members = [(at_opset(model, opset, path), info) for (model, info), path in zip(loaded, paths)]
    batch = ensemble_batch([info for _, info in members])

    nodes, weights, views = view_nodes(input_name, tta)
    probabilities = []
    for number, (model, info) in enumerate(members, start=1):
        for init in model.graph.initializer:
            shared = type(init)()
            shared.CopyFrom(init)
            shared.name = f"m{number}_{init.name}"
            weights.append(shared)
        for view_number, view in enumerate(views, start=1):
            copied, scores = member_copy(model, info, view, f"m{number}v{view_number}_", f"m{number}_")
            nodes += copied
            nodes.append(helper.make_node("Softmax", [scores], [f"m{number}v{view_number}_probabilities"], axis=1,
                                          name=f"m{number}v{view_number}_softmax"))
            probabilities.append(f"m{number}v{view_number}_probabilities")
    weights.append(numpy_helper.from_array(np.array(1e-12, np.float32), "probability_floor"))
    nodes += [helper.make_node("Mean", probabilities, ["mean_probabilities"], name="mean_probabilities"),
              helper.make_node("Max", ["mean_probabilities", "probability_floor"], ["floored_probabilities"],
                               name="floor_probabilities"),
              helper.make_node("Log", ["floored_probabilities"], [output_name], name="log_mean_probabilities")]
    dim = batch if batch is not None else "N"
    graph = helper.make_graph(
        nodes, f"ferkeras_onnx_ensemble_{len(members)}x{len(views)}",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [dim, 1, INPUT_SIZE, INPUT_SIZE])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [dim, 8])], weights)
    opsets = merged_opsets([m for m, _ in members], opset)
    merged = helper.make_model(graph, opset_imports=opsets, producer_name="ferkeras")
    # The members' IR version, or the first that declares these opsets (a converted IR 3 member's is too old).
    merged.ir_version = max([model.ir_version for model, _ in members] + [helper.find_min_ir_version_for(opsets[:1])])
    return merged


# ----------------------------------------------------------------------------- checking and writing

MAX_VIEW_DIFF = 1e-2  # grey levels (0..255) between the graph's views and numpy's; float round-off is ~3e-5


def graph_views(contract_input, tta, opset):
    """The TTA views of float32 (N, 1, 64, 64) as the merged graph makes them (its view nodes alone,
    run with onnxruntime), each checked against the views `evaluate.py --tta` makes in numpy."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    nodes, weights, names = view_nodes("faces", tta)
    if not nodes:  # tta none: the faces are their only view
        return [contract_input]
    graph = helper.make_graph(nodes, "tta_views", [helper.make_tensor_value_info(
        "faces", TensorProto.FLOAT, ["N", 1, INPUT_SIZE, INPUT_SIZE])], [helper.make_tensor_value_info(
            name, TensorProto.FLOAT, None) for name in names], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8  # what every onnxruntime since 1.14 reads
    views = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"faces": contract_input})
    for number, (ours, theirs) in enumerate(zip(views, tta_views(contract_input[:, 0], tta)), start=1):
        diff = float(np.abs(ours - to_contract_input(theirs)).max())
        if not diff < MAX_VIEW_DIFF:
            raise UserError(f"TTA view {number} of {tta!r}: the graph's view differs from evaluate.py's by {diff:.3g} "
                            f"grey levels (must be < {MAX_VIEW_DIFF:g}); nothing was written; report this "
                            "onnxruntime version as a bug")
    return views


def members_probabilities(paths, views):
    """What the merged file must compute: each member scored alone with onnxruntime on each view, the
    probabilities averaged over views and members."""
    sessions = [ContractSession(path) for path in paths]
    return np.mean([softmax(session.logits(view)) for session in sessions for view in views], axis=0)


def check_ensemble_parity(merged_path, paths, faces, tta, name, opset):
    """Compare the merged file with its members scored one by one on the same views; a UserError past the
    tolerance. The views come from the graph's own view nodes (checked against numpy's to float round-off):
    an int8 member turns a 1e-5 difference of a pixel into a step of its quantized activations."""
    contract_input = to_contract_input(faces)
    expected = members_probabilities(paths, graph_views(contract_input, tta, opset))
    got = softmax(ContractSession(merged_path).logits(contract_input))
    diff = float(np.abs(got - expected).max())
    agreement = float(np.mean(got.argmax(axis=1) == expected.argmax(axis=1)))
    if not diff < MAX_SOFTMAX_DIFF:
        raise UserError(f"{name}: the merged file and its members scored one by one differ on {len(faces)} faces "
                        f"(max softmax difference {diff:.2e}, must be < {MAX_SOFTMAX_DIFF:g}); nothing was "
                        "written; export the members again with the default --opset")
    return {"faces": int(len(faces)), "max_softmax_diff": diff, "top1_agreement": agreement}


def keras_members_as_onnx(paths, folder, data_dir, opset):
    """The members as ONNX files: .onnx as given, .keras exported into `folder` (each parity-checked)."""
    from ferkeras.export.onnx import export_onnx
    from ferkeras.models.weights import load_model_file

    files = []
    for index, path in enumerate(paths, start=1):
        path = Path(path)
        if path.suffix.lower() == ".onnx":
            files.append(path)
            continue
        if path.suffix.lower() != ".keras":
            raise UserError(f"{path}: an ensemble member must be a .keras or .onnx file, got "
                            f"{path.suffix or 'no suffix'}")
        out = Path(folder) / f"member{index}.onnx"
        export_onnx(load_model_file(path), out, {"name": path.stem}, path, data_dir=data_dir, opset=opset)
        files.append(out)
    return files


def export_onnx_ensemble(paths, out, tta="none", data_dir=None, faces=None, opset=None,
                         input_name=INPUT_NAME, output_name=OUTPUT_NAME):
    """Merge the members (`.onnx` files; `.keras` ones are exported first) into one verified contract file
    at `out`; returns a report dict like `export_onnx`'s."""
    import onnx

    from ferkeras.export.onnx import DEFAULT_OPSET, metadata_entries, parity_faces, write_metadata

    out = Path(out)
    check_faces, origin = parity_faces(data_dir, faces)
    config = {"name": f"average of {len(paths)} model(s), TTA {tta}", "members": [str(p) for p in paths],
              "tta": tta}
    with tempfile.TemporaryDirectory(prefix="ferkeras-ensemble-") as folder:
        files = keras_members_as_onnx(paths, folder, data_dir, opset or DEFAULT_OPSET)
        merged = merge_members(files, tta, input_name, output_name)
        write_metadata(merged, metadata_entries(config, None, input_name, output_name),
                       f"FER+ ensemble of {len(paths)} model(s) exported by ferkeras; drop-in for "
                       "emotion-ferplus-8.onnx (see metadata_props for the members and the contract)")
        with atomic_path(out) as tmp:
            onnx.save(merged, str(tmp))
            info = check_onnx_contract(tmp)
            parity = check_ensemble_parity(tmp, files, check_faces, tta, out, default_opset(merged))
    return {"onnx": str(out), "opset": default_opset(merged), "parameters": info["parameters"],
            "size_bytes": info["size_bytes"], "members": [str(p) for p in paths], "tta": tta,
            "parity": {**parity, "source": origin}}
