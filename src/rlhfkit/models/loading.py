"""Loading any Hugging Face causal LM directory (or the tiny default) unchanged.

Whatever is wrong with a directory is one `RlhfkitError` naming it and the fault, before any
training starts: no directory, no or broken `config.json`, a model type transformers does not
know or cannot run as a causal LM (a BERT, a reward model), no weights, pickle weights, damaged
or incomplete safetensors, a missing or broken tokenizer. Only safetensors weights are loaded:
unpickling a `.bin` file can run any code it holds.

A `.gguf` file stands wherever a directory does: `resolve_model_path` converts it once into a
cached directory (models/gguf_import.py), and every loader here starts by calling it.
"""

import json
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers import __version__ as transformers_version
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from rlhfkit.errors import RlhfkitError, one_line
from rlhfkit.models.gguf_import import (
    cached_conversion,
    check_gguf_file,
    default_cache_dir,
    is_gguf_path,
)

SAFETENSORS_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def same_vocabulary(tokenizer, path: str | Path) -> bool:
    """Whether the tokenizer saved with the model at `path` has `tokenizer`'s vocabulary, so the
    model reads ids as `tokenizer` writes them; true where `path` holds no tokenizer (the model
    reads whatever ids it is given)."""
    directory = Path(resolve_model_path(path))
    if not any((directory / name).is_file() for name in TOKENIZER_FILES):
        return True
    return load_tokenizer(directory).get_vocab() == tokenizer.get_vocab()


def resolve_model_path(path: str | Path) -> str | Path:
    """`path` itself, or for a `.gguf` file the model directory it converts to (converted on
    first use, cached by the file's sha256 under $RLHFKIT_CACHE/gguf or ~/.cache/rlhfkit/gguf).

    The cache location is read from the environment here, at the one moment it is needed,
    rather than threaded through every trainer's config."""
    if not is_gguf_path(path):
        return path
    return cached_conversion(path, default_cache_dir(os.environ))


def load_tokenizer(path: str | Path):
    """The tokenizer saved with a model; a missing pad token falls back to EOS (common for
    decoder-only models) because batches are padded."""
    path = resolve_model_path(path)
    read_model_config(path)  # transformers reads it too, and would blame the tokenizer
    if not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        raise _error(path, f"no tokenizer ({' or '.join(TOKENIZER_FILES)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as error:  # tokenizers raises KeyError, TypeError, bare Exception, ...
        raise _error(path, f"the tokenizer cannot be loaded ({one_line(error)})") from None
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise RlhfkitError(f"the tokenizer at {path} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str | Path, *, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """`AutoModelForCausalLM.from_pretrained(path)`: the policy, exactly as saved.

    Raises:
        RlhfkitError: naming `path` and what is wrong with it (see the module docstring).
    """
    path = resolve_model_path(path)
    config = read_model_config(path)
    _check_causal_lm(path, config)
    check_weight_files(path)
    try:
        # mismatched shapes are loaded as random values and reported in `info`, so that the
        # error below can name the tensor (transformers' own error points at a printed table)
        model, info = AutoModelForCausalLM.from_pretrained(
            path,
            config=config,
            dtype=dtype,
            use_safetensors=True,
            ignore_mismatched_sizes=True,
            output_loading_info=True,
        )
    except (SafetensorError, OSError, ValueError, KeyError) as error:  # a missing shard, ...
        raise weights_error(path, error) from None
    _check_loading_info(path, info)
    return model


def check_model_path(path: str | Path) -> None:
    """That `path` is a model directory or a GGUF file transformers reads, or one line saying
    why not; a GGUF file is checked from its header, not converted (a job checks its model
    before anything else, the learning-rate guard included)."""
    if is_gguf_path(path):
        check_gguf_file(path)
    else:
        read_model_config(path)


def read_model_config(path: str | Path):
    """The `PretrainedConfig` of a model directory, or one line saying why there is none."""
    path = resolve_model_path(path)
    raw = _read_config_json(path)
    model_type = raw.get("model_type")
    if not model_type:
        raise _error(path, 'config.json names no model_type (e.g. "llama")')
    if model_type not in CONFIG_MAPPING_NAMES:
        raise _error(
            path, f"model type '{model_type}' is unknown to transformers {transformers_version}"
        )
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError, TypeError, StrictDataclassError) as error:
        raise _error(path, f"config.json cannot be read ({one_line(error)})") from None


def _read_config_json(path: str | Path) -> dict:
    """config.json as a mapping, after checking the directory holds one."""
    if Path(path).is_file():
        raise RlhfkitError(
            f"{path} is a file, not a model directory (a Hugging Face model directory, or a "
            ".gguf file)"
        )
    if not Path(path).is_dir():
        raise RlhfkitError(f"model directory {path} does not exist")
    config_path = Path(path) / "config.json"
    if not config_path.is_file():
        raise RlhfkitError(f"{path} is not a Hugging Face model directory (no config.json)")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise _error(path, "config.json is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise _error(path, f"config.json is not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise _error(path, f"config.json holds a {type(raw).__name__}, not a mapping of settings")
    return raw


def _check_causal_lm(path: str | Path, config) -> None:
    """Refuse a model transformers cannot run as a causal LM, or one saved as something else
    (`architectures`): a BERT saved for masked LM would load with a fresh, random LM head."""
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise _error(path, f"a '{config.model_type}' model is not a causal language model")
    causal_classes = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    architectures = list(config.architectures or [])
    if architectures and not causal_classes & set(architectures):
        raise _error(
            path,
            f"it holds a {architectures[0]}, not a causal language model "
            "(e.g. a *ForCausalLM; a reward model is not a policy)",
        )


def check_causal_lm_dir(path: str | Path) -> None:
    """What `load_causal_lm` refuses without reading the weights (not a causal LM, no
    safetensors weights), as the same one line: a job that loads several models checks them all
    before it starts on the first."""
    _check_causal_lm(path, read_model_config(path))
    check_weight_files(path)


def check_weight_files(path: str | Path) -> None:
    """Refuse a directory whose weights are not safetensors (pickle, or none at all)."""
    path = resolve_model_path(path)
    if any((Path(path) / name).is_file() for name in SAFETENSORS_FILES):
        return
    pickles = sorted(p.name for p in Path(path).iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise _error(
            path,
            f"the weights are in {pickles[0]}, a pickle file; only safetensors weights are "
            "loaded, since unpickling a file can run any code in it (convert it where you "
            "trust it: save_pretrained(..., safe_serialization=True))",
        )
    raise _error(path, "no weights (model.safetensors)")


def _check_loading_info(path: str | Path, info: dict) -> None:
    """Refuse tensors the weights lack or hold in another shape: transformers fills them with
    random values and only warns, which would train a silently broken policy."""
    missing = sorted(info["missing_keys"])
    if missing:
        raise _error(
            path,
            f"the weights lack {len(missing)} of the model's tensors (first: {missing[0]}); "
            "the file is incomplete or belongs to another model",
        )
    mismatched = sorted(info["mismatched_keys"], key=str)
    if mismatched:
        first = mismatched[0]
        if isinstance(first, tuple) and len(first) == 3:
            name, saved, expected = first
            first = f"{name} is {list(saved)} where config.json asks for {list(expected)}"
        raise _error(
            path,
            f"{len(mismatched)} tensors of the weights do not have the shape config.json gives "
            f"them (first: {first})",
        )


def weights_error(path: str | Path, error: BaseException) -> RlhfkitError:
    """One line for a failure inside `from_pretrained` while reading a directory's weights."""
    if isinstance(error, SafetensorError):
        return _error(path, f"the weights are damaged or truncated ({one_line(error)})")
    return _error(path, f"the weights cannot be loaded ({one_line(error)})")


def _error(path: str | Path, problem: str) -> RlhfkitError:
    return RlhfkitError(f"model directory {path}: {problem}")


_USE_CACHE_AS_LOADED = "_rlhfkit_use_cache_as_loaded"


def enable_checkpointing(model) -> None:
    """Activation (gradient) checkpointing: each decoder layer's activations are recomputed in
    the backward instead of kept, trading about a third more compute for memory. Non-reentrant,
    so it works with frozen inputs and LoRA. Shared-prompt passes fall back to whole rows."""
    base = getattr(model, "get_base_model", lambda: model)()  # a LoRA model's own model
    base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    # A training forward would otherwise build a KV cache that the checkpointed layers drop,
    # with a warning; sampling passes use_cache=True itself. Saved configs keep the loaded value.
    if not hasattr(base, _USE_CACHE_AS_LOADED):
        setattr(base, _USE_CACHE_AS_LOADED, base.config.use_cache)
    base.config.use_cache = False


@contextmanager
def config_as_loaded(model):
    """Inside, `model`'s config is as it was loaded: a saved config.json describes the model for
    inference (`use_cache`), not the settings training made (`enable_checkpointing`)."""
    base = getattr(model, "get_base_model", lambda: model)()
    if not hasattr(base, _USE_CACHE_AS_LOADED):
        yield
        return
    training_value = base.config.use_cache
    base.config.use_cache = getattr(base, _USE_CACHE_AS_LOADED)
    try:
        yield
    finally:
        base.config.use_cache = training_value


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Dropout off in `model` (in place), kept in train mode (gradient checkpointing needs it).

    A policy-gradient or preference loss compares the trained model's log-probs with ones taken
    without dropout (the sampler's, the reference's): with dropout on, the ratio to the sampler
    is not 1 before any update, the clip acts on noise and the KL estimates are biased. Covers
    `nn.Dropout` modules (GPT-2's, LoRA's) and the float rates attention modules pass to their
    kernels (`attention_dropout` in Llama, Qwen2, Mistral; `dropout` in others). The saved
    config keeps its rates.
    """
    layers = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d)
    for module in model.modules():
        if isinstance(module, layers):
            module.p = 0.0
        rates = [k for k, v in vars(module).items() if k.endswith("dropout") and type(v) is float]
        for name in rates:
            setattr(module, name, 0.0)
    return model
