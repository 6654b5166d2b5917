"""Node identities, key files, authorised keys, known hosts and the keypair proof."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import nacl.bindings
import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rain_envelopes.errors import KeyFileError, RainError
from rain_envelopes.keys import (
    KEYPAIR_TRANSCRIPT_VERSION,
    AuthorizedKeys,
    Identity,
    KnownHosts,
    curve_public_key,
    format_public_key,
    keypair_transcript,
    load_public_key,
    parse_public_key,
    sign_keypair_challenge,
    verify_keypair_signature,
)

# Not valid Ed25519 public keys: the identity point (small order) and bytes off the curve.
SMALL_ORDER_KEY = b"\x01" + b"\x00" * 31
OFF_CURVE_KEY = bytes(range(32))


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """A umask that hides nothing, so a file's mode is exactly what its creator asked for."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def seed_text(identity: Identity) -> str:
    return base64.b64encode(identity.signing_key.encode()).decode()


def write_secret(path: Path, lines: list[str], mode: int = 0o600) -> Path:
    path.write_text("\n".join(lines) + "\n")
    path.chmod(mode)
    return path


# ------------------------------------------------------------------------------ identity files


def test_save_then_load_gives_the_same_identity(tmp_path: Path) -> None:
    identity = Identity.generate()
    identity.save(tmp_path / "node.key")
    loaded = Identity.load(tmp_path / "node.key")
    assert loaded.public_key == identity.public_key
    assert loaded.sign(b"data") == identity.sign(b"data")  # Ed25519 signing is deterministic


def test_load_accepts_str_paths(tmp_path: Path) -> None:
    identity = Identity.generate()
    identity.save(str(tmp_path / "node.key"))
    assert Identity.load(str(tmp_path / "node.key")).public_key == identity.public_key


def test_saved_secret_is_0600_even_with_an_open_umask(tmp_path: Path, umask_zero: None) -> None:
    Identity.generate().save(tmp_path / "node.key")
    assert mode_of(tmp_path / "node.key") == 0o600
    assert mode_of(tmp_path / "node.key.pub") == 0o644


def test_save_writes_the_public_key_file(tmp_path: Path) -> None:
    identity = Identity.generate()
    identity.save(tmp_path / "node.key")
    assert load_public_key(tmp_path / "node.key.pub") == identity.public_key
    assert identity.public_key_text in (tmp_path / "node.key.pub").read_text()


def test_secret_file_says_what_it_is(tmp_path: Path) -> None:
    identity = Identity.generate()
    identity.save(tmp_path / "node.key")
    lines = (tmp_path / "node.key").read_text().splitlines()
    assert lines[0].startswith("#")
    assert "private" in "\n".join(line for line in lines if line.startswith("#")).lower()
    assert lines[-1] == f"ed25519-secret: {seed_text(identity)}"


def test_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    Identity.generate().save(tmp_path / "node.key")
    Identity.generate().save(tmp_path / "node.key", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node.key", "node.key.pub"]


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    first, second = Identity.generate(), Identity.generate()
    first.save(tmp_path / "node.key")
    with pytest.raises(KeyFileError, match="overwrite"):
        second.save(tmp_path / "node.key")
    assert Identity.load(tmp_path / "node.key").public_key == first.public_key
    assert load_public_key(tmp_path / "node.key.pub") == first.public_key


def test_save_refuses_when_only_the_public_file_exists(tmp_path: Path) -> None:
    (tmp_path / "node.key.pub").write_text("someone else's key\n")
    with pytest.raises(KeyFileError, match=r"node\.key\.pub"):
        Identity.generate().save(tmp_path / "node.key")
    assert not (tmp_path / "node.key").exists()


def test_save_with_overwrite_replaces_both_files(tmp_path: Path, umask_zero: None) -> None:
    Identity.generate().save(tmp_path / "node.key")
    (tmp_path / "node.key").chmod(0o644)  # a loose old file must not lend its mode
    second = Identity.generate()
    second.save(tmp_path / "node.key", overwrite=True)
    assert mode_of(tmp_path / "node.key") == 0o600
    assert Identity.load(tmp_path / "node.key").public_key == second.public_key
    assert load_public_key(tmp_path / "node.key.pub") == second.public_key


def test_save_into_a_missing_folder_is_a_key_file_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot write"):
        Identity.generate().save(tmp_path / "missing" / "node.key")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o620, 0o602])
def test_load_refuses_a_secret_others_can_use(tmp_path: Path, mode: int) -> None:
    identity = Identity.generate()
    identity.save(tmp_path / "node.key")
    (tmp_path / "node.key").chmod(mode)
    with pytest.raises(KeyFileError) as caught:
        Identity.load(tmp_path / "node.key")
    message = str(caught.value)
    assert f"{mode:04o}" in message
    assert "chmod 600" in message
    assert seed_text(identity) not in message


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_load_accepts_owner_only_modes(tmp_path: Path, mode: int) -> None:
    identity = Identity.generate()
    identity.save(tmp_path / "node.key")
    (tmp_path / "node.key").chmod(mode)
    assert Identity.load(tmp_path / "node.key").public_key == identity.public_key


def test_load_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        Identity.load(tmp_path / "nope.key")


def test_load_of_a_folder(tmp_path: Path) -> None:
    (tmp_path / "dir.key").mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="not a regular file"):
        Identity.load(tmp_path / "dir.key")


def test_load_of_a_fifo_does_not_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.key", 0o600)
    with pytest.raises(KeyFileError, match="not a regular file"):
        Identity.load(tmp_path / "fifo.key")


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["# only a comment"], "no 'ed25519-secret:' line"),
        ([], "no 'ed25519-secret:' line"),
        (["# a comment", "", "ed25519-secret: not*base64"], r":3: the secret key is not valid"),
        (["ed25519-secret: " + base64.b64encode(b"x" * 31).decode()], ":1: .* 31 bytes"),
        (["ed25519-secret: " + base64.b64encode(b"x" * 64).decode()], ":1: .* 64 bytes"),
        (["# comment", "ssh-ed25519 AAAA"], ":2: expected 'ed25519-secret:"),
        (
            ["ed25519-secret: " + base64.b64encode(b"a" * 32).decode()] * 2,
            ":2: a second secret key",
        ),
    ],
)
def test_load_names_what_is_wrong_and_where(
    tmp_path: Path, lines: list[str], expected: str
) -> None:
    write_secret(tmp_path / "bad.key", lines)
    with pytest.raises(KeyFileError, match=expected):
        Identity.load(tmp_path / "bad.key")


def test_load_of_binary_garbage(tmp_path: Path) -> None:
    (tmp_path / "bad.key").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / "bad.key").chmod(0o600)
    with pytest.raises(KeyFileError, match="not UTF-8"):
        Identity.load(tmp_path / "bad.key")


def test_load_error_does_not_echo_a_malformed_secret(tmp_path: Path) -> None:
    almost_a_secret = base64.b64encode(b"s" * 31).decode() + "!"
    write_secret(tmp_path / "bad.key", [f"ed25519-secret: {almost_a_secret}"])
    with pytest.raises(KeyFileError) as caught:
        Identity.load(tmp_path / "bad.key")
    assert almost_a_secret not in str(caught.value)


def test_a_key_file_error_is_a_rain_error() -> None:
    assert issubclass(KeyFileError, RainError)


def test_no_secret_in_repr_or_str() -> None:
    identity = Identity.generate()
    seed = identity.signing_key.encode()
    for text in (repr(identity), str(identity)):
        assert identity.public_key_text in text
        for secret_form in (seed_text(identity), seed.hex(), repr(seed)):
            assert secret_form not in text


def test_identity_wants_a_signing_key() -> None:
    with pytest.raises(TypeError):
        Identity(b"\x00" * 32)  # type: ignore[arg-type]


def test_sign_gives_a_verifiable_64_byte_signature() -> None:
    identity = Identity.generate()
    signature = identity.sign(b"hello")
    assert len(signature) == 64
    nacl.signing.VerifyKey(identity.public_key).verify(b"hello", signature)


def test_sign_refuses_non_bytes() -> None:
    with pytest.raises(TypeError):
        Identity.generate().sign(5)  # type: ignore[arg-type]


def test_curve_keypair_is_a_matching_pair_derived_from_the_identity() -> None:
    identity = Identity.generate()
    public, secret = identity.curve_keypair()
    assert len(public) == len(secret) == 32
    assert nacl.bindings.crypto_scalarmult_base(secret) == public
    assert curve_public_key(identity.public_key) == public
    assert public != identity.public_key


# ------------------------------------------------------------------------------ public keys


def test_format_and_parse_round_trip() -> None:
    key = Identity.generate().public_key
    text = format_public_key(key)
    assert text == "ed25519:" + base64.b64encode(key).decode()
    assert parse_public_key(text) == key
    assert parse_public_key(text.removeprefix("ed25519:")) == key
    assert parse_public_key(f"  {text}\n") == key


def test_format_refuses_a_wrong_length() -> None:
    with pytest.raises(KeyFileError, match="32 bytes"):
        format_public_key(b"\x01" * 31)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "empty"),
        ("ed25519:", "empty"),
        ("ed25519:not base64!", "not valid base64"),
        ("ed25519:" + base64.b64encode(b"k" * 31).decode(), "31 bytes"),
        ("ed25519:" + base64.b64encode(b"k" * 33).decode(), "33 bytes"),
        ("curve25519:" + base64.b64encode(b"k" * 32).decode(), "unsupported key type"),
        ("ed25519:" + base64.b64encode(SMALL_ORDER_KEY).decode(), "not a valid Ed25519 point"),
        ("ed25519:" + base64.b64encode(OFF_CURVE_KEY).decode(), "not a valid Ed25519 point"),
    ],
)
def test_parse_names_the_problem(text: str, expected: str) -> None:
    with pytest.raises(KeyFileError, match=expected):
        parse_public_key(text)


def test_parse_refuses_non_canonical_base64() -> None:
    canonical = base64.b64encode(Identity.generate().public_key).decode()
    # The character before '=' carries two spare bits; set one and the bytes stay the same.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = canonical[-2]
    twisted = canonical[:-2] + alphabet[alphabet.index(last) | 1] + "="
    assert base64.b64decode(twisted) == base64.b64decode(canonical)
    with pytest.raises(KeyFileError, match="canonical"):
        parse_public_key(twisted)


def test_load_public_key_skips_comments(tmp_path: Path) -> None:
    key = Identity.generate().public_key
    (tmp_path / "peer.pub").write_text(f"# a comment\n\n{format_public_key(key)} bob's laptop\n")
    assert load_public_key(tmp_path / "peer.pub") == key


def test_load_public_key_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "peer.pub").write_text("# comment\ned25519:AAAA\n")
    with pytest.raises(KeyFileError, match=r"peer\.pub:2: "):
        load_public_key(tmp_path / "peer.pub")


def test_load_public_key_refuses_a_secret_file(tmp_path: Path) -> None:
    Identity.generate().save(tmp_path / "node.key")
    with pytest.raises(KeyFileError, match="secret key file"):
        load_public_key(tmp_path / "node.key")


@pytest.mark.parametrize("content", ["", "# nothing here\n\n"])
def test_load_public_key_of_an_empty_file(tmp_path: Path, content: str) -> None:
    (tmp_path / "peer.pub").write_text(content)
    with pytest.raises(KeyFileError, match="no public key"):
        load_public_key(tmp_path / "peer.pub")


def test_load_public_key_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        load_public_key(tmp_path / "peer.pub")


@pytest.mark.parametrize("bad", [SMALL_ORDER_KEY, OFF_CURVE_KEY, b"\x01" * 31, b""])
def test_curve_public_key_refuses_invalid_keys(bad: bytes) -> None:
    with pytest.raises(KeyFileError):
        curve_public_key(bad)


# ------------------------------------------------------------------------------ authorised keys


def write_table(path: Path, lines: list[str], mode: int = 0o644) -> Path:
    path.write_text("\n".join(lines) + "\n")
    path.chmod(mode)  # explicit: under a umask of 002 write_text would leave it group-writable
    return path


def test_authorized_keys_parse_and_lookup(tmp_path: Path) -> None:
    alice, bob, stranger = Identity.generate(), Identity.generate(), Identity.generate()
    file = write_table(
        tmp_path / "authorized_keys",
        [
            "# who may connect",
            "",
            f"{alice.public_key_text} alice@irf",
            f"   {bob.public_key_text}\tbob@irf   # bob's laptop",
        ],
    )
    keys = AuthorizedKeys.load(file)
    assert len(keys) == 2
    assert keys.path == file
    assert keys.lookup(alice.public_key) == "alice@irf"
    assert keys.lookup(bob.public_key) == "bob@irf"
    assert keys.lookup(stranger.public_key) is None
    assert alice.public_key in keys
    assert alice.public_key_text in keys
    assert stranger.public_key not in keys
    assert dict(keys.items()) == {alice.public_key: "alice@irf", bob.public_key: "bob@irf"}


def test_two_keys_may_share_a_name(tmp_path: Path) -> None:
    laptop, desktop = Identity.generate(), Identity.generate()
    file = write_table(
        tmp_path / "ak",
        [f"{laptop.public_key_text} alice@irf", f"{desktop.public_key_text} alice@irf"],
    )
    keys = AuthorizedKeys.load(file)
    assert keys.lookup(laptop.public_key) == keys.lookup(desktop.public_key) == "alice@irf"


@pytest.mark.parametrize("garbage", ["ed25519:abc", None, 42, bytearray(3), b""])
def test_lookups_never_raise(garbage: object) -> None:
    keys = AuthorizedKeys.from_mapping({Identity.generate().public_key: "alice@irf"})
    assert keys.lookup(garbage) is None  # type: ignore[arg-type]
    assert keys.lookup_curve(garbage) is None  # type: ignore[arg-type]
    assert garbage not in keys


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("ed25519:AAAA alice@irf", r"authorized_keys:3: public key"),
        ("{key}", r"authorized_keys:3: expected two fields"),
        ("{key} alice@irf extra", r"authorized_keys:3: expected two fields"),
        ("alice@irf {key}", r"authorized_keys:3: unsupported key type|authorized_keys:3: public"),
        (f"ed25519:{base64.b64encode(SMALL_ORDER_KEY).decode()} x@y", "authorized_keys:3: .*point"),
    ],
)
def test_authorized_keys_bad_line_names_file_and_line(
    tmp_path: Path, line: str, expected: str
) -> None:
    good = Identity.generate().public_key_text
    other = Identity.generate().public_key_text
    file = write_table(
        tmp_path / "authorized_keys", ["# header", f"{good} ok@irf", line.format(key=other)]
    )
    with pytest.raises(KeyFileError, match=expected):
        AuthorizedKeys.load(file)


def test_authorized_keys_duplicate_key_names_both_lines(tmp_path: Path) -> None:
    key = Identity.generate().public_key_text
    file = write_table(
        tmp_path / "authorized_keys",
        [f"{key} alice@irf", "# between", f"{key} mallory@irf"],
    )
    with pytest.raises(KeyFileError, match=r"authorized_keys:3: .*already listed on line 1"):
        AuthorizedKeys.load(file)


def test_authorized_keys_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        AuthorizedKeys.load(tmp_path / "authorized_keys")


def test_from_mapping_takes_text_and_raw_keys() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    keys = AuthorizedKeys.from_mapping(
        {alice.public_key_text: "alice@irf", bob.public_key: "bob@irf"}
    )
    assert keys.lookup(alice.public_key) == "alice@irf"
    assert keys.lookup(bob.public_key) == "bob@irf"
    assert keys.path is None


def test_from_mapping_refuses_the_same_key_twice() -> None:
    alice = Identity.generate()
    with pytest.raises(KeyFileError, match="twice"):
        AuthorizedKeys.from_mapping({alice.public_key_text: "a@irf", alice.public_key: "b@irf"})


@pytest.mark.parametrize("name", ["", "two words", "#comment"])
def test_bad_identity_names_are_refused(name: str) -> None:
    with pytest.raises(KeyFileError, match="identity name"):
        AuthorizedKeys.from_mapping({Identity.generate().public_key: name})


def test_constructor_validates_keys() -> None:
    with pytest.raises(KeyFileError):
        AuthorizedKeys({OFF_CURVE_KEY: "x@irf"})


def test_lookup_curve_maps_a_curve_key_back_to_its_ed25519_key() -> None:
    alice, stranger = Identity.generate(), Identity.generate()
    keys = AuthorizedKeys.from_mapping({alice.public_key: "alice@irf"})
    alice_curve, _ = alice.curve_keypair()
    assert keys.lookup_curve(alice_curve) == alice.public_key
    assert keys.lookup_curve(stranger.curve_keypair()[0]) is None
    # The Ed25519 key itself is not a curve key of anyone here.
    assert keys.lookup_curve(alice.public_key) is None


def test_reload_returns_removed_keys_and_updates_lookups(tmp_path: Path) -> None:
    alice, bob, carol = (Identity.generate() for _ in range(3))
    file = write_table(
        tmp_path / "ak", [f"{alice.public_key_text} alice@irf", f"{bob.public_key_text} bob@irf"]
    )
    keys = AuthorizedKeys.load(file)
    version = keys.version
    write_table(file, [f"{alice.public_key_text} alice@irf", f"{carol.public_key_text} carol@irf"])
    assert keys.reload() == {bob.public_key}
    assert keys.version > version
    assert keys.lookup(bob.public_key) is None
    assert keys.lookup_curve(bob.curve_keypair()[0]) is None
    assert keys.lookup(carol.public_key) == "carol@irf"
    assert keys.lookup_curve(carol.curve_keypair()[0]) == carol.public_key


def test_reload_counts_a_renamed_key_as_revoked(tmp_path: Path) -> None:
    alice = Identity.generate()
    file = write_table(tmp_path / "ak", [f"{alice.public_key_text} alice@irf"])
    keys = AuthorizedKeys.load(file)
    write_table(file, [f"{alice.public_key_text} admin@irf"])
    assert keys.reload() == {alice.public_key}
    assert keys.lookup(alice.public_key) == "admin@irf"


def test_reload_of_an_unchanged_file_removes_nothing_but_bumps_the_version(tmp_path: Path) -> None:
    file = write_table(tmp_path / "ak", [f"{Identity.generate().public_key_text} alice@irf"])
    keys = AuthorizedKeys.load(file)
    version = keys.version
    assert keys.reload() == set()
    assert keys.version == version + 1


def test_reload_of_a_bad_file_keeps_the_old_entries(tmp_path: Path) -> None:
    alice = Identity.generate()
    file = write_table(tmp_path / "ak", [f"{alice.public_key_text} alice@irf"])
    keys = AuthorizedKeys.load(file)
    version = keys.version
    write_table(file, ["this is not a key file"])
    with pytest.raises(KeyFileError, match="ak:1"):
        keys.reload()
    assert keys.lookup(alice.public_key) == "alice@irf"
    assert keys.lookup_curve(alice.curve_keypair()[0]) == alice.public_key
    assert keys.version == version


def test_reload_without_a_path() -> None:
    with pytest.raises(KeyFileError, match="not loaded from a file"):
        AuthorizedKeys().reload()


def test_add_then_save_then_load(tmp_path: Path) -> None:
    alice, bob = Identity.generate(), Identity.generate()
    keys = AuthorizedKeys()
    version = keys.version
    keys.add(alice.public_key, "alice@irf")
    keys.add(bob.public_key, "bob@irf")
    assert keys.version == version + 2
    assert keys.lookup_curve(bob.curve_keypair()[0]) == bob.public_key
    keys.save(tmp_path / "ak")
    loaded = AuthorizedKeys.load(tmp_path / "ak")
    assert dict(loaded.items()) == dict(keys.items())


def test_save_defaults_to_the_loaded_path(tmp_path: Path) -> None:
    alice, bob = Identity.generate(), Identity.generate()
    file = write_table(tmp_path / "ak", [f"{alice.public_key_text} alice@irf"])
    file.chmod(0o600)
    keys = AuthorizedKeys.load(file)
    keys.add(bob.public_key, "bob@irf")
    keys.save()
    assert AuthorizedKeys.load(file).lookup(bob.public_key) == "bob@irf"
    assert mode_of(file) == 0o600


def test_save_without_a_path() -> None:
    with pytest.raises(KeyFileError, match="no path"):
        AuthorizedKeys().save()


def test_add_refuses_to_rename_a_key() -> None:
    alice = Identity.generate()
    keys = AuthorizedKeys.from_mapping({alice.public_key: "alice@irf"})
    keys.add(alice.public_key, "alice@irf")  # the same entry again is fine
    with pytest.raises(KeyFileError, match="already authorised as 'alice@irf'"):
        keys.add(alice.public_key, "admin@irf")
    assert keys.lookup(alice.public_key) == "alice@irf"


def test_add_refuses_an_invalid_key() -> None:
    with pytest.raises(KeyFileError):
        AuthorizedKeys().add(OFF_CURVE_KEY, "x@irf")


def test_repr_mentions_size_and_source(tmp_path: Path) -> None:
    file = write_table(tmp_path / "ak", [f"{Identity.generate().public_key_text} alice@irf"])
    assert "1 keys" in repr(AuthorizedKeys.load(file))
    assert str(file) in repr(AuthorizedKeys.load(file))


def mirror(key: bytes) -> bytes:
    """-P for an Ed25519 key P: the sign of x lives in the top bit of the last byte."""
    return key[:31] + bytes([key[31] ^ 0x80])


def test_a_mirror_key_is_another_valid_key_with_the_same_curve_form() -> None:
    # The premise of the mirror-key tests below (RELIABILITY.md trap 13): pynacl takes -P as a
    # key of its own, and it converts to the very Curve25519 key CURVE sees for P.
    key = Identity.generate().public_key
    other = mirror(key)
    assert other != key
    nacl.signing.VerifyKey(other)
    assert parse_public_key(format_public_key(other)) == other
    assert curve_public_key(other) == curve_public_key(key)
    assert nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(other) == curve_public_key(key)


@pytest.mark.parametrize("names", [("alice@lab", "bob@lab"), ("alice@lab", "alice@lab")])
def test_load_refuses_a_key_and_its_mirror_naming_both_lines(
    tmp_path: Path, names: tuple[str, str]
) -> None:
    # Before issue 7 the second line silently took over the Curve25519 index: Alice's CURVE
    # handshake was then looked up as -P and she was established as bob@lab.
    key = Identity.generate().public_key
    file = write_table(
        tmp_path / "authorized_keys",
        [
            "# header",
            f"{format_public_key(key)} {names[0]}",
            f"{Identity.generate().public_key_text} carol@lab",
            f"{format_public_key(mirror(key))} {names[1]}",
        ],
    )
    with pytest.raises(KeyFileError) as caught:
        AuthorizedKeys.load(file)
    message = str(caught.value)
    assert f"{file}:4:" in message
    assert f"on {file}:2" in message
    assert format_public_key(key) in message
    assert format_public_key(mirror(key)) in message
    assert "Curve25519" in message


def test_reload_refuses_a_mirror_and_keeps_the_old_entries(tmp_path: Path) -> None:
    alice = Identity.generate()
    file = write_table(tmp_path / "ak", [f"{alice.public_key_text} alice@lab"])
    keys = AuthorizedKeys.load(file)
    write_table(file, [
        f"{alice.public_key_text} alice@lab",
        f"{format_public_key(mirror(alice.public_key))} bob@lab",
    ])
    with pytest.raises(KeyFileError, match=r"ak:2: .*mirror.* on .*ak:1"):
        keys.reload()
    assert keys.lookup_curve(alice.curve_keypair()[0]) == alice.public_key
    assert keys.lookup(mirror(alice.public_key)) is None


def test_every_way_into_a_table_refuses_a_mirror() -> None:
    key = Identity.generate().public_key
    with pytest.raises(KeyFileError, match="mirror"):
        AuthorizedKeys({key: "alice@lab", mirror(key): "bob@lab"})
    with pytest.raises(KeyFileError, match="mirror"):
        AuthorizedKeys.from_mapping(
            {format_public_key(key): "alice@lab", mirror(key): "bob@lab"}
        )
    keys = AuthorizedKeys.from_mapping({key: "alice@lab"})
    version = keys.version
    with pytest.raises(KeyFileError, match="mirror"):
        keys.add(mirror(key), "bob@lab")
    with pytest.raises(KeyFileError, match="mirror"):
        keys.add(mirror(key), "alice@lab")
    assert dict(keys.items()) == {key: "alice@lab"}
    assert keys.lookup_curve(curve_public_key(key)) == key
    assert keys.version == version


def test_a_mirror_listed_alone_is_the_one_name_of_its_curve_key() -> None:
    # What the refusal cannot change: CURVE proves only the Curve25519 key, so with -P listed
    # alone the holder of P's secret passes the handshake and gets -P's name. That holder can
    # sign as -P too (negated scalar), so it is one key holder, now with exactly one name.
    holder = Identity.generate()
    keys = AuthorizedKeys.from_mapping({mirror(holder.public_key): "bob@lab"})
    listed = keys.lookup_curve(holder.curve_keypair()[0])
    assert listed == mirror(holder.public_key)
    assert keys.lookup(listed) == "bob@lab"
    # Looked up by exact Ed25519 key (the keypair scheme), P itself is not listed.
    assert keys.lookup(holder.public_key) is None


@pytest.mark.parametrize("mode", [0o666, 0o664, 0o646, 0o620, 0o602, 0o660], ids=oct)
def test_load_refuses_an_authorized_keys_file_others_may_write(tmp_path: Path, mode: int) -> None:
    file = write_table(
        tmp_path / "authorized_keys", [f"{Identity.generate().public_key_text} alice@irf"], mode
    )
    with pytest.raises(KeyFileError) as caught:
        AuthorizedKeys.load(file)
    message = str(caught.value)
    assert f"mode {mode:04o}" in message
    assert f"chmod go-w {file}" in message
    assert ("group (write)" in message) == bool(mode & stat.S_IWGRP)
    assert ("others (write)" in message) == bool(mode & stat.S_IWOTH)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o600, 0o400, 0o444], ids=oct)
def test_load_accepts_an_authorized_keys_file_only_its_owner_may_write(
    tmp_path: Path, mode: int
) -> None:
    alice = Identity.generate()
    file = write_table(tmp_path / "authorized_keys", [f"{alice.public_key_text} alice@irf"], mode)
    assert AuthorizedKeys.load(file).lookup(alice.public_key) == "alice@irf"


def test_reload_refuses_a_file_made_writable_by_others_and_keeps_the_old_entries(
    tmp_path: Path,
) -> None:
    alice, bob = Identity.generate(), Identity.generate()
    file = write_table(tmp_path / "ak", [f"{alice.public_key_text} alice@irf"])
    keys = AuthorizedKeys.load(file)
    write_table(file, [f"{bob.public_key_text} mallory@irf"], 0o666)
    with pytest.raises(KeyFileError, match="chmod go-w"):
        keys.reload()
    assert keys.lookup(alice.public_key) == "alice@irf"
    assert keys.lookup(bob.public_key) is None


def test_save_takes_write_access_from_group_and_others(tmp_path: Path, umask_zero: None) -> None:
    file = tmp_path / "ak"
    file.write_text("")
    file.chmod(0o666)
    keys = AuthorizedKeys.from_mapping({Identity.generate().public_key: "alice@irf"})
    keys.save(file)
    assert mode_of(file) == 0o644
    AuthorizedKeys.load(file)
    keys.save(tmp_path / "new")
    assert mode_of(tmp_path / "new") == 0o644


# ------------------------------------------------------------------------------ known hosts


def test_known_hosts_round_trip(tmp_path: Path) -> None:
    server, other = Identity.generate(), Identity.generate()
    hosts = KnownHosts()
    hosts.add("tcp://127.0.0.1:4505", server.public_key)
    hosts.add("ipc:///tmp/rain.sock", other.public_key)
    hosts.save(tmp_path / "known_hosts")
    loaded = KnownHosts.load(tmp_path / "known_hosts")
    assert loaded.lookup("tcp://127.0.0.1:4505") == server.public_key
    assert loaded.lookup(" ipc:///tmp/rain.sock ") == other.public_key
    assert loaded.lookup("tcp://127.0.0.1:4506") is None
    assert len(loaded) == 2
    assert "tcp://127.0.0.1:4505" in loaded


def test_known_hosts_file_format(tmp_path: Path) -> None:
    server = Identity.generate()
    file = write_table(
        tmp_path / "known_hosts",
        ["# pinned servers", "", f"tcp://radar.example:4505 {server.public_key_text}  # radar"],
    )
    assert KnownHosts.load(file).lookup("tcp://radar.example:4505") == server.public_key


def test_known_hosts_duplicate_endpoint_names_both_lines(tmp_path: Path) -> None:
    a, b = Identity.generate(), Identity.generate()
    file = write_table(
        tmp_path / "known_hosts",
        [f"tcp://h:1 {a.public_key_text}", f"tcp://h:1 {b.public_key_text}"],
    )
    with pytest.raises(KeyFileError, match=r"known_hosts:2: .*already pinned on line 1"):
        KnownHosts.load(file)


def test_known_hosts_bad_key_names_the_line(tmp_path: Path) -> None:
    file = write_table(tmp_path / "known_hosts", ["# x", "tcp://h:1 ed25519:nope"])
    with pytest.raises(KeyFileError, match=r"known_hosts:2: "):
        KnownHosts.load(file)


def test_known_hosts_refuse_a_changed_key() -> None:
    first, second = Identity.generate(), Identity.generate()
    hosts = KnownHosts()
    hosts.add("tcp://h:1", first.public_key)
    hosts.add("tcp://h:1", first.public_key)
    with pytest.raises(KeyFileError, match="pinned"):
        hosts.add("tcp://h:1", second.public_key)
    assert hosts.lookup("tcp://h:1") == first.public_key


# ------------------------------------------------------------------------------ keypair proof

SESSION, CHALLENGE, CLIENT, SERVER = "S1", b"c" * 32, "alice@irf/lab", "radar@irf/main"
BASE = (SESSION, CHALLENGE, CLIENT, SERVER)


def test_transcript_is_versioned_and_length_prefixed() -> None:
    transcript = keypair_transcript(*BASE)
    tag = KEYPAIR_TRANSCRIPT_VERSION
    assert transcript.startswith(len(tag).to_bytes(4, "big") + tag)
    assert transcript.endswith(len(SERVER).to_bytes(4, "big") + SERVER.encode())


@pytest.mark.parametrize(
    "changed",
    [
        ("S2", CHALLENGE, CLIENT, SERVER),
        (SESSION, b"d" * 32, CLIENT, SERVER),
        (SESSION, CHALLENGE[:-1], CLIENT, SERVER),
        (SESSION, CHALLENGE, "bob@irf/lab", SERVER),
        (SESSION, CHALLENGE, CLIENT, "radar@irf/spare"),
        (SESSION, CHALLENGE, SERVER, CLIENT),
    ],
)
def test_changing_any_field_changes_the_transcript(changed: tuple[str, bytes, str, str]) -> None:
    assert keypair_transcript(*changed) != keypair_transcript(*BASE)


def test_moving_a_boundary_between_fields_changes_the_transcript() -> None:
    assert keypair_transcript("ab", b"c", "x", "y") != keypair_transcript("a", b"bc", "x", "y")
    assert keypair_transcript("s", b"c", "ab", "c") != keypair_transcript("s", b"c", "a", "bc")


def test_nodes_compare_case_insensitively_in_the_transcript() -> None:
    assert keypair_transcript("S1", CHALLENGE, "Alice@IRF/Lab", "RADAR@irf/Main") == (
        keypair_transcript(*BASE)
    )
    # The session id is not a node: its case matters.
    assert keypair_transcript("s1", CHALLENGE, CLIENT, SERVER) != keypair_transcript(*BASE)


_fields = st.tuples(
    st.text(max_size=8), st.binary(max_size=8), st.text(max_size=8), st.text(max_size=8)
)


@given(_fields, _fields)
def test_transcript_is_injective(
    a: tuple[str, bytes, str, str], b: tuple[str, bytes, str, str]
) -> None:
    def same(x: tuple[str, bytes, str, str], y: tuple[str, bytes, str, str]) -> bool:
        return (x[0], x[1], x[2].casefold(), x[3].casefold()) == (
            y[0],
            y[1],
            y[2].casefold(),
            y[3].casefold(),
        )

    assert (keypair_transcript(*a) == keypair_transcript(*b)) == same(a, b)


def test_transcript_accepts_lone_surrogates() -> None:
    assert keypair_transcript("\ud800", b"", "\udfff", "x") != keypair_transcript("", b"", "", "x")


def test_transcript_refuses_wrong_types() -> None:
    with pytest.raises(TypeError):
        keypair_transcript("S1", "not bytes", CLIENT, SERVER)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        keypair_transcript(b"S1", CHALLENGE, CLIENT, SERVER)  # type: ignore[arg-type]


def test_sign_then_verify() -> None:
    alice = Identity.generate()
    signature = sign_keypair_challenge(alice, *BASE)
    assert len(signature) == 64
    assert verify_keypair_signature(alice.public_key, signature, *BASE)
    # Node case does not matter to the check either.
    assert verify_keypair_signature(
        alice.public_key, signature, SESSION, CHALLENGE, CLIENT.upper(), SERVER.upper()
    )


@pytest.mark.parametrize(
    "other",
    [
        ("S2", CHALLENGE, CLIENT, SERVER),
        (SESSION, b"d" * 32, CLIENT, SERVER),
        (SESSION, CHALLENGE, "mallory@irf/lab", SERVER),
        (SESSION, CHALLENGE, CLIENT, "evil@irf/main"),
    ],
)
def test_verify_refuses_a_signature_for_other_values(other: tuple[str, bytes, str, str]) -> None:
    alice = Identity.generate()
    signature = sign_keypair_challenge(alice, *BASE)
    assert not verify_keypair_signature(alice.public_key, signature, *other)


def test_verify_refuses_another_key() -> None:
    alice, mallory = Identity.generate(), Identity.generate()
    signature = sign_keypair_challenge(alice, *BASE)
    assert not verify_keypair_signature(mallory.public_key, signature, *BASE)


@pytest.mark.parametrize("position", [0, 31, 32, 63])
def test_verify_refuses_a_tampered_signature(position: int) -> None:
    alice = Identity.generate()
    signature = bytearray(sign_keypair_challenge(alice, *BASE))
    signature[position] ^= 0x01
    assert not verify_keypair_signature(alice.public_key, bytes(signature), *BASE)


def test_verify_refuses_a_plain_signature_of_the_same_fields() -> None:
    # Without the version tag and the length prefixes the signature must not count.
    alice = Identity.generate()
    naive = alice.sign(SESSION.encode() + CHALLENGE + CLIENT.encode() + SERVER.encode())
    assert not verify_keypair_signature(alice.public_key, naive, *BASE)


@pytest.mark.parametrize(
    ("key", "signature"),
    [
        (b"", b"\x00" * 64),
        (b"\x01" * 31, b"\x00" * 64),
        (b"\x01" * 33, b"\x00" * 64),
        (SMALL_ORDER_KEY, b"\x00" * 64),
        (OFF_CURVE_KEY, b"\x00" * 64),
        (None, b"\x00" * 64),
        ("ed25519:AAAA", b"\x00" * 64),
        ("valid", b""),
        ("valid", b"\x00" * 63),
        ("valid", b"\x00" * 65),
        ("valid", None),
        ("valid", "a" * 64),
    ],
)
def test_verify_returns_false_for_garbage(key: object, signature: object) -> None:
    alice = Identity.generate()
    if key == "valid":
        key = alice.public_key
    assert verify_keypair_signature(key, signature, *BASE) is False  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fields",
    [
        (None, CHALLENGE, CLIENT, SERVER),
        (SESSION, "text", CLIENT, SERVER),
        (SESSION, CHALLENGE, 7, SERVER),
        (SESSION, CHALLENGE, CLIENT, b"bytes"),
    ],
)
def test_verify_returns_false_for_wrong_field_types(fields: tuple[object, ...]) -> None:
    alice = Identity.generate()
    signature = sign_keypair_challenge(alice, *BASE)
    assert verify_keypair_signature(alice.public_key, signature, *fields) is False  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["alice@irf/laptop", "a/b", "x" * 2000])
def test_authorised_names_must_be_node_identities(tmp_path: Path, name: str) -> None:
    # The name becomes the session's node identity, so a name that cannot be one is refused
    # when the file is read (with its line), not when a client authenticates.
    key = Identity.generate().public_key_text
    path = tmp_path / "authorized_keys"
    path.write_text(f"# header\n{key} {name}\n")
    with pytest.raises(KeyFileError, match=r"authorized_keys:2: identity name"):
        AuthorizedKeys.load(path)


def test_key_files_live_apart_from_key_math(tmp_path: Path) -> None:
    # The methods users know hand over to rain_envelopes.keyfiles; both spellings agree.
    from rain_envelopes import keyfiles

    identity = Identity.generate()
    keyfiles.save_identity(identity, tmp_path / "node.key")
    assert Identity.load(tmp_path / "node.key").public_key == identity.public_key
    assert keyfiles.load_public_key(tmp_path / "node.key.pub") == identity.public_key
    table = AuthorizedKeys({identity.public_key: "alice@irf"})
    table.save(tmp_path / "authorized_keys")
    loaded = keyfiles.load_authorized_keys(tmp_path / "authorized_keys")
    assert loaded.lookup(identity.public_key) == "alice@irf"
    assert loaded.path == tmp_path / "authorized_keys"
    (tmp_path / "authorized_keys").write_text("")
    assert keyfiles.reload_authorized_keys(loaded) == {identity.public_key}
    assert loaded.version == 1
