"""Tokenizers built in code, for presets whose weights are random (no hub access needed).

Both are byte-level with no merges, so every prompt maps to distinct token ids (a fixed word list
would send unseen words to ``<unk>`` and make different prompts look alike to the model).
"""

from __future__ import annotations

from functools import lru_cache

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import CLIPTokenizer, PreTrainedTokenizerFast

LLAMA_SPECIAL_TOKENS = (
    "<pad>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<image>",
)
# Words of the chat template kept whole, as the Llama-3 tokenizer does: the HunyuanVideo prompt
# encoder crops the template by counting tokens around the header markers.
LLAMA_TEMPLATE_WORDS = ("system", "user", "assistant", "\n\n")


@lru_cache(maxsize=None)
def _byte_alphabet() -> tuple[str, ...]:
    return tuple(sorted(pre_tokenizers.ByteLevel.alphabet()))


def build_llama_tokenizer() -> PreTrainedTokenizerFast:
    """A Llama-3-style fast tokenizer: byte-level BPE, chat-template special tokens, BOS prepended."""
    specials = list(LLAMA_SPECIAL_TOKENS)
    vocab = {token: i for i, token in enumerate(specials)}
    for char in _byte_alphabet():
        vocab[char] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(specials)
    tokenizer.add_tokens(list(LLAMA_TEMPLATE_WORDS))
    bos = "<|begin_of_text|>"
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, vocab[bos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=bos,
        eos_token="<|eot_id|>",
        pad_token="<pad>",
        padding_side="right",
    )


def build_clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over single bytes (each byte also in its end-of-word form)."""
    vocab: dict[str, int] = {}
    for char in _byte_alphabet():
        vocab[char] = len(vocab)
    for char in _byte_alphabet():
        vocab[char + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)
