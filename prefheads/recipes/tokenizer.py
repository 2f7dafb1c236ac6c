"""Tokenizers for the in-house model: a hub/folder tokenizer, or a byte-level BPE trained offline.

The trained tokenizer mirrors OPT-125m's kind (byte-level BPE, one ``<|endoftext|>`` used as
BOS/EOS, a ``<pad>``) and, like it, has **no** ChatML tokens: adding them is stage 1's job.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prefheads.types import Prompt

EOS = "<|endoftext|>"
PAD = "<pad>"


def train_bpe(texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE ``PreTrainedTokenizerFast`` of ``vocab_size`` trained on ``texts`` (offline, ~1 s)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=EOS, eos_token=EOS, pad_token=PAD)


def prompt_texts(prompt: Prompt, completion: str) -> list[str]:
    """The plain texts of a sample (message contents and the reply), for tokenizer training."""
    return [m["content"] for m in prompt] + [completion]


def load_tokenizer(source: str) -> Any:
    """A tokenizer from a hub id or folder (``HF_HUB_OFFLINE`` honoured)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)
