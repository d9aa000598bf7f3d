"""The common interface, checked for every variant."""

import torch

from models import Seq2Seq

SRC = [[4, 5, 6, 7, 3], [8, 9, 3]]
TGT_IN = [[2, 10, 11, 12, 13], [2, 14, 15, 16, 17]]


def test_forward_shape_and_interface(make_model, pad_batch, variant):
    model = make_model(variant)
    assert isinstance(model, Seq2Seq)
    logits = model(pad_batch(SRC), torch.tensor(TGT_IN))
    assert logits.shape == (2, 5, 20)
    torch.testing.assert_close(
        logits, model.decode(torch.tensor(TGT_IN), model.encode(pad_batch(SRC)))
    )


def test_decode_step_equals_full_decode(make_model, pad_batch, variant):
    model = make_model(variant)
    src, tgt_in = pad_batch(SRC), torch.tensor(TGT_IN)
    encoder_out = model.encode(src)
    full = model.decode(tgt_in, encoder_out)
    state = model.init_decoder_state(encoder_out)
    for t in range(tgt_in.size(1)):
        logits, state, attention = model.decode_step(tgt_in[:, t], state)
        torch.testing.assert_close(logits, full[:, t], atol=1e-5, rtol=1e-4)
        if attention is not None:
            assert attention.shape == (2, 5)
            torch.testing.assert_close(attention.sum(-1), torch.ones(2))
            assert (attention[1, 3:] == 0).all()


def test_decoder_is_causal(make_model, pad_batch, variant):
    model = make_model(variant)
    src, tgt_in = pad_batch(SRC), torch.tensor(TGT_IN)
    original = model(src, tgt_in)
    for t in range(1, tgt_in.size(1)):
        changed = tgt_in.clone()
        changed[:, t:] = torch.randint(
            4, 20, changed[:, t:].shape, generator=torch.Generator().manual_seed(t)
        )
        logits = model(src, changed)
        torch.testing.assert_close(logits[:, :t], original[:, :t], atol=1e-5, rtol=1e-4)
        assert (logits[:, t:] - original[:, t:]).abs().max() > 1e-4


def test_decode_step_leaves_its_input_state_unchanged(make_model, pad_batch, variant):
    model = make_model(variant)
    state = model.init_decoder_state(model.encode(pad_batch(SRC)))
    _, state, _ = model.decode_step(torch.tensor([2, 2]), state)
    first, _, _ = model.decode_step(torch.tensor([10, 14]), state)
    again, _, _ = model.decode_step(torch.tensor([10, 14]), state)
    torch.testing.assert_close(first, again, atol=0, rtol=0)


def test_reorder_state_selects_and_repeats_rows(make_model, pad_batch, variant):
    model = make_model(variant)
    src = pad_batch(SRC)
    index = torch.tensor([1, 1, 0])
    state = model.reorder_state(model.init_decoder_state(model.encode(src)), index)
    reference = model.init_decoder_state(model.encode(src[index]))
    for token in (2, 11, 12):
        prev = torch.full((3,), token)
        logits, state, _ = model.decode_step(prev, state)
        expected, reference, _ = model.decode_step(prev, reference)
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-4)


def test_num_parameters_counts_every_parameter_once(make_model, variant):
    model = make_model(variant)
    unique = {id(p): p.numel() for p in model.parameters()}
    assert model.num_parameters() == sum(unique.values())


def test_tied_embeddings_reduce_the_parameter_count(make_model):
    tied = make_model("transformer", tie_embeddings=True)
    untied = make_model("transformer", tie_embeddings=False)
    assert untied.num_parameters() - tied.num_parameters() == 2 * 20 * 32
    assert sum(p.numel() for p in tied.parameters()) == tied.num_parameters()
