"""A CLIP BPE tokenizer whose vocabulary is built in code (nothing is downloaded).

The vocabulary holds the 256 byte-level symbols (alone and as word ends, so any text
tokenizes), whole-word tokens for a small word list reached through explicit merges, and
CLIP's two special tokens. Words outside the list fall back to characters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

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

#: Extra whole words of the scenes model (`mdtools train-toy --data scenes`) besides its prompt words.
SCENE_EXTRA_WORDS: tuple[str, ...] = (
    "sand", "grass", "water", "snow", "mountain", "ocean", "lake", "desert", "beach", "hills",
    "cloud", "clouds", "cloudy", "evening", "dusk", "dawn", "sunrise", "morning", "starry", "landscape",
    "panorama", "horizon", "yellow", "purple", "dark", "bright",
)


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE of one word (as CLIPTokenizer.bpe does it): repeatedly merge the lowest-ranked pair."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b), len(ranks)), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]
    return parts


def _whole_word_order(words: Sequence[str], max_rounds: int = 50) -> list[str]:
    """The words, reordered so that every one of them tokenizes whole with `build_vocab`'s merges.

    `build_vocab` builds each word left to right and BPE applies merges by rank, so an earlier
    word's merge can cut a later word ("s"+"e" of "seamless" cuts "sunset" into "sun", "se",
    "t"). Words that come out cut are moved to the front (their merges then rank first) until
    none is cut; raises RuntimeError if that does not settle.
    """
    order = list(dict.fromkeys(words))
    for _ in range(max_rounds):
        _, merges = build_vocab((), order)
        ranks = {m: i for i, m in enumerate(merges)}
        cut = [w for w in order if _bpe(w, ranks) != [w + "</w>"]]
        if not cut:
            return order
        order = cut + [w for w in order if w not in cut]
    raise RuntimeError(f"no merge order keeps these words whole: {cut}")


def scene_words() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(prompts, extra words) to pass to `build_vocab` / `build_tokenizer` for the scenes model.

    All words (of SCENE_PROMPTS, EXTRA_WORDS and SCENE_EXTRA_WORDS) go in as extra words, in an
    order that keeps every one of them a single token (`_whole_word_order`).
    """
    from .scenes import SCENE_PROMPTS

    words = [w for p in SCENE_PROMPTS for w in p.split()] + list(EXTRA_WORDS) + list(SCENE_EXTRA_WORDS)
    return (), tuple(_whole_word_order(words))


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


def build_vocab(
    prompts: Sequence[str] = PROMPTS, extra_words: Sequence[str] = EXTRA_WORDS
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) for the toy tokenizer over the words of `prompts` then `extra_words`; deterministic.

    The defaults are the texture model's vocabulary; its token ids depend on the word order, so
    other word lists (the scenes model's) are passed in rather than appended to the defaults.
    """
    chars = sorted(set(_bytes_to_unicode().values()))
    vocab: dict[str, int] = {}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for c in chars:
        vocab.setdefault(c + "</w>", len(vocab))
    words: list[str] = []
    for w in [w for p in prompts for w in p.split()] + list(extra_words):
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


def build_tokenizer(prompts: Sequence[str] = PROMPTS, extra_words: Sequence[str] = EXTRA_WORDS) -> "CLIPTokenizer":
    """A CLIPTokenizer over the in-code vocabulary (`build_vocab`) with model_max_length = MAX_LENGTH."""
    import transformers
    from transformers import CLIPTokenizer

    if int(transformers.__version__.split(".")[0]) >= 5:
        vocab, merges = build_vocab(prompts, extra_words)
        # transformers 5 builds the BPE model from an in-memory vocab only with tuple merges.
        return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)
    # transformers 4 wants vocab.json / merges.txt files.
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        write_vocab_files(Path(tmp), prompts, extra_words)
        return CLIPTokenizer(str(Path(tmp) / "vocab.json"), str(Path(tmp) / "merges.txt"), model_max_length=MAX_LENGTH)


def write_vocab_files(directory: Path, prompts: Sequence[str] = PROMPTS, extra_words: Sequence[str] = EXTRA_WORDS) -> None:
    """Also write vocab.json / merges.txt (of `build_vocab(prompts, extra_words)`) so tokenizer loaders that want them find them."""
    vocab, merges = build_vocab(prompts, extra_words)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
