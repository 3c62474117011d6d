"""A word-level tokenizer for ShapesWorld's language.

Introduced in notebook 00. ShapesWorld's language has a few dozen words, so each word is one token
(no sub-word pieces needed). The tokenizer is built with Hugging Face's ``tokenizers`` library and
wrapped as a ``transformers`` fast tokenizer, so it pads, adds special tokens, decodes and saves
like any tokenizer of a real model::

    tok = shapes_tokenizer()
    batch = tok(["a red circle on the left"], padding="max_length", max_length=16, return_tensors="pt")
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from . import checks
from .shapesworld import vocabulary

PAD, UNK, BOS, EOS, MASK, IMAGE = "[PAD]", "[UNK]", "[BOS]", "[EOS]", "[MASK]", "<image>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS, MASK, IMAGE)


# Split on spaces and keep punctuation ("circle?" -> "circle", "?") as its own token.
_PRE_TOKENIZER = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])


def _build_backend(extra_words: tuple[str, ...]) -> Tokenizer:
    words = list(SPECIAL_TOKENS) + vocabulary() + [w for w in extra_words if w not in vocabulary()]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = _PRE_TOKENIZER
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}",
        pair=f"{BOS} $A {EOS} $B:1 {EOS}:1",
        special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")   # joins words with single spaces
    return tok


def shapes_tokenizer(extra_words: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """The ShapesWorld tokenizer as a ``transformers`` ``PreTrainedTokenizerFast``.

    Its ids are fixed (special tokens first, then :func:`vlmlib.shapesworld.vocabulary`), so a
    model trained with it in one notebook reads the same ids in another. ``extra_words`` appends
    more words to the vocabulary (a tuple or a list of lower-case words, each one token: no spaces or
    punctuation, which the tokenizer would split off).
    """
    if isinstance(extra_words, (str, np.str_)) or not isinstance(extra_words, (tuple, list)):
        raise TypeError(f"extra_words must be a tuple of words, e.g. ('hello',), got {extra_words!r}")
    words = tuple(str(w) for w in checks.text_list(extra_words, "extra_words"))
    split = _PRE_TOKENIZER.pre_tokenize_str
    bad = [w for w in words if [piece for piece, _ in split(w)] != [w] or w != w.lower()]
    if bad:
        raise ValueError(f"extra_words must be a tuple of non-empty lower-case words without spaces or "
                         f"punctuation (the tokenizer lowercases text and splits it there), got {bad!r}")
    return _tokenizer(words)


@lru_cache(maxsize=8)
def _tokenizer(extra_words: tuple[str, ...]) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=_build_backend(extra_words),
        pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS, mask_token=MASK,
        additional_special_tokens=[IMAGE],
        model_max_length=64,
    )
