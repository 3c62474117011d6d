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

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from .shapesworld import vocabulary

PAD, UNK, BOS, EOS, MASK, IMAGE = "[PAD]", "[UNK]", "[BOS]", "[EOS]", "[MASK]", "<image>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS, MASK, IMAGE)


def _build_backend(extra_words: tuple[str, ...]) -> Tokenizer:
    words = list(SPECIAL_TOKENS) + vocabulary() + [w for w in extra_words if w not in vocabulary()]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    # Split on spaces and keep punctuation ("circle?" -> "circle", "?") as its own token.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
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
    more words to the vocabulary (a tuple, so the result can be cached).
    """
    if not isinstance(extra_words, tuple) or not all(isinstance(w, str) and w and w.split() == [w] for w in extra_words):
        raise ValueError(f"extra_words must be a tuple of non-empty words without spaces, got {extra_words!r}")
    return _tokenizer(extra_words)


@lru_cache(maxsize=8)
def _tokenizer(extra_words: tuple[str, ...]) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=_build_backend(extra_words),
        pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS, mask_token=MASK,
        additional_special_tokens=[IMAGE],
        model_max_length=64,
    )
