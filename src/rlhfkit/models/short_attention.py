"""Attention whose kernel follows the number of keys, for float32 models on a CPU.

transformers' default attention ("sdpa") runs PyTorch's CPU flash-attention kernel there, whose
fixed cost per block of queries outweighs the work below about 64 keys. Measured on a 2-core AMD
EPYC (docs/benchmarks.md): at 43-64 keys the plain product, softmax and product (the family's
own "eager" attention) ran forward and backward 1.3-1.7x as fast; at 96-128 keys the two were
even, and from 256 keys on the flash kernel was 2-5x as fast.

`SHORT_EAGER` is registered with transformers as an attention implementation of its own. Its
mask function, called once per forward with the number of keys, builds the eager (float) mask
for at most `SHORT_KEYS` keys and the SDPA mask (boolean, or none) above; its attention function
follows the mask it is given: a float mask runs the model family's eager attention, any other
SDPA. Each is transformers' own code path, so the result is what `attn_implementation="eager"`
or `"sdpa"` gives for that call, bit for bit.
"""

import sys

from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask

SHORT_EAGER = "rlhfkit_short_eager"
SHORT_KEYS = 64


def _mask(*, kv_length: int, **kwargs):
    if kv_length <= SHORT_KEYS:
        return eager_mask(kv_length=kv_length, **kwargs)
    return sdpa_mask(kv_length=kv_length, **kwargs)


def family_eager_attention(module):
    """The eager attention function of the module's model family (`eager_attention_forward` in
    its modeling file), or None where the family has none."""
    return getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)


def _attention(module, query, key, value, attention_mask, **kwargs):
    eager = family_eager_attention(module)
    if attention_mask is not None and attention_mask.is_floating_point() and eager is not None:
        return eager(module, query, key, value, attention_mask, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(SHORT_EAGER, _attention)
AttentionMaskInterface.register(SHORT_EAGER, _mask)


def use_short_eager_attention(model) -> bool:
    """Switch a transformers model that runs SDPA (transformers' default) to `SHORT_EAGER`, where
    its family has an eager attention; returns whether it did. Not saved by `save_pretrained`."""
    if model.config._attn_implementation != "sdpa" or family_eager_attention(model) is None:
        return False
    model.set_attn_implementation(SHORT_EAGER)
    return True
