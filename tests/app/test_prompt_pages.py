"""The prompt pages (tokens, logit lens, attention, DLA, induction) through AppTest: their
widgets run, and the numbers they draw equal an independent computation from
TransformerLens's run_with_cache on the demo model (tolerances relative to the spread of
the reference, which is asserted large). Bad input shows an error on the page."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import torch

from actstore.app.prompt_data import cache_prompt, default_prompt, token_table
from actstore.demo import repeated_tokens

from ..helpers import layer_norm_unembed

PROMPT = default_prompt("actstore-demo")


def charts(at) -> list[dict]:
    """The plotly figures of a page, as the JSON the browser gets."""
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def array(v) -> np.ndarray:
    """A figure's array: a list (None for NaN) or plotly's typed-array form {dtype, bdata, shape}."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        shape = v.get("shape")
        return a.reshape([int(s) for s in str(shape).split(",")]) if shape else a
    return np.array(
        [[np.nan if x is None else x for x in row] for row in v]
        if v and isinstance(v[0], list)
        else [np.nan if x is None else x for x in v],
        dtype=float,
    )


def assert_close_to_spread(
    got: np.ndarray, want: np.ndarray, rel: float, min_spread: float
) -> None:
    ok = ~np.isnan(want)
    spread = float(np.std(want[ok]))
    assert spread > min_spread, (
        f"the reference barely varies (std {spread}); the comparison would prove little"
    )
    assert np.array_equal(np.isnan(got), ~ok)
    np.testing.assert_allclose(got[ok], want[ok], rtol=0, atol=rel * spread)


@pytest.fixture(scope="module")
def ref(demo_model):
    """run_with_cache of BOS + the default prompt through the demo model."""
    tok = demo_model.tokenizer
    ids = [tok.bos_token_id] + tok.encode(PROMPT.text, add_special_tokens=False)
    _, cache = demo_model.bridge.run_with_cache(torch.tensor([ids]))
    return ids, cache


def test_prompt_store_holds_run_with_cache(demo_model, ref):
    ids, cache = ref
    p = cache_prompt(demo_model, PROMPT.text)
    assert p.tokens.tolist() == ids
    for hook in ("blocks.0.hook_resid_pre", "blocks.3.hook_resid_post", "blocks.2.attn.hook_z"):
        # bit-exact, float32
        assert np.array_equal(p.store.acts(hook, rows=0), cache[hook][0].detach().numpy())
    table = token_table(demo_model.tokenizer, p)
    assert table["id"].tolist() == ids and table["doc_pos"].tolist() == [-1, *range(len(ids) - 1)]


def test_tokens_page(open_app, ref):
    at = open_app("tokens")
    assert not at.exception and not at.error
    assert at.dataframe[0].value["id"].tolist() == ref[0]


def test_logit_lens_page_equals_direct_decoding(open_app, demo_model, ref):
    ids, cache = ref
    bridge, tok = demo_model.bridge, demo_model.tokenizer
    at = open_app("logit_lens")
    assert not at.exception and not at.error
    lens_fig, rank_fig = charts(at)
    hooks = ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(4)]
    target = tok.encode(PROMPT.answer, add_special_tokens=False)[0]
    # (site, pos, vocab)
    probs = np.stack(
        [layer_norm_unembed(cache[h][0].detach().numpy(), bridge, softmax=True) for h in hooks]
    )
    assert_close_to_spread(array(lens_fig["data"][0]["z"]), probs[..., target], 1e-4, 0.01)
    want_rank = (probs > probs[..., target : target + 1]).sum(-1)
    assert np.array_equal(array(rank_fig["data"][0]["z"]), want_rank)
    top = repr(tok.decode([int(probs[-1, -1].argmax())]))
    assert f"top 5: {top}" in lens_fig["data"][0]["text"][-1][-1]  # the hover names the top tokens
    # the widgets: the next token tracked, top 3
    at.text_input(key="lens-target").set_value("").run()
    at.number_input(key="lens-k").set_value(3).run()
    assert not at.exception and not at.error
    z = array(charts(at)[0]["data"][0]["z"])
    nxt = np.array(ids[1:])
    want = np.concatenate([probs[:, np.arange(len(nxt)), nxt], np.full((len(hooks), 1), np.nan)], 1)
    assert_close_to_spread(z, want, 1e-4, 0.01)
    assert "top 3: " in charts(at)[0]["data"][0]["text"][0][0]


def test_attention_page_equals_patterns(open_app, ref):
    _, cache = ref
    at = open_app("attention")
    at.selectbox(key="attn-layer").set_value(2).run()
    at.selectbox(key="attn-head").set_value(1).run()
    assert not at.exception and not at.error
    fig = charts(at)[0]
    assert fig["layout"]["title"]["text"] == "Attention of head 2.1"
    want = cache["blocks.2.attn.hook_pattern"][0, 1].detach().double().numpy()
    assert_close_to_spread(array(fig["data"][0]["z"]), want, 1e-6, 0.05)
    assert fig["data"][0]["x"][1].startswith("1:") and len(fig["data"][0]["y"]) == len(want)


def test_dla_page_equals_transformer_lens_apply_ln(open_app, demo_model, ref):
    _, cache = ref
    bridge, tok = demo_model.bridge, demo_model.tokenizer
    at = open_app("dla")
    assert not at.exception and not at.error
    t, w = (
        tok.encode(PROMPT.answer, add_special_tokens=False)[0],
        tok.encode(PROMPT.wrong, add_special_tokens=False)[0],
    )
    direction = (bridge.W_U[:, t] - bridge.W_U[:, w]) * bridge.ln_final.w
    heads = (cache.stack_head_results(layer=-1, pos_slice=-1, apply_ln=True) @ direction).reshape(
        4, 4
    )
    mlp = torch.stack([cache[f"blocks.{layer}.hook_mlp_out"][:, -1] for layer in range(4)])
    mlp = (cache.apply_ln_to_stack(mlp, layer=-1, pos_slice=-1) @ direction)[:, 0]
    want = torch.cat([heads, mlp[:, None]], 1).detach().double().numpy()  # (layer, head + MLP)
    assert_close_to_spread(array(charts(at)[0]["data"][0]["z"]), want, 1e-4, 0.1)
    at.text_input(key="dla-wrong").set_value("").run()  # the answer's logit alone
    direction = bridge.W_U[:, t] * bridge.ln_final.w
    heads = (cache.stack_head_results(layer=-1, pos_slice=-1, apply_ln=True) @ direction).reshape(
        4, 4
    )
    got = array(charts(at)[0]["data"][0]["z"])[:, :4]
    assert_close_to_spread(got, heads.detach().double().numpy(), 1e-4, 0.1)


def test_induction_page_equals_direct_computation(open_app, demo_model):
    H, R = 8, 4
    at = open_app("induction")
    at.number_input(key="ind-half").set_value(H).run()
    at.number_input(key="ind-rows").set_value(R).run()
    assert not at.exception and not at.error
    tokens = torch.from_numpy(repeated_tokens(demo_model.tokenizer, R, H, 0)).long()
    bridge = demo_model.bridge
    _, cache = bridge.run_with_cache(tokens)
    # queries H+1 .. 2H
    ind = np.stack(
        [
            cache[f"blocks.{layer}.attn.hook_pattern"]
            .double()
            .diagonal(offset=1 - H, dim1=-2, dim2=-1)[..., 2:]
            .mean(dim=(0, 2))
            .numpy()
            for layer in range(4)
        ]
    )
    scores_fig, loss_fig = charts(at)
    assert_close_to_spread(array(scores_fig["data"][0]["z"]), ind, 1e-6, 0.05)
    loss = bridge(tokens, return_type="loss", loss_per_token=True).detach().double().mean(0).numpy()
    assert_close_to_spread(array(loss_fig["data"][0]["y"]), loss, 1e-5, 0.3)
    at.radio(key="ind-kind").set_value("prev_token").run()
    prev = np.stack(
        [
            cache[f"blocks.{layer}.attn.hook_pattern"]
            .double()
            .diagonal(offset=-1, dim1=-2, dim2=-1)
            .mean(dim=(0, 2))
            .numpy()
            for layer in range(4)
        ]
    )
    assert_close_to_spread(array(charts(at)[0]["data"][0]["z"]), prev, 1e-6, 0.05)


def test_bad_input_is_shown_on_the_page(open_app):
    at = open_app("logit_lens")
    at.text_input(key="lens-target").set_value(" Max Carl").run()
    assert not at.exception and "pass a single token" in at.error[0].value
    at = open_app("tokens", prompt="   ")
    assert not at.exception and "The prompt is empty" in at.error[0].value
    at = open_app("dla", model="no-such-model-folder")
    assert not at.exception and at.error and "no-such-model-folder" in at.error[0].value


def test_prompt_pages_run_on_another_gpt2_model(open_app, tiny_model):
    """A GPT-2-tokenizer model from a folder (3 layers, 4 heads): every prompt page draws
    its figures at that model's shapes, with the classic IOI prompt as the default."""
    tokens = open_app("tokens", model=tiny_model)
    assert not tokens.exception and not tokens.error
    n_pos = len(tokens.dataframe[0].value)
    assert tokens.dataframe[0].value["token"].tolist()[-2:] == [" drink", " to"]
    shapes = {"logit_lens": (4, n_pos), "attention": (n_pos, n_pos), "dla": (3, 5)}
    for page, shape in shapes.items():
        at = open_app(page, model=tiny_model)
        assert not at.exception and not at.error, page
        assert array(charts(at)[0]["data"][0]["z"]).shape == shape, page
    at = open_app("induction", model=tiny_model, **{"ind-half": 5, "ind-rows": 2})
    assert not at.exception and not at.error
    assert array(charts(at)[0]["data"][0]["z"]).shape == (3, 4)
