"""Native decode: the whole decoder step of a llama-family model in one C call per token (batch 1, greedy).

Prefill runs the same C step token by token over the prompt (short prompts; exactly the decode math);
the decode loop then runs in C (``decoder_generate``), or one C call per token when ``eos_token_id`` is
given. KV cache: the decoder's own fp32 buffers ``[layers, kv_heads, max_len, head_dim]``. Weights are
read from the modules ``actlab.apply_(model, plan, kernels=True)`` installed (``SparseLinear.packed``, its
threshold and bias; ``SparseGatedMLP``); plain ``nn.Linear`` layers get a transposed fp32 copy (a dense
model's decoder holds a second copy of its linears). Unsupported models raise NotImplementedError with the
reason of :func:`native_unsupported`; nothing falls back silently.

Example:
    >>> import actlab, torch
    >>> model, _ = actlab.load_model("random:tiny-llama")
    >>> generate_native(model, torch.tensor([[1, 72, 105]]), max_new_tokens=8).tokens.shape
    torch.Size([1, 11])
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from actlab.engine.generate import GenerateOutput
from actlab.engine.native_arch import ARCHS, native_unsupported
from actlab.kernels.linear import SparseGatedMLP, SparseLinear
from actlab.kernels.quant import PackedWeight, pack
from actlab.kernels.swap import FusedMember
from actlab.models.adapters import act_function

__all__ = ["NativeDecoder", "generate_native", "native_unsupported"]


def _ptr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


class NativeDecoder:
    """A C decoder over ``model``'s weights with a KV cache of ``max_len`` tokens.

    Keeps every tensor it hands to C alive (``self._keep``); checks dtype float32, CPU, contiguity and
    shapes of all of them. One call at a time per decoder.

    Example:
        >>> import actlab
        >>> model, _ = actlab.load_model("random:tiny-llama")
        >>> dec = NativeDecoder(model, max_len=16)
        >>> isinstance(dec.run(torch.tensor([1, 72]), 0), int)
        True
    """

    def __init__(self, model: nn.Module, max_len: int) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        reason = native_unsupported(model, max_len)
        if reason is not None:
            raise NotImplementedError(f"native decode: {reason}")
        from actlab.kernels import ops

        self._ext = ops._extension()
        cfg = model.config
        facts = ARCHS[cfg.model_type]
        self._keep: list[object] = []
        base = model.model
        d = cfg.hidden_size
        attn0 = base.layers[0].self_attn
        nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
        hd = getattr(cfg, "head_dim", None) or d // nh
        self.max_len, self.vocab = max_len, base.embed_tokens.weight.shape[0]
        with torch.no_grad():
            pos = torch.arange(max_len)[None]
            cos, sin = base.rotary_emb(torch.zeros(1, 1, d), pos)
        cos, sin = self._f32(cos[0], (max_len, hd), "rotary cos"), self._f32(sin[0], (max_len, hd), "rotary sin")
        self.k_cache = torch.zeros(len(base.layers), nkv, max_len, hd)
        self.v_cache = torch.zeros_like(self.k_cache)
        layers, acts, dffs, qkv_cols, gu_cols = [], set(), set(), 0, 0
        prefix = "model.layers"
        for i, layer in enumerate(base.layers):
            lp = f"{prefix}.{i}"
            calls, off, width = self._site(model, [f"{lp}.self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj")])
            qkv_cols = max(qkv_cols, width)
            o = self._single(model, f"{lp}.self_attn.o_proj", (nh * hd, d))
            a = layer.self_attn
            qn = kn = None
            if facts.qk_norm:
                qn, kn = self._f32(a.q_norm.weight, (hd,), "q_norm"), self._f32(a.k_norm.weight, (hd,), "k_norm")
                qk_eps = a.q_norm.variance_epsilon
            mlp, gu, go, uo, down = None, [], 0, 0, None
            if isinstance(layer.mlp, SparseGatedMLP):
                mlp, dff = self._gated(layer.mlp, d)
            else:
                fn = act_function(model, i)
                if fn is None or fn.kernel_id is None:
                    raise NotImplementedError(f"native decode: layer {i} runs an activation the C kernels lack")
                acts.add(int(fn.kernel_id))
                gu, goff, width = self._site(model, [f"{lp}.mlp.gate_proj", f"{lp}.mlp.up_proj"])
                gu_cols = max(gu_cols, width)
                go, uo = goff[f"{lp}.mlp.gate_proj"], goff[f"{lp}.mlp.up_proj"]
                dff = layer.mlp.down_proj.in_features
                down = self._single(model, f"{lp}.mlp.down_proj", (dff, d))
            dffs.add(dff)
            norms = [self._f32(getattr(layer, n).weight, (d,), n) for n in (facts.attn_norm, facts.mlp_norm)]
            eps = {getattr(layer, n).variance_epsilon for n in (facts.attn_norm, facts.mlp_norm)}
            eps.add(base.norm.variance_epsilon)
            if len(eps) != 1:
                raise NotImplementedError("native decode: the norms of the model have different eps")
            layers.append((
                _ptr(norms[0]), _ptr(norms[1]), _ptr(qn), _ptr(kn), calls,
                off[f"{lp}.self_attn.q_proj"], off[f"{lp}.self_attn.k_proj"], off[f"{lp}.self_attn.v_proj"],
                o, mlp, gu or [], go, uo, down, _ptr(self.k_cache[i]), _ptr(self.v_cache[i]),
            ))
        if len(acts) > 1 or len(dffs) > 1:
            raise NotImplementedError("native decode: layers differ in activation or MLP width")
        embed = self._f32(base.embed_tokens.weight, (self.vocab, d), "embed_tokens")
        fnorm = self._f32(base.norm.weight, (d,), "model.norm")
        head = self._single(model, "lm_head", (d, self.vocab))
        header = (len(layers), d, nh, nkv, hd, dffs.pop() if dffs else 1, self.vocab, max_len,
                  float(base.norm.variance_epsilon), float(qk_eps if facts.qk_norm else 0.0), float(attn0.scaling),
                  acts.pop() if acts else 0, _ptr(embed), _ptr(cos), _ptr(sin), _ptr(fnorm), qkv_cols, gu_cols)
        self._dec = self._ext.decoder_new(header, layers, head)
        self.logits = torch.empty(self.vocab)

    def _f32(self, t: Tensor, shape: tuple[int, ...], what: str) -> Tensor:
        t = t.detach()
        if t.dtype != torch.float32 or t.device.type != "cpu" or tuple(t.shape) != shape:
            raise NotImplementedError(f"native decode: {what} must be float32 CPU {shape}, got {t.dtype} "
                                      f"{t.device} {tuple(t.shape)}")
        t = t.contiguous()
        self._keep.append(t)
        return t

    def _proj(self, p: PackedWeight, thr: Tensor | None, bias: Tensor | None, y_off: int, what: str) -> tuple:
        if p.data.device.type != "cpu":
            raise NotImplementedError(f"native decode: {what} is not on CPU")
        self._keep.append(p)
        stride = 0
        if thr is not None:
            thr = self._f32(thr.reshape(-1), (thr.numel(),), f"{what} threshold")
            if thr.numel() not in (1, p.rows):
                raise NotImplementedError(f"native decode: {what} threshold has {thr.numel()} values")
            stride = 0 if thr.numel() == 1 else 1
        if bias is not None:
            bias = self._f32(bias, (p.cols,), f"{what} bias")
        return (*p.c_args(), _ptr(thr), stride, _ptr(bias), y_off)

    def _site(self, model: nn.Module, paths: list[str]) -> tuple[list[tuple], dict[str, int], int]:
        """Projections reading one input, written side by side: (C projections, path -> offset, width)."""
        calls, off, col, plain, groups = [], {}, 0, [], set()
        for path in paths:
            m = model.get_submodule(path)
            if isinstance(m, FusedMember):
                g = m.group
                if id(g) in groups:
                    continue
                if not set(g.paths) <= set(paths):
                    raise NotImplementedError(f"native decode: {path} is fused with modules outside {paths}")
                groups.add(id(g))
                calls.append(self._proj(g.fused.packed, g.fused.threshold, g.fused.bias, col, path))
                for gp, size in zip(g.paths, g.fused.split_sizes, strict=True):
                    off[gp], col = col, col + size
            elif isinstance(m, SparseLinear) and m.split_sizes is None:
                calls.append(self._proj(m.packed, m.threshold, m.bias, col, path))
                off[path], col = col, col + m.out_features
            elif type(m) is nn.Linear:
                plain.append((path, m))
            else:
                raise NotImplementedError(f"native decode: {path} is a {type(m).__name__}")
        if plain:
            w = torch.cat([m.weight.detach() for _, m in plain]).t()
            bias = None
            if any(m.bias is not None for _, m in plain):
                bias = torch.cat([m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features)
                                  for _, m in plain])
            calls.append(self._proj(pack(w, "fp32"), None, bias, col, plain[0][0]))
            for path, m in plain:
                off[path], col = col, col + m.out_features
        return calls, off, col

    def _single(self, model: nn.Module, path: str, shape: tuple[int, int]) -> tuple:
        calls, _, width = self._site(model, [path])
        if width != shape[1] or len(calls) != 1 or calls[0][2] != shape[0]:
            raise NotImplementedError(f"native decode: {path} is not a [{shape[1]}, {shape[0]}] linear")
        return calls[0]

    def _gated(self, m: SparseGatedMLP, d: int) -> tuple[tuple, int]:
        dff = m.w_gate_t.shape[1]
        wg = self._f32(m.w_gate_t, (d, dff), "w_gate_t")
        wu = self._f32(m.w_up, (dff, d), "w_up")
        wd = self._f32(m.w_down_t, (dff, d), "w_down_t")
        bs = [None if b is None else self._f32(b, (n,), "gated MLP bias")
              for b, n in ((m.b_gate, dff), (m.b_up, dff), (m.b_down, d))]
        thr = []
        for t, n in ((m.t_in, d), (m.t_act, dff), (m.t_down, dff)):
            if t is None:
                thr += [0, 0]
                continue
            t = self._f32(t.reshape(-1), (t.numel(),), "gated MLP threshold")
            if t.numel() not in (1, n):
                raise NotImplementedError("native decode: a gated-MLP threshold has the wrong size")
            thr += [_ptr(t), 0 if t.numel() == 1 else 1]
        return (dff, _ptr(wg), dff, _ptr(wu), d, _ptr(wd), d, *map(_ptr, bs), *thr, int(m.act)), dff

    def reset(self) -> None:
        """Clears the KV cache (not needed for correctness: slots are written before they are read)."""
        self.k_cache.zero_()
        self.v_cache.zero_()

    def run(self, ids: Tensor, start: int, logits: bool = False) -> int:
        """Feeds ``ids`` (1-D) at positions ``start..``; returns the argmax after the last one (its
        logits in ``self.logits`` when ``logits``)."""
        ids = ids.reshape(-1).to(torch.int64).contiguous()
        if start < 0 or start + ids.numel() > self.max_len or ids.numel() == 0:
            raise ValueError(f"positions {start}..{start + ids.numel() - 1} do not fit max_len={self.max_len}: "
                             "build the decoder with a larger max_len")
        if bool(((ids < 0) | (ids >= self.vocab)).any()):
            raise ValueError(f"token ids must be in [0, {self.vocab})")
        return self._ext.decoder_run(self._dec, ids.data_ptr(), ids.numel(), start,
                                     _ptr(self.logits) if logits else 0, torch.get_num_threads())

    def generate_into(self, out: Tensor, start: int, end: int) -> None:
        """Greedy: ``out[p + 1] = argmax(step(out[p], p))`` for ``start <= p < end - 1``, all in C."""
        if out.dtype != torch.int64 or not out.is_contiguous() or out.numel() < end or end > self.max_len:
            raise ValueError("out must be a contiguous int64 vector covering end <= max_len")
        self._ext.decoder_generate(self._dec, out.data_ptr(), start, end, torch.get_num_threads())


def generate_native(
    model: nn.Module,
    input_ids: Tensor,
    max_new_tokens: int,
    *,
    attention_mask: Tensor | None = None,
    do_sample: bool = False,
    eos_token_id: int | list[int] | None = None,
    decoder: NativeDecoder | None = None,
    **_unused: object,
) -> GenerateOutput:
    """Greedy generation with the native decoder; same output and timing fields as ``engine.generate``.

    Raises:
        NotImplementedError: sampling, or a model the native step does not support (the reason).
        ValueError: batch > 1, padding, a prompt that does not fit the decoder's ``max_len``.

    Example:
        >>> import actlab, torch
        >>> model, _ = actlab.load_model("random:tiny-llama")
        >>> generate_native(model, torch.tensor([[1, 72]]), 4).decode_steps
        3
    """
    if do_sample:
        raise NotImplementedError("the native engine decodes greedily only; sample with actlab.engine.generate")
    if input_ids.ndim != 2 or input_ids.shape[0] != 1 or input_ids.shape[1] == 0:
        raise ValueError(f"native decode runs batch 1: input_ids must be [1, prompt >= 1], got "
                         f"{tuple(input_ids.shape)}; use the torch engine for batches")
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError("native decode takes no padding: pass one unpadded sequence")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    prompt_len = input_ids.shape[1]
    total = prompt_len + max_new_tokens
    if decoder is None:
        decoder = NativeDecoder(model, total)
    elif total > decoder.max_len:
        raise ValueError(f"prompt + new tokens = {total} > the decoder's max_len {decoder.max_len}: "
                         "build NativeDecoder(model, max_len) with a larger max_len")
    out = torch.zeros(total, dtype=torch.int64)
    out[:prompt_len] = input_ids[0]
    eos = None if eos_token_id is None else set(torch.tensor(eos_token_id).reshape(-1).tolist())
    c0, t0 = time.process_time(), time.perf_counter()
    out[prompt_len] = decoder.run(out[:prompt_len], 0)
    c1, t1 = time.process_time(), time.perf_counter()
    end = total
    if eos is None:
        decoder.generate_into(out, prompt_len, total)
    elif int(out[prompt_len]) in eos:
        end = prompt_len + 1
    else:
        for p in range(prompt_len, total - 1):
            out[p + 1] = decoder.run(out[p : p + 1], p)
            if int(out[p + 1]) in eos:
                end = p + 2
                break
    c2, t2 = time.process_time(), time.perf_counter()
    return GenerateOutput(
        tokens=out[None, :end], prompt_len=prompt_len, prefill_s=t1 - t0, decode_s=t2 - t1,
        decode_steps=end - prompt_len - 1, prefill_cpu_s=c1 - c0, decode_cpu_s=c2 - c1,
    )
