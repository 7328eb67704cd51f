"""Sweep specs: reading spec files (YAML or JSON) and presets, and expanding a spec into runs.

A *run* is one configuration (:class:`~simulate.config.fields.RunConfig`). A *spec* is a
mapping from field names to a value or a list of values; every list is a grid axis and the runs
are the Cartesian product. One field reads a list as one value: ``projector_dims``, whose value
is a list of layer widths (``[64, 16]``: one projector); there a list of such lists
(``[[64, 16], [32]]``) is the grid axis (a list of texts such as ``["64,16", "32"]`` is one
too). ``seed`` is a seed or a list of seeds; ``seeds`` (instead of ``seed``, never with it) is a
list of seeds or a count ``n`` (seeds ``0 .. n-1``).

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

import functools
import itertools
import json
import re
from pathlib import Path

from .fields import FIELD_NAMES, RunConfig
from .validation import SpecError

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
    if "projector_dims" in spec:
        spec["projector_dims"] = _projector_value(spec["projector_dims"])
    return spec


def _projector_value(value):
    """``projector_dims`` in a spec: a list of integers is ONE projector's layer widths (given
    as its text, ``[64, 16]`` -> ``"64,16"``); a list of lists of widths (or of texts) is a grid
    axis; any other value is one value. A list that mixes widths with lists or texts is refused
    (it is neither)."""
    if not isinstance(value, list) or not value:
        return value
    is_width = [isinstance(v, int) and not isinstance(v, bool) for v in value]
    if all(is_width):
        return ",".join(str(v) for v in value)
    if any(is_width):
        raise SpecError(f"projector_dims must be a list of layer widths such as [64, 16] (one "
                        f"projector) or a list of such lists such as [[64, 16], [32]] (a grid "
                        f"axis), got {_one_line(repr(value))}")
    return value


def expand(spec: dict) -> list[RunConfig]:
    """All runs of a spec (Cartesian product of its list-valued fields), validated."""
    spec = load_spec(spec)
    axes = {k: (v if isinstance(v, list) else [v]) for k, v in spec.items()}
    for k, v in axes.items():
        if not v:
            raise SpecError(f"{k} must be a value or a non-empty list of values (a grid axis), "
                            f"got an empty list")
    names = list(axes)
    runs, seen = [], set()
    for combo in itertools.product(*(axes[n] for n in names)):
        run = RunConfig(**dict(zip(names, combo)))
        if run.run_id not in seen:
            seen.add(run.run_id)
            runs.append(run)
    return runs


#: the presets shipped with the package (simulate/presets/*.yaml)
PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"


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
