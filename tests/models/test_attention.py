import math

import pytest
import torch

import models.attention as attention_module
from models.attention import (
    COMPOSED_ATTENTION_MAX_LEN,
    AdditiveAttention,
    KeyValueCache,
    MultiHeadAttention,
    MultiplicativeAttention,
    fast_attention,
    masked_softmax,
    scaled_dot_product_attention,
)


def test_explicit_attention_matches_hand_computation():
    q = torch.tensor([[[[1.0, 0.0], [0.0, 2.0]]]])  # [1, 1, T=2, d=2]
    k = torch.tensor([[[[1.0, 1.0], [2.0, 0.0], [0.0, -1.0]]]])  # [1, 1, S=3, d=2]
    v = torch.tensor([[[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]]])
    out, weights = scaled_dot_product_attention(q, k, v)
    values = v[0, 0].tolist()
    expected_weights, expected_out = [], []
    for query in q[0, 0].tolist():
        logits = [
            (query[0] * key[0] + query[1] * key[1]) / math.sqrt(2) for key in k[0, 0].tolist()
        ]
        exps = [math.exp(x) for x in logits]
        row = [e / sum(exps) for e in exps]
        expected_weights.append(row)
        expected_out.append([sum(row[s] * values[s][j] for s in range(3)) for j in range(2)])
    torch.testing.assert_close(weights[0, 0], torch.tensor(expected_weights))
    torch.testing.assert_close(out[0, 0], torch.tensor(expected_out))


def test_padded_key_gets_exactly_zero_weight_in_hand_example():
    q = torch.tensor([[[[1.0, 0.0]]]])
    k = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [9.0, 9.0]]]])
    v = torch.tensor([[[[1.0, 0.0], [0.0, 1.0], [100.0, 100.0]]]])
    out, weights = scaled_dot_product_attention(q, k, v, torch.tensor([[False, False, True]]))
    a, b = math.exp(1 / math.sqrt(2)), math.exp(0.0)
    torch.testing.assert_close(weights[0, 0, 0], torch.tensor([a / (a + b), b / (a + b), 0.0]))
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([a / (a + b), b / (a + b)]))
    assert weights[0, 0, 0, 2].item() == 0.0


def _random_qkv(batch=3, heads=2, query_len=5, key_len=5, dim=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(batch, heads, query_len, dim, generator=generator)
    k = torch.randn(batch, heads, key_len, dim, generator=generator)
    v = torch.randn(batch, heads, key_len, dim, generator=generator)
    return q, k, v


PAD_MASK = torch.tensor(
    [[False] * 5, [False, False, False, True, True], [False, True, True, True, True]]
)


@pytest.mark.parametrize("use_padding", [False, True])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("query_len", [5, 2])
def test_fast_path_equals_explicit_path(use_padding, causal, query_len):
    q, k, v = _random_qkv(query_len=query_len)
    mask = PAD_MASK if use_padding else None
    explicit, _ = scaled_dot_product_attention(q, k, v, mask, causal)
    torch.testing.assert_close(fast_attention(q, k, v, mask, causal), explicit)


def _kernel_calls(monkeypatch) -> list[int]:
    """Count calls of PyTorch's fused attention kernel from `fast_attention`."""
    calls = []
    kernel = attention_module.F.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", counted)
    return calls


@pytest.mark.parametrize("use_padding", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_short_attention_traced_by_the_compiler_is_written_out(monkeypatch, use_padding, causal):
    q, k, v = _random_qkv()  # 5 positions: short
    mask = PAD_MASK if use_padding else None
    kernel = fast_attention(q, k, v, mask, causal)
    calls = _kernel_calls(monkeypatch)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    written_out = fast_attention(q, k, v, mask, causal)
    assert calls == []
    torch.testing.assert_close(written_out, kernel, rtol=1e-5, atol=1e-6)


def test_long_attention_and_eager_attention_keep_the_kernel(monkeypatch):
    length = COMPOSED_ATTENTION_MAX_LEN + 1
    q, k, v = _random_qkv(query_len=length, key_len=length)
    calls = _kernel_calls(monkeypatch)
    fast_attention(q, k, v, causal=True)  # eager: the kernel, whatever the length
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    fast_attention(q, k, v, causal=True)  # compiled but longer than the limit
    fast_attention(q[..., :1, :], k, v)  # one query, keys over the limit
    assert len(calls) == 3


@pytest.mark.parametrize("key_len", [7, COMPOSED_ATTENTION_MAX_LEN + 3])
def test_compiled_attention_equals_eager_in_values_and_gradients(key_len):
    """Through torch.compile's tracing and autograd (aot_eager: no code generation), short
    attention written out and long attention on the kernel both equal the eager kernel."""
    q, k, v = _random_qkv(batch=2, query_len=key_len, key_len=key_len)
    padding = torch.arange(key_len)[None, :] >= torch.tensor([[key_len], [key_len - 3]])
    compiled = torch.compile(fast_attention, backend="aot_eager", dynamic=False, fullgraph=True)
    results = []
    for function in (fast_attention, compiled):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = function(*leaves, padding, False) + function(*leaves, None, True)
        out.square().sum().backward()
        results.append([out, *(leaf.grad for leaf in leaves)])
    for eager, traced in zip(*results, strict=True):
        torch.testing.assert_close(traced, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_weights_sum_to_one_and_mask_padding_and_future(causal):
    q, k, v = _random_qkv()
    _, weights = scaled_dot_product_attention(q, k, v, PAD_MASK, causal)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 2, 5))
    assert (weights.masked_select(PAD_MASK[:, None, None, :].expand_as(weights)) == 0).all()
    if causal:
        future = torch.ones(5, 5, dtype=torch.bool).triu(diagonal=1)
        assert (weights[..., future] == 0).all()


def test_causal_with_fewer_queries_aligns_them_to_the_last_keys():
    q, k, v = _random_qkv(query_len=2)
    _, weights = scaled_dot_product_attention(q, k, v, causal=True)
    assert (weights[..., 0, 4] == 0).all()  # query 0 is position 3 of 5
    assert (weights[..., 0, :4] > 0).all()
    assert (weights[..., 1, :] > 0).all()


def test_masked_softmax_fully_masked_row_is_zero_not_nan():
    weights = masked_softmax(torch.randn(2, 3), torch.tensor([[True, False, True], [False] * 3]))
    assert weights[0, 1] == 0
    torch.testing.assert_close(weights[0].sum(), torch.tensor(1.0))
    assert (weights[1] == 0).all()


def test_scaling_keeps_logit_variance_near_one():
    d_k = 512
    q, k, v = _random_qkv(batch=1, heads=4, query_len=64, key_len=64, dim=d_k)
    unscaled = q @ k.transpose(-2, -1)
    assert unscaled.var().item() == pytest.approx(d_k, rel=0.15)
    _, weights = scaled_dot_product_attention(q, k, v)
    # log-softmax only shifts each row, so its variance along the row is the logits' variance.
    assert weights.log().var(dim=-1).mean().item() == pytest.approx(1.0, rel=0.15)


def _multi_head(seed=0, d_model=16, n_heads=4, self_attention=False):
    torch.manual_seed(seed)
    return MultiHeadAttention(d_model, n_heads, self_attention=self_attention).eval()


def test_heads_attend_differently():
    attention = _multi_head()
    x = torch.randn(2, 6, 16)
    _, weights = attention(x, x, need_weights=True)
    assert weights.shape == (2, 4, 6, 6)
    for first in range(4):
        for second in range(first + 1, 4):
            assert (weights[:, first] - weights[:, second]).abs().max() > 1e-2


def test_multi_head_equals_independent_heads_concatenated():
    attention = _multi_head()
    query, memory = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    pad = torch.tensor([[False] * 5, [False, False, True, True, True]])
    out, _ = attention(query, memory, key_padding_mask=pad)
    d_head, d_model = 4, 16
    heads = []
    for head in range(4):
        rows = slice(head * d_head, (head + 1) * d_head)
        value_rows = slice(d_model + head * d_head, d_model + (head + 1) * d_head)

        def project(layer, x, rows):
            return x @ layer.weight[rows].T + layer.bias[rows]

        q = project(attention.query_proj, query, rows)[:, None]  # [B, 1, T, d_head]
        k = project(attention.key_value_proj, memory, rows)[:, None]  # W_K: the first D rows
        v = project(attention.key_value_proj, memory, value_rows)[:, None]  # W_V: the next D
        heads.append(scaled_dot_product_attention(q, k, v, pad)[0][:, 0])  # [B, T, d_head]
    expected = attention.out_proj(torch.cat(heads, dim=-1))
    torch.testing.assert_close(out, expected)


def test_self_attention_stacks_query_key_and_value_projections():
    cross = _multi_head()
    self_attention = _multi_head(seed=1, self_attention=True)
    with torch.no_grad():  # W_QKV = [W_Q; W_K; W_V], the cross module's projections stacked
        for kind in ("weight", "bias"):
            stacked = torch.cat(
                [getattr(cross.query_proj, kind), getattr(cross.key_value_proj, kind)]
            )
            getattr(self_attention.qkv_proj, kind).copy_(stacked)
        self_attention.out_proj.load_state_dict(cross.out_proj.state_dict())
    x = torch.randn(2, 6, 16)
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    expected, _ = cross(x, x, key_padding_mask=pad)
    out, _ = self_attention(x, key_padding_mask=pad)
    torch.testing.assert_close(out, expected)


def test_self_attention_rejects_a_memory():
    attention = _multi_head(self_attention=True)
    x = torch.randn(1, 2, 16)
    with pytest.raises(ValueError, match="self-attention takes no memory"):
        attention(x, x)
    with pytest.raises(ValueError, match="another sequence"):
        attention.project_key_value(x)


@pytest.mark.parametrize("self_attention", [False, True])
def test_weights_saved_with_separate_projections_load_stacked(self_attention):
    attention = _multi_head(self_attention=self_attention)
    d_model = 16
    fused = "qkv_proj" if self_attention else "key_value_proj"
    names = ["query", "key", "value"] if self_attention else ["key", "value"]
    old = {k: v for k, v in attention.state_dict().items() if not k.startswith(fused)}
    for kind in ("weight", "bias"):
        parts = getattr(attention, fused).state_dict()[kind].split(d_model)
        old.update({f"{name}_proj.{kind}": part for name, part in zip(names, parts, strict=True)})
    loaded = _multi_head(seed=7, self_attention=self_attention)
    loaded.load_state_dict(old)
    x = torch.randn(2, 5, 16)
    memory = None if self_attention else torch.randn(2, 4, 16)
    torch.testing.assert_close(loaded(x, memory)[0], attention(x, memory)[0])


def test_need_weights_path_equals_fused_path():
    attention = _multi_head(self_attention=True)
    x = torch.randn(2, 6, 16)
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    fused, no_weights = attention(x, key_padding_mask=pad, causal=True)
    explicit, _weights = attention(x, key_padding_mask=pad, causal=True, need_weights=True)
    assert no_weights is None
    torch.testing.assert_close(fused, explicit)


def test_growing_cache_reproduces_full_causal_self_attention():
    attention = _multi_head(self_attention=True)
    x = torch.randn(2, 6, 16)
    full, _ = attention(x, causal=True)
    cache = KeyValueCache()
    steps = [attention(x[:, t : t + 1], causal=True, cache=cache)[0] for t in range(6)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-6, rtol=1e-5)
    assert cache.key.shape == (2, 4, 6, 4)


def test_static_cache_is_used_instead_of_key_and_value():
    attention = _multi_head()
    query, memory = torch.randn(2, 3, 16), torch.randn(2, 5, 16)
    full, _ = attention(query, memory)
    cache = KeyValueCache(*attention.project_key_value(memory), static=True)
    cached, _ = attention(query, None, cache=cache)
    torch.testing.assert_close(cached, full)


def _check_single_query_attention(attention, expected_scores):
    torch.manual_seed(1)
    query, keys = torch.randn(2, 6), torch.randn(2, 4, 8)
    pad = torch.tensor([[False] * 4, [False, False, True, True]])
    context, weights = attention(query, keys, pad)
    expected = expected_scores(query, keys).masked_fill(pad, float("-inf")).softmax(-1)
    torch.testing.assert_close(weights, expected)
    assert (weights[1, 2:] == 0).all()
    torch.testing.assert_close(context, torch.einsum("bs,bsd->bd", expected, keys))


def test_additive_attention_is_v_tanh_wq_plus_uk():
    torch.manual_seed(0)
    attention = AdditiveAttention(query_dim=6, key_dim=8, hidden=5)

    def scores(query, keys):
        w, u, v = (
            attention.query_layer.weight,
            attention.key_layer.weight,
            attention.energy_layer.weight,
        )
        return torch.tanh((query @ w.T)[:, None] + keys @ u.T) @ v[0]

    _check_single_query_attention(attention, scores)


def test_multiplicative_general_attention_is_q_w_k():
    torch.manual_seed(0)
    attention = MultiplicativeAttention(query_dim=6, key_dim=8, score="general")
    weight = attention.query_layer.weight  # [Dk, Dq]
    _check_single_query_attention(
        attention, lambda q, k: torch.einsum("bq,kq,bsk->bs", q, weight, k)
    )


def test_multiplicative_dot_attention_is_q_dot_k():
    attention = MultiplicativeAttention(query_dim=8, key_dim=8, score="dot")
    assert sum(p.numel() for p in attention.parameters()) == 0
    torch.manual_seed(1)
    query, keys = torch.randn(2, 8), torch.randn(2, 4, 8)
    _, weights = attention(query, keys)
    torch.testing.assert_close(weights, torch.einsum("bd,bsd->bs", query, keys).softmax(-1))


def test_dot_score_rejects_mismatched_dimensions():
    with pytest.raises(ValueError, match="query_dim == key_dim"):
        MultiplicativeAttention(query_dim=6, key_dim=8, score="dot")


def test_additive_precomputed_keys_give_the_same_result():
    torch.manual_seed(0)
    attention = AdditiveAttention(6, 8, 5)
    query, keys = torch.randn(2, 6), torch.randn(2, 4, 8)
    direct = attention(query, keys)
    precomputed = attention(query, keys, projected_keys=attention.project_keys(keys))
    torch.testing.assert_close(direct, precomputed)
