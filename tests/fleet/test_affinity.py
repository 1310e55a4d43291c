"""Affinity keys: the same conversation gives the same key at every turn."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from vllama.fleet.affinity import affinity_key


def key(body: dict[str, Any], limit: int = 2000) -> bytes | None:
    return affinity_key(msgspec.json.encode(body), limit)


SYSTEM = {"role": "system", "content": "You are terse."}
Q1 = {"role": "user", "content": "What is a B-tree?"}
A1 = {"role": "assistant", "content": "A balanced search tree."}
Q2 = {"role": "user", "content": "And a B+ tree?"}


def test_a_conversation_keeps_its_key_as_it_grows() -> None:
    turn1 = key({"model": "m", "messages": [SYSTEM, Q1]})
    turn2 = key({"model": "m", "messages": [SYSTEM, Q1, A1, Q2], "stream": True})
    assert turn1 is not None and turn1 == turn2


def test_conversations_differ_by_their_first_question() -> None:
    other = {"role": "user", "content": "What is a trie?"}
    assert key({"messages": [SYSTEM, Q1]}) != key({"messages": [SYSTEM, other]})
    assert key({"messages": [Q1]}) != key({"messages": [SYSTEM, Q1]})


def test_the_model_field_and_options_do_not_count() -> None:
    # Members may know the model by another id; the key must not depend on it.
    assert key({"model": "a", "messages": [Q1], "temperature": 0}) == \
        key({"model": "b", "messages": [Q1], "max_tokens": 9})


def test_a_long_shared_system_prompt_still_tells_conversations_apart() -> None:
    long_system = {"role": "system", "content": "rules " * 2000}
    one = key({"messages": [long_system, Q1]}, limit=256)
    two = key({"messages": [long_system, Q2]}, limit=256)
    assert one is not None and two is not None
    assert len(one) == 256 and one != two  # head and tail: the tail holds the question


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"prompt": "Once upon a time"}, b'"Once upon a time"'),
        ({"prompt": "x" * 50}, b'"' + b"x" * 18 + b'"'),  # 10 bytes of head, 10 of tail
        ({"prompt": [1, 2, 3]}, b"1\x1e2\x1e3"),  # token ids
        ({"prompt": ["a", "b"]}, b'"a"\x1e"b"'),  # a batch of prompts
        ({"input": "hello"}, b'"hello"'),  # /v1/responses
        ({"input": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "o"}]},
         b'{"role":"uent":"hi"}'),  # the items up to the first user one, cut to 20 bytes
        ({"prompt": None}, None),
        ({"model": "m"}, None),  # nothing to key on (an embedding request)
        ({"messages": []}, None),
    ],
)
def test_prompts_and_other_shapes(body: dict[str, Any], expected: bytes | None) -> None:
    assert key(body, limit=20) == expected


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1,2]", b'{"messages": 5}',
                                 b'{"prompt": [1, }'])
def test_a_body_that_is_not_a_request_has_no_key(raw: bytes) -> None:
    assert affinity_key(raw, 100) is None
