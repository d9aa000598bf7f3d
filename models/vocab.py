"""Reserved token ids shared by the SentencePiece model, the datasets and the models."""

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
