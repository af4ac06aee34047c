"""A CLIP BPE tokenizer whose vocabulary is built in code (nothing is downloaded).

The vocabulary holds the 256 byte-level symbols (alone and as word ends, so any text
tokenizes), whole-word tokens for a small word list reached through explicit merges, and
CLIP's two special tokens. Words outside the list fall back to characters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from .data import PROMPTS

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

#: Context length of the toy text encoder; the tokenizer's model_max_length must match it.
MAX_LENGTH = 16
BOS = "<|startoftext|>"
EOS = "<|endoftext|>"

#: Extra whole words so that natural variations of the prompts stay word-level.
EXTRA_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "and", "with", "in", "on", "photo", "image", "texture", "pattern",
    "seamless", "tile", "close", "up", "high", "quality", "stone", "stones", "rock", "rocks",
    "star", "sky", "night", "space", "galaxy", "galaxies", "field", "lawn", "eye", "fur",
    "red", "green", "gray", "grey", "black", "white", "blue", "orange", "wall",
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode map (re-implemented, it is tiny)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) for the toy tokenizer; deterministic."""
    chars = sorted(set(_bytes_to_unicode().values()))
    vocab: dict[str, int] = {}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for c in chars:
        vocab.setdefault(c + "</w>", len(vocab))
    words: list[str] = []
    for w in [w for p in PROMPTS for w in p.split()] + list(EXTRA_WORDS):
        if w not in words:
            words.append(w)
    merges: list[tuple[str, str]] = []
    for w in words:
        # Left-to-right merges build each word; every intermediate piece must be in the vocab.
        parts = list(w[:-1]) + [w[-1] + "</w>"]
        while len(parts) > 1:
            pair = (parts[0], parts[1])
            if pair not in merges:
                merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
            parts = [pair[0] + pair[1]] + parts[2:]
    vocab.setdefault(BOS, len(vocab))
    vocab.setdefault(EOS, len(vocab))
    return vocab, merges


def build_tokenizer() -> "CLIPTokenizer":
    """A CLIPTokenizer over the in-code vocabulary with model_max_length = MAX_LENGTH."""
    import transformers
    from transformers import CLIPTokenizer

    if int(transformers.__version__.split(".")[0]) >= 5:
        vocab, merges = build_vocab()
        # transformers 5 builds the BPE model from an in-memory vocab only with tuple merges.
        return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)
    # transformers 4 wants vocab.json / merges.txt files.
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        write_vocab_files(Path(tmp))
        return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=MAX_LENGTH)


def write_vocab_files(directory: Path) -> None:
    """Also write vocab.json / merges.txt so tokenizer loaders that want them find them."""
    vocab, merges = build_vocab()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
