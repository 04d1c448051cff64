"""Tests for the byte-level tokenizer."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxgen.data import tokenizer as tok


def test_encode_layout():
    t = tok.encode("ab", 6)
    assert t.dtype == np.int32 and t.shape == (6,)
    np.testing.assert_array_equal(t, [tok.BOS, ord("a") + 3, ord("b") + 3, tok.EOS, 0, 0])


def test_vocab_constants():
    assert (tok.PAD, tok.BOS, tok.EOS, tok.VOCAB_SIZE) == (0, 1, 2, 259)
    assert tok.encode("\xff", 8).max() < tok.VOCAB_SIZE


def test_empty_string_is_the_no_caption_input():
    np.testing.assert_array_equal(tok.encode("", 4), [tok.BOS, tok.EOS, tok.PAD, tok.PAD])
    assert tok.decode(tok.encode("", 4)) == ""


def test_multibyte_unicode_round_trip():
    text = "un cercle rouge — 赤い円 🟥"
    assert tok.decode(tok.encode(text, 64)) == text


def test_exact_fit_and_one_too_long():
    tok.encode("abc", 5)
    with pytest.raises(tok.PromptError, match="4 UTF-8 bytes"):
        tok.encode("abcd", 5)


def test_encode_batch():
    b = tok.encode_batch(["a red circle", "", "x"], 16)
    assert b.shape == (3, 16) and b.dtype == np.int32
    assert [tok.decode(r) for r in b] == ["a red circle", "", "x"]


def test_decode_stops_at_eos_and_tolerates_bad_bytes():
    assert tok.decode([tok.BOS, ord("h") + 3, tok.EOS, ord("x") + 3]) == "h"
    # A lone continuation byte is not valid UTF-8: decoded as the replacement character.
    assert tok.decode([tok.BOS, 0x80 + 3, tok.EOS]) == "\ufffd"


@pytest.mark.parametrize(
    "bad, match",
    [
        (None, "must be a str"),
        (b"bytes", "must be a str"),
        ("", "empty"),
        ("   \n\t", "empty"),
        ("x" * 63, "63 UTF-8 bytes.*max_len is 64"),
        ("é" * 32, "64 UTF-8 bytes"),
    ],
)
def test_validate_prompt_rejects(bad, match):
    with pytest.raises(tok.PromptError, match=match):
        tok.validate_prompt(bad, 64)


def test_validate_prompt_accepts_and_error_is_value_error():
    tok.validate_prompt("a small blue square", 64)
    tok.validate_prompt("x" * 62, 64)
    assert issubclass(tok.PromptError, ValueError)


def test_encode_rejects_non_str():
    with pytest.raises(tok.PromptError):
        tok.encode(3, 8)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.integers(min_value=2, max_value=48))
def test_property_round_trip_or_prompt_error(text, max_len):
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        data = None
    try:
        tokens = tok.encode(text, max_len)
    except tok.PromptError:
        assert data is None or len(data) + 2 > max_len
        return
    assert data is not None and len(data) + 2 <= max_len
    assert tokens.shape == (max_len,) and tokens.dtype == np.int32
    assert tokens.min() >= 0 and tokens.max() < tok.VOCAB_SIZE
    assert tok.decode(tokens) == text
