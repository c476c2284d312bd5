"""A lean decode loop with a static KV cache, the same for dense and sparse models.

``generate`` calls the Hugging Face model's own forward (its modules: masking or sparse-kernel modules swapped
in by ``actlab.apply_`` run as they are), so the dense/sparse speed ratio measured with it isolates sparsity.
What it adds around the forward is kept to the minimum per token, and everything that can be is built once:

- a ``transformers.StaticCache`` sized for prompt + new tokens (no ``torch.cat`` growth per step);
- ``position_ids`` preallocated and bumped in place;
- the decode attention mask built once and updated in place (one slot per step), so HF's
  ``create_causal_mask`` is skipped in the decode loop (HF returns a 4D mask as-is);
- logits for the last position only (``logits_to_keep=1``), greedy ``argmax`` written into a preallocated
  output buffer, the next step's ``input_ids`` a view of that buffer;
- no logits processors, stopping criteria or per-step dict plumbing (what ``model.generate`` pays for).

On CPU there is no device to synchronise with; the only host read per step is the all-finished check,
done only when ``eos_token_id`` is given.

Example:
    >>> import actlab, torch
    >>> from actlab.engine import generate
    >>> model, tok = actlab.load_model("random:tiny-llama")
    >>> out = generate(model, torch.tensor([[1, 72, 105]]), max_new_tokens=8)
    >>> out.tokens.shape
    torch.Size([1, 11])
    >>> out.decode_steps, out.prefill_s > 0
    (7, True)
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from actlab.engine.cache import (
    cache_argument,
    check_cache,
    check_model_class,
    decoding,
    layer_lengths,
    make_cache,
)

__all__ = ["GenerateOutput", "generate"]

#: attention implementation -> value of a closed slot in the additive decode mask we build ourselves: what
#: sdpa makes of a bool mask (-inf), what HF's eager masks hold (dtype min). Others: HF builds masks per step.
_MASKED_VALUE = {"sdpa": lambda dtype: float("-inf"), "eager": lambda dtype: torch.finfo(dtype).min}


@dataclass(frozen=True)
class GenerateOutput:
    """Tokens and per-phase timings of one :func:`generate` call.

    Attributes:
        tokens: ``[batch, prompt + generated]`` prompt followed by the new tokens (shorter than
            ``prompt + max_new_tokens`` only when every sequence hit ``eos_token_id``; sequences that
            finished earlier are padded with ``pad_token_id``, as ``model.generate`` does).
        prompt_len: prompt length (columns of ``tokens`` before the new ones).
        prefill_s: seconds of the prefill: one forward over the prompt and the choice of the first token.
        decode_s: seconds of the decode phase: every later token, one forward each.
        decode_steps: forwards in the decode phase (new tokens - 1).
        prefill_cpu_s: CPU seconds of the prefill, all threads of the process (``time.process_time``):
            unlike wall time, it does not grow when other processes take the cores.
        decode_cpu_s: CPU seconds of the decode phase, all threads.
    """

    tokens: Tensor
    prompt_len: int
    prefill_s: float
    decode_s: float
    decode_steps: int
    prefill_cpu_s: float = float("nan")
    decode_cpu_s: float = float("nan")

    @property
    def new_tokens(self) -> Tensor:
        """``[batch, generated]`` the generated tokens only."""
        return self.tokens[:, self.prompt_len :]

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens produced per second in the decode phase, all sequences of the batch counted."""
        if self.decode_steps == 0 or self.decode_s <= 0:
            return float("nan")
        return self.tokens.shape[0] * self.decode_steps / self.decode_s


class _Masks:
    """The attention masks of one generation.

    Prefill: the model builds its own masks from the 2D padding mask, as in a plain forward (a one-off;
    for sdpa without padding HF then uses its causal kernel).
    Decode: one additive row ``[batch, 1, 1, cache_len]`` built once: key slot ``j`` of the static cache
    holds token ``j`` (prompt then new tokens) and is open iff it is written and not padding, so each step
    only opens the slot it writes. Additive, not bool: sdpa would otherwise turn a bool mask into this
    same ``-inf`` mask with a ``torch.where`` in every layer, every step.
    """

    def __init__(self, model: nn.Module, cache: object, pad: Tensor | None, batch: int, prompt_len: int, total: int):
        impl, device, dtype = model.config._attn_implementation, model.device, model.dtype
        lengths = layer_lengths(cache)
        cache_len = max(lengths)
        self.prompt_len = prompt_len
        self.mask_2d = torch.ones(batch, total, dtype=torch.long, device=device)  # [batch, total] 1 = real
        if pad is not None:
            self.mask_2d[:, :prompt_len] = pad.long()
        self.padded = pad is not None
        # Every layer returns its whole static buffer as keys, so one row fits all layers iff all buffers
        # have one length and hold every token: a sliding window shorter than the generation (rolling
        # buffer, shifting mask geometry) is left to HF's own mask builder, as model.generate does.
        self.prebuilt = impl in _MASKED_VALUE and min(lengths) == cache_len >= total
        if self.prebuilt:
            closed = torch.ones(batch, 1, 1, cache_len, dtype=torch.bool, device=device)
            closed[:, 0, 0, :prompt_len] = self.mask_2d[:, :prompt_len] == 0
            masked = _MASKED_VALUE[impl](dtype)
            self.decode = torch.zeros(batch, 1, 1, cache_len, dtype=dtype, device=device).masked_fill_(closed, masked)

    def prefill_mask(self) -> Tensor | None:
        return self.mask_2d[:, : self.prompt_len] if self.padded else None

    def decode_mask(self, slot: int, slot_t: Tensor) -> Tensor:
        """The mask for a query written at cache slot ``slot`` (``slot_t``: the same as a ``[1]`` tensor).

        Prebuilt: opens that slot in place, one op, no allocation.
        """
        if not self.prebuilt:
            return self.mask_2d[:, : slot + 1]
        return self.decode.index_fill_(-1, slot_t, 0.0)


def _sampler(do_sample: bool, temperature: float, top_k: int | None, seed: int | None):
    """``logits [batch, vocab] -> tokens [batch]``: greedy argmax, or seeded multinomial sampling."""
    if not do_sample:
        return lambda logits: logits.argmax(dim=-1)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
    generator = None if seed is None else torch.Generator().manual_seed(seed)

    def sample(logits: Tensor) -> Tensor:
        logits = logits.float() / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # [batch, 1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    return sample


def generate(
    model: nn.Module,
    input_ids: Tensor,
    max_new_tokens: int,
    *,
    attention_mask: Tensor | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    cache: object | None = None,
    seed: int | None = None,
) -> GenerateOutput:
    """Generate ``max_new_tokens`` tokens after ``input_ids`` with a static KV cache.

    Greedy decoding gives the tokens ``model.generate(..., do_sample=False)`` gives. The model is left
    as it was found (no hooks, no attributes, no parameter touched; the KV cache is a separate object).

    Args:
        model: a Hugging Face causal LM that supports ``StaticCache`` (llama, mistral, qwen2, qwen3,
            gemma2, phi3, ...); modules swapped in by ``actlab.apply_`` are used as they are.
        input_ids: ``[batch, prompt]`` token ids; rows of different lengths must be left-padded.
        max_new_tokens: tokens to generate per sequence (>= 1).
        attention_mask: ``[batch, prompt]`` 1 for real tokens, 0 for left padding; None = no padding.
        do_sample: sample instead of taking the argmax.
        temperature: softmax temperature when sampling.
        top_k: keep only the ``top_k`` most likely tokens when sampling.
        eos_token_id: a sequence stops at this token (or any of these); the rest of its row is
            ``pad_token_id``. Generation ends early when all sequences have stopped.
        pad_token_id: filler after a sequence's eos (default: the config's pad token, else the eos token).
        cache: a cache from :func:`make_cache` to reuse (reset here); None allocates one.
        seed: seed of a private generator for sampling (the global RNG is not touched); None uses
            the global RNG.

    Returns:
        :class:`GenerateOutput` with the tokens and the prefill / decode timings.

    Raises:
        NotImplementedError: the model's class cannot be driven with a static cache.
        ValueError: bad arguments (empty prompt, too small a cache, ...).

    Example:
        >>> import actlab, torch
        >>> model, _ = actlab.load_model("random:tiny-llama")
        >>> ids = torch.tensor([[1, 72, 105], [1, 33, 34]])
        >>> generate(model, ids, max_new_tokens=4).tokens.shape
        torch.Size([2, 7])
    """
    check_model_class(type(model))
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be [batch, prompt] with prompt >= 1, got {tuple(input_ids.shape)}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    device = model.device
    batch, prompt_len = input_ids.shape
    total = prompt_len + max_new_tokens
    if cache is None:
        cache = make_cache(model, total)
    check_cache(cache, batch, total)
    with torch.inference_mode():  # the cache's tensors were made in inference mode: reset them there
        cache.reset()  # zeroes the KV tensors and the lengths, keeps the allocation

    pad = None
    if attention_mask is not None and not bool(attention_mask.all()):
        pad = attention_mask.to(device=device, dtype=torch.bool)
        if bool((pad[:, 1:] < pad[:, :-1]).any()):
            raise ValueError("attention_mask must describe left padding (0s before the tokens, 1s after)")
    masks = _Masks(model, cache, pad, batch, prompt_len, total)
    if pad is None:
        prefill_pos = torch.arange(prompt_len, device=device).expand(batch, -1)  # [batch, prompt]
    else:  # as model.generate: positions count real tokens only
        prefill_pos = (pad.long().cumsum(-1) - 1).masked_fill(~pad, 0)
    pos = prefill_pos[:, -1:].clone()  # [batch, 1] bumped in place each step

    out = torch.empty(batch, total, dtype=torch.long, device=device)  # [batch, prompt + new]
    out[:, :prompt_len] = input_ids
    pick = _sampler(do_sample, temperature, top_k, seed)
    eos = None if eos_token_id is None else torch.tensor(eos_token_id, device=device).reshape(-1)
    if eos is not None:
        if pad_token_id is None:
            pad_token_id = getattr(model.config, "pad_token_id", None)
        if pad_token_id is None:
            pad_token_id = int(eos[0])
        finished = torch.zeros(batch, dtype=torch.bool, device=device)
    end = total
    kv = {cache_argument(type(model)): cache}  # past_key_values= before transformers 5.24, cache= since

    with torch.inference_mode():
        c0, t0 = time.process_time(), time.perf_counter()
        logits = model(
            input_ids=input_ids.to(device), attention_mask=masks.prefill_mask(), position_ids=prefill_pos,
            use_cache=True, logits_to_keep=1, **kv,
        ).logits  # [batch, 1, vocab]
        out[:, prompt_len] = pick(logits[:, -1])
        if eos is not None:
            finished |= torch.isin(out[:, prompt_len], eos)
            if bool(finished.all()):
                end = prompt_len + 1
        c1, t1 = time.process_time(), time.perf_counter()

        # The decode loop: one forward per token, nothing rebuilt. Step s feeds token s (out[:, s]), whose
        # key/value go to cache slot s, and writes token s + 1.
        slot = prompt_len
        slot_t = torch.tensor([prompt_len - 1], device=device)  # cache slot written last, shared by the layers
        # HF's mask builder (not prebuilt) reads the layers' lengths each step: keep HF's own update then.
        with decoding(cache, slot_t) if masks.prebuilt else contextlib.nullcontext():
            while slot + 1 < end:
                pos += 1
                slot_t += 1
                logits = model(
                    input_ids=out[:, slot : slot + 1], attention_mask=masks.decode_mask(slot, slot_t),
                    position_ids=pos, use_cache=True, logits_to_keep=1, **kv,
                ).logits  # [batch, 1, vocab]
                slot += 1
                if eos is None:
                    out[:, slot] = pick(logits[:, -1])
                    continue
                out[:, slot] = pick(logits[:, -1]).masked_fill(finished, pad_token_id)
                finished |= torch.isin(out[:, slot], eos)
                if bool(finished.all()):
                    end = slot + 1
        c2, t2 = time.process_time(), time.perf_counter()

    return GenerateOutput(
        tokens=out[:, :end], prompt_len=prompt_len, prefill_s=t1 - t0, decode_s=t2 - t1,
        decode_steps=end - prompt_len - 1, prefill_cpu_s=c1 - c0, decode_cpu_s=c2 - c1,
    )
