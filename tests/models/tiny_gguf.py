"""Writing the tiny Llama model as a GGUF file, the way llama.cpp's converter lays one out, so
that the import path can be tested on a file of a few hundred kilobytes."""

import json
from pathlib import Path

import gguf
import numpy as np
from transformers import AutoModelForCausalLM, AutoTokenizer

# transformers' parameter names (inside model.layers.N.) -> llama.cpp's (inside blk.N.)
LAYER_TENSORS = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
TOP_TENSORS = {"model.embed_tokens.weight": "token_embd", "model.norm.weight": "output_norm"}


def write_tiny_gguf(
    model_dir: Path,
    out_file: Path,
    *,
    quantization: str = "F32",
    architecture: str = "llama",
    tokenizer_model: str = "gpt2",
) -> Path:
    """`model_dir` (a Llama with a byte-level BPE tokenizer) as a GGUF file: llama metadata,
    the tokenizer as gpt2-type vocabulary, merges and token types, the chat template. Matrices
    are stored as `quantization` ("F32" or "Q8_0"), norms always as F32."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    writer = gguf.GGUFWriter(str(out_file), architecture)
    _write_config(writer, model.config)
    _write_tokenizer(writer, tokenizer, tokenizer_model)
    n_heads, n_kv_heads = model.config.num_attention_heads, model.config.num_key_value_heads
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":  # tied to the embedding: llama.cpp writes no output.weight
            continue
        gguf_name = _gguf_name(name)
        values = tensor.float().numpy()
        # llama.cpp interleaves the rotary halves of q and k; transformers undoes it on load
        if ".attn_q." in gguf_name:
            values = _permute_rotary(values, n_heads)
        elif ".attn_k." in gguf_name:
            values = _permute_rotary(values, n_kv_heads)
        if quantization == "Q8_0" and values.ndim == 2:
            kind = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(gguf_name, gguf.quantize(values, kind), raw_dtype=kind)
        else:
            writer.add_tensor(gguf_name, np.ascontiguousarray(values))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_file


def _write_config(writer: gguf.GGUFWriter, config) -> None:
    writer.add_name("rlhfkit tiny")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)


def _write_tokenizer(writer: gguf.GGUFWriter, tokenizer, tokenizer_model: str) -> None:
    vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True)
    tokens = sorted(vocab, key=vocab.get)
    special = set(tokenizer.all_special_tokens) | set(tokenizer.added_tokens_encoder)
    merges = json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"]
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    )
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer.chat_template)


def _gguf_name(name: str) -> str:
    if name in TOP_TENSORS:
        return f"{TOP_TENSORS[name]}.weight"
    # model.layers.N.<module path>.weight
    parts = name.split(".")
    return f"blk.{parts[2]}.{LAYER_TENSORS['.'.join(parts[3:-1])]}.weight"


def _permute_rotary(weights: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's `permute` (convert_hf_to_gguf.py): each head's rows from (2, half) order to
    (half, 2). Shape (n_heads * head_dim, hidden) in and out."""
    rows = weights.shape[0]
    return (
        weights.reshape(n_heads, 2, rows // n_heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )
