"""Run configurations and sweep specs: validation, grid expansion, chunk keys.

A *run* is one configuration (:class:`RunConfig`). A *spec* is a mapping from field names to
a value or a list of values; every list is a grid axis and the runs are the Cartesian
product. ``seed`` is a seed or a list of seeds; ``seeds`` (instead of ``seed``, never with it)
is a list of seeds or a count ``n`` (seeds ``0 .. n-1``).

Spec files are YAML or JSON (``.json``). YAML is read with the YAML 1.2 core schema's
booleans (``true``/``false``, also capitalised; ``yes``/``no``/``on``/``off`` stay strings) and
floats (``1e6``, ``1.5e6`` and ``1e-4`` are numbers, not strings).

Example spec (YAML)::

    name: lr-sweep
    loss: ntxent
    clop_weight: [0.0, 1.0]
    lr: [0.01, 0.1, 1.0, 10.0]
    seed: [0, 1, 2, 3]
    model: free
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from .data import MEAN_KINDS, MixtureConfig
from .losses import BASE_LOSSES, DISTANCES, PROTOTYPE_KINDS
from .losses.clop import check_prototype_shape
from .models import UPDATE_MODES

MODELS = ("free", "mlp")
OPTIMIZERS = ("sgd", "lars", "adam", "adamw")
SCHEDULES = ("constant", "cosine")
DATA_SOURCES = ("mixture", "digits")
#: input width of the digits data (8 x 8 pixels)
DIGITS_DIM = 64


class SpecError(ValueError):
    """An invalid run configuration or sweep spec; the message names the field."""


@dataclass(frozen=True)
class RunConfig:
    """One training run. Every field may be a grid axis of a sweep.

    Loss: ``loss`` (ntxent | supcon | dcl | vicreg | barlow | align | repel), ``temperature``
    (> 0, used by ntxent, supcon, dcl), ``clop_weight`` (lambda >= 0; 0 switches CLOP off),
    ``prototypes`` (orthonormal | simplex), ``distance`` (cosine | euclidean | manhattan).
    Optimiser: ``optimizer`` (sgd | lars | adam | adamw; see :mod:`simulate.engine.update`),
    ``lr`` (> 0), ``momentum`` in [0, 1) (sgd and lars; must be 0 for adam and adamw, which
    use ``beta1``), ``nesterov`` (sgd and lars; needs ``momentum`` > 0, as torch.optim.SGD),
    ``weight_decay`` >= 0 (L2 added to the gradient for sgd, lars and adam; decoupled for
    adamw; lars excludes biases from it), ``lars_trust`` (LARS trust coefficient eta > 0),
    ``beta1`` and ``beta2`` in [0, 1) (Adam's two betas, given as two fields so that each can
    be a grid axis and a CLI option), ``eps`` > 0 (Adam's denominator term; LARS adds it to
    its trust-ratio denominator). Fields an optimizer does not read are ignored.
    Learning-rate schedule (per run; equal to ``torch.optim.lr_scheduler``): ``warmup_steps``
    >= 0 (update t <= W uses ``lr * t / W``: ``LinearLR(start_factor=1/W, total_iters=W-1)``;
    with ``W >= steps`` the whole run warms up) then ``schedule`` (constant | cosine:
    ``CosineAnnealingLR(T_max=steps-W)`` over the updates after the warmup, joined by
    ``SequentialLR(milestones=[W])``).
    Training: ``batch_size`` (1 <= B <= training points), ``steps``, ``log_every``;
    ``spectrum_every`` (None: the singular-value spectrum is logged at every logged step; n:
    only at the logged steps that are multiples of n, at step 0 and at the last step).
    Model: ``model`` (free | mlp), ``update_mode`` (free | sphere | sphere_raw; the sphere
    modes need ``model: free``), ``init_norm`` (free embeddings in the free mode: every row
    starts at this norm, so the effective rate ``lr / init_norm**2`` is set directly; None:
    the views' own norms), MLP ``hidden``, ``depth``, ``out_dim`` (the representation's
    width), ``batch_norm``, ``projector_dims`` (a projector head on the MLP's output: its
    layer widths as comma-separated text such as ``"64,16"``, ReLU (and batch norm) between
    its layers; ``""``: none. An integer n means ``"n"``. The loss and CLOP act on the
    projection; the representation before it is logged in the ``repr_*`` columns).
    Data: ``data`` (mixture | digits). ``digits``: scikit-learn's 8x8 digits shipped with the
    package (:mod:`simulate.digits`; ``model: mlp`` only, ``d`` is 64), reading ``k`` (<= 10),
    ``per_class`` (<= 174), ``label_fraction``, ``holdout_fraction``, ``aug_sigma``,
    ``max_shift`` (views shift each image by up to this many pixels per axis, then add pixel
    noise) and ``data_seed``; the mixture-only fields are ignored (``sign_flip`` is refused).
    ``mixture``: the fields of :class:`simulate.data.MixtureConfig` (``k``, ``d``, ``per_class``,
    ``means``, ``mean_scale``, ``sigma``, ``noise_rank``, ``label_fraction``, ``aug_sigma``,
    ``sign_flip``, ``holdout_fraction``) and ``data_seed``.
    ``seed`` drives the initialisation and the minibatches. ``save_embeddings`` keeps the
    final embeddings of the training points (for small runs such as the 3-D toy).
    """

    loss: str = "ntxent"
    temperature: float = 0.5
    clop_weight: float = 0.0
    prototypes: str = "orthonormal"
    distance: str = "cosine"
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    nesterov: bool = False
    lars_trust: float = 0.001
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "constant"
    batch_size: int = 64
    steps: int = 300
    log_every: int = 50
    spectrum_every: int | None = None
    model: str = "mlp"
    update_mode: str = "free"
    init_norm: float | None = None
    hidden: int = 64
    depth: int = 3
    out_dim: int = 16
    batch_norm: bool = False
    projector_dims: str = ""
    data: str = "mixture"
    max_shift: int = 1
    # data fields, flattened so that each can be a grid axis; defaults are MixtureConfig's
    k: int = MixtureConfig.k
    d: int = MixtureConfig.d
    per_class: int = MixtureConfig.per_class
    means: str = MixtureConfig.means
    mean_scale: float = MixtureConfig.mean_scale
    sigma: float = MixtureConfig.sigma
    noise_rank: int | None = MixtureConfig.noise_rank
    label_fraction: float = MixtureConfig.label_fraction
    aug_sigma: float = MixtureConfig.aug_sigma
    sign_flip: bool = MixtureConfig.sign_flip
    holdout_fraction: float = MixtureConfig.holdout_fraction
    data_seed: int = MixtureConfig.seed
    seed: int = 0
    save_embeddings: bool = False
    name: str = field(default="", compare=False)

    def __post_init__(self):
        # canonical forms, so that equal configurations share one run id
        dims = self.projector_dims
        if isinstance(dims, int) and not isinstance(dims, bool):
            object.__setattr__(self, "projector_dims", str(dims))
        elif isinstance(dims, str):
            text = dims.strip().lower()
            object.__setattr__(self, "projector_dims", "" if text in ("", "none") else
                               ",".join(p.strip() for p in text.split(",")))
        if self.data == "digits" and self.d == MixtureConfig.d:
            object.__setattr__(self, "d", DIGITS_DIM)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def bad(name, accepted):
            raise SpecError(f"{name} must be {accepted}, got {getattr(self, name)!r}")

        def number(name, lo=None, hi=None, lo_open=False, hi_open=False):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                bad(name, "a finite number")
            if lo is not None and (v < lo or (lo_open and v == lo)):
                bad(name, f"{'>' if lo_open else '>='} {lo}")
            if hi is not None and (v > hi or (hi_open and v == hi)):
                bad(name, f"{'<' if hi_open else '<='} {hi}")

        def integer(name, lo):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                bad(name, f"an integer >= {lo}")

        def choice(name, options):
            if getattr(self, name) not in options:
                bad(name, f"one of {', '.join(options)}")

        for name in ("batch_norm", "sign_flip", "save_embeddings", "nesterov"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "true or false")
        if not isinstance(self.name, str):
            bad("name", "a string")
        choice("loss", tuple(BASE_LOSSES))
        choice("prototypes", PROTOTYPE_KINDS)
        choice("distance", DISTANCES)
        choice("model", MODELS)
        choice("update_mode", tuple(UPDATE_MODES))
        choice("means", MEAN_KINDS)
        number("temperature", 0, lo_open=True)
        number("clop_weight", 0)
        number("lr", 0, lo_open=True)
        number("momentum", 0, 1, hi_open=True)
        number("weight_decay", 0)
        choice("optimizer", OPTIMIZERS)
        choice("schedule", SCHEDULES)
        choice("data", DATA_SOURCES)
        number("lars_trust", 0, lo_open=True)
        number("beta1", 0, 1, hi_open=True)
        number("beta2", 0, 1, hi_open=True)
        number("eps", 0, lo_open=True)
        integer("warmup_steps", 0)
        integer("max_shift", 0)
        if self.spectrum_every is not None:
            integer("spectrum_every", 1)
        if self.nesterov and self.momentum == 0:
            bad("nesterov", "false when momentum is 0 (Nesterov momentum needs momentum > 0)")
        if self.optimizer in ("adam", "adamw"):
            if self.momentum != 0:
                bad("momentum", f"0 with optimizer {self.optimizer} (it uses beta1)")
            if self.nesterov:
                bad("nesterov", f"false with optimizer {self.optimizer}")
        dims = self.projector_dims
        if not isinstance(dims, str) or (dims and not all(p.isdigit() and int(p) >= 1 for p in dims.split(","))):
            bad("projector_dims", "comma-separated layer widths >= 1 such as '64,16', or '' (none)")
        if self.projector_dims and self.model != "mlp":
            bad("projector_dims", "'' unless model is 'mlp' (free embeddings have no projector)")
        if self.data == "digits":
            if self.model != "mlp":
                bad("model", "'mlp' with data digits")
            if self.d != DIGITS_DIM:
                bad("d", f"{DIGITS_DIM} with data digits (the 8x8 pixels)")
            if self.sign_flip:
                bad("sign_flip", "false with data digits (its views shift and add noise)")
            if self.max_shift > 7:
                bad("max_shift", "an integer in [0, 7] with data digits")
        for name in ("steps", "log_every", "batch_size", "hidden", "depth", "out_dim", "per_class"):
            integer(name, 1)
        integer("k", 2)
        integer("d", 1)
        integer("seed", 0)
        integer("data_seed", 0)
        if self.update_mode != "free" and self.model != "free":
            bad("update_mode", "'free' with model 'mlp' (the sphere modes act on free embeddings)")
        if self.init_norm is not None:
            number("init_norm", 0, lo_open=True)
            if self.model != "free" or self.update_mode != "free":
                bad("init_norm", "none unless model is 'free' with update_mode 'free' (the sphere "
                    "modes keep unit rows)")
        if self.clop_weight > 0:
            try:
                check_prototype_shape(self.k, self.embedding_dim, self.prototypes)
            except ValueError as exc:
                raise SpecError(f"{exc} (CLOP)") from None
        try:
            data = self.data_config()
        except ValueError as exc:
            raise SpecError(str(exc)) from None
        if self.data == "digits":
            n_train = data.n_train
        else:
            n_train = data.per_class * data.k - round(data.holdout_fraction * data.per_class * data.k)
        if self.batch_size > n_train:
            raise SpecError(
                f"batch_size must be <= the {n_train} training points, got {self.batch_size}"
            )
        if self.loss in ("vicreg", "barlow", "dcl") and self.batch_size < 2:
            raise SpecError(f"batch_size must be >= 2 for {self.loss}, got {self.batch_size}")

    # ------------------------------------------------------------------ derived
    @property
    def fused_step(self) -> bool:
        """Whether the engine takes this run's gradient from the fused NT-Xent + CLOP pass
        (free embeddings, NT-Xent on unit rows, cosine CLOP; any optimizer): there a zero CLOP
        weight adds exact zeros, so runs with and without CLOP may share a chunk and keep
        their numbers."""
        return (self.model == "free" and self.loss == "ntxent" and self.update_mode in ("free", "sphere")
                and self.distance == "cosine")

    @property
    def table_rule(self) -> str:
        """How the engine updates free embeddings (:class:`simulate.engine.update.TableStep`):
        ``sparse`` (plain SGD: only the batch's rows move); ``linear`` (SGD and LARS with
        momentum of at least :data:`LAZY_MIN_DECAY` on rows that are not renormalised, and with
        Nesterov only where ``lr omega <= 1/2``, ``omega`` the weight decay for sgd and
        ``lars_trust`` for LARS with weight decay: on the CPU the rows outside the batch follow
        one linear map per run, kept as a 2x2 matrix, :class:`simulate.engine.update.LinearMomentum`;
        on a device as ``lazy``); ``lazy`` (every row moves, the geometric decays kept as
        per-run scales: SGD and LARS with momentum 0 or at least :data:`LAZY_MIN_DECAY`; Adam
        and AdamW with ``beta1`` and ``sqrt(beta2)`` at least that, and no L2 weight decay for
        Adam) or ``padded`` (the rest: the batch's gradient padded with zeros, then the dense
        rule; a decay below the bound would push a per-run scale out of float32's range within
        one update)."""
        if self.optimizer == "sgd" and self.momentum == 0 and self.weight_decay == 0:
            return "sparse"
        if self.optimizer in ("adam", "adamw"):
            if (min(self.beta1, math.sqrt(self.beta2)) < LAZY_MIN_DECAY
                    or (self.optimizer == "adam" and self.weight_decay > 0)):
                return "padded"
            return "lazy"
        if 0 < self.momentum < LAZY_MIN_DECAY:
            return "padded"
        if self.momentum == 0 or self.update_mode != "free":
            return "lazy"
        omega = self.weight_decay if self.optimizer == "sgd" else (self.lars_trust if self.weight_decay > 0 else 0.0)
        if self.nesterov and self.lr * omega > 0.5:  # (det A = momentum (1 - lr omega))
            return "lazy"
        return "linear"

    @property
    def embedding_dim(self) -> int:
        """Width of the rows the loss sees (the projection's, with a projector)."""
        if self.model == "free":
            return self.d
        return self.projector_widths[-1] if self.projector_widths else self.out_dim

    @property
    def projector_widths(self) -> tuple[int, ...]:
        """The projector's layer widths (empty: no projector)."""
        return tuple(int(p) for p in self.projector_dims.split(",")) if self.projector_dims else ()

    def data_config(self):
        """The data's configuration: :class:`simulate.data.MixtureConfig` or
        :class:`simulate.digits.DigitsConfig`."""
        if self.data == "digits":
            from .digits import DigitsConfig

            return DigitsConfig(k=self.k, per_class=self.per_class, label_fraction=self.label_fraction,
                                holdout_fraction=self.holdout_fraction, aug_sigma=self.aug_sigma,
                                max_shift=self.max_shift, seed=self.data_seed)
        return MixtureConfig(
            k=self.k, d=self.d, per_class=self.per_class, means=self.means,
            mean_scale=self.mean_scale, sigma=self.sigma, noise_rank=self.noise_rank,
            label_fraction=self.label_fraction, aug_sigma=self.aug_sigma,
            sign_flip=self.sign_flip, holdout_fraction=self.holdout_fraction, seed=self.data_seed,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @functools.cached_property
    def run_id(self) -> str:
        """Stable 16-hex id of the configuration (the ``name`` label excluded)."""
        d = self.to_dict()
        d.pop("name")
        for f, default in _LATER_DEFAULTS.items():  # ids of earlier runs stay what they were
            if d[f] == default:
                d.pop(f)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def chunk_key(self) -> tuple:
        """Runs with equal keys share shapes and program, so they can train as one stack.

        A run's numbers must not depend on which runs share its chunk, so the key also holds
        what picks the program: whether CLOP is on (a CLOP term or none) and, for free
        embeddings, the rule of the table step (:attr:`table_rule`) and whether momentum is on."""
        d = self.to_dict()
        for f in PER_RUN_FIELDS + ("name",):
            d.pop(f)
        if self.model == "free":  # the table step's rule, and whether it keeps a momentum buffer
            d["table_rule"] = (self.table_rule, self.momentum > 0)
        if not self.fused_step:
            d["clop_on"] = self.clop_weight > 0
        return tuple(sorted(d.items()))


def is_logged(step: int, steps: int, log_every: int) -> bool:
    """Whether a run of ``steps`` steps logs at ``step``: 0, every ``log_every``-th, the last."""
    return step == 0 or step == steps or (0 < step <= steps and step % log_every == 0)


def logged_count(steps: int, log_every: int) -> int:
    """How many steps :func:`is_logged` picks."""
    return 1 + steps // log_every + (steps % log_every != 0)


#: the smallest momentum (or Adam beta1, sqrt(beta2)) the table step keeps as a per-run scale
#: (:attr:`RunConfig.table_rule`)
LAZY_MIN_DECAY = 1e-3

#: fields that may differ between the runs of one chunk (they are per-run tensors or data)
PER_RUN_FIELDS = (
    "lr", "momentum", "weight_decay", "clop_weight", "seed", "data_seed", "label_fraction",
    "means", "mean_scale", "sigma", "noise_rank", "aug_sigma", "sign_flip", "init_norm",
    "nesterov", "lars_trust", "beta1", "beta2", "eps", "warmup_steps", "schedule", "max_shift",
    "spectrum_every",
)
FIELD_NAMES = tuple(f.name for f in fields(RunConfig))
#: fields added after trajectory version 3: at their default they stay out of the run id, so
#: the ids (and stored results) of runs configured before them do not change
_LATER_DEFAULTS = {f.name: f.default for f in fields(RunConfig) if f.name in (
    "optimizer", "nesterov", "lars_trust", "beta1", "beta2", "eps", "warmup_steps", "schedule",
    "spectrum_every", "projector_dims", "data", "max_shift")}


@functools.cache
def _spec_loader():
    """A ``yaml.SafeLoader`` whose booleans and floats follow the YAML 1.2 core schema.

    PyYAML implements YAML 1.1, where ``1e6`` and ``1e-4`` (no dot) are strings and ``no``,
    ``off``, ``yes`` and ``on`` are booleans. Specs read only ``true``/``false`` (also
    ``True``, ``TRUE``, ``False``, ``FALSE``) as booleans, and any decimal with a dot or an exponent as a float; nothing else changes
    (integers, null and strings resolve as before, and no string is coerced)."""
    import yaml

    bool_tag, float_tag = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float"

    class SpecLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
            twice = sorted({str(k) for k in keys if keys.count(k) > 1})
            if twice:
                raise yaml.constructor.ConstructorError(
                    None, None, f"field(s) {', '.join(twice)} given twice", node.start_mark)
            return super().construct_mapping(node, deep=deep)

    SpecLoader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag not in (bool_tag, float_tag)]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    SpecLoader.add_implicit_resolver(
        bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    SpecLoader.add_implicit_resolver(float_tag, re.compile(r"""^(?:
        [-+]?[0-9][0-9_]*(?:\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[eE][-+]?[0-9]+)
        |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""", re.VERBOSE), list("-+0123456789."))
    return SpecLoader


def parse_yaml(text: str):
    """Parse spec YAML (booleans and floats as in YAML 1.2, see :func:`_spec_loader`)."""
    import yaml

    return yaml.load(text, Loader=_spec_loader())  # a SafeLoader subclass


def _no_duplicate_keys(pairs: list) -> dict:
    """A JSON object's mapping; a key given twice is refused (the last would silently win)."""
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise SpecError(f"field(s) {', '.join(twice)} given twice")
    return dict(pairs)


def _read_mapping(path: Path) -> dict:
    """A spec file's top-level mapping (YAML, or JSON for ``.json`` files)."""
    import yaml

    where = repr(str(path))
    if not path.exists():
        raise SpecError(f"spec file {where} does not exist")
    if path.is_dir():
        raise SpecError(f"spec {where} is a directory; give a YAML or JSON spec file or a preset name")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError(f"spec file {where} is not UTF-8 text (YAML or JSON expected)") from None
    except OSError as exc:
        raise SpecError(f"spec file {where} cannot be read: {exc.strerror or exc}") from None
    if path.suffix == ".json":
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        except SpecError as exc:
            raise SpecError(f"spec file {where}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise SpecError(f"spec file {where} is not valid JSON: {exc.msg} "
                            f"(line {exc.lineno}, column {exc.colno})") from None
    else:
        try:
            data = parse_yaml(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            problem = getattr(exc, "problem", None) or str(exc)
            at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            raise SpecError(f"spec file {where} is not valid YAML: {_one_line(problem)}{at}") from None
    if not isinstance(data, dict):
        raise SpecError(f"spec {where} must be a mapping of field names to values")
    return data


def _kind(value) -> str:
    """A short description of a spec value that has the wrong shape."""
    if value is None:
        return "nothing"
    if isinstance(value, (dict, list)) and not value:
        return f"an empty {'mapping' if isinstance(value, dict) else 'list'}"
    if isinstance(value, list):
        return f"a list {_one_line(repr(value))[:60]}"
    return _one_line(repr(value))[:60]


def _one_line(text) -> str:
    return " ".join(str(text).split())


def load_spec(source: str | Path | dict) -> dict:
    """Read a spec from a YAML or JSON file (or take a dict); check its field names."""
    spec = dict(source) if isinstance(source, dict) else _read_mapping(Path(source))
    if "seeds" in spec:
        seeds = spec.pop("seeds")
        if "seed" in spec:
            raise SpecError(
                f"give seed (a seed or a list of seeds) or seeds (a count or a list of seeds), "
                f"not both; got seed {spec['seed']!r} and seeds {seeds!r}"
            )
        if isinstance(seeds, int) and not isinstance(seeds, bool) and seeds >= 1:
            seeds = list(range(seeds))
        elif not (isinstance(seeds, list) and seeds):
            raise SpecError(f"seeds must be a count >= 1 or a non-empty list of seeds, got {seeds!r}")
        spec["seed"] = seeds
    unknown = sorted(str(k) for k in set(spec) - set(FIELD_NAMES))
    if unknown:
        raise SpecError(
            f"unknown field(s) {', '.join(unknown)} in spec; accepted: {', '.join(FIELD_NAMES)}"
        )
    return spec


def expand(spec: dict) -> list[RunConfig]:
    """All runs of a spec (Cartesian product of its list-valued fields), validated."""
    spec = load_spec(spec)
    axes = {k: (v if isinstance(v, list) else [v]) for k, v in spec.items()}
    for k, v in axes.items():
        if not v:
            raise SpecError(f"{k} must not be an empty list")
    names = list(axes)
    runs, seen = [], set()
    for combo in itertools.product(*(axes[n] for n in names)):
        run = RunConfig(**dict(zip(names, combo)))
        if run.run_id not in seen:
            seen.add(run.run_id)
            runs.append(run)
    return runs


PRESET_DIR = Path(__file__).resolve().parent / "presets"


def resolve_specs(spec: str | Path | dict) -> dict[str, dict]:
    """Named sweeps of a spec: a spec file or dict gives one sweep (name ``""``); a file with a
    top-level ``sweeps`` mapping (the presets ``quick`` and ``paper``) gives several."""
    if isinstance(spec, dict):
        data = spec
    else:
        path = Path(spec)
        if not path.exists():
            path = PRESET_DIR / f"{spec}.yaml"
            if not path.exists():
                names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
                raise SpecError(f"spec {str(spec)!r} is neither a file nor a preset ({', '.join(names)})")
        data = _read_mapping(path)
    if "sweeps" in data:
        sweeps = data["sweeps"]
        if not isinstance(sweeps, dict) or not sweeps:
            raise SpecError(
                f"sweeps must map sweep names to mappings of fields (e.g. sweeps: {{lr: {{lr: "
                f"[0.1, 1.0]}}}}), got {_kind(sweeps)}"
            )
        common = {k: v for k, v in data.items() if k != "sweeps"}
        specs = {}
        for name, sub in sweeps.items():
            if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
                raise SpecError(f"sweeps: a sweep name must be a folder name (a non-empty string "
                                f"without '/'), got {name!r}")
            if not isinstance(sub, dict):
                raise SpecError(f"sweeps: {name} must be a mapping of field names to values, "
                                f"got {_kind(sub)}")
            base = common
            if {"seed", "seeds"} & set(sub):  # a sweep's own seeds replace the shared ones
                base = {k: v for k, v in common.items() if k not in ("seed", "seeds")}
            try:
                specs[name] = load_spec({**base, **sub})
            except SpecError as exc:
                raise SpecError(f"sweeps: {name}: {exc}") from None
        return specs
    return {"": load_spec(data)}


def resolve_spec(spec: str | Path | dict) -> dict:
    """One sweep's spec (a file, a dict, or a single-sweep preset)."""
    specs = resolve_specs(spec)
    if len(specs) != 1:
        raise SpecError(f"spec {spec!r} holds several sweeps ({', '.join(specs)}); use run_specs")
    return next(iter(specs.values()))
