"""The onset of collapse of MLP encoders under SGD, from the kick and the recovery law.

An encoder trained by SGD on a cosine loss does not collapse at an edge: above a rate set at
initialisation its first steps take the outputs' rank at once, and the rank then comes back,
slowly. Its final rank after ``T`` steps is how far that recovery got, and the onset of a
collapse level is where the recovery falls short of the level's threshold.

**Why the first steps collapse (the kick).** The loss sees normalised outputs ``z / |z|``, and
the outputs are linear in the output layer's weights and bias ``W_L``, so the loss does not
change when ``W_L`` is scaled: its gradient is orthogonal to ``W_L`` and shrinks as
``1 / |W_L|``. A step of rate ``lr`` then adds ``lr^2 |g|^2`` to ``|W_L|^2``. Above the *kick
rate* ``lr_k = (1 - mu) |W_L| / |g_L|`` (at initialisation, on the first minibatch; heavy
ball's steps build up to ``lr g / (1 - mu)``) the first steps are longer than the layer, which
becomes ``-lr g_0``: a matrix spanned by the few directions the first batches' gradients
share, and the outputs lose rank.

**Why the recovery takes a time proportional to lr (the law).** After the kick ``|W_L| ~ lr``
and its gradient ``~ 1 / lr``, so each step turns the layer by an angle ``~ lr |g| / |W_L| ~
1 / lr``: the dynamics after the kick depend on the number of steps ``t`` only through
``s = t / lr``. The final rank after ``T`` steps at rate ``lr`` is ``R(T / lr)``, one function
``R`` per configuration and seed, rising from the kick's low rank. So a level whose threshold
``R`` crosses at ``s*`` (for good) has its onset at ``T / s*``: onsets grow in proportion to
the number of steps.

**The prediction.** ``R`` is read off probes: runs of the configuration and seed for its ``T``
steps at the rates :func:`probe_factors` x ``lr_k``, each logged :data:`PROBE_LOGS` times,
giving ``R`` on ``s`` in ``[e / lr_j, T / lr_j]`` (``e`` the logging interval). A point at
``s`` stands for the run at rate ``T / s``, and where several probes reach an ``s`` the
highest (the nearest that rate) gives ``R`` there (:func:`law_points`). The law's limit is
reached only from about :data:`LAW_LIMIT` kick rates: nearer the kick the first steps leave a
share ``~ lr_k / lr`` of the initial output layer, and the rank at a given ``s`` is higher the
lower the rate. So the probes are :data:`NEAR_FACTOR` apart up to :data:`LAW_LIMIT` and
:data:`PROBE_FACTOR` apart above it. (Four probes 10x apart from ``2 lr_k``, every probe's
collapsed points counting, cost less but put the ``mlp`` grid's dimensional onsets off by a
median 53%, 7 of 9 above the measured onset: docs/onset.md.) ``s*`` is
where, going down in ``s`` (up in rate), every point is collapsed: the measurement's
definition of the onset (:func:`law_onset`). Nothing is fitted: the probes' rates follow from
``lr_k`` and the onset is ``T / s*``. Where every point is collapsed the onset lies below the
law's range (``2 lr_k``): NaN, not predicted. Where the first is healthy, the onset lies above
the highest probe's reach (``inf``).

Where it holds: plain SGD and heavy ball (the norm argument needs a step proportional to the
gradient) at a constant rate (a schedule ties the rate to the run's length). Not LARS (its step
is ``lr x trust x |W|``, whatever the norm: the layer turns by the same angle at every norm,
so nothing slows down) and not Adam. The references' measurements are in docs/onset.md.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

from ..config import RunConfig
from .curvature import _check_run, make_objective
from .levels import get_level

#: the lowest probe's rate in units of the kick rate (above it the first step is longer than
#: the output layer, so the kick has happened)
KICK_MARGIN = 2.0
#: the rate, in kick rates, from which the rank at a given ``s`` no longer falls with the rate:
#: below it the first steps leave a share of about ``lr_k / lr`` of the initial output layer,
#: which keeps rank (measured, docs/onset.md: the rank at equal ``s`` levels off from 8 to 16
#: kick rates)
LAW_LIMIT = 8.0
#: the ratio of successive probes' rates from :data:`KICK_MARGIN` to :data:`LAW_LIMIT`
NEAR_FACTOR = math.sqrt(2.0)
#: the ratio of successive probes' rates above :data:`LAW_LIMIT`
PROBE_FACTOR = 10.0
#: probes above :data:`LAW_LIMIT`: the highest, ``LAW_LIMIT x PROBE_FACTOR ** FAR_PROBES`` kick
#: rates, reaches onsets above the onset scan's top for the grids' configurations
FAR_PROBES = 3
#: logged points of the lowest probe (its logging interval is ``steps // PROBE_LOGS``)
PROBE_LOGS = 30
#: losses whose value ignores the scale of the embeddings (each embedding normalised, or each
#: dimension standardised as Barlow Twins does): the law's premise. VICReg's variance and
#: invariance terms read the scale.
SCALE_FREE_LOSSES = ("ntxent", "supcon", "dcl", "barlow", "align", "repel")
#: the reference rate of MLP encoders (the dimensional level's reference rank is the final
#: rank there): the encoder grids' scan starts at it
REFERENCE_LR = 1e-3


def law_applies(run: RunConfig) -> str:
    """``""`` when the recovery law applies to ``run``, else why not (a sentence)."""
    if run.model != "mlp":
        return "the recovery law is for MLP encoders"
    if run.loss not in SCALE_FREE_LOSSES:
        return f"the recovery law needs a loss blind to the embeddings' scale; {run.loss} reads it"
    if run.optimizer != "sgd":
        return (f"the recovery law needs a step proportional to the gradient; {run.optimizer} "
                "scales it per layer or coordinate")
    if run.warmup_steps or run.schedule != "constant":
        return "the recovery law needs a constant rate (a schedule ties the rate to the run's length)"
    return ""


def output_layer(obj) -> str:
    """The name of the output layer's weights in :class:`Objective` ``obj`` (the projector's
    last layer when there is one): the layer whose scale the normalisation removes."""
    return [n for n in obj.names if "bias" not in n][-1]


def kick_rate(run: RunConfig, device: str = "cpu") -> float:
    """``(1 - mu) |W_L| / |dL/dW_L|`` at initialisation on the first minibatch: the rate whose
    first steps are as long as the output layer (module docstring)."""
    obj = make_objective(_check_run(run), device=device)
    g = obj.gradient(obj.theta0)
    sl = obj.slices[output_layer(obj)]
    return float((1 - run.momentum) * obj.theta0[sl].norm() / g[sl].norm())


def probe_factors() -> list[float]:
    """The probes' rates in kick rates, lowest first: :data:`NEAR_FACTOR` apart from
    :data:`KICK_MARGIN` to :data:`LAW_LIMIT`, then :data:`PROBE_FACTOR` apart."""
    near = round(math.log(LAW_LIMIT / KICK_MARGIN) / math.log(NEAR_FACTOR))
    return ([KICK_MARGIN * NEAR_FACTOR ** j for j in range(near + 1)]
            + [LAW_LIMIT * PROBE_FACTOR ** j for j in range(1, FAR_PROBES + 1)])


def probe_runs(run: RunConfig, kick: float) -> list[RunConfig]:
    """The probes of ``run`` (module docstring), lowest rate first."""
    every = max(1, run.steps // PROBE_LOGS)
    return [replace(run, lr=c * kick, log_every=every, name="") for c in probe_factors()]


def _trajectories(runs: list[RunConfig], device: str, metrics) -> list[dict]:
    """Per run, per metric: its logged ``(step, value)`` after step 0."""
    from .measure import train_logged_rows

    return [{m: [(r["step"], float(r[m])) for r in rows if r["step"] > 0] for m in metrics}
            for rows in train_logged_rows(runs, device)]


def law_points(per_probe) -> list[tuple[float, float]]:
    """The law's ``(s, rank)`` points from ``per_probe`` (each probe's points, lowest rate
    first): at each ``s`` the points of the highest probe that reaches it. A probe's point at
    ``s`` stands for the run at rate ``T / s``, and the probe nearest that rate (the highest at
    or below it) is the closest to it: below :data:`LAW_LIMIT` kick rates the rank at a given
    ``s`` still depends on the rate. A point at the ``s`` where a higher probe ends (equal up
    to rounding, as step ``T / 10`` of one probe and step ``T`` of the next one 10x higher
    are) goes to the higher probe."""
    kept, reach = [], 0.0
    for pts in reversed(per_probe):  # highest first; reach: the furthest s a higher probe got to
        kept += [(s, r) for s, r in pts if s > reach * (1 + 1e-9)]
        reach = max([reach, *(s for s, _ in pts)])
    return kept


def law_onset(points, threshold: float, steps: int) -> float:
    """The onset ``steps / s*`` from ``points``, ``(s, rank)`` of the probes in the law's
    variable ``s = t / lr``, defined as the measurement defines it
    (:func:`simulate.stability.measure.measure_onsets`: where every larger rate collapses).
    A point is collapsed at or below ``threshold`` (NaN counts as collapsed: diverged).
    ``s*`` is the geometric midpoint between the first healthy point (in rising ``s``, that is
    falling rate) and the collapsed point just before it; a collapse at larger ``s`` (smaller
    rates) past it is a dip, not the onset. ``inf`` when the first point is healthy (the onset
    lies above the probes' range); NaN when none is (below it)."""
    pts = sorted(points, key=lambda p: (p[0], p[1] > threshold))  # at equal s, collapsed first
    h = next((i for i, (_, r) in enumerate(pts) if r > threshold), None)
    if h is None:
        return math.nan
    if h == 0:
        return math.inf
    return steps / math.sqrt(pts[h - 1][0] * pts[h][0])


def recovery_onsets(runs: list[RunConfig], references: list[dict], levels=("complete", "dimensional"),
                    metrics=("effective_rank",), device: str = "cpu") -> list[dict]:
    """The predicted onset of each run at each level and metric, from its probes.

    ``references[i][metric]`` is the run's reference rank at that metric (the dimensional
    level's; see :mod:`simulate.stability.levels`). Returns per run ``{"kick": lr_k,
    "probe_rates": [...], "onsets": {(level, metric): onset}, "why": ""|reason,
    "seconds": ...}`` (the kick rates' and probes' time, shared out over the runs the law
    covers); runs the law does not cover have NaN onsets, take no time and say why."""
    levels = [get_level(v) for v in levels]
    t0 = time.perf_counter()
    out, probes, owner = [], [], []
    for i, run in enumerate(runs):
        why = law_applies(run)
        kick = math.nan if why else kick_rate(run, device)
        mine = [] if why else probe_runs(run, kick)
        probes += mine
        owner += [i] * len(mine)
        out.append({"kick": kick, "probe_rates": [p.lr for p in mine], "why": why, "onsets": {}})
    traj = _trajectories(probes, device, metrics) if probes else []
    for i, (run, ref) in enumerate(zip(runs, references)):
        mine = [(p, t) for p, t, o in zip(probes, traj, owner) if o == i]
        for m in metrics:
            pts = law_points([[(s / p.lr, r) for s, r in t[m]] for p, t in mine])
            for level in levels:
                out[i]["onsets"][(level.name, m)] = math.nan if out[i]["why"] else law_onset(
                    pts, level.threshold(ref.get(m, math.nan)), run.steps)
    seconds = (time.perf_counter() - t0) / max(1, sum(not o["why"] for o in out))
    for o in out:  # the time shared out over the runs the law predicts
        o["seconds"] = 0.0 if o["why"] else seconds
    return out


def predict_recovery_onset(run: RunConfig, level: str = "dimensional", reference_rank: float | None = None,
                           metric: str = "effective_rank", device: str = "cpu") -> float:
    """The predicted onset of ``run`` at ``level`` by the recovery law (NaN where it does not
    apply or the onset lies below its range). The dimensional level's reference rank is
    ``reference_rank`` or, when None, the final ``metric`` of ``run`` trained at
    :data:`REFERENCE_LR`."""
    run = _check_run(run)
    lvl = get_level(level)
    if reference_rank is None and lvl.needs_reference:
        from .measure import _train_final_ranks

        reference_rank = _train_final_ranks([replace(run, lr=REFERENCE_LR, log_every=run.steps)],
                                            device, metric)[0]
    ref = math.nan if reference_rank is None else reference_rank
    return recovery_onsets([run], [{metric: ref}], (lvl,), (metric,), device)[0]["onsets"][(lvl.name, metric)]
