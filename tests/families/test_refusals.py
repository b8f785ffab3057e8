"""What actstore does not compute exactly for a family it refuses before any work, naming
the way round (what patching and circuits refuse: tests/families/test_patching.py and
test_circuits.py); `actstore patch` runs every family; a model of an architecture with no
adapter is refused by every engine that asks for one."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from actstore.cli import main
from actstore.errors import ConfigError
from actstore.families import adapter_for
from actstore.random_models import FAMILIES


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "gpt2"])
def test_actstore_patch_runs_on_every_family(family_model, family, tmp_path, capsys):
    model = family_model(family)
    patched = tmp_path / "p.zarr"
    code = main(
        [
            "patch",
            "--model",
            model,
            "--task",
            "ioi",
            "--n-pairs",
            "2",
            "--sweep",
            "resid_pre",
            "--quiet",
            "--device",
            "cpu",
            "--out",
            str(patched),
        ]
    )
    err = capsys.readouterr().err
    if "actstore patch needs transformer_lens>=4" in err:  # (TransformerLens 3: refused first)
        assert code != 0
    else:
        import zarr

        assert code == 0, err
        values = np.asarray(
            zarr.open_group(str(patched), mode="r")["patching/resid_pre/logit_diff"]
        )
        assert values.shape[1:3] == (2, 16) and np.isfinite(values).all() and values.std() > 0


def test_an_architecture_with_no_adapter_is_refused() -> None:
    class OPTForCausalLM:  # a transformers class actstore has no adapter for
        pass

    bridge = SimpleNamespace(original_model=OPTForCausalLM())
    with pytest.raises(
        ConfigError,
        match=r"The logit lens needs a model-family adapter, and actstore has none for "
        r"OPTForCausalLM; it serves gemma2 \(Gemma2ForCausalLM\), gpt2 "
        r"\(GPT2LMHeadModel\), gpt_neox \(GPTNeoXForCausalLM\), llama "
        r"\(LlamaForCausalLM\), mistral \(MistralForCausalLM\), qwen2 "
        r"\(Qwen2ForCausalLM\)\. Use TransformerLens directly",
    ):
        adapter_for(bridge, "The logit lens")
    assert (
        adapter_for(SimpleNamespace(original_model=type("LlamaForCausalLM", (), {})())).name
        == "llama"
    )
