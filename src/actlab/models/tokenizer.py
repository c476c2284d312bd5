"""An offline byte-level tokenizer for random-weight models (no hub download needed).

Ids 0-2 are ``<pad>``, ``<s>``, ``</s>``; ids 3..258 are the 256 bytes, so any model with
``vocab_size >= 259`` accepts its ids.

Example:
    >>> tok = byte_tokenizer()
    >>> tok("hi")["input_ids"]
    [107, 108]
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def byte_tokenizer() -> Any:
    """A ``PreTrainedTokenizerFast`` mapping each UTF-8 byte to one id."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    # ByteLevel maps every byte to a printable unicode stand-in; each stand-in is a token.
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_order = sorted(alphabet, key=lambda ch: _byte_of(ch))
    vocab = {s: i for i, s in enumerate(specials)}
    vocab.update({ch: len(specials) + i for i, ch in enumerate(byte_order)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", model_max_length=1 << 30
    )


def _byte_of(ch: str) -> int:
    # Inverse of GPT-2's bytes_to_unicode: printable bytes map to themselves, others to 256+n.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    code = ord(ch)
    if code in printable:
        return code
    others = [b for b in range(256) if b not in printable]
    return others[code - 256]
