import itertools

import pytest
import torch

from models import BOS_ID, EOS_ID, UNK_ID
from pipelines.core.decoding import greedy_search
from pipelines.inference.search import beam_search, gnmt_length_penalty

SENTENCES = [[4, 5, 6, 7, 8, 3], [9, 10, 3], [11, 12, 13, 14, 3], [15, 3]]


def test_length_penalty_formula():
    assert gnmt_length_penalty(7, 0.6) == pytest.approx(2.0**0.6)
    assert gnmt_length_penalty(30, 0.0) == 1.0


def test_beam_of_one_is_greedy(make_model, pad_batch, variant):
    model = make_model(variant)
    src = pad_batch(SENTENCES)
    greedy = greedy_search(model, src, max_len_margin=5)
    beam = beam_search(model, src, beam_size=1, length_penalty=0.0, max_len_margin=5)
    for g, b in zip(greedy, beam, strict=True):
        assert g.tokens == b.tokens
        assert g.score == pytest.approx(b.score, abs=1e-4)


@pytest.mark.parametrize("search", ["greedy", "beam"])
@pytest.mark.parametrize("variant", ["transformer", "lstm-additive", "lstm-none"])
def test_batched_search_equals_one_sentence_at_a_time(make_model, pad_batch, variant, search):
    model = make_model(variant, seed=3)

    def run(src):
        if search == "greedy":
            return greedy_search(model, src, max_len_margin=4)
        return beam_search(model, src, beam_size=3, max_len_margin=4)

    batched = run(pad_batch(SENTENCES))
    for sentence, hypothesis in zip(SENTENCES, batched, strict=True):
        (alone,) = run(torch.tensor([sentence]))
        assert hypothesis.tokens == alone.tokens
        assert hypothesis.score == pytest.approx(alone.score, abs=1e-4)


def _sequence_log_prob(model, src, output):
    """log p(output | src) for a full output ending in EOS, by teacher forcing."""
    tgt_in = torch.tensor([[BOS_ID, *output[:-1]]])
    log_probs = model(src, tgt_in).log_softmax(-1)[0]  # [T, V]
    return sum(log_probs[t, token].item() for t, token in enumerate(output))


@pytest.mark.parametrize("alpha", [0.0, 0.6])
@pytest.mark.parametrize("variant", ["transformer", "lstm-multiplicative"])
def test_wide_beam_finds_the_exact_best_sequence(make_model, variant, alpha):
    vocab = 7  # specials 0-3 and three words; search never emits PAD or BOS
    model = make_model(variant, seed=5, vocab_size=vocab)
    src = torch.tensor([[4, 3]])  # 2 source tokens + margin 2 -> at most 4 output tokens
    words = [UNK_ID, 4, 5, 6]
    best_score, best_tokens = float("-inf"), None
    with torch.no_grad():
        for length in range(4):
            for prefix in itertools.product(words, repeat=length):
                output = [*prefix, EOS_ID]
                score = _sequence_log_prob(model, src, output) / gnmt_length_penalty(
                    length + 1, alpha
                )
                if score > best_score:
                    best_score, best_tokens = score, list(prefix)
    # A beam this wide keeps every candidate: at most 4**2 live prefixes times 5 continuations.
    (hypothesis,) = beam_search(model, src, beam_size=80, length_penalty=alpha, max_len_margin=2)
    assert hypothesis.tokens == best_tokens
    assert hypothesis.score == pytest.approx(best_score, abs=1e-4)


def test_hypotheses_respect_the_length_limit_and_exclude_specials(make_model, pad_batch):
    model = make_model("lstm-multiplicative", seed=1)
    src = pad_batch(SENTENCES)
    for margin in (0, 2):
        for hypotheses in (
            greedy_search(model, src, max_len_margin=margin),
            beam_search(model, src, beam_size=4, max_len_margin=margin),
        ):
            for sentence, hypothesis in zip(SENTENCES, hypotheses, strict=True):
                assert len(hypothesis.tokens) + 1 <= len(sentence) + margin
                assert not {0, BOS_ID, EOS_ID} & set(hypothesis.tokens)


@pytest.mark.parametrize("search", [greedy_search, beam_search])
def test_search_restores_the_training_mode(make_model, search):
    model = make_model("transformer", dropout=0.3)
    model.train()
    first = search(model, torch.tensor([[4, 5, 3]]), max_len_margin=3)
    assert model.training
    second = search(model, torch.tensor([[4, 5, 3]]), max_len_margin=3)
    assert first == second  # dropout was off during search
    model.eval()
    search(model, torch.tensor([[4, 5, 3]]), max_len_margin=3)
    assert not model.training


@pytest.mark.parametrize("search", [greedy_search, beam_search])
def test_returned_attention_has_one_row_per_output_step(make_model, pad_batch, search):
    model = make_model("lstm-additive", seed=2)
    src = pad_batch(SENTENCES)
    for sentence, hypothesis in zip(
        SENTENCES, search(model, src, max_len_margin=3, return_attention=True), strict=True
    ):
        attention = hypothesis.attention
        assert attention.shape == (len(hypothesis.tokens) + 1, src.size(1))
        torch.testing.assert_close(attention.sum(-1), torch.ones(attention.size(0)))
        assert (attention[:, len(sentence) :] == 0).all()


def test_no_attention_for_the_bottleneck_model(make_model):
    model = make_model("lstm-none")
    (hypothesis,) = beam_search(
        model, torch.tensor([[4, 5, 3]]), max_len_margin=3, return_attention=True
    )
    assert hypothesis.attention is None


def test_beam_attention_matches_teacher_forced_attention(make_model):
    model = make_model("transformer", seed=4)
    src = torch.tensor([[4, 5, 6, 3]])
    (hypothesis,) = beam_search(model, src, beam_size=3, max_len_margin=3, return_attention=True)
    tgt_in = torch.tensor([[BOS_ID, *hypothesis.tokens]])
    with torch.no_grad():
        expected = model.cross_attention(src, tgt_in).mean(0)  # [T, S]
    torch.testing.assert_close(hypothesis.attention, expected, atol=1e-5, rtol=1e-4)
