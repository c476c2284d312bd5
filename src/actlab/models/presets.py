"""Configs for random-weight models: ``random:<preset>``.

Random-weight models let tests and speed benchmarks run offline on shapes we cannot
download. One table: preset name -> (config class name, keyword arguments).

Example:
    >>> from actlab.models.presets import PRESETS
    >>> PRESETS["llama-3.2-1b"][1]["hidden_size"]
    2048
"""

from __future__ import annotations

from typing import Any

_TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
_SPECIAL = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)

#: preset -> (transformers config class, kwargs)
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    # Shapes of meta-llama/Llama-3.2-1B (weights random): the speed benchmark's large model.
    "llama-3.2-1b": ("LlamaConfig", dict(
        vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
        num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
        rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu", rope_theta=500000.0,
        bos_token_id=128000, eos_token_id=128001)),
    # Shapes of HuggingFaceTB/SmolLM2-135M (weights random).
    "smollm2-135m": ("LlamaConfig", dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
        rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu", rope_theta=100000.0,
        **_SPECIAL)),
    "tiny-llama": ("LlamaConfig", dict(**_TINY, num_key_value_heads=2, **_SPECIAL)),
    "tiny-mistral": ("MistralConfig", dict(**_TINY, num_key_value_heads=2, **_SPECIAL)),
    "tiny-qwen2": ("Qwen2Config", dict(**_TINY, num_key_value_heads=2, **_SPECIAL)),
    "tiny-qwen3": ("Qwen3Config", dict(**_TINY, num_key_value_heads=2, head_dim=16, **_SPECIAL)),
    "tiny-gemma2": ("Gemma2Config", dict(**_TINY, num_key_value_heads=2, head_dim=16, **_SPECIAL)),
    "tiny-phi3": ("Phi3Config", dict(**_TINY, num_key_value_heads=2, **_SPECIAL)),
    "tiny-gpt2": ("GPT2Config", dict(vocab_size=512, n_embd=64, n_inner=128, n_layer=2, n_head=4,
                                     bos_token_id=1, eos_token_id=2)),
    "tiny-gpt_neox": ("GPTNeoXConfig", dict(**_TINY, **_SPECIAL)),
    "tiny-opt": ("OPTConfig", dict(vocab_size=512, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                   num_attention_heads=4, word_embed_proj_dim=64, **_SPECIAL)),
    "tiny-bert": ("BertConfig", dict(**_TINY, pad_token_id=0)),
}


def make_config(preset: str) -> Any:
    """The transformers config object for ``preset``.

    Raises:
        KeyError: unknown preset (the message lists the known ones).
    """
    import transformers

    if preset not in PRESETS:
        raise KeyError(f"unknown random preset {preset!r}; presets: {', '.join(sorted(PRESETS))}")
    cls_name, kwargs = PRESETS[preset]
    return getattr(transformers, cls_name)(**kwargs)
