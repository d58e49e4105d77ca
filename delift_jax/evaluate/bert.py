"""The BERT sentence encoder lives in ``delift_jax.models.bert``; this module keeps the old import path working."""

from delift_jax.models.bert import (BertConfig, BertEncoder, SentenceEncoder, bert_from_hf_tensors,  # noqa: F401
                                    load_bert_directory, load_sentence_encoder, map_bert_name, sentence_encoder_path)
