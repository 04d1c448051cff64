"""Tests for the UNet, the text encoder and the shared layers (tiny configs, jitted)."""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.models.layers import (
    Conv3x3,
    GroupNorm,
    attention,
    count_params,
    num_groups_for,
    timestep_embedding,
    upsample_nearest,
)
from jaxgen.models.text_encoder import BOS_ID, EOS_ID, PAD_ID, TextEncoder
from jaxgen.models.unet import (
    ResBlock,
    UNet,
)

TINY_TEXT = dict(max_len=16, width=32, depth=1, num_heads=2)


def encode(text: str, length: int) -> np.ndarray:
    """Byte tokens [BOS, bytes + 3, EOS, PAD...] of the given length."""
    ids = [BOS_ID] + [b + 3 for b in text.encode()] + [EOS_ID]
    assert len(ids) <= length, text
    return np.array(ids + [PAD_ID] * (length - len(ids)), np.int32)


def perturb(params, key, scale=0.05):
    """Adds Gaussian noise to every leaf so that zero-initialised layers stop hiding inputs."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    noisy = [
        p + scale * jax.random.normal(k, p.shape, p.dtype)
        for p, k in zip(leaves, keys, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, noisy)


def tiny_unet(**kw):
    cfg = dict(
        ch=16,
        ch_mults=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(8,),
        cross_attn_resolutions=(16, 8),
        num_heads=2,
        norm_groups=8,
        text_encoder=TextEncoder(**TINY_TEXT),
    )
    cfg.update(kw)
    return UNet(**cfg)


@pytest.fixture(scope="module")
def cond_unet():
    """A tiny text-conditioned UNet, its params, and a jitted apply."""
    model = tiny_unet()
    x = jnp.zeros((2, 16, 16, 3))
    tokens = jnp.asarray(np.stack([encode("a red circle", 16), encode("", 16)]))
    params = jax.jit(model.init)(jax.random.key(0), x, jnp.zeros((2,)), tokens)["params"]
    apply = jax.jit(lambda p, x, t, tok: model.apply({"params": p}, x, t, tok))
    return model, params, apply


# ----------------------------------------------------------------------------- layers


def test_group_norm_matches_flax_reference():
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 16)) * 3.0 + 1.0
    ours = GroupNorm(num_groups=4)
    ref = nn.GroupNorm(num_groups=4, epsilon=1e-6)
    params = ours.init(jax.random.key(1), x)
    params = perturb(params, jax.random.key(2), 0.5)  # non-trivial affine
    chex.assert_trees_all_close(ours.apply(params, x), ref.apply(params, x), atol=1e-5, rtol=1e-5)
    scale = jax.random.normal(jax.random.key(3), (2, 16))
    shift = jax.random.normal(jax.random.key(4), (2, 16))
    expected = ref.apply(params, x) * (1 + scale[:, None, None]) + shift[:, None, None]
    chex.assert_trees_all_close(
        ours.apply(params, x, (scale, shift)), expected, atol=1e-5, rtol=1e-5
    )


# float32 agrees to rounding. bfloat16 (8 significant bits) rounds in other places (per part),
# and a gradient summed over the 72 positions of a batch collects those roundings: a few percent.
_TOL = {"float32": 2e-5, "bfloat16": 5e-2}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape,strides", [((2, 8, 8, 5), 1), ((2, 8, 8, 5), 2), ((3, 7, 5, 3), 2)])
def test_conv3x3_matches_nn_conv_values_and_gradients(shape, strides, dtype):
    """Conv3x3 is flax's nn.Conv with padding 1 (the parameters, values and gradients), at odd
    sizes and strides too; bfloat16 within its rounding."""
    x = jax.random.normal(jax.random.key(0), shape)
    conv = Conv3x3(7, strides, dtype=jnp.dtype(dtype))
    ref = nn.Conv(7, (3, 3), strides=strides, padding=((1, 1), (1, 1)), dtype=jnp.dtype(dtype))
    params = perturb(conv.init(jax.random.key(1), x), jax.random.key(2))  # non-zero bias
    chex.assert_trees_all_equal_shapes(params, ref.init(jax.random.key(1), x))
    w = jax.random.normal(jax.random.key(3), conv.apply(params, x).shape)

    def loss(module, params, x):
        out = module.apply(params, x)
        return jnp.sum(out.astype(jnp.float32) * w), out

    (_, out), grads = jax.value_and_grad(
        functools.partial(loss, conv), argnums=(0, 1), has_aux=True
    )(params, x)
    (_, out_ref), grads_ref = jax.value_and_grad(
        functools.partial(loss, ref), argnums=(0, 1), has_aux=True
    )(params, x)
    ho, wo = -(-shape[1] // strides), -(-shape[2] // strides)
    chex.assert_shape(out, (shape[0], ho, wo, 7))
    chex.assert_equal(out.dtype, jnp.dtype(dtype))
    tol = _TOL[dtype]
    for a, b in zip(
        jax.tree.leaves((out, grads)), jax.tree.leaves((out_ref, grads_ref)), strict=True
    ):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        np.testing.assert_allclose(a, b, atol=tol * np.abs(b).max())


# Channel splits where group boundaries fall inside a part (6 + 10 with 4 groups of 4), odd widths
# (5 + 3), and three parts.
_SPLITS = [(6, 10), (5, 3), (4, 4, 8)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("split", _SPLITS)
def test_parts_equal_their_concatenation(split, dtype):
    """GroupNorm, Conv3x3 (strides 1 and 2) and the UNet's ResBlock read a tuple of parts as
    their concatenation: the same parameters, values and gradients (inputs and parameters)."""
    dtype = jnp.dtype(dtype)
    keys = jax.random.split(jax.random.key(0), len(split))
    parts = tuple(
        (jax.random.normal(k, (2, 6, 6, c)) * 2.0 + 0.5).astype(dtype)
        for k, c in zip(keys, split, strict=True)
    )
    emb = jax.random.normal(jax.random.key(5), (2, 12))
    block = ResBlock(8, film=True, norm_groups=4, dtype=dtype)
    cases = {
        "group_norm": (GroupNorm(4, dtype=dtype), ()),
        "conv": (Conv3x3(7, 1, dtype=dtype), ()),
        "conv_stride2": (Conv3x3(7, 2, dtype=dtype), ()),
        "res_block": (block, (emb,)),
    }
    for name, (module, extra) in cases.items():
        cat = jnp.concatenate(parts, -1)
        variables = module.init(jax.random.key(1), cat, *extra)
        chex.assert_trees_all_equal_shapes(variables, module.init(jax.random.key(1), parts, *extra))
        variables = perturb(variables, jax.random.key(2), 0.3)  # zero-init layers read input

        def loss(variables, parts, joined, module=module, extra=extra):
            x = jnp.concatenate(parts, -1) if joined else parts
            out = module.apply(variables, x, *extra)
            out = jnp.concatenate(out, -1) if isinstance(out, tuple) else out
            w = jax.random.normal(jax.random.key(9), out.shape)
            return jnp.sum(out.astype(jnp.float32) * w), out

        grad = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
        ((_, out_cat), g_cat), ((_, out_parts), g_parts) = (
            grad(variables, parts, joined) for joined in (True, False)
        )
        tol = _TOL[dtype.name]
        chex.assert_equal(out_parts.dtype, dtype)
        out_cat, out_parts = (np.asarray(o, np.float32) for o in (out_cat, out_parts))
        np.testing.assert_allclose(
            out_parts, out_cat, atol=tol * np.abs(out_cat).max(), err_msg=name
        )
        for a, b in zip(jax.tree.leaves(g_parts), jax.tree.leaves(g_cat), strict=True):
            a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
            np.testing.assert_allclose(a, b, atol=tol * np.abs(b).max(), err_msg=name)
    with pytest.raises(ValueError, match="one input, not parts"):
        ResBlock(8, norm_groups=4, resample="up").init(jax.random.key(1), parts, emb)


def test_num_groups_for():
    assert num_groups_for(128, 32) == 32
    assert num_groups_for(16, 32) == 16
    assert num_groups_for(48, 32) == 24
    assert num_groups_for(3, 32) == 3


def test_timestep_embedding_closed_form():
    emb = timestep_embedding(jnp.array([0, 7]), 8)
    chex.assert_shape(emb, (2, 8))
    np.testing.assert_allclose(emb[0], [0, 0, 0, 0, 1, 1, 1, 1], atol=1e-7)
    freqs = 10000.0 ** (-np.arange(4) / 3)
    np.testing.assert_allclose(
        emb[1], np.concatenate([np.sin(7 * freqs), np.cos(7 * freqs)]), rtol=1e-5, atol=1e-6
    )


def test_attention_masks_keys_and_matches_reference():
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 3, 2, 4)) for i in range(3))
    mask = jnp.array([[True, True, False], [True, False, False]])
    out = attention(q, k, v, mask)
    for b, n_valid in enumerate([2, 1]):
        logits = np.einsum("qnd,knd->nqk", q[b], k[b, :n_valid]) / 2.0
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        np.testing.assert_allclose(
            out[b], np.einsum("nqk,knd->qnd", w, v[b, :n_valid]), rtol=1e-5, atol=1e-5
        )


def test_attention_per_query_mask_matches_reference():
    q, k, v = (jax.random.normal(jax.random.key(i), (1, 3, 1, 4)) for i in range(3))
    causal = jnp.tril(jnp.ones((3, 3), bool))[None]
    out = attention(q, k, v, causal)
    for t in range(3):  # query t sees keys 0..t only
        logits = np.einsum("nd,knd->nk", q[0, t], k[0, : t + 1]) / 2.0
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        np.testing.assert_allclose(
            out[0, t], np.einsum("nk,knd->nd", w, v[0, : t + 1]), rtol=1e-5, atol=1e-5
        )


def test_attention_matches_reference():
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 3, 2, 4)) for i in range(3))
    out = attention(q, k, v)
    for b in range(2):
        logits = np.einsum("qnd,knd->nqk", q[b], k[b]) / 2.0  # 1 / sqrt(D), D = 4
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        np.testing.assert_allclose(out[b], np.einsum("nqk,knd->qnd", w, v[b]), rtol=1e-5, atol=1e-5)


def test_upsample_nearest():
    x = jnp.arange(8.0).reshape(1, 2, 2, 2)
    np.testing.assert_array_equal(upsample_nearest(x), jnp.repeat(jnp.repeat(x, 2, 1), 2, 2))


def test_count_params():
    assert count_params({"a": jnp.zeros((3, 4)), "b": [jnp.zeros(5)]}) == 17


# ----------------------------------------------------------------------------- text encoder


def test_text_encoder_shapes_and_padding_invariance():
    enc = TextEncoder(**TINY_TEXT)
    short = jnp.asarray(np.stack([encode("a blue square", 16), encode("", 16)])[:, :15])
    longer = jnp.pad(short, ((0, 0), (0, 1)))  # one more trailing PAD
    params = jax.jit(enc.init)(jax.random.key(0), longer)
    apply = jax.jit(enc.apply)
    seq, pooled, mask = apply(params, longer)
    chex.assert_shape(seq, (2, 16, 32))
    chex.assert_shape(pooled, (2, 32))
    assert mask.dtype == jnp.bool_ and seq.dtype == pooled.dtype == jnp.float32
    np.testing.assert_array_equal(mask[1], np.arange(16) < 2)  # empty caption: BOS, EOS
    assert np.isfinite(np.asarray(seq)).all() and np.isfinite(np.asarray(pooled)).all()
    seq_s, pooled_s, _ = apply(params, short)
    chex.assert_trees_all_close(pooled_s, pooled, atol=1e-5)
    chex.assert_trees_all_close(seq_s, seq[:, :15], atol=1e-5)
    # Pooled is the mean over the non-PAD positions of the sequence.
    np.testing.assert_allclose(pooled[1], seq[1, :2].mean(0), atol=1e-5)


def test_causal_text_encoder_reads_word_order():
    tokens = jnp.asarray(np.stack([encode("a red circle left of a blue square", 40)]))
    later = tokens.at[0, 20:30].set(jnp.asarray(encode("xyzxyzxyz", 12)[1:11]))
    swapped = jnp.asarray(np.stack([encode("a blue square left of a red circle", 40)]))
    for causal in (True, False):
        enc = TextEncoder(**{**TINY_TEXT, "max_len": 40, "causal": causal})
        params = enc.init(jax.random.key(0), tokens)
        seq, pooled, _ = enc.apply(params, tokens)
        seq_later, _, _ = enc.apply(params, later)
        # Causal: the states before position 20 cannot see what changed after it.
        same_prefix = np.allclose(seq[0, :20], seq_later[0, :20], atol=1e-6)
        assert same_prefix == causal
        # The same bytes in another order: without position embeddings a bidirectional mean is
        # exactly a bag of words; a causal one is not, even then.
        no_pos = jax.tree_util.tree_map_with_path(
            lambda path, x: jnp.zeros_like(x) if "pos_emb" in str(path) else x, params
        )
        _, a, _ = enc.apply(no_pos, tokens)
        _, b, _ = enc.apply(no_pos, swapped)
        assert np.allclose(a, b, atol=1e-5) != causal


def test_text_encoder_all_pad_row_is_finite_and_long_input_rejected():
    enc = TextEncoder(**TINY_TEXT)
    tokens = jnp.zeros((1, 4), jnp.int32)
    params = enc.init(jax.random.key(0), tokens)
    seq, pooled, _ = enc.apply(params, tokens)
    assert np.isfinite(np.asarray(seq)).all()
    np.testing.assert_array_equal(pooled, 0.0)
    with pytest.raises(ValueError, match="max_len"):
        enc.apply(params, jnp.ones((1, 17), jnp.int32))


# ----------------------------------------------------------------------------- UNet


def test_unet_conditional_shape_and_zero_at_init(cond_unet):
    model, params, apply = cond_unet
    assert "text_encoder" in params and "mid_xattn" in params and "down_0_0_xattn" in params
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    tokens = jnp.asarray(np.stack([encode("a red circle", 16), encode("", 16)]))
    out = apply(params, x, jnp.array([3, 999]), tokens)
    chex.assert_shape(out, (2, 16, 16, 3))
    assert out.dtype == jnp.float32
    # conv_out is zero-initialised, so the network predicts exactly zero at init.
    np.testing.assert_array_equal(out, 0.0)


def test_unet_text_changes_output_and_padding_is_ignored(cond_unet):
    model, params, apply = cond_unet
    params = perturb(params, jax.random.key(7))
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    t = jnp.array([10.0, 500.5])  # float timesteps are accepted
    a = jnp.asarray(np.stack([encode("a red circle", 16)] * 2))
    b = jnp.asarray(np.stack([encode("a green square", 16)] * 2))
    out_a, out_b = apply(params, x, t, a), apply(params, x, t, b)
    assert float(jnp.abs(out_a).mean()) > 1e-3
    assert float(jnp.abs(out_a - out_b).mean()) > 1e-3 * float(jnp.abs(out_a).mean())
    # Trailing PAD tokens change neither the pooled embedding nor the cross-attention.
    a_short = a[:, :14]
    out_short = jax.jit(lambda p, x, t, tok: model.apply({"params": p}, x, t, tok))(
        params, x, t, a_short
    )
    chex.assert_trees_all_close(out_short, out_a, atol=1e-4, rtol=1e-4)


def test_unet_text_conditioning_reaches_both_paths(cond_unet):
    """Cross-attention alone and the pooled embedding alone each change the output."""
    model, params, apply = cond_unet
    params = perturb(params, jax.random.key(7))
    x = jax.random.normal(jax.random.key(1), (1, 16, 16, 3))
    t = jnp.array([100])
    a, b = (jnp.asarray(encode(s, 16))[None] for s in ("a red circle", "a cyan diamond"))
    no_pool = dict(params, text_proj=jax.tree_util.tree_map(jnp.zeros_like, params["text_proj"]))
    assert not np.allclose(apply(no_pool, x, t, a), apply(no_pool, x, t, b), atol=1e-5)
    no_xattn = {
        k: (jax.tree_util.tree_map(jnp.zeros_like, v) if k.endswith("xattn") else v)
        for k, v in params.items()
    }
    # Zeroing all of a cross-attention block's weights makes it the identity (q=k=v=0, out=0).
    assert not np.allclose(apply(no_xattn, x, t, a), apply(no_xattn, x, t, b), atol=1e-5)


@pytest.mark.parametrize(
    "size,kw",
    [
        (16, dict(text_encoder=None)),
        (
            32,
            dict(
                text_encoder=None,
                ch_mults=(1, 2, 2),
                resblock_updown=True,
                film=False,
            ),
        ),
        (32, dict(text_encoder=dict(TINY_TEXT), ch_mults=(1, 2, 2), dropout=0.1)),
    ],
)
def test_unet_shapes_train_mode(size, kw):
    model = tiny_unet(**kw)
    conditional = kw["text_encoder"] is not None
    x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
    t = jnp.array([0, 999])
    tokens = jnp.asarray(np.stack([encode("a", 16), encode("", 16)])) if conditional else None
    params = jax.jit(model.init)(jax.random.key(1), x, t, tokens)["params"]
    assert ("text_encoder" in params) == conditional
    params = perturb(params, jax.random.key(2))

    @functools.partial(jax.jit, static_argnames="train")
    def fwd(p, rng, train):
        return model.apply({"params": p}, x, t, tokens, train=train, rngs={"dropout": rng})

    out1 = fwd(params, jax.random.key(3), True)
    chex.assert_shape(out1, (2, size, size, 3))
    assert np.isfinite(np.asarray(out1)).all()
    if kw.get("dropout", 0.0) > 0:
        out2 = fwd(params, jax.random.key(4), True)
        assert not np.allclose(out1, out2)  # dropout is active in train mode
        chex.assert_trees_all_equal(
            fwd(params, jax.random.key(3), False), fwd(params, jax.random.key(4), False)
        )


def test_unet_requires_tokens_when_conditional():
    model = tiny_unet()
    with pytest.raises(ValueError, match="tokens"):
        jax.eval_shape(
            lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), jnp.ones(1))
        )


def test_unet_bfloat16_activations_float32_params():
    # A mapping config inherits the UNet's dtype (an explicit TextEncoder keeps its own).
    model = tiny_unet(dtype=jnp.bfloat16, text_encoder=dict(TINY_TEXT))
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    tokens = jnp.asarray(np.stack([encode("a red circle", 16)] * 2))
    t = jnp.array([1, 2])
    params = jax.jit(model.init)(jax.random.key(1), x, t, tokens)["params"]
    assert {p.dtype for p in jax.tree_util.tree_leaves(params)} == {jnp.dtype(jnp.float32)}

    @jax.jit
    def fwd(p):
        return model.apply({"params": p}, x, t, tokens, capture_intermediates=True)

    out, state = fwd(perturb(params, jax.random.key(2)))
    assert out.dtype == jnp.bfloat16
    inter = state["intermediates"]
    for name in ("down_0_res_0", "mid_attn", "mid_xattn", "up_1_res_0"):
        assert inter[name]["__call__"][0].dtype == jnp.bfloat16, name
    assert inter["text_encoder"]["__call__"][0][0].dtype == jnp.bfloat16
    assert np.isfinite(np.asarray(out, np.float32)).all()


def test_ddpm_cifar10_parameter_count():
    """The DDPM CIFAR-10 UNet (ch 128, mults 1,2,2,2, attention at 16) has 35,746,307 params."""
    model = UNet(
        ch=128,
        ch_mults=(1, 2, 2, 2),
        num_res_blocks=2,
        attn_resolutions=(16,),
        dropout=0.1,
        num_heads=1,
        text_encoder=None,
        film=False,
    )
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,)))
    )
    assert count_params(shapes["params"]) == 35_746_307
    # FiLM doubles each res block's embedding projection: 2 * sum(4ch * C_out + C_out) more.
    film = jax.eval_shape(
        lambda: model.clone(film=True).init(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,))
        )
    )
    res_out = [128] * 2 + [256] * 6 + [256] * 2 + [256] * 9 + [128] * 3
    assert count_params(film["params"]) - 35_746_307 == sum(512 * c + c for c in res_out)
