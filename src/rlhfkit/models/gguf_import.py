"""Models from GGUF files, dequantized once into an ordinary Hugging Face model directory.

A `.gguf` file (llama.cpp's format: the weights, often as 4- or 8-bit blocks, with the config,
tokenizer and chat template as metadata) stands wherever a model directory is accepted.
transformers reads it (`from_pretrained(..., gguf_file=...)`, with the `gguf` package) and
dequantizes every weight; the result is saved as float32 safetensors with its config, tokenizer
and chat template, so everything downstream sees a plain directory that `AutoModelForCausalLM`
loads without the `gguf` package. Quantized weights cannot be trained, and a run's checkpoints
and final model are plain directories anyway.

Converted files are cached by the file's sha256 (`cached_conversion`): a renamed or moved copy
is the same entry, a changed file a new one. `import_gguf` converts into a directory of the
user's choosing (`rlhfkit models import`). Both publish with one rename, so a crash never
leaves a half-written directory under the final name.
"""

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    GgufConfig,
)
from transformers import __version__ as transformers_version
from transformers.integrations.gguf import GgufHeader, read_gguf_metadata
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from rlhfkit.errors import RlhfkitError, one_line
from rlhfkit.runtime.checkpoint import clear_new_output, publish_new_dir, temporary_sibling

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
SOURCE_RECORD = "gguf_source.json"
"""Written beside the converted model: which file it came from (name, sha256) and how."""
INSTALL_HINT = "pip install -e '.[gguf]' in the rlhfkit checkout"


def is_gguf_path(path: str | Path) -> bool:
    """Whether `path` names a GGUF file (by its suffix; the content is checked on use)."""
    return Path(path).suffix.lower() == ".gguf"


def default_cache_dir(env: Mapping[str, str]) -> Path:
    """Where converted files are kept: $RLHFKIT_CACHE/gguf, else $XDG_CACHE_HOME/rlhfkit/gguf,
    else ~/.cache/rlhfkit/gguf."""
    if env.get("RLHFKIT_CACHE"):
        return Path(env["RLHFKIT_CACHE"]).expanduser() / "gguf"
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "rlhfkit" / "gguf"


def cached_conversion(path: str | Path, cache_dir: Path) -> Path:
    """The model directory `path` converts to: `cache_dir/<sha256 of the file>`, converted now
    if no earlier run did.

    Raises:
        RlhfkitError: naming the file and why it cannot be read (see `check_gguf_file`).
    """
    _check_magic(Path(path))  # the full check reads the metadata: only when converting
    digest = file_sha256(path)
    final = Path(cache_dir) / digest
    if final.is_dir():  # published whole by one rename: if it is there, it is complete
        return final
    architecture = check_gguf_file(path)
    log.info(f"converting {path} to a model directory in {final} (once)")
    seconds = _write_converted(path, final, digest, architecture)
    log.info(f"converted {path} in {seconds:.0f} s")
    return final


def converted_if_cached(path: str | Path, cache_dir: Path) -> Path | None:
    """The model directory an earlier run converted `path` to, or None: a sha256 of the file
    (a fraction of a second), where reading its metadata takes seconds. A path that is no file
    (missing, a directory) has no conversion: the caller's own checks name the fault."""
    if not Path(path).is_file():
        return None
    final = Path(cache_dir) / file_sha256(path)
    return final if final.is_dir() else None


def import_gguf(path: str | Path, out_dir: str | Path) -> Path:
    """Convert `path` into `out_dir`, which must not exist yet or be empty."""
    out_dir = Path(out_dir)
    architecture = check_gguf_file(path)
    clear_new_output(out_dir)
    _write_converted(path, out_dir, file_sha256(path), architecture)
    return out_dir


def check_gguf_file(path: str | Path) -> str:
    """The file's architecture (llama.cpp's name, e.g. "llama"), after checking that it is a
    GGUF file of an architecture transformers reads; otherwise one line naming the file and why.
    Reads the metadata only (milliseconds): whether it is a causal LM shows in its config, which
    `convert_gguf` reads."""
    path = Path(path)
    _check_magic(path)
    try:
        import gguf  # noqa: F401  (transformers' reader of most families needs it)
    except ModuleNotFoundError:
        raise _error(path, f"reading GGUF files needs the gguf package: {INSTALL_HINT}") from None
    try:
        metadata, _ = read_gguf_metadata(str(path))
    except Exception as error:  # struct.error on a truncated file, UnicodeDecodeError, ...
        raise _error(path, f"the file is damaged or truncated ({one_line(error)})") from None
    architecture = metadata.get("general.architecture")
    if not architecture:
        raise _error(path, "its metadata names no architecture (general.architecture)")
    if not _transformers_reads(architecture):
        raise _error(
            path,
            f"architecture '{architecture}' cannot be read from GGUF by transformers "
            f"{transformers_version}",
        )
    _check_length(path)
    return architecture


def _check_length(path: Path) -> None:
    """A file cut inside its weights reads its metadata fine, then fails deep in a reshape:
    name it truncated up front, from the tensor table's extents."""
    try:
        header = GgufHeader.from_file(str(path))
    except Exception as error:  # an unknown tensor type, a table cut short, ...
        raise _error(path, f"the file is damaged or truncated ({one_line(error)})") from None
    end = header.data_start + max((t.offset + t.nbytes for t in header.tensors), default=0)
    size = path.stat().st_size
    if size < end:
        raise _error(
            path, f"the file is damaged or truncated ({size} bytes; its tensors end at byte {end})"
        )


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def gguf_config(path: str | Path):
    """The causal-LM config a GGUF file's metadata describes, read without converting the file
    (seconds, where converting takes tens and writes the float32 weights): what sizing the model
    needs, e.g. the learning-rate guard before a first run converts anything."""
    path = Path(path)
    check_gguf_file(path)
    try:
        config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as error:  # transformers raises ValueError, KeyError, TypeError, ...
        raise _error(path, f"its config cannot be read ({one_line(error)})") from None
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise _error(path, f"a '{config.model_type}' model is not a causal language model")
    return config


def convert_gguf(path: str | Path, out_dir: str | Path) -> None:
    """Dequantize `path` with transformers and save it to `out_dir` as a plain directory:
    float32 safetensors, config.json, generation_config.json, the tokenizer and its chat
    template."""
    path = Path(path)
    config = gguf_config(path)
    try:
        with tensor_bar_follows_transformers():
            model = AutoModelForCausalLM.from_pretrained(
                path.parent,
                config=config,
                gguf_file=path.name,
                # every weight unpacked to float32 now, rather than kept in blocks for inference
                quantization_config=GgufConfig(dequantize=True),
                dtype=torch.float32,
            )
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as error:  # a damaged tensor table, an unknown quantization type, ...
        raise _error(path, f"it cannot be converted ({one_line(error)})") from None
    _drop_quantizer_state(model)
    _special_tokens_from_tokenizer(model, tokenizer)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


@contextmanager
def tensor_bar_follows_transformers() -> Iterator[None]:
    """transformers draws its "Converting and de-quantizing GGUF tensors" bar with tqdm itself,
    past its own progress-bar switch (`logging.disable_progress_bar`, which the command line and
    `rlhfkit.run` set): during the conversion that bar is drawn through the switch instead, so
    it shows where transformers' bars are on and stays quiet where rlhfkit silenced them."""
    from transformers import modeling_gguf_pytorch_utils as reader
    from transformers.utils import logging as transformers_logging

    if not hasattr(reader, "tqdm"):  # a transformers that draws it another way
        yield
        return
    drawn_with = reader.tqdm
    reader.tqdm = transformers_logging.tqdm
    try:
        yield
    finally:
        reader.tqdm = drawn_with


def _write_converted(path: str | Path, final: Path, digest: str, architecture: str) -> float:
    """Convert into a temporary sibling of `final`, then rename it into place; returns the
    seconds it took. Another process that published `final` first wins (same content)."""
    started = time.perf_counter()
    tmp = temporary_sibling(final)
    try:
        convert_gguf(path, tmp)
        seconds = time.perf_counter() - started
        record = {
            "file": Path(path).name,
            "sha256": digest,
            "bytes": os.path.getsize(path),
            "architecture": architecture,
            "transformers": transformers_version,
            "seconds": round(seconds, 1),
        }
        (tmp / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_new_dir(tmp, final)
    return seconds


def _check_magic(path: Path) -> None:
    if not path.is_file():
        raise _error(path, "no such file" if not path.exists() else "not a file")
    with open(path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise _error(path, "not a GGUF file (it does not start with the GGUF magic bytes)")


def _transformers_reads(architecture: str) -> bool:
    # two readers: the older one (most families) and the newer one (a few recent families)
    from transformers.integrations.gguf import is_gguf_arch_supported
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return architecture in GGUF_SUPPORTED_ARCHITECTURES or is_gguf_arch_supported(architecture)


def _drop_quantizer_state(model) -> None:
    """Forget that the model came from a quantized file: its weights are plain tensors now, and
    a model that still carries a GGUF quantizer refuses `save_pretrained` or saves a
    `quantization_config` that sends later loads back to the gguf reader."""
    model.hf_quantizer = None
    model.is_quantized = False
    model.config.__dict__.pop("quantization_config", None)


def _special_tokens_from_tokenizer(model, tokenizer) -> None:
    """The config's and generation config's BOS, EOS and PAD ids are the tokenizer's, which the
    file names. Without this a file without BOS (the tiny model's) keeps the config class's
    default BOS id, another token's id."""
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.config, name, getattr(tokenizer, name))
    model.generation_config = GenerationConfig.from_model_config(model.config)


def _error(path: str | Path, problem: str) -> RlhfkitError:
    return RlhfkitError(f"GGUF file {path}: {problem}")
