import pytest

from actstore.errors import UnknownSiteError
from actstore.sites import Site, parse_sites, probe_shapes, stop_layer


@pytest.fixture(scope="module")
def hooks(bridge):
    return list(bridge.hook_dict.keys())


def parse(spec, hooks):
    return parse_sites(spec, hooks, n_layers=3, n_heads=4)


def test_short_specs_expand_to_hook_names(hooks):
    sites = parse("resid_post:all,z:1-2,pattern:1.1,1.3", hooks)
    assert [s.hook for s in sites] == [
        "blocks.0.hook_resid_post",
        "blocks.1.attn.hook_pattern",
        "blocks.1.attn.hook_z",
        "blocks.1.hook_resid_post",
        "blocks.2.attn.hook_z",
        "blocks.2.hook_resid_post",
    ]
    pattern = next(s for s in sites if s.hook.endswith("hook_pattern"))
    assert pattern == Site("blocks.1.attn.hook_pattern", 1, (1, 3))
    assert all(s.heads is None for s in sites if s is not pattern)


@pytest.mark.parametrize(
    "spec,hook",
    [
        ("resid_pre:0", "blocks.0.hook_resid_pre"),
        ("resid_mid:2", "blocks.2.hook_resid_mid"),
        ("attn_out:1", "blocks.1.hook_attn_out"),
        ("mlp_out:1", "blocks.1.hook_mlp_out"),
        ("q:0", "blocks.0.attn.hook_q"),
        ("k:0", "blocks.0.attn.hook_k"),
        ("v:0", "blocks.0.attn.hook_v"),
        ("mlp_post:2", "blocks.2.mlp.hook_post"),
        ("embed", "hook_embed"),
        ("logits", "unembed.hook_out"),
        ("blocks.1.ln2.hook_normalized", "blocks.1.ln2.hook_normalized"),
    ],
)
def test_each_short_name_and_raw_hooks(hooks, spec, hook):
    assert [s.hook for s in parse(spec, hooks)] == [hook]


def test_head_selections_merge_and_all_heads_win(hooks):
    assert parse(["z:1.2", "z:1.0"], hooks) == [Site("blocks.1.attn.hook_z", 1, (0, 2))]
    assert parse("z:1.2,z:1", hooks) == [Site("blocks.1.attn.hook_z", 1, None)]


def test_unknown_site_lists_close_matches(hooks):
    with pytest.raises(
        UnknownSiteError, match=r"Unknown site 'resid_pots'.*Close matches: resid_post"
    ):
        parse("resid_pots:all", hooks)
    with pytest.raises(UnknownSiteError, match=r"Close matches: blocks.1.hook_resid_post"):
        parse("blocks.1.hook_resid_pots", hooks)


@pytest.mark.parametrize(
    "spec,msg",
    [
        ("resid_post:3", r"layer 3 is out of range; this model has layers 0..2"),
        ("pattern:1.4", r"head 4 is out of range; this model has heads 0..3"),
        ("resid_post", r"needs layers"),
        ("resid_post:2-1", r"is empty"),
        ("resid_post:x", r"cannot read layers 'x'"),
        ("resid_post:1.1", r"has no head dimension"),
        ("", r"No sites given"),
    ],
)
def test_bad_specs(hooks, spec, msg):
    with pytest.raises(UnknownSiteError, match=msg):
        parse(spec, hooks)


def test_stop_layer_is_last_needed_block():
    assert stop_layer([Site("blocks.0.hook_resid_post", 0), Site("blocks.1.attn.hook_z", 1)]) == 2
    assert stop_layer([Site("hook_embed", None)]) == 1
    assert stop_layer([Site("blocks.0.hook_resid_post", 0), Site("unembed.hook_out", None)]) is None


def test_probe_names_dimensions(tiny_model, hooks):
    from actstore.models import load_model

    m = load_model(tiny_model, "float32", "cpu")
    sites = parse("resid_post:0,z:1,pattern:1.1,1.3,mlp_post:0,logits", hooks)
    shapes = probe_shapes(m.capture, sites, 16, m.info.dim_sizes)
    got = {h: (s.dims, s.shape) for h, s in shapes.items()}
    assert got == {
        "blocks.0.hook_resid_post": (("pos", "d_model"), (16, 64)),
        "blocks.1.attn.hook_z": (("pos", "head", "d_head"), (16, 4, 16)),
        "blocks.1.attn.hook_pattern": (("head", "query_pos", "key_pos"), (2, 16, 16)),
        "blocks.0.mlp.hook_post": (("pos", "d_mlp"), (16, 256)),
        "unembed.hook_out": (("pos", "d_vocab"), (16, 50257)),
    }
    assert shapes["blocks.1.attn.hook_pattern"].feature_shape is None
    assert shapes["blocks.1.attn.hook_z"].feature_shape == (4, 16)


def test_site_of_and_from_hook_round_trip_every_short_name():
    from actstore.sites import GLOBAL_SITES, SHORT_SITES, Site, hook_name

    for short in SHORT_SITES:
        for layer in (0, 7, 11):
            site = Site.of(short, layer)
            assert site.hook == SHORT_SITES[short].format(L=layer) == hook_name(short, layer)
            assert Site.from_hook(site.hook) == site and site.short == short and site.layer == layer
    for short, hook in GLOBAL_SITES.items():
        assert (
            Site.of(short) == Site.from_hook(hook) == Site(hook, None)
            and Site(hook, None).short == short
        )
    assert Site.from_hook("blocks.3.ln1.hook_in").short is None


def test_hook_name_needs_a_layer_and_a_known_name():
    import pytest

    from actstore.errors import UnknownSiteError
    from actstore.sites import hook_name

    with pytest.raises(UnknownSiteError, match="needs a layer"):
        hook_name("resid_pre")
    with pytest.raises(UnknownSiteError, match="resid_post"):
        hook_name("resid_psot", 1)


def test_site_kind_is_the_short_name_or_the_hook_past_its_block():
    assert Site.from_hook("blocks.4.attn.hook_z").kind == "z"
    assert Site.from_hook("blocks.4.ln1.hook_normalized").kind == "ln1.hook_normalized"
    assert Site.from_hook("unembed.hook_out").kind == "logits"
    assert Site.from_hook("ln_final.hook_normalized").kind == "ln_final.hook_normalized"


def test_dims_come_from_the_site_when_sizes_coincide(tmp_path):
    """n_heads == d_head == 4 and d_model == d_mlp == seq_len == n_ctx == 16: matching sizes
    cannot tell mlp_post's d_mlp from d_model; the site's own dims can."""
    from actstore.models import load_model
    from actstore.resources import build_random_gpt2, demo_tokenizer
    from actstore.sites import GLOBAL_SITES, SHORT_SITES

    folder = build_random_gpt2(
        tmp_path / "coincide",
        seed=0,
        tokenizer=demo_tokenizer(),
        n_layer=1,
        n_embd=16,
        n_head=4,
        n_inner=16,
        n_positions=16,
        vocab_size=965,
        bos_token_id=0,
        eos_token_id=0,
    )
    m = load_model(str(folder), "float32", "cpu")
    sizes = m.info.dim_sizes
    assert sizes["head"] == sizes["d_head"] == 4 and sizes["d_model"] == sizes["d_mlp"] == 16
    sites = parse_sites(
        [*(f"{s}:0" for s in SHORT_SITES), *GLOBAL_SITES, "loss"], m.bridge.hook_dict, 1, 4
    )
    shapes = probe_shapes(m.capture, sites, 16, sizes)
    got = {Site.from_hook(h).short or h: (s.dims, s.shape) for h, s in shapes.items()}
    pos_model, heads, grid = (
        (("pos", "d_model"), (16, 16)),
        (("pos", "head", "d_head"), (16, 4, 4)),
        (("head", "query_pos", "key_pos"), (4, 16, 16)),
    )
    assert got == {
        "resid_pre": pos_model,
        "resid_mid": pos_model,
        "resid_post": pos_model,
        "attn_out": pos_model,
        "mlp_out": pos_model,
        "embed": pos_model,
        "pos_embed": pos_model,
        "z": heads,
        "q": heads,
        "k": heads,
        "v": heads,
        "pattern": grid,
        "attn_scores": grid,
        "mlp_pre": (("pos", "d_mlp"), (16, 16)),
        "mlp_post": (("pos", "d_mlp"), (16, 16)),
        "logits": (("pos", "d_vocab"), (16, 965)),
        "loss": (("pos",), (15,)),
    }


def test_dims_of_a_hook_outside_the_vocabulary_are_measured_and_a_known_site_is_checked():
    import torch

    sizes = {"head": 4, "d_head": 8, "d_model": 32, "d_mlp": 128, "d_vocab": 50}

    def forward(tokens, sites):  # z comes back without its head axis: not what a 'z' site is
        n = tokens.shape[1]
        shapes = {"blocks.0.ln1.hook_normalized": (1, n, 32), "blocks.0.attn.hook_z": (1, n, 32)}
        return {s.hook: torch.zeros(shapes[s.hook]) for s in sites}

    raw = probe_shapes(forward, [Site.from_hook("blocks.0.ln1.hook_normalized")], 16, sizes)
    assert raw["blocks.0.ln1.hook_normalized"].dims == ("pos", "d_model")
    with pytest.raises(
        UnknownSiteError, match=r"blocks.0.attn.hook_z has shape \(2, 32\).*\(pos, head, d_head\)"
    ):
        probe_shapes(forward, [Site.of("z", 0)], 16, sizes)
