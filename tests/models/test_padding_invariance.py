"""Extra padding changes nothing: a batch padded wider (as `train.length_multiple` pads training
batches) gives every variant the same logits at real positions and the same loss."""

import torch
import torch.nn.functional as F

from models import BOS_ID, EOS_ID, PAD_ID

PAIRS = [([4, 5, 6, 7], [8, 9, 10]), ([7, 6], [11, 12, 13, 14, 15]), ([15, 16, 17], [17])]


def widened(batch: torch.Tensor, extra: int) -> torch.Tensor:
    return F.pad(batch, (0, extra), value=PAD_ID)


def test_wider_padding_leaves_logits_and_loss_unchanged(make_model, pad_batch, variant):
    model = make_model(variant, seed=3)
    src = pad_batch([[*s, EOS_ID] for s, _ in PAIRS])
    tgt_in = pad_batch([[BOS_ID, *t] for _, t in PAIRS])
    tgt_out = pad_batch([[*t, EOS_ID] for _, t in PAIRS])
    with torch.no_grad():
        logits = model(src, tgt_in)  # [B, T, V]
        wide = model(widened(src, 5), widened(tgt_in, 3))  # [B, T + 3, V]
    real = tgt_out != PAD_ID
    torch.testing.assert_close(wide[:, : tgt_in.size(1)][real], logits[real], rtol=1e-5, atol=1e-5)
    loss = F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=PAD_ID)
    wide_loss = F.cross_entropy(
        wide.flatten(0, 1), widened(tgt_out, 3).flatten(), ignore_index=PAD_ID
    )
    torch.testing.assert_close(wide_loss, loss, rtol=1e-5, atol=1e-6)
