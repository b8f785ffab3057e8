"""`actstore selftest`: passes with the installed versions, and fails loudly (exit 1,
the failing checks named) when the patching engine is broken, whether or not the
engine's own self-check is on."""

from __future__ import annotations

import json

import pytest

from actstore.cli import main
from actstore.patching import hand_run as _patch_engine
from actstore.patching import self_check as _self_check

from .helpers import no_prefix


def run(capsys, *args: str) -> tuple[int, dict]:
    rc = main(["selftest", "--json", *args])
    return rc, json.loads(capsys.readouterr().out)


def test_passes_here_and_reports_versions_and_every_check(capsys):
    rc, report = run(capsys)
    assert rc == 0 and report["passed"] is True and report["device"] == "cpu"
    assert {"transformers", "transformer-lens", "torch", "zarr"} <= set(report["versions"])
    names = [c["name"] for c in report["checks"]]
    assert len(names) == 5 and all(c["passed"] for c in report["checks"]), report
    assert any("cache equals run_with_cache" in n for n in names)
    assert any("attribution" in n for n in names) and any("direct path" in n for n in names)
    for c in report["checks"]:  # numbers, not just a verdict: each error well inside its tolerance
        assert c["error"] is None or c["error"] <= c["tolerance"]


@pytest.mark.parametrize("engine_check", [True, False])
def test_fails_loudly_when_the_engine_loses_its_prefix(capsys, monkeypatch, engine_check):
    monkeypatch.setattr(_patch_engine, "attention_prefix", no_prefix)
    monkeypatch.setattr(_self_check, "ENABLED", engine_check)
    rc, report = run(capsys)
    assert rc == 1 and report["passed"] is False
    failed = {c["name"]: c["detail"] for c in report["checks"] if not c["passed"]}
    assert any("prompts differing late" in n for n in failed), failed
    assert not any("cache equals" in n for n in failed)  # caching does not use the engine
    late = next(d for n, d in failed.items() if "late" in n)
    assert (
        ("EngineCheckError" in late and "kv_prefix=False" in late)
        if engine_check
        else "tolerance" in late
    )


def test_text_report_says_what_failed(capsys, monkeypatch):
    monkeypatch.setattr(_patch_engine, "attention_prefix", no_prefix)
    assert main(["selftest"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  patching equals transformer_lens.patching, prompts differing late" in out
    assert "checks FAILED: do not trust actstore's numbers" in out
