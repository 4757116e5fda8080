"""Tokenizers built in code, for presets whose weights are random (no hub access needed).

Both are byte-level BPE, so every prompt maps to distinct token ids (a fixed word list would send unseen
words to ``<unk>`` and make different prompts look alike to the model). With no ``words`` they have no
merges: every byte is a token. Given ``words``, they learn BPE merges that keep each of them whole, as a real
tokenizer keeps its corpus's common words: a small frozen text encoder then sees a caption's words, not
letters it would have to spell them from.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
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


def _learned_merges(words: Sequence[str], suffix: str = "") -> list[tuple[str, str]]:
    """BPE merges learnt on ``words`` (byte-level strings, each once): the most frequent adjacent pair first,
    ties to the pair that sorts first, until every word is one token. (The ``tokenizers`` trainer breaks ties
    in hash order, so its merges, and the token ids, change from run to run.)"""
    spelled = [(*word[:-1], word[-1] + suffix) for word in sorted(set(words))]
    merges: list[tuple[str, str]] = []
    while True:
        counts = Counter(pair for symbols in spelled for pair in zip(symbols, symbols[1:]))
        if not counts:
            return merges
        pair = min(counts, key=lambda p: (-counts[p], p))
        merges.append(pair)
        spelled = [_merge(symbols, pair) for symbols in spelled]


def _merge(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    merged, at = [], 0
    while at < len(symbols):
        if symbols[at : at + 2] == pair:
            merged.append(symbols[at] + symbols[at + 1])
            at += 2
        else:
            merged.append(symbols[at])
            at += 1
    return tuple(merged)


def _byte_words(corpus: Sequence[str], pre_tokenizer: pre_tokenizers.PreTokenizer) -> list[str]:
    return [word for text in corpus for word, _ in pre_tokenizer.pre_tokenize_str(text)]


def _with_merges(vocab: dict[str, int], merges: list[tuple[str, str]]) -> dict[str, int]:
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    return vocab


def build_llama_tokenizer(words: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """A Llama-3-style fast tokenizer: byte-level BPE (each of ``words`` one token, at the start of a text and
    after a space), chat-template special tokens, BOS prepended."""
    specials = list(LLAMA_SPECIAL_TOKENS)
    vocab = {token: i for i, token in enumerate(specials)}
    for char in _byte_alphabet():
        vocab[char] = len(vocab)
    pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    merges = _learned_merges(_byte_words([*words, *(" " + word for word in words)], pre_tokenizer))
    tokenizer = Tokenizer(models.BPE(vocab=_with_merges(vocab, merges), merges=merges, unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizer
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


def build_clip_tokenizer(model_max_length: int = 77, words: Sequence[str] = ()) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over single bytes (each byte also in its end-of-word form), each of ``words``
    (lower-cased, as CLIP's tokenizer reads them) one token."""
    vocab: dict[str, int] = {}
    for char in _byte_alphabet():
        vocab[char] = len(vocab)
    for char in _byte_alphabet():
        vocab[char + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    merges = _learned_merges(_byte_words([word.lower() for word in words], pre_tokenizer), "</w>")
    return CLIPTokenizer(vocab=_with_merges(vocab, merges), merges=merges, model_max_length=model_max_length)
