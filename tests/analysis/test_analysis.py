"""Analyses equal the same computation done directly on the model from run_with_cache."""

import numpy as np
import pytest
import torch

import actstore
from actstore.analysis import (
    direct_logit_attribution,
    induction_scores,
    logit_lens,
    model_for,
    single_token,
)
from actstore.errors import ConfigError

from ..conftest import DOCS
from ..helpers import layer_norm_unembed

H = 6  # half length of the repeated random rows


@pytest.fixture(scope="module")
def rep_store(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("an") / "rep.zarr"
    return actstore.cache(
        out=str(out),
        model=tiny_model,
        dataset=f"repeated-random:{H}:7",
        seq_len=2 * H + 1,
        n_rows=10,
        sites="pattern:all,loss",
        batch_size=4,
        rows_per_shard=4,
        progress=False,
    )


@pytest.fixture(scope="module")
def text_store(tmp_path_factory, tiny_model):
    out = tmp_path_factory.mktemp("an") / "text.zarr"
    return actstore.cache(
        out=str(out),
        model=tiny_model,
        dataset=DOCS,
        seq_len=16,
        n_rows=6,
        sites="resid_pre:0,resid_post:all,z:all,mlp_out:all",
        progress=False,
    )


def test_repeated_random_rows(rep_store):
    t = rep_store.tokens()
    assert t.shape == (10, 2 * H + 1) and (t[:, 0] == 50256).all()
    assert np.array_equal(t[:, 1 : H + 1], t[:, H + 1 :]) and len(np.unique(t[:, 1:])) > 30
    assert rep_store.metadata["corpus"]["kind"] == "synthetic"


def test_loss_site_equals_transformer_lens_loss_per_token(rep_store, bridge):
    want = bridge(
        torch.from_numpy(rep_store.tokens()).long(), return_type="loss", loss_per_token=True
    )
    got = rep_store.acts("loss")
    assert got.shape == (10, 2 * H) and np.array_equal(got, want.detach().numpy())
    assert rep_store.stats("loss").count == 10 * 2 * H


def test_induction_scores_equal_direct_computation(rep_store, bridge):
    tokens = torch.from_numpy(rep_store.tokens()).long()
    _, cache = bridge.run_with_cache(tokens)
    got = induction_scores(rep_store, progress=False)
    for layer in range(3):
        pat = cache[f"blocks.{layer}.attn.hook_pattern"].double()  # (row, head, q, k)
        # q = H+1 .. 2H
        ind = pat.diagonal(offset=1 - H, dim1=-2, dim2=-1)[..., 2:].mean(dim=(0, 2))
        dup = pat.diagonal(offset=-H, dim1=-2, dim2=-1)[..., 1:].mean(dim=(0, 2))  # q = H+1 .. 2H
        prev = pat.diagonal(offset=-1, dim1=-2, dim2=-1).mean(dim=(0, 2))  # q = 1 .. 2H
        np.testing.assert_allclose(got.induction[layer], ind.numpy(), rtol=0, atol=1e-12)
        np.testing.assert_allclose(got.duplicate[layer], dup.numpy(), rtol=0, atol=1e-12)
        np.testing.assert_allclose(got.prev_token[layer], prev.numpy(), rtol=0, atol=1e-12)
    loss = bridge(tokens, return_type="loss", loss_per_token=True).detach().double().mean(0)
    # float32 losses, float64 means
    np.testing.assert_allclose(got.loss_by_pos, loss.numpy(), rtol=0, atol=1e-6)
    assert got.loss_halves == pytest.approx(
        (loss[:H].mean().item(), loss[H:].mean().item()), abs=1e-6
    )


def test_induction_needs_patterns_and_repeats(text_store):
    with pytest.raises(ConfigError, match="not made from repeated random tokens"):
        induction_scores(text_store, progress=False)
    with pytest.raises(ConfigError, match="holds no attention patterns"):
        induction_scores(text_store, half_len=4, progress=False)


def test_logit_lens_equals_direct_decoding(text_store, tiny_model, bridge):
    model = model_for(text_store, device="cpu")
    rows = [0, 3]
    lens = logit_lens(text_store, model, rows, k=3, progress=False)
    assert lens.hooks == [
        "blocks.0.hook_resid_pre",
        "blocks.0.hook_resid_post",
        "blocks.1.hook_resid_post",
        "blocks.2.hook_resid_post",
    ]
    tokens = torch.from_numpy(text_store.tokens()).long()
    logits, cache = bridge.run_with_cache(tokens)
    for i, r in enumerate(rows):
        nxt = tokens[r, 1:].numpy()
        final = torch.softmax(
            logits[r].detach().double(), -1
        ).numpy()  # the last layer's lens is the model's output
        np.testing.assert_allclose(
            lens.target_prob[i, -1, :-1], final[np.arange(15), nxt], rtol=1e-5, atol=1e-9
        )
        for j, hook in enumerate(lens.hooks):
            lg = layer_norm_unembed(cache[hook][r].numpy(), bridge)
            p = np.exp(lg - lg.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            np.testing.assert_allclose(
                lens.target_prob[i, j, :-1], p[np.arange(15), nxt], rtol=1e-4, atol=1e-9
            )
            assert np.array_equal(lens.topk_tokens[i, j, :, 0], p.argmax(-1))
            ranks = (p[np.arange(15), :] > p[np.arange(15), nxt][:, None]).sum(-1)
            assert np.array_equal(lens.target_rank[i, j, :-1], ranks)
        assert (
            np.isnan(lens.target_prob[i, :, -1]).all() and (lens.target_rank[i, :, -1] == -1).all()
        )


def test_dla_equals_transformer_lens_apply_ln(text_store, bridge):
    model = model_for(text_store, device="cpu")
    tok = model.tokenizer
    t, w = single_token(tok, " Mary"), single_token(tok, " John")
    dla = direct_logit_attribution(text_store, model, list(range(6)), t, w, progress=False)
    assert dla.positions == [15] * 6
    _, cache = bridge.run_with_cache(torch.from_numpy(text_store.tokens()).long())
    direction = (bridge.W_U[:, t] - bridge.W_U[:, w]) * bridge.ln_final.w  # (d_model,)
    # (layer*head, row)
    heads = cache.stack_head_results(layer=-1, pos_slice=-1, apply_ln=True) @ direction
    torch.testing.assert_close(
        torch.from_numpy(dla.heads).float(),
        heads.reshape(3, 4, 6).permute(2, 0, 1).detach(),
        rtol=1e-4,
        atol=1e-5,
    )
    # (layer, row, d_model)
    mlp = torch.stack([cache[f"blocks.{layer}.hook_mlp_out"][:, -1] for layer in range(3)])
    mlp = cache.apply_ln_to_stack(mlp, layer=-1, pos_slice=-1) @ direction  # (layer, row)
    torch.testing.assert_close(
        torch.from_numpy(dla.mlp).float(), mlp.T.detach(), rtol=1e-4, atol=1e-5
    )


def test_dla_needs_the_final_residual(rep_store):
    model = model_for(rep_store, device="cpu")
    with pytest.raises(ConfigError, match=r"needs the final residual \(blocks.2.hook_resid_post\)"):
        direct_logit_attribution(rep_store, model, [0], 5, progress=False)


def test_single_token_and_model_check(text_store, tmp_path):
    from actstore.demo import build_random_gpt2, gpt2_tokenizer
    from actstore.errors import StoreMismatchError

    from ..conftest import TINY

    with pytest.raises(ConfigError, match="is 2 tokens"):
        single_token(gpt2_tokenizer(), " Mary Smith")
    other = build_random_gpt2(tmp_path / "other", seed=5, **TINY)
    with pytest.raises(StoreMismatchError, match="other weights than the store's"):
        model_for(text_store, str(other), device="cpu")


def test_cli_analyze_saves_results_and_figures(rep_store, text_store, tmp_path, capsys):
    import json

    from actstore.cli import main

    fig = tmp_path / "ind.png"
    assert main(["analyze", "induction", rep_store.path, "--figure", str(fig), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert fig.stat().st_size > 1000 and out["figure"] == str(fig)
    store = actstore.ActivationStore.open(rep_store.path)
    arr = store.load_result("analysis/induction/induction")
    assert arr.metadata.dimension_names == ("layer", "head") and arr.attrs["half_len"] == H
    np.testing.assert_array_equal(arr[...], induction_scores(store, progress=False).induction)
    assert "analysis/induction/loss_by_pos" in store.results()

    assert (
        main(
            [
                "analyze",
                "dla",
                text_store.path,
                "--target",
                " Mary",
                "--wrong",
                " John",
                "--rows",
                "0:3",
                "--figure",
                str(tmp_path / "dla.png"),
            ]
        )
        == 0
    )
    assert (
        "largest head contributions" in capsys.readouterr().out and (tmp_path / "dla.png").exists()
    )
    dla = actstore.ActivationStore.open(text_store.path).load_result("analysis/dla/heads")
    assert dla.shape == (3, 3, 4) and dla.metadata.dimension_names == ("row", "layer", "head")
    assert (
        main(
            [
                "analyze",
                "logit-lens",
                text_store.path,
                "--rows",
                "1",
                "--figure",
                str(tmp_path / "l.png"),
            ]
        )
        == 0
    )
    assert (tmp_path / "l.png").exists()
    assert main(["analyze", "dla", text_store.path, "--target", " Mary Smith"]) == 2
    assert "is 2 tokens" in capsys.readouterr().err
    assert main(["analyze", "logit-lens", text_store.path, "--rows", "5:99"]) == 2
    assert "outside the store's rows 0..5" in capsys.readouterr().err
