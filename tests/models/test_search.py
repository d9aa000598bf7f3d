import itertools

import pytest
import torch

from models import BOS_ID, EOS_ID, UNK_ID, Seq2Seq
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


def _penalty(length: int, alpha: float) -> float:
    """The GNMT length penalty written out here, so that the product's is checked, not reused."""
    return ((5.0 + length) / 6.0) ** alpha


class BigramBiased(Seq2Seq):
    """`model` with bias[previous token, next token] added to its logits, in teacher forcing and
    in decode_step alike: a model whose best output depends on the prefix, unlike a tiny
    untrained one's (about the same distribution at every step, so that its best output is the
    empty one, which no length penalty changes)."""

    def __init__(self, model: Seq2Seq, bias: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("bias", bias)

    def encode(self, src):
        return self.model.encode(src)

    def decode(self, tgt_in, encoder_out):
        return self.model.decode(tgt_in, encoder_out) + self.bias[tgt_in]

    def decode_features(self, tgt_in, encoder_out):
        raise NotImplementedError("the bias is added to the logits: no features map to them")

    def init_decoder_state(self, encoder_out):
        return self.model.init_decoder_state(encoder_out)

    def decode_step(self, prev_tokens, state):
        logits, state, attention = self.model.decode_step(prev_tokens, state)
        return logits + self.bias[prev_tokens], state, attention

    def reorder_state(self, state, index):
        return self.model.reorder_state(state, index)

    def cross_attention(self, src, tgt_in):
        return self.model.cross_attention(src, tgt_in)

    def sided_modules(self):
        return self.model.sided_modules()


VOCAB = 7  # specials 0-3 and three words; search never emits PAD or BOS
WORDS = [UNK_ID, 4, 5, 6]
ALPHAS = [0.0, 0.6, 2.0]
# (variant, seed of the bigram bias, source), chosen when the test was written among seeds 0-39
# and sources [4|5|6, EOS]: for every α in ALPHAS the exact best output is non-empty and ahead
# of the runner-up by more than MARGIN, and it changes with α. The best outputs for α = 0, 0.6, 2:
BIASED_CASES = {
    "transformer-21": ("transformer", 21, [5, 3]),  # (5,), (6, 6, 6), (6, 6, 6)
    "transformer-12": ("transformer", 12, [4, 3]),  # (UNK,), (UNK,), (4, 5)
    "lstm-4": ("lstm-multiplicative", 4, [4, 3]),  # (6,), (6,), (4, 5, UNK)
    "lstm-7": ("lstm-multiplicative", 7, [4, 3]),  # (4,), (4, UNK, 5), (4, UNK, 5)
}
MARGIN = 0.02  # the smallest lead was 0.06: far above float differences between CPUs (~1e-5)


def _biased_model(make_model, variant: str, bias_seed: int) -> BigramBiased:
    bias = 2.0 * torch.randn(VOCAB, VOCAB, generator=torch.Generator().manual_seed(bias_seed))
    return BigramBiased(make_model(variant, seed=5, vocab_size=VOCAB), bias).eval()


def _sequence_log_prob(model, src, output):
    """log p(output | src) for a full output ending in EOS, by teacher forcing."""
    tgt_in = torch.tensor([[BOS_ID, *output[:-1]]])
    log_probs = model(src, tgt_in).log_softmax(-1)[0]  # [T, V]
    return sum(log_probs[t, token].item() for t, token in enumerate(output))


def _exact_ranking(model, src, alpha: float) -> list[tuple[float, list[int]]]:
    """Every output of up to 3 words (the limit of a 2-token source with margin 2), scored as
    beam search scores them (log-probability / length penalty), best first."""
    ranked = []
    with torch.no_grad():
        for length in range(4):
            for prefix in itertools.product(WORDS, repeat=length):
                log_prob = _sequence_log_prob(model, src, [*prefix, EOS_ID])
                ranked.append((log_prob / _penalty(length + 1, alpha), list(prefix)))
    return sorted(ranked, key=lambda scored: scored[0], reverse=True)


def _wide_beam(model, src, alpha: float):
    # A beam this wide keeps every candidate: at most 4**2 live prefixes times 5 continuations.
    (hypothesis,) = beam_search(model, src, beam_size=80, length_penalty=alpha, max_len_margin=2)
    return hypothesis


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("case", list(BIASED_CASES))
def test_wide_beam_finds_the_exact_best_sequence(make_model, case, alpha):
    variant, bias_seed, source = BIASED_CASES[case]
    model, src = _biased_model(make_model, variant, bias_seed), torch.tensor([source])
    (best_score, best_tokens), (runner_up, _) = _exact_ranking(model, src, alpha)[:2]
    assert best_tokens, "a case whose best output is empty would not test the length penalty"
    assert best_score - runner_up > MARGIN, "a near tie: float rounding could pick either"
    hypothesis = _wide_beam(model, src, alpha)
    assert hypothesis.tokens == best_tokens
    assert hypothesis.score == pytest.approx(best_score, abs=1e-4)


def test_the_best_sequence_changes_with_the_length_penalty(make_model):
    """A large α favours longer outputs: with a penalty that ignored α, nothing would change."""
    best = {}
    for case, (variant, bias_seed, source) in BIASED_CASES.items():
        model, src = _biased_model(make_model, variant, bias_seed), torch.tensor([source])
        best[case] = [_wide_beam(model, src, alpha).tokens for alpha in (0.0, ALPHAS[-1])]
    assert all(len(long) >= len(plain) for plain, long in best.values()), best
    assert all(plain != long for plain, long in best.values()), best  # each case was chosen so


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
