"""MinHash signatures and LSH band keys for fuzzy deduplication.

A document becomes the set of its word 5-grams (shingles) after normalisation (Unicode NFKC,
lowercase, punctuation to spaces, whitespace collapsed). Each shingle gets a 64-bit hash, and
`num_perm = bands * rows` universal hash functions h_i(x) = (a_i * x + b_i) mod p turn the set
into a signature: the minimum of each h_i over the shingles. Two documents agree on h_i's
minimum with probability equal to the Jaccard similarity of their shingle sets, so the signature
estimates it (`estimate_jaccard`). Locality-sensitive hashing: the signature is cut into `bands`
bands of `rows` values; documents that agree on a whole band share its key (`band_keys`) and
become a candidate pair. With 14 bands x 8 rows (datatrove's and FineWeb's setting) a pair at
Jaccard s is a candidate with probability 1 - (1 - s^8)^14: 0.92 at s = 0.8, 0.0006 at s = 0.3.

Arithmetic. p = 4294967291, the largest prime below 2^32: shingle hashes are reduced mod p and
a_i, b_i < p, so a_i * x + b_i < 2^64 and the universal hash is exact in numpy uint64 (a
61-bit Mersenne prime would need 122-bit products; datatrove's `(x * a + b) % (2^61 - 1)` wraps
at 2^64 first). The minima are below 2^32 and stored as uint32: half the memory and shuffle of
uint64, and two different shingle sets agree on one value by chance with probability ~1/p (2e-10),
far below anything LSH thresholds can see. 0xFFFFFFFF is never a value mod p: it marks a
document without words (`SENTINEL`), whose band keys are empty so it never pairs with anything.

Parameters come from xxhash of (seed, index), not from a numpy generator, so a signature computed
today matches one computed by any later numpy on any machine. Work is per batch: no function
needs more than the batch in hand, and shingles go through the permutations in bounded chunks.
"""
from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

import numpy as np
import xxhash

from phi4ray.run.errors import ConfigError

PRIME = 4294967291  # largest prime < 2^32
SENTINEL = 0xFFFFFFFF  # never a residue mod PRIME: marks a document with no words
_P = np.uint64(PRIME)
_ROLL = np.uint64(0x9E3779B97F4A7C15)  # odd multiplier of the rolling n-gram hash
CHUNK_ROWS = 2048  # shingles per permutation chunk: 2048 x 112 uint64 = 1.8 MB, cache-sized

_PUNCT = re.compile(r"[^\w\s]")
# the same mapping for ASCII text through str.translate, several times faster than the regex
_ASCII_PUNCT = str.maketrans({chr(i): " " for i in range(128) if _PUNCT.match(chr(i))})


@dataclass(frozen=True)
class MinHashConfig:
    ngram: int = 5  # words per shingle
    bands: int = 14
    rows: int = 8  # hashes per band; num_perm = bands * rows
    seed: int = 1

    def __post_init__(self) -> None:
        for name in ("ngram", "bands", "rows"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"minhash.{name} must be a positive integer, got {v!r}")
        if self.bands > 0xFFFF:
            raise ConfigError(f"minhash.bands={self.bands} must fit the 2-byte band index of a key (<= 65535)")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**64:
            raise ConfigError(f"minhash.seed must be an integer in [0, 2^64), got {self.seed!r}")

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows


def normalize(text: str) -> str:
    """NFKC, lowercase, punctuation and symbols to spaces, whitespace runs to one space."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates (JSON "\ud800"): make them U+FFFD
            text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        text = _PUNCT.sub(" ", unicodedata.normalize("NFKC", text).lower())
    else:
        text = text.lower().translate(_ASCII_PUNCT)
    return " ".join(text.split())


def shingle_hashes(text: str, config: MinHashConfig | None = None) -> np.ndarray:
    """Distinct shingle hashes of one document (uint64, each < PRIME); empty without words.
    A document shorter than `ngram` words is one shingle: all its words."""
    config = config or MinHashConfig()
    words = normalize(text).split() if isinstance(text, str) else []
    if not words:
        return np.zeros(0, np.uint64)
    uniq = list(dict.fromkeys(words))
    index = dict(zip(uniq, range(len(uniq))))
    table = np.fromiter(map(functools.partial(xxhash.xxh3_64_intdigest, seed=config.seed), map(str.encode, uniq)),
                        dtype=np.uint64, count=len(uniq))
    w = table[np.fromiter(map(index.__getitem__, words), dtype=np.int64, count=len(words))]
    n = min(config.ngram, len(words))
    m = len(words) - n + 1
    h = w[:m].copy()
    for k in range(1, n):  # wraps mod 2^64: a 64-bit polynomial hash of the n word hashes
        h *= _ROLL
        h += w[k:k + m]
    return np.unique(h % _P)


@functools.lru_cache(maxsize=8)
def permutations(seed: int, num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    a = [1 + xxhash.xxh64_intdigest(f"a{i}".encode(), seed=seed) % (PRIME - 1) for i in range(num_perm)]
    b = [xxhash.xxh64_intdigest(f"b{i}".encode(), seed=seed) % PRIME for i in range(num_perm)]
    return np.array(a, dtype=np.uint64), np.array(b, dtype=np.uint64)


def _min_hash(x: np.ndarray, a: np.ndarray, b: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per segment of x (segments begin at `starts`): min over its rows of (a * x + b) mod p."""
    y = np.multiply(x[:, None], a[None, :])
    y += b
    y %= _P
    return np.minimum.reduceat(y, starts, axis=0)


def signatures(texts: list[str], config: MinHashConfig | None = None) -> np.ndarray:
    """(len(texts), num_perm) uint32 MinHash signatures; a row of SENTINEL for text without words.
    Small documents share one permutation pass (segments reduced with `minimum.reduceat`); a big
    one runs alone in chunks of CHUNK_ROWS shingles with a running minimum."""
    config = config or MinHashConfig()
    a, b = permutations(config.seed, config.num_perm)
    out = np.full((len(texts), config.num_perm), SENTINEL, dtype=np.uint32)
    shingles = [shingle_hashes(t, config) for t in texts]
    batch: list[int] = []
    rows = 0

    def flush():
        nonlocal batch, rows
        if batch:
            sizes = np.array([len(shingles[i]) for i in batch])
            starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
            out[batch] = _min_hash(np.concatenate([shingles[i] for i in batch]), a, b, starts)
        batch, rows = [], 0

    for i, x in enumerate(shingles):
        if len(x) == 0:
            continue
        if len(x) > CHUNK_ROWS:
            acc = np.full(config.num_perm, SENTINEL, dtype=np.uint64)
            for lo in range(0, len(x), CHUNK_ROWS):
                np.minimum(acc, _min_hash(x[lo:lo + CHUNK_ROWS], a, b, np.zeros(1, np.int64))[0], out=acc)
            out[i] = acc
            continue
        if rows + len(x) > CHUNK_ROWS:
            flush()
        batch.append(i)
        rows += len(x)
    flush()
    return out


def band_keys(sigs: np.ndarray, config: MinHashConfig | None = None) -> list[list[bytes]]:
    """Per document, one key per band: 2-byte big-endian band index + the band's `rows` values
    as big-endian uint32. The index keeps equal values in different bands apart, so a shuffle
    grouped by key only pairs documents within a band. A SENTINEL (wordless) row gets no keys."""
    config = config or MinHashConfig()
    sigs = np.asarray(sigs)
    if sigs.ndim != 2 or sigs.shape[1] != config.num_perm:
        raise ValueError(f"signatures must have shape (n, {config.num_perm}), got {sigs.shape}")
    width = 4 * config.rows
    prefix = [band.to_bytes(2, "big") for band in range(config.bands)]
    big_endian = np.ascontiguousarray(sigs, dtype=">u4")
    empty = (sigs == SENTINEL).all(axis=1)
    keys = []
    for row, is_empty in zip(big_endian, empty):
        if is_empty:
            keys.append([])
            continue
        raw = row.tobytes()
        keys.append([prefix[k] + raw[k * width:(k + 1) * width] for k in range(config.bands)])
    return keys


def estimate_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Fraction of equal signature values: an unbiased estimate of the shingle-set Jaccard
    similarity. 0.0 when either document had no words (SENTINEL rows match nothing)."""
    sig_a, sig_b = np.asarray(sig_a), np.asarray(sig_b)
    if sig_a.shape != sig_b.shape:
        raise ValueError(f"signatures differ in shape: {sig_a.shape} vs {sig_b.shape}")
    if (sig_a == SENTINEL).all() or (sig_b == SENTINEL).all():
        return 0.0
    return float(np.mean(sig_a == sig_b))
