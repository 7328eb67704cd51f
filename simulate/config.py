"""Run configurations and sweep specs: validation, grid expansion, chunk keys.

A *run* is one configuration (:class:`RunConfig`). A *spec* is a mapping from field names to
a value or a list of values; every list is a grid axis and the runs are the Cartesian
product. ``seeds`` (or ``seed``) may be a list of seeds or an integer count.

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
from dataclasses import dataclass, field, fields
from pathlib import Path

from .data import MEAN_KINDS, MixtureConfig
from .losses import BASE_LOSSES, DISTANCES, PROTOTYPE_KINDS
from .models import UPDATE_MODES

MODELS = ("free", "mlp")


class SpecError(ValueError):
    """An invalid run configuration or sweep spec; the message names the field."""


@dataclass(frozen=True)
class RunConfig:
    """One training run. Every field may be a grid axis of a sweep.

    Loss: ``loss`` (ntxent | supcon | dcl | vicreg | barlow | align | repel), ``temperature``
    (> 0, used by ntxent, supcon, dcl), ``clop_weight`` (lambda >= 0; 0 switches CLOP off),
    ``prototypes`` (orthonormal | simplex), ``distance`` (cosine | euclidean | manhattan).
    Optimiser: ``lr`` (> 0), ``momentum`` in [0, 1), ``weight_decay`` >= 0.
    Schedule: ``batch_size`` (1 <= B <= training points), ``steps``, ``log_every``.
    Model: ``model`` (free | mlp), ``update_mode`` (free | sphere | sphere_raw; the sphere
    modes need ``model: free``), MLP ``hidden``, ``depth``, ``out_dim``, ``batch_norm``.
    Data: the fields of :class:`simulate.data.MixtureConfig` (``k``, ``d``, ``per_class``,
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
    batch_size: int = 64
    steps: int = 300
    log_every: int = 50
    model: str = "mlp"
    update_mode: str = "free"
    hidden: int = 64
    depth: int = 3
    out_dim: int = 16
    batch_norm: bool = False
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
        for name in ("steps", "log_every", "batch_size", "hidden", "depth", "out_dim", "per_class"):
            integer(name, 1)
        integer("k", 2)
        integer("d", 1)
        integer("seed", 0)
        integer("data_seed", 0)
        if self.update_mode != "free" and self.model != "free":
            bad("update_mode", "'free' with model 'mlp' (the sphere modes act on free embeddings)")
        dim = self.embedding_dim
        if self.clop_weight > 0 and self.prototypes == "orthonormal" and self.k > dim:
            raise SpecError(
                f"k must be <= the embedding dimension {dim} for CLOP with orthonormal "
                f"prototypes, got k = {self.k}"
            )
        if self.clop_weight > 0 and self.prototypes == "simplex" and self.k > dim + 1:
            raise SpecError(f"k must be <= {dim + 1} for CLOP with simplex prototypes, got {self.k}")
        try:
            data = self.data_config()
        except ValueError as exc:
            raise SpecError(str(exc)) from None
        n_train = data.per_class * data.k - round(data.holdout_fraction * data.per_class * data.k)
        if self.batch_size > n_train:
            raise SpecError(
                f"batch_size must be <= the {n_train} training points, got {self.batch_size}"
            )
        if self.loss in ("vicreg", "barlow", "dcl") and self.batch_size < 2:
            raise SpecError(f"batch_size must be >= 2 for {self.loss}, got {self.batch_size}")

    # ------------------------------------------------------------------ derived
    @property
    def embedding_dim(self) -> int:
        return self.d if self.model == "free" else self.out_dim

    def data_config(self) -> MixtureConfig:
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
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def chunk_key(self) -> tuple:
        """Runs with equal keys share shapes and program, so they can train as one stack."""
        d = self.to_dict()
        for f in PER_RUN_FIELDS + ("name",):
            d.pop(f)
        return tuple(sorted(d.items()))


#: fields that may differ between the runs of one chunk (they are per-run tensors or data)
PER_RUN_FIELDS = (
    "lr", "momentum", "weight_decay", "clop_weight", "seed", "data_seed", "label_fraction",
    "means", "mean_scale", "sigma", "noise_rank", "aug_sigma", "sign_flip",
)
FIELD_NAMES = tuple(f.name for f in fields(RunConfig))


def _read_mapping(path: Path) -> dict:
    """A spec file's top-level mapping (YAML, or JSON for ``.json`` files)."""
    import yaml

    if not path.exists():
        raise SpecError(f"spec file {str(path)!r} does not exist")
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise SpecError(f"spec {str(path)!r} must be a mapping of field names to values")
    return data


def load_spec(source: str | Path | dict) -> dict:
    """Read a spec from a YAML or JSON file (or take a dict); check its field names."""
    spec = dict(source) if isinstance(source, dict) else _read_mapping(Path(source))
    if "seeds" in spec:
        seeds = spec.pop("seeds")
        spec["seed"] = list(range(seeds)) if isinstance(seeds, int) else seeds
    unknown = sorted(set(spec) - set(FIELD_NAMES))
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
        common = {k: v for k, v in data.items() if k != "sweeps"}
        return {name: load_spec({**common, **sub}) for name, sub in data["sweeps"].items()}
    return {"": load_spec(data)}


def resolve_spec(spec: str | Path | dict) -> dict:
    """One sweep's spec (a file, a dict, or a single-sweep preset)."""
    specs = resolve_specs(spec)
    if len(specs) != 1:
        raise SpecError(f"spec {spec!r} holds several sweeps ({', '.join(specs)}); use run_specs")
    return next(iter(specs.values()))
