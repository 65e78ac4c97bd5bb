"""Training configuration: one table of options feeds argparse, YAML recipes and the run's config.yaml.

Precedence, lowest to highest: the defaults below, a `--config FILE` recipe, flags on the command line.
Every option is documented once, here, and `train.py --help` prints it.

`resolve()` turns the command line into a `Config`: a frozen dataclass with one typed field per option
of `OPTIONS`, checked (ranges, choices, combinations) before anything is loaded. The rest of ferkeras
reads its fields as attributes (`config.init_lr`); only this module and the YAML files name options
by string.
"""
import argparse
import dataclasses
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from ferkeras.errors import UserError, read_text
from ferkeras.tables import markdown_table


@dataclass(frozen=True)
class Interval:
    """The values a numeric option accepts: low..high, each end closed (included) or open."""
    low: float = None
    high: float = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value):
        return not ((self.low is not None and (value <= self.low if self.low_open else value < self.low)) or
                    (self.high is not None and (value >= self.high if self.high_open else value > self.high)))

    def __str__(self):
        low, high = (None if end is None else _number(end) for end in (self.low, self.high))
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {low}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {high}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"


def _number(value):
    """A number as a user would write it: 4294967295 and 0.0001, not 4.29497e+09 and 1.000000e-04."""
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e15):
        return str(int(value))
    return f"{value:g}"


AT_LEAST_0, AT_LEAST_1 = Interval(0), Interval(1)
POSITIVE = Interval(0, low_open=True)
FRACTION_BELOW_1 = Interval(0, 1, high_open=True)  # [0, 1)
OPEN_FRACTION = Interval(0, 1, low_open=True, high_open=True)  # (0, 1)


@dataclass(frozen=True)
class Option:
    name: str
    default: object
    help: str
    type: type = str
    choices: tuple = None
    group: str = "training"
    interval: Interval = None  # numeric options: the accepted range (float options must also be finite)
    multiple: bool = False  # the flag may be repeated; the value is a tuple (a list in YAML)
    resumable: bool = False  # may differ from the saved run's value on --resume (it then replaces it)
    cache_key: bool = False  # decides what a memory-mapped --cache_frozen cache holds (see frozen_cache)


def _class_weights(text):
    """'balanced', 'none', 'published' or 8 numbers (comma or space separated)."""
    if isinstance(text, (list, tuple)):
        values = list(text)
    else:
        text = str(text).strip()
        if text in ("balanced", "none", "published"):
            return text
        values = text.replace(",", " ").split()
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        raise UserError(f"--class_weights: expected 8 numbers, 'balanced', 'published' or 'none', got {text!r}")
    if len(numbers) != 8 or not all(math.isfinite(n) and n > 0 for n in numbers):
        got = f"{len(numbers)}: {text!r}" if len(numbers) != 8 else repr(text)
        raise UserError(f"--class_weights: expected 8 positive numbers (finite, one per FER+ class), got {got}")
    return numbers


OPTIONS = (
    # run
    Option("name", None, "run name; the run folder is <output_dir>/<name> (default: <model_name>-<timestamp>)", group="run"),
    Option("output_dir", "runs", "folder holding the run folders", group="run", resumable=True),
    Option("overwrite", False, "replace an existing run folder of the same name", bool, group="run"),
    Option("resume", False, "continue the run <name> from its last checkpoint (weights, optimizer, epoch)", bool, group="run"),
    Option("seed", 42, "seed for weights init, shuffling, augmentation and PLD sampling", int, group="run",
           interval=Interval(0, 2**32 - 1), cache_key=True),
    # data
    Option("data_dir", None, "FER+ data: Microsoft's FER2013Train/Valid/Test folders or Kaggle fer2013.csv + "
           "fer2013new.csv (default: $FERKERAS_DATA, else data/)", group="data", cache_key=True, resumable=True),
    Option("training_mode", "majority", "how 10 votes become a target (Barsoum et al. 2016); evaluation always "
           "uses majority", choices=("majority", "probability", "crossentropy", "multi_target"), group="data"),
    Option("augment", "crop_flip", "training augmentation: crop_flip = random resized crop (scale 0.8-1.0) + "
           "horizontal flip; ferplus adds shift/scale/rotation and brightness/contrast; none",
           choices=("none", "crop_flip", "ferplus"), group="data"),
    Option("erasing", 0.0, "random erasing (Zhong et al. 2020): probability of blanking a random rectangle of 2-25% "
           "of each training face with noise, after the --augment recipe; 0 = off", float, group="data",
           interval=Interval(0, 1)),
    Option("mix", "none", "mix pairs of training faces within a batch: mixup blends two faces and their targets, "
           "cutmix pastes a rectangle of one face into another and mixes the targets by area; none = off",
           choices=("none", "mixup", "cutmix"), group="data"),
    Option("mix_alpha", 0.2, "--mix: the mixing weight is drawn from Beta(mix_alpha, mix_alpha) per batch", float,
           group="data", interval=POSITIVE),
    Option("teacher", None, "distillation: a teacher run (runs/<name>) or .keras/.onnx file; repeat the flag for "
           "several teachers, whose probabilities are averaged. Training targets become (1 - distill_alpha) x "
           "the label-mode target + distill_alpha x the teachers' probabilities at --distill_temperature",
           group="data", multiple=True),
    Option("distill_alpha", 0.5, "--teacher: weight of the teachers' probabilities in the training target", float,
           group="data", interval=Interval(0, 1, low_open=True)),
    Option("distill_temperature", 2.0, "--teacher: softmax temperature applied to the teachers' scores", float,
           group="data", interval=POSITIVE),
    Option("distill_views", 4, "--teacher: augmented views per training face whose teacher outputs are computed "
           "once, before training (the face, its mirror and distill_views-2 random crops); each epoch draws one",
           int, group="data", interval=AT_LEAST_1),
    Option("distill_reaugment", False, "--teacher: augment each epoch's drawn view again with the --augment "
           "recipe, the target staying the teacher's probabilities of the view it scored. For a teacher too "
           "slow to score many views (FaceNet: about 34 faces/s on 2 CPU cores): --distill_views 1 scores each face "
           "once, and the student still sees a fresh draw of the recipe every epoch", bool, group="data"),
    Option("finetune_from", None, "start from this run's best checkpoint (runs/<name>), a .keras file or a "
           "FerNet .onnx file exported by ferkeras (models/ferplus-small.onnx) and train on your own faces: "
           "--data_dir then holds images and a label.csv ('image,emotion' or 'image,' + 8 votes per row)",
           group="data"),
    Option("holdout", 0.2, "--finetune_from: share of your faces kept out of training and scored before and after",
           float, group="data", interval=OPEN_FRACTION),
    Option("mix_ferplus", 0.0, "--finetune_from: share of the training faces drawn from FER+ (from --ferplus_dir) "
           "so the model does not forget it; 0 = your faces only", float, group="data", interval=FRACTION_BELOW_1),
    Option("ferplus_dir", None, "--finetune_from with --mix_ferplus: FER+ data (default: $FERKERAS_DATA, else data/)",
           group="data"),
    Option("no_detect", False, "--finetune_from: your images are already face crops; skip face detection", bool,
           group="data"),
    Option("min_face", 48, "--finetune_from: smallest face side, in pixels, that detection looks for", int,
           group="data", interval=AT_LEAST_1),
    Option("detector", "yunet", "--finetune_from: face detector, as in predict.py: yunet (OpenCV's CNN detector, "
           "model file found or fetched once) or haar (the Haar cascade)", choices=("yunet", "haar"), group="data"),
    Option("train_limit", 0, "use only this many training faces (a seeded random subset; 0 = all)", int, group="data",
           interval=AT_LEAST_0, cache_key=True),
    Option("valid_limit", 0, "use only this many validation faces (0 = all)", int, group="data",
           interval=AT_LEAST_0),
    # model
    Option("model_name", "ResNet50", "backbone", choices=("ResNet50", "SeNet50", "FaceNet", "VGG13", "FerNetS",
                                                           "FerNetSD", "FerNetM"), group="model", cache_key=True),
    Option("weights", "imagenet", "imagenet | vggface2 | facenet | none | PATH to a .weights.h5, .keras or "
           "Keras-2 .h5 file, or a FerNet .onnx file exported by ferkeras (models/ferplus-small.onnx: "
           "fine-tune the shipped model)", group="model", cache_key=True),
    Option("allow_partial_weights", False, "accept a weights file that covers only part of the backbone", bool, group="model"),
    Option("image_size", 0, "side the graph resizes faces to (0 = the backbone's default: 224 ResNet50/SeNet50, "
           "160 FaceNet, 64 VGG13, 48 FerNetS/FerNetSD/FerNetM)", int, group="model", interval=AT_LEAST_0, cache_key=True),
    Option("contract_round_trip", False, "resize faces in the graph to the ONNX contract's 64 px before "
           "--image_size, as an exported file's input is: a 48 px model then trains and validates on what "
           "it will see deployed (FER+'s 48 px faces enlarged to 64 and shrunk back), so its Keras figures "
           "are the exported file's", bool, group="model", cache_key=True),
    Option("dropout_rate", 0.3, "dropout before the final Dense(8)", float, group="model",
           interval=FRACTION_BELOW_1),
    Option("freeze_before", 0, "freeze layers of the full model: N<0 freezes all but the last |N| layers, N>0 "
           "freezes the first N, 0 freezes nothing (frozen BatchNorm stays in inference mode)", int, group="model",
           cache_key=True),
    Option("cache_frozen", False, "compute the frozen prefix (--freeze_before) once per augmentation view and train "
           "only the trainable suffix on the cached outputs: many times faster when most layers are frozen", bool,
           group="model"),
    Option("cache_views", 4, "--cache_frozen: views cached per training face: the face, its mirror, and "
           "cache_views-2 random crops (crop_flip); each epoch draws one view per face", int, group="model",
           interval=AT_LEAST_1, cache_key=True),
    Option("cache_ram_gb", 4.0, "--cache_frozen: a cache larger than this goes to a memory-mapped file in the "
           "run folder (cache/) instead of RAM", float, group="model", interval=AT_LEAST_0),
    # optimisation
    Option("optimizer", "Adam", "optimizer; AdamW is Adam with decoupled weight decay (--weight_decay)",
           choices=("Adam", "AdamW", "SGD")),
    Option("init_lr", 1e-4, "initial learning rate", float, interval=POSITIVE),
    Option("momentum", 0.9, "SGD momentum", float, interval=FRACTION_BELOW_1),
    Option("weight_decay", 0.004, "AdamW: decoupled weight decay (Loshchilov & Hutter 2019)", float,
           interval=AT_LEAST_0),
    Option("warmup_epochs", 0, "raise the learning rate linearly, step by step, from near 0 to --init_lr over "
           "this many epochs before the policy takes over (cosine then decays over the remaining epochs)", int,
           interval=AT_LEAST_0),
    Option("batch_size", 32, "images per step", int, interval=AT_LEAST_1),
    Option("nepochs", 30, "maximum number of epochs", int, interval=AT_LEAST_1, resumable=True),
    Option("lr_policy", "plateau", "plateau: x plateau_factor when val_loss has not improved for plateau_patience "
           "epochs; step: x lr_decay_factor every lr_decay_epochs; cosine: cosine decay to 0 over nepochs; constant",
           choices=("plateau", "step", "cosine", "constant")),
    Option("plateau_factor", 0.5, "plateau policy: learning-rate multiplier", float, interval=OPEN_FRACTION),
    Option("plateau_patience", 3, "plateau policy: epochs without val_loss improvement before decaying", int,
           interval=AT_LEAST_0),
    Option("lr_decay_epochs", 10, "step policy: epochs between decays", int, interval=AT_LEAST_1),
    Option("lr_decay_factor", 0.1, "step policy: learning-rate multiplier", float,
           interval=Interval(0, 1, low_open=True)),
    Option("label_smoothing", 0.0, "mix every target with the uniform distribution: (1 - e) target + e / 8; 0 = off",
           float, interval=FRACTION_BELOW_1),
    Option("ema", 0.0, "keep an exponential moving average of the weights with this decay (e.g. 0.999); the "
           "average is what is validated, checkpointed as the model and exported (resume restores both); 0 = off",
           float, interval=FRACTION_BELOW_1),
    Option("early_stopping_patience", 8, "stop after this many epochs without val_accuracy improvement (0 = never)", int,
           interval=AT_LEAST_0, resumable=True),
    Option("class_weights", "published", "loss weight per class: 'published' (the FER+ ResNet50 recipe's "
           "list), 'balanced' (n / (8 * count) from the training targets), 'none', or 8 numbers", _class_weights),
    # devices and speed (ferkeras/distribute.py)
    Option("strategy", "auto", "none: one device; mirrored: one replica per GPU of this machine; multiworker: "
           "several machines, each started with its TF_CONFIG; auto: mirrored when several GPUs are visible, else "
           "none. --batch_size is the global batch; the learning rate is not scaled for you",
           choices=("auto", "none", "mirrored", "multiworker"), group="devices", resumable=True),
    Option("mixed_precision", "none", "compute in float16 (GPUs, with dynamic loss scaling) or bfloat16 (recent "
           "GPUs/TPUs, CPUs with AMX); variables, preprocessing and logits stay float32",
           choices=("none", "float16", "bfloat16"), group="devices"),
    Option("jit_compile", False, "XLA-compile the training step (torch.compile under KERAS_BACKEND=torch); "
           "off by default: it was slower on a 2-core CPU", bool, group="devices"),
)
OPTION_BY_NAME = {o.name: o for o in OPTIONS}
# Options that may be given again, with another value, when a run is resumed; anything else would make a
# different experiment. --name and --resume say which run to continue, so they are always given.
RESUMABLE = tuple(o.name for o in OPTIONS if o.resumable)
_RUN_IDENTITY = ("name", "resume")
# Options that decide what a memory-mapped --cache_frozen cache holds: made under other values, it is
# recomputed, not reused.
CACHE_KEY_FIELDS = tuple(o.name for o in OPTIONS if o.cache_key)
GROUP_TITLES = {"run": "run folder", "data": "data", "model": "model", "training": "optimisation",
                "devices": "devices and speed"}


def _field_type(opt):
    """The Python type of an option's value in a Config."""
    if opt.multiple:
        kind = tuple[str, ...]
    elif opt.type in (bool, int, float, str):
        kind = opt.type
    else:
        kind = str | tuple[float, ...]  # --class_weights: a rule's name or 8 numbers
    return kind | None if opt.default is None else kind


class _ConfigMethods:
    """What a Config offers besides its fields."""

    def __post_init__(self):
        # Lists (repeated flags, YAML sequences, 8 class weights) become tuples: a frozen Config holds
        # nothing that could change under it.
        for opt in OPTIONS:
            value = getattr(self, opt.name)
            if isinstance(value, list):
                object.__setattr__(self, opt.name, tuple(value))

    def replace(self, **changes):
        """A copy with some options changed (a TypeError names an option that does not exist)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self):
        """{option: value} in the table's order, as config.yaml holds it (tuples as lists)."""
        return {opt.name: _yaml_value(getattr(self, opt.name)) for opt in OPTIONS}


def _yaml_value(value):
    return list(value) if isinstance(value, tuple) else value


Config = dataclasses.make_dataclass(
    "Config", [(opt.name, _field_type(opt), dataclasses.field(default=opt.default)) for opt in OPTIONS],
    bases=(_ConfigMethods,), frozen=True)
Config.__module__ = __name__
Config.__doc__ = ("A resolved training configuration: one typed field per option of OPTIONS, frozen. "
                  "Make one with resolve() or read_config(); change it with .replace(option=value).")


def build_parser(description=None):
    """An argparse parser for every option; unset flags stay absent so a recipe can fill them."""
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", help="YAML recipe (see configs/); flags given here override it")
    groups = {key: parser.add_argument_group(title) for key, title in GROUP_TITLES.items()}
    for opt in OPTIONS:
        # argparse expands %-formats in help texts; ours are plain text. An option without a default
        # value (None) says in its own help what stands in for it.
        suffix = "" if opt.default is None or "(default:" in opt.help else f" (default: {opt.default})"
        kwargs = {"help": f"{opt.help}{suffix}".replace("%", "%%")}
        if opt.type is bool:
            kwargs["action"] = "store_true"
        elif opt.multiple:
            kwargs["action"] = "append"
        else:
            kwargs["type"] = opt.type
            if opt.choices:
                kwargs["choices"] = opt.choices
        groups[opt.group].add_argument(f"--{opt.name}", **kwargs)
    return parser


def load_recipe(path):
    """Read a YAML recipe and check its keys and values against the option table."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found; pass a YAML recipe such as configs/cpu_quick.yaml")
    try:
        recipe = yaml.safe_load(read_text(path)) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({str(exc).splitlines()[0]}); fix the file")
    if not isinstance(recipe, dict):
        raise UserError(f"{path}: expected a mapping of option: value, got {type(recipe).__name__}")
    return {key: _coerce(key, value, source=str(path)) for key, value in recipe.items()}


def _coerce(key, value, source):
    if key not in OPTION_BY_NAME:
        raise UserError(f"{source}: unknown option {key!r}; see `python train.py --help` for the options")
    opt = OPTION_BY_NAME[key]
    if value is None:
        if opt.default is None:
            return None
        raise UserError(f"{source}: option {key!r} has no value; give {_expected(opt)} or remove the line")
    if opt.multiple:
        values = value if isinstance(value, list) else [value]
        return [str(v) for v in values]
    value = _typed(opt, value, source)
    if opt.choices and value not in opt.choices:
        raise UserError(f"{source}: option {key!r} must be one of {', '.join(opt.choices)}, got {value!r}")
    return value


# PyYAML follows YAML 1.1, which reads 1e-4 (no dot) as a string; such a string is still a number.
_NUMBER_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _typed(opt, value, source):
    """`value` as the option's declared type; a YAML value of another type is refused, not converted
    (bool("false") is True, int(1.9) is 1)."""
    if opt.type not in (bool, int, float, str):
        if isinstance(value, bool) or (isinstance(value, list) and any(isinstance(v, bool) for v in value)):
            raise UserError(f"{source}: option {opt.name!r} expects {_expected(opt)}, got {value!r}")
        return opt.type(value)  # a parser of its own (class_weights), which names what it expects
    if opt.type is float and isinstance(value, str) and _NUMBER_TEXT.fullmatch(value.strip()):
        value = float(value)
    accepted = {bool: (bool,), int: (int,), float: (int, float), str: (str,)}[opt.type]
    if not isinstance(value, accepted) or (opt.type is not bool and isinstance(value, bool)):
        raise UserError(f"{source}: option {opt.name!r} expects {_expected(opt)}, got {value!r}")
    return float(value) if opt.type is float else value


def _expected(opt):
    return {bool: "bool (true or false, unquoted)", int: "int (a whole number, e.g. 32)",
            float: "float (a number, e.g. 0.001)", str: "str (text; quote it if it looks like a number)"
            }.get(opt.type, "8 numbers, 'balanced', 'published' or 'none'")


def check_values(config, sources):
    """Every numeric option within its declared range (and finite), before anything is loaded.

    `sources` maps an option to where it was set (a recipe path, or None for the command line), so
    that the message names the flag or the file to fix.
    """
    for opt in OPTIONS:
        value = getattr(config, opt.name)
        if value is None or opt.type not in (int, float):
            continue
        problem = None
        if opt.type is float and not math.isfinite(value):
            problem = "must be a finite number"
        elif opt.interval is not None and value not in opt.interval:
            problem = f"must be {opt.interval}"
        if problem:
            source = sources.get(opt.name)
            where = f"{source}: {opt.name}" if source else f"--{opt.name}"
            raise UserError(f"{where} {problem}, got {_number(value)}")


# Options that only mean something in some runs: (option, whether it applies, when it does).
_APPLIES_ONLY = (
    ("momentum", lambda c: c.optimizer == "SGD", "with --optimizer SGD"),
    ("weight_decay", lambda c: c.optimizer == "AdamW", "with --optimizer AdamW"),
    ("plateau_factor", lambda c: c.lr_policy == "plateau", "with --lr_policy plateau"),
    ("plateau_patience", lambda c: c.lr_policy == "plateau", "with --lr_policy plateau"),
    ("lr_decay_epochs", lambda c: c.lr_policy == "step", "with --lr_policy step"),
    ("lr_decay_factor", lambda c: c.lr_policy == "step", "with --lr_policy step"),
    ("cache_views", lambda c: c.cache_frozen, "with --cache_frozen"),
    ("cache_ram_gb", lambda c: c.cache_frozen, "with --cache_frozen"),
    ("augment", lambda c: not c.cache_frozen, "without --cache_frozen (a cached run trains on its fixed "
     "views: the face, its mirror and crop_flip crops)"),
    ("mix_alpha", lambda c: c.mix != "none", "with --mix mixup or cutmix"),
    *((name, lambda c: c.teacher, "with --teacher")
      for name in ("distill_alpha", "distill_temperature", "distill_views", "distill_reaugment")),
    *((name, lambda c: c.finetune_from, "with --finetune_from")
      for name in ("holdout", "mix_ferplus", "no_detect", "min_face", "detector")),
    ("ferplus_dir", lambda c: c.finetune_from and c.mix_ferplus, "with --finetune_from and --mix_ferplus"),
    *((name, lambda c: not c.finetune_from, "without --finetune_from (fine-tuning keeps the starting "
       "model's architecture and uses all of your faces)")
      for name in ("model_name", "weights", "image_size", "dropout_rate", "allow_partial_weights",
                   "train_limit", "valid_limit")),
)
# Options a --cache_frozen run would silently ignore (it trains on fixed cached views): refused.
_UNCACHED_ONLY = ("mix", "erasing", "ema", "teacher")


def check_combinations(config, explicit=()):
    """Refuse options that contradict each other or that the rest of the configuration would silently
    defeat; warn (stderr) about set options the run ignores. Returns the warnings."""
    if config.resume and config.overwrite:
        raise UserError("--resume and --overwrite contradict each other: --resume continues the run, "
                        "--overwrite replaces it; give one of them")
    if config.warmup_epochs and config.warmup_epochs >= config.nepochs:
        raise UserError(f"--warmup_epochs must be < --nepochs ({config.nepochs}), got "
                        f"{config.warmup_epochs}; the policy needs epochs after the warm-up")
    _check_multi_target(config)
    if config.cache_frozen:
        ignored = [f"--{name}" for name in _UNCACHED_ONLY if getattr(config, name) not in (None, 0, 0.0, "none")]
        if ignored:
            raise UserError(f"--cache_frozen trains on fixed cached views, so {', '.join(ignored)} would have no "
                            "effect; drop them or drop --cache_frozen")
    if config.resume:
        return []  # a resumed run keeps its saved config; flags that differ from it are refused there
    warnings = [f"warning: --{name} is ignored: it applies only {when}"
                for name, applies, when in _APPLIES_ONLY if name in explicit and not applies(config)]
    for line in warnings:
        print(line, file=sys.stderr)
    return warnings


def _check_multi_target(config):
    """multi_target targets are a set of accepted classes: nothing to mix, smooth or blend."""
    if config.training_mode != "multi_target":
        return
    if config.mix != "none":
        raise UserError(f"--mix {config.mix}: multi_target targets are a set of accepted classes, which "
                        "mixing would blur; use --training_mode crossentropy / probability / majority, or --mix none")
    if config.label_smoothing:
        raise UserError("--label_smoothing: the multi_target loss has no smoothing; use another --training_mode "
                        "or --label_smoothing 0")
    if config.teacher:
        raise UserError("--teacher: multi_target targets are a set of accepted classes, not a distribution to "
                        "blend with; use --training_mode crossentropy / probability / majority")


def resolve(argv=None, description=None):
    """Parse the command line into (config, explicit): the Config of every option (defaults < recipe <
    flags), checked, and the names set by the recipe or the flags (resume checks them against the saved
    run). Nothing is loaded before the checks pass."""
    args = vars(build_parser(description).parse_args(argv))
    recipe_path = args.pop("config", None)
    recipe = load_recipe(recipe_path) if recipe_path else {}
    config = Config(**{**recipe, **args})
    check_values(config, {**{key: recipe_path for key in recipe}, **{key: None for key in args}})
    explicit = set(recipe) | set(args)
    check_combinations(config, explicit)
    return config, explicit


def resumed_config(saved, given, explicit, run_dir):
    """The saved Config of the run in `run_dir` to continue, with the resumable options the command line
    set again (`given`, `explicit` from resolve); any other option set to another value is refused."""
    changed = sorted(name for name in explicit if name not in RESUMABLE + _RUN_IDENTITY
                     and getattr(saved, name) != getattr(given, name))
    if changed:
        raise UserError(f"--resume continues {run_dir} as configured; these flags differ from its config.yaml: "
                        f"{', '.join(changed)}. Only {', '.join(RESUMABLE)} may change; start a new run otherwise")
    return saved.replace(**{name: getattr(given, name) for name in explicit if name in RESUMABLE}, resume=True)


def save_config(config, path, unknown=None):
    """Write the resolved Config as YAML (the run's record of how it was made); `unknown`: the keys of a
    saved config.yaml that this version has no option for (see `read_saved_config`), kept after ours."""
    from ferkeras.errors import write_text_atomic
    write_text_atomic(path, yaml.safe_dump({**config.to_dict(), **(unknown or {})}, sort_keys=False))


def read_config(path):
    """A run's config.yaml as a Config (see `read_saved_config`)."""
    return read_saved_config(path)[0]


def read_saved_config(path):
    """(Config, unknown) of a run's config.yaml: options the file lacks (added since the run was made) get
    their defaults; keys this version has no option for (an older or newer ferkeras's) are returned apart,
    as they were, so that --resume writes them back. A one-line UserError when it is missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: run config not found; is {path.parent} a ferkeras run folder?")
    try:
        config = yaml.safe_load(read_text(path))
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: the run config is damaged, not valid YAML ({str(exc).splitlines()[0]}); "
                        "restore it from a copy of the run folder") from None
    if not isinstance(config, dict):
        raise UserError(f"{path}: the run config is damaged (expected a mapping of option: value, got "
                        f"{type(config).__name__}); restore it from a copy of the run folder")
    known = {key: _saved_value(OPTION_BY_NAME[key], value, path) for key, value in config.items()
             if key in OPTION_BY_NAME}
    return Config(**known), {key: value for key, value in config.items() if key not in OPTION_BY_NAME}


def _saved_value(opt, value, path):
    """A value of a run's config.yaml as the option's type. Choices and ranges are not checked again: the
    run was made under them (or under an earlier version's), and evaluating or exporting it needs none."""
    if value is None:
        return None
    if opt.multiple:
        return [str(v) for v in (value if isinstance(value, list) else [value])]
    try:
        return _typed(opt, value, str(path))
    except UserError as exc:
        raise UserError(f"{exc}; the run config is damaged: restore it from a copy of the run folder") from None


def options_markdown():
    """The option table as the Markdown table in docs/training.md (a test keeps the two the same)."""
    rows = []
    for opt in OPTIONS:
        default = "" if opt.default is None else ("off" if opt.default is False else f"`{opt.default}`")
        choices = f" ({' / '.join(opt.choices)})" if opt.choices else ""
        repeat = " (repeatable)" if opt.multiple else ""
        rows.append((f"`--{opt.name}`{repeat}", default, f"{opt.help.replace('|', '/')}{choices}"))
    return markdown_table(("flag", "default", "meaning"), rows) + "\n"
