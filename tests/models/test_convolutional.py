"""ConvS2S (Gehring et al. 2017): causality, incremental decoding, padding, fitting, config."""

import pytest
import torch
import torch.nn.functional as F

from models import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    ConfigError,
    ConvS2SConfig,
    ConvS2SSeq2Seq,
    build_model,
    model_config_from_dict,
)
from models.config import from_dict
from pipelines.core.decoding import greedy_search
from pipelines.inference.search import beam_search

TINY = {
    "family": "convolutional",
    "embedding_dim": 16,
    "hidden_size": 32,
    "encoder_layers": 2,
    "decoder_layers": 3,
    "kernel_size": 3,
    "dropout": 0.0,
    "max_len": 64,
}
VOCAB = 20
# Three sources of different lengths, so two of them are padded by different amounts.
SRC = [[4, 5, 6, 7, 8, 3], [9, 10, 3], [11, 12, 13, 14, 3]]
TGT_IN = [[2, 15, 16, 17, 18, 19], [2, 4, 5, 6, 7, 8], [2, 9, 10, 11, 12, 13]]


def tiny(seed: int = 0, vocab: int = VOCAB, **overrides) -> ConvS2SSeq2Seq:
    torch.manual_seed(seed)
    return build_model({**TINY, **overrides}, vocab).eval()


@pytest.mark.parametrize("decoder_kernel_size", [1, 2, 3, 4])
def test_decoder_is_causal(pad_batch, decoder_kernel_size):
    model = tiny(decoder_kernel_size=decoder_kernel_size)
    src, tgt_in = pad_batch(SRC), torch.tensor(TGT_IN)
    original = model(src, tgt_in)
    for t in range(tgt_in.size(1) - 1):
        changed = tgt_in.clone()
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 7) % (VOCAB - 4) + 4  # other real tokens
        logits = model(src, changed)
        torch.testing.assert_close(logits[:, : t + 1], original[:, : t + 1], atol=1e-6, rtol=0)
        # ...and the changed tokens do reach the later positions, so the check is not vacuous.
        assert (logits[:, t + 1 :] - original[:, t + 1 :]).abs().amax(dim=-1).min() > 1e-4


@pytest.mark.parametrize(("kernel_size", "decoder_kernel_size"), [(3, None), (5, 2), (1, 1)])
def test_incremental_decoding_equals_full_decoding(pad_batch, kernel_size, decoder_kernel_size):
    model = tiny(kernel_size=kernel_size, decoder_kernel_size=decoder_kernel_size)
    src, tgt_in = pad_batch(SRC), torch.tensor(TGT_IN)
    encoder_out = model.encode(src)
    full = model.decode(tgt_in, encoder_out)
    per_layer = model._decode_from(tgt_in, model.init_decoder_state(encoder_out))[1]
    state = model.init_decoder_state(encoder_out)
    window = model.config.target_kernel_size - 1
    for t in range(tgt_in.size(1)):
        logits, state, attention = model.decode_step(tgt_in[:, t], state)
        torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=0)
        # The step's attention is the layers' average of the teacher-forced attention.
        torch.testing.assert_close(attention, per_layer[:, :, t].mean(1), atol=1e-6, rtol=0)
        assert (attention[1, 3:] == 0).all() and (attention[2, 5:] == 0).all()
        assert state.position == t + 1
        assert [h.shape for h in state.histories] == [(3, window, 32)] * 3


def test_reorder_state_permutes_the_logits(pad_batch):
    model = tiny()
    src, tgt_in = pad_batch(SRC), torch.tensor(TGT_IN)
    state = model.init_decoder_state(model.encode(src))
    for t in range(3):
        _, state, _ = model.decode_step(tgt_in[:, t], state)
    permutation = torch.tensor([2, 0, 1])
    reordered = model.reorder_state(state, permutation)
    assert reordered.memory.shape == state.memory.shape
    expected, _, _ = model.decode_step(tgt_in[:, 3], state)
    logits, _, _ = model.decode_step(tgt_in[permutation, 3], reordered)
    torch.testing.assert_close(logits, expected[permutation], atol=1e-6, rtol=0)
    assert (logits - expected).abs().max() > 1e-4  # the rows do differ, so order is tested


def test_decode_step_does_not_modify_the_state(pad_batch):
    model = tiny()
    state = model.init_decoder_state(model.encode(pad_batch(SRC)))
    _, state, _ = model.decode_step(torch.tensor([2, 2, 2]), state)
    histories = [h.clone() for h in state.histories]
    model.decode_step(torch.tensor([5, 6, 7]), state)
    assert state.position == 1
    for before, after in zip(histories, state.histories, strict=True):
        torch.testing.assert_close(after, before, atol=0, rtol=0)


def test_source_padding_does_not_leak():
    model = tiny()
    src, tgt_in = torch.tensor([SRC[1]]), torch.tensor([TGT_IN[1]])
    logits = model(src, tgt_in)
    memory = model.encode(src).memory
    for extra in (1, 4):
        padded = F.pad(src, (0, extra), value=PAD_ID)
        torch.testing.assert_close(model(padded, tgt_in), logits, atol=1e-5, rtol=0)
        padded_memory = model.encode(padded).memory
        torch.testing.assert_close(padded_memory[:, :3], memory, atol=1e-6, rtol=0)
        assert (padded_memory[:, 3:] == 0).all()
        assert (model.cross_attention(padded, tgt_in)[..., 3:] == 0).all()
    # A real token in place of the padding does change the output: the check above can fail.
    longer = torch.tensor([[*SRC[1][:-1], 4, 3]])
    assert (model(longer, tgt_in) - logits).abs().max() > 1e-4


def test_cross_attention_is_one_distribution_per_layer_and_position():
    model = tiny()
    weights = model.cross_attention(torch.tensor([[4, 5, 3, 0]]), torch.tensor([[2, 7, 8]]))
    assert weights.shape == (3, 3, 4)  # decoder layers, T, S
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 3))
    assert (weights[..., 3] == 0).all()


PAIRS = [
    ([4, 5, 6, 7], [8, 9, 10]),
    ([7, 6, 5], [11, 12, 13, 14]),
    ([15, 16], [17, 18, 19, 17, 18]),
    ([5, 9, 13, 17, 4], [4, 6]),
]


def test_overfits_a_small_batch_and_search_reproduces_it(pad_batch):
    model = tiny(seed=0)
    src = pad_batch([[*s, EOS_ID] for s, _ in PAIRS])
    tgt_in = pad_batch([[BOS_ID, *t] for _, t in PAIRS])
    tgt_out = pad_batch([[*t, EOS_ID] for _, t in PAIRS])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(300):  # about 15 steps are needed; the bound leaves a wide margin
        logits = model(src, tgt_in)
        loss = F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=PAD_ID)
        if loss.item() < 0.01:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.01, loss.item()
    targets = [t for _, t in PAIRS]
    assert [h.tokens for h in greedy_search(model, src, max_len_margin=5)] == targets
    hypotheses = beam_search(model, src, beam_size=3, max_len_margin=5, return_attention=True)
    assert [h.tokens for h in hypotheses] == targets
    for (source, _), hypothesis in zip(PAIRS, hypotheses, strict=True):
        assert hypothesis.attention.shape == (len(hypothesis.tokens) + 1, src.size(1))
        assert (hypothesis.attention[:, len(source) + 1 :] == 0).all()
        assert hypothesis.score < 0


def test_scaled_residuals_keep_deep_stacks_at_unit_gain():
    """§3.4-3.5: the √0.5 sums and the fan-in initialisation keep activations the same size
    however deep the stacks are."""
    src = torch.randint(4, 50, (8, 20), generator=torch.Generator().manual_seed(0))
    sizes = {"embedding_dim": 64, "hidden_size": 64, "max_len": 32}
    shallow = tiny(vocab=50, encoder_layers=1, decoder_layers=1, **sizes)
    deep = tiny(vocab=50, encoder_layers=20, decoder_layers=20, **sizes)
    for name in ("memory", "values"):
        ratio = getattr(deep.encode(src), name).std() / getattr(shallow.encode(src), name).std()
        assert 0.5 < ratio < 2.0, (name, ratio)
    ratio = deep(src, src).std() / shallow(src, src).std()
    assert 0.5 < ratio < 2.0, ratio


def test_encoder_output_gradient_is_scaled_by_the_attention_count():
    model = tiny()
    src = torch.tensor([[4, 5, 3]])
    memory = model.encode(src).memory
    encoder_output = model.encoder_output
    (grad,) = torch.autograd.grad(memory.sum(), encoder_output.bias)
    torch.testing.assert_close(grad, torch.full_like(grad, 3 / (2 * 3)))  # 3 tokens, 3 layers


def test_build_model_and_tied_parameters_counted_once():
    model = build_model({**TINY, "tie_embeddings": True}, 30)
    assert isinstance(model, ConvS2SSeq2Seq) and model.graph_safe
    assert model.output_projection.weight is model.src_embedding.embedding.weight
    assert model.tgt_embedding is model.src_embedding
    untied = build_model(TINY, 30)
    assert untied.num_parameters() - model.num_parameters() == 2 * 30 * 16
    assert model.num_parameters() == sum(p.numel() for p in model.parameters())
    with pytest.raises(ConfigError, match="tie_embeddings: requires a joint vocabulary"):
        build_model({**TINY, "tie_embeddings": True}, 30, 40)
    separate = build_model(TINY, 30, 40)
    assert separate(torch.tensor([[4, 5, 3]]), torch.tensor([[2, 6]])).shape == (1, 2, 40)


def test_sided_modules_hold_every_weight_but_the_embeddings():
    model = tiny()
    encoder, decoder = model.sided_modules()
    encoder_ids = {id(p) for m in encoder for p in m.parameters()}
    decoder_ids = {id(p) for m in decoder for p in m.parameters()}
    assert not encoder_ids & decoder_ids
    embeddings = (model.src_embedding, model.tgt_embedding, model.src_positions)
    left_out = {id(p) for m in (*embeddings, model.tgt_positions) for p in m.parameters()}
    assert {id(p) for p in model.parameters()} - encoder_ids - decoder_ids == left_out
    conv = 3 * 32 * 64 + 64  # kernel 3, 32 -> 64 channels (GLU), bias
    linear_in, linear_out = 16 * 32 + 32, 32 * 16 + 16
    encoder_size = linear_in + 2 * conv + linear_out
    attention = linear_out + linear_in  # query projection H -> E, context projection E -> H
    decoder_size = linear_in + 3 * (conv + attention) + linear_out + 16 * VOCAB + VOCAB
    sizes = [sum(p.numel() for m in side for p in m.parameters()) for side in (encoder, decoder)]
    assert sizes == [encoder_size, decoder_size]


def test_config_defaults_are_the_papers():
    config = from_dict(ConvS2SConfig, {})
    assert (config.embedding_dim, config.hidden_size, config.kernel_size) == (512, 512, 3)
    assert (config.encoder_layers, config.decoder_layers) == (20, 20)
    assert config.target_kernel_size == 3
    assert isinstance(model_config_from_dict({"family": "convolutional"}), ConvS2SConfig)


PREFIX = "models.convs2s.model"


@pytest.mark.parametrize(
    ("values", "key", "message"),
    [
        ({"kernel_size": 4}, "kernel_size", "must be odd"),
        ({"kernel_size": 0}, "kernel_size", "must be > 0"),
        ({"kernel_size": -3}, "kernel_size", "must be > 0"),
        ({"decoder_kernel_size": 0}, "decoder_kernel_size", "must be > 0"),
        ({"encoder_layers": 0}, "encoder_layers", "must be > 0"),
        ({"decoder_layers": 0}, "decoder_layers", "must be > 0"),
        ({"hidden_size": 0}, "hidden_size", "must be > 0"),
        ({"dropout": 1.0}, "dropout", r"must be in \[0, 1\)"),
        ({"kernel_width": 3}, "kernel_width", "unknown key"),
        ({"kernel_size": 3.0}, "kernel_size", "expected an integer"),
    ],
)
def test_bad_configs_name_the_key(values, key, message):
    with pytest.raises(ConfigError, match=rf"^{PREFIX}\.{key}: {message}"):
        model_config_from_dict({"family": "convolutional", **values}, prefix=PREFIX)


def test_even_decoder_kernel_is_allowed():
    config = model_config_from_dict({"family": "convolutional", "decoder_kernel_size": 2})
    assert config.target_kernel_size == 2
