"""NMT models: Transformer, recurrent and convolutional encoder-decoders behind one interface."""

from models.config import ConfigError
from models.convolutional import ConvS2SConfig, ConvS2SSeq2Seq
from models.factory import ModelConfig, build_model, model_config_from_dict
from models.recurrent import RecurrentConfig, RecurrentSeq2Seq
from models.seq2seq import EncoderOutput, Seq2Seq
from models.transformer import TransformerConfig, TransformerSeq2Seq
from models.vocab import BOS_ID, EOS_ID, PAD_ID, UNK_ID

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "PAD_ID",
    "UNK_ID",
    "ConfigError",
    "ConvS2SConfig",
    "ConvS2SSeq2Seq",
    "EncoderOutput",
    "ModelConfig",
    "RecurrentConfig",
    "RecurrentSeq2Seq",
    "Seq2Seq",
    "TransformerConfig",
    "TransformerSeq2Seq",
    "build_model",
    "model_config_from_dict",
]
