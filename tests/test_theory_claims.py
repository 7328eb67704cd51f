"""Every claim proves and checks; the CLI reports them all."""

import json
import subprocess
import sys

import pytest

import theory
from theory.__main__ import main

NAMES = list(theory.claims())


def test_registry_covers_the_analysis():
    assert set(NAMES) >= {
        "projection", "norm_growth", "stationary_collapse", "clop_breaks_collapse",
        "anchor_map", "pair_map", "pair_map_unprojected", "ntxent_pair", "rank1_cycle", "offset_pull",
    }


@pytest.mark.parametrize("name", NAMES)
def test_claim_proves(name):
    c = theory.claim(name)
    steps = c.steps()
    assert steps, "a claim needs at least one symbolic step"
    failing = [s for s, ok in steps.items() if not ok]
    assert not failing
    assert c.prove() is True


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", NAMES)
def test_claim_checks(name, seed):
    res = theory.claim(name).check(seed)
    assert res.points > 0
    assert res.passed, res
    assert res.max_error <= res.tolerance


@pytest.mark.parametrize("name", NAMES)
def test_claim_is_printable(name):
    c = theory.claim(name)
    text = str(c)
    assert name in text and c.statement in text
    assert c.assumptions and all(isinstance(a, str) and a for a in c.assumptions)
    assert c.objects(), "a claim names the SymPy objects it rests on"


def test_cli_json_lists_every_claim_proved_and_checked(capsys):
    assert main(["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == NAMES
    for r in rows:
        assert set(r) >= {"name", "proved", "checked", "max_error"}
        assert r["proved"] is True and r["checked"] is True


def test_cli_table_and_latex(tmp_path, capsys):
    tex = tmp_path / "report.tex"
    assert main(["--only", "anchor_map", "pair_map", "--latex", str(tex)]) == 0
    out = capsys.readouterr().out
    assert "anchor_map" in out and "pair_map" in out and "2 of 2 claims" in out
    body = tex.read_text()
    assert body.startswith(r"\documentclass") and body.rstrip().endswith(r"\end{document}")
    assert body.count(r"\section*") == 2


def test_cli_subprocess_exit_code():
    done = subprocess.run(
        [sys.executable, "-m", "theory", "--only", "pair_map_unprojected"],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "theory", "--only", "no_such_claim"],
        capture_output=True, text=True, timeout=300,
    )
    assert bad.returncode == 2 and "name must be one of" in bad.stderr


def test_failing_claim_makes_cli_exit_nonzero(monkeypatch, capsys):
    from theory import _claim

    broken = _claim.Claim(
        name="broken", title="t", statement="s", assumptions=("a",), sketch="",
        proof_steps=lambda: {"false step": False},
        checker=lambda rng: ([1.0], 1e-9),
    )
    monkeypatch.setattr(theory, "claims", lambda: {"broken": broken})
    import theory.__main__ as cli

    monkeypatch.setattr(cli, "claims", lambda: {"broken": broken})
    assert cli.main([]) == 1
    assert "NO" in capsys.readouterr().out
