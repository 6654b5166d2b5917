"""A corpus of malformed envelopes: ``CORPUS`` is a list of ``(name, bytes)``.

Every entry must make ``rain_envelopes.codec.decode`` raise EnvelopeDecodeError (and nothing
else). The names are ``family/detail``; the families are listed in ``FAMILIES``. Most entries
carry a readable ``id`` so that a server can echo it in its coded failure; the ``not-json`` and
``unicode`` ones cannot.

The corpus is also fed to live servers. Two entries are larger than a transport may carry:
``oversize/*`` are just over the codec's 1 MiB limit, above the server's default frame limit
(ZeroMQ MAXMSGSIZE 256 KiB), so a transport may drop them before the codec sees them.
"""

from __future__ import annotations

import json
from typing import Any

from rain_envelopes.codec import MAX_DEPTH, MAX_ENVELOPE_SIZE

__all__ = ["CORPUS", "FAMILIES"]

CORPUS: list[tuple[str, bytes]] = []


def _add(name: str, data: bytes | str) -> None:
    CORPUS.append((name, data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data))


def _dump(obj: Any) -> bytes:
    # json (not orjson) so that lone surrogates and NaN can be written on purpose where needed.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


GET: dict[str, Any] = {"id": "c-1", "method": "get", "uri": "/params/temp"}
SET: dict[str, Any] = {
    "id": "c-2", "method": "set", "uri": "/params/temp", "type": "application/json",
    "resource": 21.5,
}
RESPONSE: dict[str, Any] = {
    "id": "c-3", "method": "get", "status": "failure", "reason": {"code": 67},
}
MESSAGE: dict[str, Any] = {"id": "m-1", "type": "text/plain", "content": "hello"}
NOTIFICATION: dict[str, Any] = {"id": "m-1", "event": "received"}
SESSION: dict[str, Any] = {"id": "s-1", "state": "authenticating", "scheme": "transport",
                           "authentication": {}}

# ----------------------------------------------------------------------------- not JSON
for name, raw in [
    ("empty", b""),
    ("whitespace", b" \n\t "),
    ("open-brace", b"{"),
    ("close-brace", b"}"),
    ("truncated", b'{"id":"c-1","method":"get","uri":"/par'),
    ("truncated-after-key", b'{"id":"c-1","method"'),
    ("single-quotes", b"{'id': 'c-1', 'method': 'get', 'uri': '/x'}"),
    ("unquoted-keys", b'{id:"c-1",method:"get",uri:"/x"}'),
    ("trailing-comma", b'{"id":"c-1","method":"get","uri":"/x",}'),
    ("missing-comma", b'{"id":"c-1" "method":"get","uri":"/x"}'),
    ("missing-colon", b'{"id" "c-1","method":"get","uri":"/x"}'),
    ("comment", b'{"id":"c-1",/* x */"method":"get","uri":"/x"}'),
    ("line-comment", b'// get\n{"id":"c-1","method":"get","uri":"/x"}'),
    ("two-objects", b'{"id":"c-1","method":"get","uri":"/x"}{"id":"c-2"}'),
    ("two-objects-newline", b'{"id":"c-1","method":"get","uri":"/x"}\n{"state":"new"}'),
    ("trailing-garbage", b'{"id":"c-1","method":"get","uri":"/x"}xyz'),
    ("python-literals", b'{"content":None,"type":"a","flag":True}'),
    ("leading-zero", b'{"id":"c-2","method":"set","uri":"/x","type":"a","resource":007}'),
    ("leading-plus", b'{"id":"c-2","method":"set","uri":"/x","type":"a","resource":+1}'),
    ("bare-dot", b'{"id":"c-2","method":"set","uri":"/x","type":"a","resource":.5}'),
    ("hex-number", b'{"id":"c-2","method":"set","uri":"/x","type":"a","resource":0x10}'),
    ("raw-newline-in-string", b'{"id":"c-1","method":"get","uri":"/x\n"}'),
    ("raw-tab-in-string", b'{"id":"c-1\t","method":"get","uri":"/x"}'),
    ("raw-nul-in-string", b'{"id":"c-1\x00","method":"get","uri":"/x"}'),
    ("bad-escape", b'{"id":"c-1","method":"get","uri":"/\\x"}'),
    ("short-unicode-escape", b'{"id":"c-1","method":"get","uri":"/\\u12"}'),
    ("unterminated-string", b'{"id":"c-1","method":"get","uri":"/x}'),
    ("xml", b'<envelope method="get" uri="/x"/>'),
    ("nul-byte", b"\x00"),
    ("gzip-magic", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"),
    ("msgpack", b"\x83\xa2id\xa3c-1\xa6method\xa3get\xa3uri\xa2/x"),
    ("bom-utf8", b'\xef\xbb\xbf{"id":"c-1","method":"get","uri":"/x"}'),
    ("utf16-le", '{"id":"c-1","method":"get","uri":"/x"}'.encode("utf-16-le")),
    ("utf16-bom", '{"id":"c-1","method":"get","uri":"/x"}'.encode("utf-16")),
    ("utf32", '{"id":"c-1","method":"get","uri":"/x"}'.encode("utf-32")),
    ("nan-literal", b'{"id":"c-2","method":"set","uri":"/x","type":"a","resource":NaN}'),
    ("infinity-literal", b'{"id":"c-2","method":"set","uri":"/x","type":"a","resource":Infinity}'),
    ("minus-infinity", b'{"id":"c-2","method":"set","uri":"/x","type":"a","resource":-Infinity}'),
    ("nan-in-reason", b'{"id":"c-3","method":"get","status":"failure","reason":{"code":NaN}}'),
    ("unbalanced-brackets", b'{"id":"c-1","method":"get","uri":"/x","x":[}'),
]:
    _add(f"not-json/{name}", raw)

# --------------------------------------------------------------------------- wrong top level
for name, raw in [
    ("array", b"[]"),
    ("array-of-envelope", _dump([GET])),
    ("string", b'"get /params/temp"'),
    ("integer", b"42"),
    ("float", b"4.2"),
    ("null", b"null"),
    ("true", b"true"),
    ("false", b"false"),
    ("json-in-string", _dump(json.dumps(GET))),
]:
    _add(f"top-level/{name}", raw)

# ---------------------------------------------------------------------------- unknown kinds
for name, obj in [
    ("empty-object", {}),
    ("id-only", {"id": "x-1"}),
    ("uri-only", {"id": "x-2", "uri": "/params/temp"}),
    ("type-only", {"id": "x-3", "type": "text/plain"}),
    ("capitalised-content", {"id": "x-4", "Content": "hi", "type": "text/plain"}),
    ("capitalised-method", {"id": "x-5", "Method": "get", "uri": "/x"}),
    ("upper-state", {"id": "x-6", "STATE": "new"}),
    ("kind-field", {"id": "x-7", "kind": "command", "verb": "get", "uri": "/x"}),
    ("null-content", {"id": "m-1", "content": None, "type": "text/plain"}),
    ("null-event", {"id": "m-1", "event": None}),
    ("null-method", {"id": "c-1", "method": None, "uri": "/x"}),
    ("null-state", {"id": "s-1", "state": None}),
]:
    _add(f"unknown-kind/{name}", _dump(obj))

# --------------------------------------------------------------------------- unknown values
for name, base, key, value in [
    ("method-fly", GET, "method", "fly"),
    ("method-empty", GET, "method", ""),
    ("method-padded", GET, "method", " get"),
    ("method-http", GET, "method", "POST"),
    ("method-pending", GET, "method", "pending"),
    ("status-ok", RESPONSE, "status", "ok"),
    ("status-empty", RESPONSE, "status", ""),
    ("status-error", RESPONSE, "status", "error"),
    ("event-read", NOTIFICATION, "event", "read"),
    ("event-empty", NOTIFICATION, "event", ""),
    ("state-open", SESSION, "state", "open"),
    ("state-closed", SESSION, "state", "closed"),
    ("encryption-ssl", SESSION, "encryption", "ssl"),
    ("compression-brotli", SESSION, "compression", "brotli"),
    ("scheme-oauth", SESSION, "scheme", "oauth"),
    ("scheme-unknown", SESSION, "scheme", "unknown"),  # what lime-python sends with no scheme
    ("encryption-options-item", SESSION, "encryptionOptions", ["none", "rot13"]),
    ("compression-options-item", SESSION, "compressionOptions", ["gzip", "lz4"]),
    ("scheme-options-item", SESSION, "schemeOptions", ["transport", "kerberos"]),
]:
    _add(f"unknown-value/{name}", _dump({**base, key: value}))

# ------------------------------------------------------------------------------ wrong types
_WRONG: dict[str, Any] = {
    "integer": 7, "float": 1.5, "bool": True, "array": ["x"], "object": {"x": 1},
}
for field, base in [("id", GET), ("from", MESSAGE), ("to", MESSAGE), ("pp", SET),
                    ("type", MESSAGE), ("event", NOTIFICATION), ("status", RESPONSE),
                    ("state", SESSION), ("scheme", SESSION)]:
    for label, value in _WRONG.items():
        _add(f"wrong-type/{field}-{label}", _dump({**base, field: value}))
for name, base, key, value in [
    ("metadata-array", GET, "metadata", ["#a", "b"]),
    ("metadata-string", GET, "metadata", "#trace=1"),
    ("metadata-value-int", GET, "metadata", {"#expires": 1767225600}),
    ("metadata-value-null", GET, "metadata", {"#expires": None}),
    ("metadata-value-object", GET, "metadata", {"a": {"b": "c"}}),
    ("authentication-array", SESSION, "authentication", []),
    ("authentication-string", SESSION, "authentication", "secret"),
    ("options-string", SESSION, "compressionOptions", "gzip"),
    ("options-object", SESSION, "schemeOptions", {"0": "transport"}),
    ("options-item-null", SESSION, "encryptionOptions", [None]),
    ("options-item-int", SESSION, "schemeOptions", [1]),
    ("message-type-null", MESSAGE, "type", None),
]:
    _add(f"wrong-type/{name}", _dump({**base, key: value}))

# ---------------------------------------------------------------------------------- bad URIs
for name, value in [
    ("empty", ""),
    ("integer", 42),
    ("array", ["/params", "temp"]),
    ("object", {"path": "/params/temp"}),
    ("bool", False),
    ("null-in-request", None),
]:
    _add(f"bad-uri/{name}", _dump({**GET, "uri": value}))
_add("bad-uri/missing-in-request", _dump({"id": "c-1", "method": "get"}))
_add("bad-uri/missing-in-set", _dump({k: v for k, v in SET.items() if k != "uri"}))

# --------------------------------------------------------------------------- reason problems
for name, base, value in [
    ("string-in-failed-notification", {**NOTIFICATION, "event": "failed"}, "Not found (Code 67)"),
    ("string-in-failure", RESPONSE, "67: not found"),
    ("string-in-failed-session", {**SESSION, "state": "failed"}, "authentication failed"),
    ("integer", RESPONSE, 67),
    ("array", RESPONSE, [67, "not found"]),
    ("code-string", RESPONSE, {"code": "67", "description": "x"}),
    ("code-float", RESPONSE, {"code": 67.5}),
    ("code-integral-float", RESPONSE, {"code": 67.0}),
    ("code-bool", RESPONSE, {"code": True}),
    ("code-null", RESPONSE, {"code": None}),
    ("code-missing", RESPONSE, {"description": "not found"}),
    ("description-int", RESPONSE, {"code": 67, "description": 404}),
    ("description-object", RESPONSE, {"code": 67, "description": {"en": "x"}}),
    ("null-on-failure", RESPONSE, None),
]:
    _add(f"reason/{name}", _dump({**base, "reason": value}))

# ---------------------------------------------------------------------- missing required fields
for name, obj in [
    ("message-type", {"id": "m-1", "content": "hi"}),
    ("message-type-empty", {"id": "m-1", "content": "hi", "type": ""}),
    ("command-id", {"method": "get", "uri": "/params/temp"}),
    ("command-id-null", {"id": None, "method": "delete", "uri": "/params/temp"}),
    ("command-id-empty", {"id": "", "method": "get", "uri": "/params/temp"}),
    ("set-id", {k: v for k, v in SET.items() if k != "id"}),
    ("resource-type", {"id": "c-2", "method": "set", "uri": "/x", "resource": 1}),
    ("resource-type-null", {**SET, "type": None}),
    ("resource-type-empty", {**SET, "type": ""}),
    ("response-resource-type", {"id": "c-3", "method": "get", "status": "success",
                                "resource": {"v": 1}}),
    ("failure-reason", {"id": "c-3", "method": "get", "status": "failure"}),
    ("failed-notification-reason", {"id": "m-1", "event": "failed"}),
    ("failed-session-reason", {"id": "s-1", "state": "failed"}),
    ("message-id-empty", {**MESSAGE, "id": ""}),
]:
    _add(f"missing/{name}", _dump(obj))

# ----------------------------------------------------------------------------- bad nodes
for name, value in [
    ("space", "alice smith@irf/lab"),
    ("tab", "alice@irf\t/lab"),
    ("newline", "alice@irf/lab\n"),
    ("carriage-return", "alice\r@irf"),
    ("nul", "alice\u0000@irf"),
    ("too-long", "a" * 600 + "@" + "d" * 600),
]:
    _add(f"bad-node/from-{name}", _dump({**MESSAGE, "from": value}))
_add("bad-node/to-space", _dump({**GET, "to": "server @irf"}))
_add("bad-node/pp-newline", _dump({**SET, "pp": "bob@irf/\nlab"}))

# ---------------------------------------------------------------------------- unicode traps
for name, raw in [
    ("escaped-high-surrogate", rb'{"id":"m-1","type":"text/plain","content":"\ud800"}'),
    ("escaped-low-surrogate", rb'{"id":"m-1","type":"text/plain","content":"\udfff"}'),
    ("escaped-reversed-pair", rb'{"id":"m-1","type":"text/plain","content":"\udc00\ud800"}'),
    ("escaped-high-then-ascii", rb'{"id":"m-1","type":"text/plain","content":"\ud83dA"}'),
    ("escaped-surrogate-in-id", rb'{"id":"\ud800","method":"get","uri":"/x"}'),
    ("escaped-surrogate-in-key", rb'{"id":"c-1","method":"get","uri":"/x","\udfff":1}'),
    ("escaped-surrogate-in-uri", rb'{"id":"c-1","method":"get","uri":"/\ud800"}'),
    ("escaped-surrogate-in-node", rb'{"id":"m-1","type":"a","content":1,"from":"\udead@irf"}'),
    ("raw-surrogate-d800", b'{"id":"m-1","type":"text/plain","content":"\xed\xa0\x80"}'),
    ("raw-surrogate-dfff", b'{"id":"m-1","type":"text/plain","content":"\xed\xbf\xbf"}'),
    ("raw-surrogate-pair-cesu8", b'{"id":"m-1","type":"a","content":"\xed\xa0\xbd\xed\xb8\x80"}'),
    ("overlong-slash", b'{"id":"c-1","method":"get","uri":"\xc0\xafparams"}'),
    ("overlong-nul", b'{"id":"m-1","type":"text/plain","content":"\xc0\x80"}'),
    ("overlong-three-byte", b'{"id":"m-1","type":"text/plain","content":"\xe0\x80\xaf"}'),
    ("lone-continuation", b'{"id":"m-1","type":"text/plain","content":"\x80"}'),
    ("byte-ff", b'{"id":"m-1","type":"text/plain","content":"\xff"}'),
    ("byte-fe-in-key", b'{"id":"m-1","type":"text/plain","content":"x","\xfe":1}'),
    ("beyond-10ffff", b'{"id":"m-1","type":"text/plain","content":"\xf4\x90\x80\x80"}'),
    ("truncated-sequence", b'{"id":"m-1","type":"text/plain","content":"\xe2\x82"}'),
    ("truncated-at-end", b'{"id":"m-1","type":"text/plain","content":"x"}\xe2\x82'),
    ("latin1-text", '{"id":"m-1","type":"text/plain","content":"caf\u00e9"}'.encode("latin-1")),
    ("escaped-nul-in-node", rb'{"id":"m-1","type":"a","content":1,"to":"a\u0000b@irf"}'),
    ("escaped-newline-in-node", rb'{"id":"m-1","type":"a","content":1,"to":"a@irf/\n"}'),
]:
    _add(f"unicode/{name}", raw)

# ----------------------------------------------------------------------------- huge numbers
for name, literal in [
    ("exponent-overflow", b"1e400"),
    ("negative-exponent-overflow", b"-1e400"),
    ("thousand-digits", b"9" * 1000),
    ("long-integral-float", b"1" + b"0" * 400 + b".0"),
]:
    _add(f"huge-number/resource-{name}",
         b'{"id":"c-2","method":"set","uri":"/x","type":"application/json","resource":'
         + literal + b"}")
for name, literal in [
    ("code-2-64", b"18446744073709551616"),
    ("code-below-int64", b"-9223372036854775809"),
    ("code-30-digits", b"123456789012345678901234567890"),
    ("code-exponent", b"1e3"),
    ("code-1e400", b"1e400"),
]:
    _add(f"huge-number/reason-{name}",
         b'{"id":"c-3","method":"get","status":"failure","reason":{"code":' + literal + b"}}")

# ----------------------------------------------------------------------------- deep nesting


def _deep_list(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def _deep_object(levels: int) -> bytes:
    return b'{"a":' * (levels - 1) + b"{}" + b"}" * (levels - 1)


_SET_PREFIX = b'{"id":"c-2","method":"set","uri":"/x","type":"application/json","resource":'
for levels in (MAX_DEPTH, MAX_DEPTH + 10, 1024, 5000, 100_000):
    # The envelope is one level: a resource `levels` deep makes `levels + 1` in all.
    _add(f"deep/resource-list-{levels}", _SET_PREFIX + _deep_list(levels) + b"}")
for levels in (MAX_DEPTH, 1024, 20_000):
    _add(f"deep/resource-object-{levels}", _SET_PREFIX + _deep_object(levels) + b"}")
_add("deep/message-content", b'{"id":"m-1","type":"application/json","content":'
     + _deep_list(MAX_DEPTH * 2) + b"}")
_add("deep/authentication", b'{"id":"s-1","state":"authenticating","scheme":"keypair",'
     b'"authentication":' + _deep_object(MAX_DEPTH) + b"}")
_add("deep/unknown-key", b'{"id":"c-1","method":"get","uri":"/x","x":' + _deep_list(MAX_DEPTH)
     + b"}")
_add("deep/unclosed", b'{"id":"c-1","method":"get","uri":"/x","x":' + b"[" * 200_000)
_add("deep/top-level-array", _deep_list(50_000))

# ------------------------------------------------------------------- duplicate keys and ids
# The last duplicate wins (as in every parser we interoperate with), so each of these ends bad.
for name, raw in [
    ("id-then-null", b'{"id":"c-1","id":null,"method":"get","uri":"/x"}'),
    ("id-then-int", b'{"id":"c-1","id":1,"method":"get","uri":"/x"}'),
    ("id-then-empty", b'{"id":"c-1","id":"","method":"get","uri":"/x"}'),
    ("method-then-bad", b'{"id":"c-1","method":"get","method":"fly","uri":"/x"}'),
    ("uri-then-null", b'{"id":"c-1","method":"get","uri":"/x","uri":null}'),
    ("status-then-failure", b'{"id":"c-3","method":"get","status":"success","status":"failure"}'),
    ("reason-then-string", b'{"id":"c-3","method":"get","status":"failure",'
                           b'"reason":{"code":67},"reason":"not found"}'),
    ("content-then-null", b'{"id":"m-1","type":"a","content":"x","content":null}'),
    ("state-then-bad", b'{"id":"s-1","state":"finishing","state":"done"}'),
    ("event-then-failed", b'{"id":"m-1","event":"received","event":"failed"}'),
    ("code-then-string", b'{"id":"c-3","method":"get","status":"failure",'
                         b'"reason":{"code":67,"code":"67"}}'),
    ("from-then-space", b'{"id":"m-1","type":"a","content":1,"from":"a@b","from":"a b"}'),
]:
    _add(f"duplicate/{name}", raw)

# --------------------------------------------------------------------------------- oversize
_add("oversize/message-content", _dump({**MESSAGE, "content": "x" * MAX_ENVELOPE_SIZE}))
_add("oversize/garbage", b"{" + b" " * MAX_ENVELOPE_SIZE + b"}")

FAMILIES = frozenset(name.split("/", 1)[0] for name, _ in CORPUS)
