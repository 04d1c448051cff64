"""Byte-level text tokenizer: UTF-8 bytes plus pad/bos/eos, no vocabulary file.

Any language encodes without an out-of-vocabulary token, in the spirit of Reed et al.'s
character-level text encoder. Token ids:

    PAD = 0, BOS = 1, EOS = 2, byte b -> b + 3      (VOCAB_SIZE = 259)

A prompt of n UTF-8 bytes therefore needs n + 2 positions: [BOS, bytes..., EOS, PAD...].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PAD = 0
BOS = 1
EOS = 2
BYTE_OFFSET = 3
VOCAB_SIZE = 256 + BYTE_OFFSET


class PromptError(ValueError):
    """A prompt that cannot be encoded (wrong type, empty, or longer than the limit)."""


def _utf8(text: object) -> bytes:
    if not isinstance(text, str):
        raise PromptError(f"prompt must be a str, got {type(text).__name__}: {text!r:.80}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        # Lone surrogates (e.g. "\ud800") are valid Python str but not encodable UTF-8.
        raise PromptError(f"prompt is not valid unicode text: {e}") from e


def _check_length(data: bytes, max_len: int) -> None:
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2 (room for BOS and EOS), got {max_len}")
    if len(data) + 2 > max_len:
        raise PromptError(
            f"prompt is {len(data)} UTF-8 bytes; with BOS/EOS it needs {len(data) + 2} tokens "
            f"but max_len is {max_len} (at most {max_len - 2} bytes)"
        )


def validate_prompt(text: object, max_len: int) -> None:
    """Checks that `text` is a usable user prompt.

    Args:
      text: the prompt; must be a non-empty, not whitespace-only str.
      max_len: the token length it must fit in, BOS and EOS included.

    Raises:
      PromptError: with a message that says what is wrong (type, emptiness, or the byte length
        against the limit).
    """
    data = _utf8(text)
    if not text.strip():
        raise PromptError("prompt is empty or whitespace only; describe the image to generate")
    _check_length(data, max_len)


def encode(text: str, max_len: int) -> np.ndarray:
    """Encodes one string as [BOS, bytes + 3..., EOS, PAD...].

    The empty string is accepted: it encodes to [BOS, EOS, PAD...], the "no caption" input that
    classifier-free guidance uses.

    Args:
      text: the string to encode.
      max_len: output length, BOS and EOS included.

    Returns:
      int32 array [max_len].

    Raises:
      PromptError: if `text` is not a str or does not fit in `max_len`.
    """
    data = _utf8(text)
    _check_length(data, max_len)
    tokens = np.zeros((max_len,), np.int32)
    tokens[0] = BOS
    tokens[1 : 1 + len(data)] = np.frombuffer(data, np.uint8).astype(np.int32) + BYTE_OFFSET
    tokens[1 + len(data)] = EOS
    return tokens


def encode_batch(texts: Sequence[str], max_len: int) -> np.ndarray:
    """Encodes several strings with `encode`.

    Args:
      texts: N strings.
      max_len: output length per string.

    Returns:
      int32 array [N, max_len].
    """
    if isinstance(texts, str):
        raise PromptError("encode_batch expects a sequence of strings, got a single str")
    out = np.zeros((len(texts), max_len), np.int32)
    for i, text in enumerate(texts):
        out[i] = encode(text, max_len)
    return out


def decode(tokens: Sequence[int] | np.ndarray) -> str:
    """Decodes tokens back to a string.

    Reads the bytes after an optional leading BOS up to the first EOS or PAD; other special ids
    are skipped. Invalid UTF-8 (possible in model samples) is replaced with U+FFFD rather than
    raising, so generated token sequences can always be shown.

    Args:
      tokens: int array [L] (a jax array works too).

    Returns:
      The decoded string.
    """
    ids = np.asarray(tokens).reshape(-1).tolist()
    data = bytearray()
    for i, t in enumerate(ids):
        if t == BOS and i == 0:
            continue
        if t in (EOS, PAD):
            break
        if BYTE_OFFSET <= t < VOCAB_SIZE:
            data.append(t - BYTE_OFFSET)
    return data.decode("utf-8", errors="replace")
