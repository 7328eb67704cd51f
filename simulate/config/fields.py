"""The run configuration :class:`RunConfig`: its fields, their canonical forms, and what is
derived from them (run id, chunk key, the table step's rule, the data's configuration).

What each field accepts is in :mod:`simulate.config.validation`; reading specs into runs is in
:mod:`simulate.config.specs`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from dataclasses import dataclass, field, fields

from ..data import MixtureConfig
from .validation import DIGITS_DIM, validate

@dataclass(frozen=True)
class RunConfig:
    """One training run. Every field may be a grid axis of a sweep.

    Loss: ``loss`` (ntxent | supcon | dcl | vicreg | barlow | align | repel), ``temperature``
    (> 0, used by ntxent, supcon, dcl), ``clop_weight`` (lambda >= 0; 0 switches CLOP off),
    ``prototypes`` (orthonormal | simplex), ``distance`` (cosine | euclidean | manhattan).
    Optimiser: ``optimizer`` (sgd | lars | adam | adamw; see :mod:`simulate.engine.optimizers`),
    ``lr`` (> 0), ``momentum`` in [0, 1) (sgd and lars; must be 0 for adam and adamw, which
    use ``beta1``), ``nesterov`` (sgd and lars; needs ``momentum`` > 0, as torch.optim.SGD),
    ``weight_decay`` >= 0 (L2 added to the gradient for sgd, lars and adam; decoupled for
    adamw; lars excludes biases from it unless ``lars_biases`` is lars), ``lars_trust`` (LARS
    trust coefficient eta > 0), ``lars_biases`` (sgd: LARS leaves the biases out of its trust
    ratio and weight decay, as the SimCLR recipes do, so they take plain SGD steps; lars: they
    are adapted and decayed like the weights; like ``optimizer``, one value per chunk),
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
    its layers; ``""``: none. An integer n means ``"n"``, a list of integers such as
    ``[64, 16]`` means ``"64,16"``. The loss and CLOP act on the projection; the representation
    before it is logged in the ``repr_*`` columns).
    Data: ``data`` (mixture | digits). ``digits``: scikit-learn's 8x8 digits shipped with the
    package (:mod:`simulate.digits`; ``model: mlp`` only; ``d`` is 64: left out (None) it is
    64, any other value is refused), reading ``k`` (<= 10),
    ``per_class`` (<= 174), ``label_fraction``, ``holdout_fraction``, ``aug_sigma``,
    ``max_shift`` (views shift each image by up to this many pixels per axis, then add pixel
    noise) and ``data_seed``; the mixture-only fields are ignored (``sign_flip`` is refused).
    ``mixture``: the fields of :class:`simulate.data.MixtureConfig` (``k``, ``d``, ``per_class``,
    ``means``, ``mean_scale``, ``sigma``, ``noise_rank``, ``label_fraction``, ``aug_sigma``,
    ``sign_flip``, ``holdout_fraction``) and ``data_seed``; ``d`` left out (None) is 16.
    ``mean_scale`` and ``sigma`` both 0 is refused: every point would be the zero vector, so
    the run could only be collapsed (and free embeddings, all zero, would be reported healthy).
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
    lars_biases: str = "sgd"
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
    d: int | None = None  # the data's own width: MixtureConfig.d (16), or DIGITS_DIM (64)
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
        object.__setattr__(self, "projector_dims", _projector_text(self.projector_dims))
        if self.d is None:  # the data's own width
            object.__setattr__(self, "d", DIGITS_DIM if self.data == "digits" else MixtureConfig.d)
        self.validate()

    def validate(self) -> None:
        """Check every field (:func:`simulate.config.validation.validate`).

        Raises:
            SpecError: the message names the field and what it accepts."""
        validate(self)

    # ------------------------------------------------------------------ derived
    @property
    def fused_step(self) -> bool:
        """Whether the engine takes this run's gradient with respect to its embeddings from
        the fused NT-Xent + CLOP pass (free embeddings or an MLP's output, NT-Xent on unit
        rows, cosine CLOP; any optimizer): there a zero CLOP weight adds exact zeros, so runs
        with and without CLOP may share a chunk and keep their numbers."""
        return self.loss == "ntxent" and self.update_mode in ("free", "sphere") and self.distance == "cosine"

    @property
    def table_rule(self) -> str:
        """How the engine updates free embeddings (:class:`simulate.engine.table.TableStep`):
        ``sparse`` (plain SGD: only the batch's rows move); ``linear`` (SGD and LARS with
        momentum of at least :data:`LAZY_MIN_DECAY` on rows that are not renormalised, and with
        Nesterov only where ``lr omega <= 1/2``, ``omega`` the weight decay for sgd and
        ``lars_trust`` for LARS with weight decay: on the CPU the rows outside the batch follow
        one linear map per run, kept as a 2x2 matrix,
        :class:`simulate.engine.linear_momentum.LinearMomentum`;
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
            from ..digits import DigitsConfig

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
    "spectrum_every", "projector_dims", "data", "max_shift", "lars_biases")}


def _projector_text(dims):
    """``projector_dims`` in its canonical form: comma-separated widths (``"64,16"``), ``""`` for
    none. An integer n is ``"n"``; a list or tuple of integers is its widths; text is stripped
    and lower-cased, ``"none"`` is ``""``, each width in ASCII digits is written as an integer
    (``"064,16"`` is ``"64,16"``). Anything else is returned as it is (and refused)."""
    if isinstance(dims, (list, tuple)) and dims and all(
            isinstance(w, int) and not isinstance(w, bool) for w in dims):
        return ",".join(str(w) for w in dims)
    if isinstance(dims, int) and not isinstance(dims, bool):
        return str(dims)
    if isinstance(dims, str):
        text = dims.strip().lower()
        if text in ("", "none"):
            return ""
        # widths in ASCII digits are written as integers ("064" is "64"); anything else is
        # left as it is, for validation to refuse
        parts = [p.strip() for p in text.split(",")]
        return ",".join(str(int(p)) if p.isascii() and p.isdigit() else p for p in parts)
    return dims
