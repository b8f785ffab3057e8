"""`actstore selftest --model`: the checks on a model of one's own pass on every family,
report what the family refuses, and fail when the family's description is wrong."""

from __future__ import annotations

import json

import pytest

from actstore.cli import main
from actstore.families.gemma2 import Gemma2


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2", "gpt_neox"])
def test_selftest_model_passes(family_model, family, capsys):
    assert main(["selftest", "--model", family_model(family), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    names = [c["name"] for c in report["checks"]]
    assert report["passed"] and names[0].startswith("cache equals run_with_cache, every site kind")
    assert "--engine hf within float rounding of run_with_cache (float32)" in names
    assert "activation patching equals transformer_lens.patching" in names
    refusals = report["checks"][-1]["detail"]
    assert (
        refusals == "gpt2: every engine runs"
        if family == "gpt2"
        else f"{family}: refused by design" in refusals
    )
    assert "--engine hf" not in refusals
    assert ("the resid_mid site (its blocks run attention and the MLP in parallel" in refusals) == (
        family == "gpt_neox"
    )


def test_selftest_model_fails_when_patching_is_wrong(family_model, monkeypatch, capsys):
    from actstore.patching import engine, hooked

    def unpatched(model, tokens, cells, *args):  # the variants run without their patches
        return hooked.run_cells(
            model, tokens, cells, *args[:2], lambda act, index, clean: act, *args[3:]
        )

    monkeypatch.setattr(engine, "run_cells", unpatched)
    assert main(["selftest", "--model", family_model("llama"), "--json"]) == 1
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    patching = checks["activation patching equals transformer_lens.patching"]
    assert not patching["passed"] and patching["error"] > 10 * patching["tolerance"]


def test_selftest_model_fails_when_the_family_is_described_wrong(family_model, monkeypatch, capsys):
    # the bug this guards
    monkeypatch.setattr(Gemma2, "final_softcap", classmethod(lambda cls, bridge: None))
    assert main(["selftest", "--model", family_model("gemma2"), "--json"]) == 1
    checks = {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}
    lens = checks["the logit lens decodes the final residual into the model's logits"]
    assert not lens["passed"] and lens["error"] > 10 * lens["tolerance"]
