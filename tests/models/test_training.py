"""Every variant can fit a handful of sentence pairs and then translate them back exactly."""

import torch
import torch.nn.functional as F

from models import BOS_ID, EOS_ID, PAD_ID
from pipelines.core.decoding import greedy_search

# Source -> target pairs over a 20-token vocabulary; targets differ in length and order.
PAIRS = [
    ([4, 5, 6, 7], [8, 9, 10]),
    ([7, 6, 5], [11, 12, 13, 14]),
    ([15, 16], [17, 18, 19, 17, 18]),
    ([5, 9, 13, 17, 4], [4, 6]),
]


# Training stops once the loss is below STOP_LOSS. Most variants get there in 50-150 steps;
# lstm-none first sits on a plateau near 0.08 (two sources not yet told apart, so their targets'
# first tokens are a coin toss) that it leaves after 200-700 steps, depending on the last bits of
# the CPU's float arithmetic. The budget is far beyond that, and the asserted loss has a margin.
STOP_LOSS = 0.01
MAX_STEPS = 2000
MAX_LOSS = 0.05


def test_variant_overfits_and_reproduces_the_targets(make_model, pad_batch, variant):
    model = make_model(variant, seed=0)
    src = pad_batch([[*s, EOS_ID] for s, _ in PAIRS])
    tgt_in = pad_batch([[BOS_ID, *t] for _, t in PAIRS])
    tgt_out = pad_batch([[*t, EOS_ID] for _, t in PAIRS])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(MAX_STEPS):
        logits = model(src, tgt_in)
        loss = F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=PAD_ID)
        if loss.item() < STOP_LOSS:
            break
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # A model that cannot learn, or cannot see the source, stays far above MAX_LOSS: the four
    # targets start with four different tokens, so ignoring the source costs at least
    # ln(4) on each first token, 4 * ln(4) / 18 target tokens = 0.31 on average.
    assert loss.item() < MAX_LOSS, loss.item()
    # The property itself: greedy decoding translates every source back to its target exactly.
    hypotheses = greedy_search(model, src, max_len_margin=5)
    assert [h.tokens for h in hypotheses] == [t for _, t in PAIRS]
