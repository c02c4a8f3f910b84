"""CLIP's byte-level BPE tokenizer, offline: the vocabulary is the merge list open_clip ships as a package
file (no hub). Every family that encodes text with a CLIP text tower tokenizes here: StreamingT2V's text
encoder (ModelScope, pad id 0) and the MS-Vid2Vid-XL refiner's OpenCLIP tower give the same ids as
open_clip's own tokenizer. The oracle's tiny models use the same scheme with no merges (514 tokens).
"""
from __future__ import annotations

import functools
import gzip
import html

import regex
import torch

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


@functools.lru_cache()
def byte_alphabet() -> dict:
    """CLIP's reversible map from the 256 byte values to printable unicode characters (printable
    Latin-1 bytes map to themselves, the rest to code points from 256 on), in vocabulary order."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
    order = printable + [b for b in range(256) if b not in printable]
    for b in order:
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return {b: table[b] for b in order}


def _clip_merges(vocab_size: int) -> list:
    """The first merges of CLIP's BPE list, as many as a vocabulary of `vocab_size` holds."""
    n = vocab_size - 512 - 2
    if n <= 0:
        return []
    from open_clip.tokenizer import default_bpe  # the package file, no download

    with gzip.open(default_bpe(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[1:1 + n]
    if len(lines) < n:
        raise ValueError(f"open_clip's BPE file has {len(lines)} merges; a vocabulary of {vocab_size} needs {n}")
    return [tuple(line.split()) for line in lines]


class CLIPTokenizer:
    """Lower-cased CLIP BPE: `[SOT] tokens [EOT] pad...`, truncated and padded to `length` (pad id 0,
    the `!` token, as ModelScope's tokenizer pads)."""

    def __init__(self, vocab_size: int = 49408, length: int = 77, pad_id: int = 0):
        self.length, self.pad_id = length, pad_id
        alphabet = list(byte_alphabet().values())
        merges = _clip_merges(vocab_size)
        vocab = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [SOT, EOT]
        if len(vocab) != vocab_size:
            raise ValueError(f"tokenizer vocabulary has {len(vocab)} entries, the text encoder {vocab_size}")
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.byte_map = byte_alphabet()
        self.sot, self.eot = self.encoder[SOT], self.encoder[EOT]

    @staticmethod
    def clean(text: str) -> str:
        try:
            import ftfy
            text = ftfy.fix_text(text)
        except ImportError:
            pass
        text = html.unescape(html.unescape(text)).strip()
        return " ".join(text.split()).lower()

    @functools.lru_cache(maxsize=4096)
    def _bpe(self, word: str) -> tuple:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b), None), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
            pairs = [p for p in pairs if p[0] is not None]
            if not pairs:
                break
            _, i = min(pairs)
            a, b = parts[i], parts[i + 1]
            merged, j = [], 0
            while j < len(parts):  # merge every occurrence of the best pair, left to right
                if j < len(parts) - 1 and parts[j] == a and parts[j + 1] == b:
                    merged.append(a + b)
                    j += 2
                else:
                    merged.append(parts[j])
                    j += 1
            parts = merged
        return tuple(parts)

    def encode(self, text: str) -> list:
        ids = []
        for token in _PATTERN.findall(self.clean(text)):
            word = "".join(self.byte_map[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[p] for p in self._bpe(word))
        return ids

    def __call__(self, texts) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), self.length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot] + self.encode(text)[: self.length - 2] + [self.eot]
            out[row, : len(ids)] = torch.tensor(ids)
        return out
