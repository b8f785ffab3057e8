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
        "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_z", "blocks.1.hook_resid_post",
        "blocks.2.attn.hook_z", "blocks.2.hook_resid_post",
    ]
    pattern = next(s for s in sites if s.hook.endswith("hook_pattern"))
    assert pattern == Site("blocks.1.attn.hook_pattern", 1, (1, 3))
    assert all(s.heads is None for s in sites if s is not pattern)


@pytest.mark.parametrize("spec,hook", [
    ("resid_pre:0", "blocks.0.hook_resid_pre"), ("resid_mid:2", "blocks.2.hook_resid_mid"),
    ("attn_out:1", "blocks.1.hook_attn_out"), ("mlp_out:1", "blocks.1.hook_mlp_out"),
    ("q:0", "blocks.0.attn.hook_q"), ("k:0", "blocks.0.attn.hook_k"), ("v:0", "blocks.0.attn.hook_v"),
    ("mlp_post:2", "blocks.2.mlp.hook_post"), ("embed", "hook_embed"), ("logits", "unembed.hook_out"),
    ("blocks.1.ln2.hook_normalized", "blocks.1.ln2.hook_normalized"),
])
def test_each_short_name_and_raw_hooks(hooks, spec, hook):
    assert [s.hook for s in parse(spec, hooks)] == [hook]


def test_head_selections_merge_and_all_heads_win(hooks):
    assert parse(["z:1.2", "z:1.0"], hooks) == [Site("blocks.1.attn.hook_z", 1, (0, 2))]
    assert parse("z:1.2,z:1", hooks) == [Site("blocks.1.attn.hook_z", 1, None)]


def test_unknown_site_lists_close_matches(hooks):
    with pytest.raises(UnknownSiteError, match=r"Unknown site 'resid_pots'.*Close matches: resid_post"):
        parse("resid_pots:all", hooks)
    with pytest.raises(UnknownSiteError, match=r"Close matches: blocks.1.hook_resid_post"):
        parse("blocks.1.hook_resid_pots", hooks)


@pytest.mark.parametrize("spec,msg", [
    ("resid_post:3", r"layer 3 is out of range; this model has layers 0..2"),
    ("pattern:1.4", r"head 4 is out of range; this model has heads 0..3"),
    ("resid_post", r"needs layers"),
    ("resid_post:2-1", r"is empty"),
    ("resid_post:x", r"cannot read layers 'x'"),
    ("resid_post:1.1", r"has no head dimension"),
    ("", r"No sites given"),
])
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
        assert Site.of(short) == Site.from_hook(hook) == Site(hook, None) and Site(hook, None).short == short
    assert Site.from_hook("blocks.3.ln1.hook_in").short is None


def test_hook_name_needs_a_layer_and_a_known_name():
    import pytest

    from actstore.errors import UnknownSiteError
    from actstore.sites import hook_name

    with pytest.raises(UnknownSiteError, match="needs a layer"):
        hook_name("resid_pre")
    with pytest.raises(UnknownSiteError, match="resid_post"):
        hook_name("resid_psot", 1)
