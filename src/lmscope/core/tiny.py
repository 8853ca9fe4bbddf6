"""Tiny random models of many HF families, built in-process from configs (no network).

They exercise every code path of the core on the real HF module code: absolute positions
(GPT-2), RoPE + RMSNorm + GQA (Llama, Mistral, Qwen2), ``head_dim != hidden / heads``
(Qwen3, Gemma 3), sandwich norms (Gemma 2/3), parallel blocks and fused per-head qkv
(GPT-NeoX), fused concat qkv and gate_up (Phi-3).
"""

from __future__ import annotations

from typing import Any

import torch

from lmscope.core.model import Model

TINY_FAMILIES: tuple[str, ...] = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3", "gpt_neox", "phi3")

_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_CORPUS = (
    "the quick brown fox jumps over the lazy dog. hello world. The capital of France is Paris. "
    "When Mary and John went to the store, John gave a drink to Mary. 0123456789 ,.;:!?'\"()[]{} "
    "def f(x): return x + 1  # python code\n"
)


def tiny_tokenizer(vocab_size: int = 384, pad: str = "pad") -> Any:
    """A byte-level BPE tokenizer trained in-process, with BOS/EOS/PAD and a chat template.

    ``pad`` chooses the pad token: "pad" (its own id), "eos" (pad id == eos id) or "zero" (id 0).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<|user|>", "<|system|>", "<|assistant|>", "<|end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>")
    if pad == "pad":
        fast.pad_token = "<pad>"
    elif pad == "eos":
        fast.pad_token = fast.eos_token
    elif pad == "zero":
        fast.pad_token = fast.convert_ids_to_tokens(0)
    else:
        raise ValueError(f"pad must be 'pad', 'eos' or 'zero', got {pad!r}")
    fast.chat_template = _CHAT_TEMPLATE
    return fast


def tiny_config(family: str, vocab_size: int) -> Any:
    """A small config of ``family`` (2 layers unless stated), fp32, eager attention."""
    import transformers as tf

    common: dict[str, Any] = dict(
        vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False
    )
    llama_like: dict[str, Any] = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, **common,
    )  # fmt: skip
    if family == "gpt2":
        return tf.GPT2Config(n_embd=64, n_layer=3, n_head=4, n_positions=256, n_inner=128, **common)
    if family == "llama":
        return tf.LlamaConfig(**llama_like)
    if family == "mistral":
        return tf.MistralConfig(**llama_like, sliding_window=None)
    if family == "qwen2":
        return tf.Qwen2Config(**llama_like)
    if family == "qwen3":
        return tf.Qwen3Config(**llama_like, head_dim=24)
    if family == "gemma2":
        return tf.Gemma2Config(**llama_like, head_dim=24, query_pre_attn_scalar=24, sliding_window=64)
    if family == "gemma3":
        return tf.Gemma3TextConfig(**llama_like, head_dim=24, query_pre_attn_scalar=24, sliding_window=64)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            max_position_embeddings=256, use_parallel_residual=True, **common,
        )  # fmt: skip
    if family == "phi3":
        return tf.Phi3Config(**llama_like)
    raise ValueError(f"unknown tiny family {family!r}; choose from {TINY_FAMILIES}")


def load_tiny(
    family: str = "llama",
    *,
    seed: int = 0,
    attn_implementation: str = "eager",
    pad: str = "pad",
    dtype: torch.dtype = torch.float32,
    config_overrides: dict[str, Any] | None = None,
) -> Model:
    """A randomly initialised tiny model of ``family`` with a matching in-process tokenizer."""
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer(pad=pad)
    config = tiny_config(family, vocab_size=len(tok))
    for k, v in (config_overrides or {}).items():
        setattr(config, k, v)
    config._attn_implementation = attn_implementation
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(seed)
        hf = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    model = Model(hf, tok, model_id=f"tiny-{family}-seed{seed}")
    model.load_spec = {"loader": "load_tiny", "family": family, "seed": seed, "attn_implementation": attn_implementation,
                       "pad": pad, "dtype": str(dtype).removeprefix("torch."), "config_overrides": config_overrides}  # fmt: skip
    return model
