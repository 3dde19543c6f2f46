"""Tokenisation and the word vocabulary.

Captions are lower-cased and punctuation is removed (the paper's preprocessing):
apostrophes split words the way the S2VT caption files do ("it's" -> "it s").
The vocabulary is built from training captions only.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable, List, Sequence

from nltk.tokenize import RegexpTokenizer  # rule-based: needs no downloaded NLTK data

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
_WORDS = RegexpTokenizer(r"[^\W_]+")  # runs of letters/digits, any script


def tokenize(caption: str) -> List[str]:
    """``"A man's riding, fast!"`` -> ``["a", "man", "s", "riding", "fast"]``."""
    return _WORDS.tokenize(caption.lower())


class Vocab:
    """Word <-> index map. Indices 0..3 are ``<pad> <bos> <eos> <unk>``."""

    pad, bos, eos, unk = 0, 1, 2, 3

    def __init__(self, words: Sequence[str]):
        self.itos: List[str] = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        assert len(self.stoi) == len(self.itos), "duplicate words in vocabulary"

    @classmethod
    def build(cls, captions: Iterable[str], min_count: int = 1) -> "Vocab":
        """Words seen at least ``min_count`` times, most frequent first (ties alphabetical)."""
        counts = Counter(w for c in captions for w in tokenize(c))
        words = sorted((w for w, k in counts.items() if k >= min_count), key=lambda w: (-counts[w], w))
        return cls(words)

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def encode(self, caption: str, max_words: int | None = None) -> List[int]:
        """Token ids of ``caption`` (no BOS/EOS), truncated to ``max_words``."""
        ids = [self.stoi.get(w, self.unk) for w in tokenize(caption)]
        return ids[:max_words] if max_words else ids

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the first EOS; specials dropped."""
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos:
                break
            if i >= len(SPECIALS):
                out.append(self.itos[i])
        return " ".join(out)

    def to_list(self) -> List[str]:
        return list(self.itos)

    @classmethod
    def from_list(cls, itos: Sequence[str]) -> "Vocab":
        """The vocabulary ``to_list`` wrote; ValueError naming the first entry that cannot be one."""
        if not isinstance(itos, (list, tuple)):
            raise ValueError(f"vocabulary must be a list of words, not a {type(itos).__name__}")
        if list(itos[: len(SPECIALS)]) != list(SPECIALS):
            raise ValueError(f"vocabulary must start with {SPECIALS}")
        seen = set()
        for i, w in enumerate(itos):
            if not isinstance(w, str) or not w or w != w.strip() or any(c.isspace() for c in w):
                raise ValueError(f"vocabulary entry {i} is {str(w)[:40]!r} ({type(w).__name__}), not a word "
                                 "(a non-empty string without spaces)")
            if w in seen:
                raise ValueError(f"vocabulary entry {i} {w[:40]!r} appears twice")
            seen.add(w)
        return cls(itos[len(SPECIALS):])

