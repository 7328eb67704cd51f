"""What each field of a run accepts, as tables of rules, and :func:`validate`, which applies them.

Three kinds of rule, checked in this order (the first that fails is the error):

- :data:`FIELD_RULES`: a field on its own, ``field -> ((holds, accepted), ...)``; the first
  check whose ``holds(value)`` is false is reported;
- :data:`CROSS_RULES`: a field that must agree with others, ``(field, breaks(run), accepted)``;
- :func:`check_data`: what needs the data's configuration (the CLOP prototypes' shape, the
  data's own fields, the batch against the training points).

Every error is a :class:`SpecError` that names the field and what it accepts:
``"<field> must be <accepted>, got <value>"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..data import MEAN_KINDS
from ..losses import BASE_LOSSES, DISTANCES, PROTOTYPE_KINDS
from ..losses.clop import check_prototype_shape
from ..models import UPDATE_MODES

MODELS = ("free", "mlp")
OPTIMIZERS = ("sgd", "lars", "adam", "adamw")
SCHEDULES = ("constant", "cosine")
#: what LARS does with the biases (:func:`simulate.engine.optimizers.lars_adapts`)
LARS_BIASES = ("sgd", "lars")
DATA_SOURCES = ("mixture", "digits")
#: input width of the digits data (8 x 8 pixels)
DIGITS_DIM = 64


class SpecError(ValueError):
    """An invalid run configuration or sweep spec; the message names the field."""


def refuse(name: str, accepted: str, value) -> None:
    """Raise the :class:`SpecError` of a field that is not what it accepts."""
    raise SpecError(f"{name} must be {accepted}, got {value!r}")


# ---------------------------------------------------------------------- checks of one value
Check = tuple[Callable[[object], bool], str]  # (holds(value), what the field accepts)


def _is_number(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def number(lo=None, hi=None, lo_open: bool = False, hi_open: bool = False) -> tuple[Check, ...]:
    """A finite number, then each bound: ``>`` / ``>=`` ``lo``, ``<`` / ``<=`` ``hi``."""
    checks: list[Check] = [(_is_number, "a finite number")]
    if lo is not None:
        checks.append(((lambda v: v > lo) if lo_open else (lambda v: v >= lo),
                       f"{'>' if lo_open else '>='} {lo}"))
    if hi is not None:
        checks.append(((lambda v: v < hi) if hi_open else (lambda v: v <= hi),
                       f"{'<' if hi_open else '<='} {hi}"))
    return tuple(checks)


def integer(lo: int) -> tuple[Check, ...]:
    return ((lambda v: not isinstance(v, bool) and isinstance(v, int) and v >= lo,
             f"an integer >= {lo}"),)


def choice(options) -> tuple[Check, ...]:
    options = tuple(options)
    return ((lambda v: v in options, f"one of {', '.join(options)}"),)


def optional(checks: tuple[Check, ...]) -> tuple[Check, ...]:
    """The same checks, passed by None."""
    return tuple(((lambda v, holds=holds: v is None or holds(v)), accepted)
                 for holds, accepted in checks)


def _widths(text) -> bool:
    """Comma-separated layer widths >= 1, or '' (no projector)."""
    return isinstance(text, str) and (
        not text or all(p.isascii() and p.isdigit() and int(p) >= 1 for p in text.split(",")))


FLAG = ((lambda v: isinstance(v, bool), "true or false"),)
POSITIVE = number(0, lo_open=True)
UNIT_INTERVAL = number(0, 1, hi_open=True)  # [0, 1)

#: each field's own checks, in the order they are tried. Fields of the data that are not here
#: (``mean_scale``, ``sigma``, ``label_fraction``, ...) are checked by the data's configuration
#: (:func:`check_data`), so that a run and its data say the same.
FIELD_RULES: dict[str, tuple[Check, ...]] = {
    "batch_norm": FLAG, "sign_flip": FLAG, "save_embeddings": FLAG, "nesterov": FLAG,
    "name": ((lambda v: isinstance(v, str), "a string"),),
    "loss": choice(BASE_LOSSES),
    "prototypes": choice(PROTOTYPE_KINDS),
    "distance": choice(DISTANCES),
    "model": choice(MODELS),
    "update_mode": choice(UPDATE_MODES),
    "means": choice(MEAN_KINDS),
    "temperature": POSITIVE,
    "clop_weight": number(0),
    "lr": POSITIVE,
    "momentum": UNIT_INTERVAL,
    "weight_decay": number(0),
    "optimizer": choice(OPTIMIZERS),
    "schedule": choice(SCHEDULES),
    "data": choice(DATA_SOURCES),
    "lars_trust": POSITIVE,
    "lars_biases": choice(LARS_BIASES),
    "beta1": UNIT_INTERVAL,
    "beta2": UNIT_INTERVAL,
    "eps": POSITIVE,
    "warmup_steps": integer(0),
    "max_shift": integer(0),
    "spectrum_every": optional(integer(1)),
    "projector_dims": ((_widths, "comma-separated layer widths >= 1 such as '64,16' (in a spec "
                        "also a list such as [64, 16]), or '' (none)"),),
    **{name: integer(1) for name in ("steps", "log_every", "batch_size", "hidden", "depth",
                                     "out_dim", "per_class")},
    "k": integer(2),
    "d": integer(1),
    "seed": integer(0),
    "data_seed": integer(0),
    "init_norm": optional(POSITIVE),
}

_ADAM = ("adam", "adamw")
_DIGITS = lambda r: r.data == "digits"  # noqa: E731

#: rules between fields: (field, breaks(run), accepted or accepted(run)), in the order tried
CROSS_RULES: tuple[tuple[str, Callable, str | Callable], ...] = (
    ("nesterov", lambda r: r.nesterov and r.momentum == 0,
     "false when momentum is 0 (Nesterov momentum needs momentum > 0)"),
    ("momentum", lambda r: r.optimizer in _ADAM and r.momentum != 0,
     lambda r: f"0 with optimizer {r.optimizer} (it uses beta1)"),
    ("nesterov", lambda r: r.optimizer in _ADAM and r.nesterov,
     lambda r: f"false with optimizer {r.optimizer}"),
    ("projector_dims", lambda r: r.projector_dims and r.model != "mlp",
     "'' unless model is 'mlp' (free embeddings have no projector)"),
    ("model", lambda r: _DIGITS(r) and r.model != "mlp", "'mlp' with data digits"),
    ("d", lambda r: _DIGITS(r) and r.d != DIGITS_DIM,
     f"{DIGITS_DIM} or left out with data digits (digits has {DIGITS_DIM} dimensions, the 8x8 "
     "pixels)"),
    ("sign_flip", lambda r: _DIGITS(r) and r.sign_flip,
     "false with data digits (its views shift and add noise)"),
    ("max_shift", lambda r: _DIGITS(r) and r.max_shift > 7,
     "an integer in [0, 7] with data digits"),
    ("update_mode", lambda r: r.update_mode != "free" and r.model != "free",
     "'free' with model 'mlp' (the sphere modes act on free embeddings)"),
    ("init_norm",
     lambda r: r.init_norm is not None and (r.model != "free" or r.update_mode != "free"),
     "none unless model is 'free' with update_mode 'free' (the sphere modes keep unit rows)"),
)


def check_data(run) -> None:
    """The rules that need the data's configuration: the CLOP prototypes fit the embeddings,
    the data's own fields (:class:`simulate.data.MixtureConfig` or
    :class:`simulate.digits.DigitsConfig` checks them), mixture data is not one point, and the
    batch fits the training points."""
    if run.clop_weight > 0:
        try:
            check_prototype_shape(run.k, run.embedding_dim, run.prototypes)
        except ValueError as exc:
            raise SpecError(f"{exc} (CLOP)") from None
    try:
        data = run.data_config()
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    if run.data == "digits":
        n_train = data.n_train
    else:
        # every point, of every class, at the origin (the data is float32: 1e-300 is 0 there)
        if np.float32(data.mean_scale) == 0 and np.float32(data.sigma) == 0:
            refuse("sigma", "> 0 when mean_scale is 0 (also below float32 resolution; with "
                   "mean_scale 0 and sigma 0 every data point is the zero vector: give "
                   "mean_scale > 0 or sigma > 0)", run.sigma)
        n_train = data.per_class * data.k - round(data.holdout_fraction * data.per_class * data.k)
    if run.batch_size > n_train:
        refuse("batch_size", f"<= the {n_train} training points", run.batch_size)
    if run.loss in ("vicreg", "barlow", "dcl") and run.batch_size < 2:
        refuse("batch_size", f">= 2 for {run.loss}", run.batch_size)


def validate(run) -> None:
    """Apply :data:`FIELD_RULES`, :data:`CROSS_RULES` and :func:`check_data` to ``run``.

    Raises:
        SpecError: the first rule ``run`` breaks, naming the field and what it accepts.
    """
    for name, checks in FIELD_RULES.items():
        value = getattr(run, name)
        for holds, accepted in checks:
            if not holds(value):
                refuse(name, accepted, value)
    for name, breaks, accepted in CROSS_RULES:
        if breaks(run):
            refuse(name, accepted(run) if callable(accepted) else accepted, getattr(run, name))
    check_data(run)
