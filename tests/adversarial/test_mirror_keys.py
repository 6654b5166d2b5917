"""Mirror keys (issue 7, defect 1): P and -P, an Ed25519 key with the top bit of its last byte
flipped, are two valid keys with one Curve25519 form, and CURVE proves only that form.

- A table listing P for alice and -P for bob would let alice in as bob: the server must refuse
  it, at start-up and on a reload (keeping the table it had), naming both lines.
- A table listing only -P names one key holder: P's holder, who can also sign as -P (negate the
  scalar). That holder is established under -P's name and only under it; nobody else gets in.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from rain_envelopes.keys import Identity, curve_public_key, format_public_key, parse_public_key

from .live import check_serves, eventually, make_site, serving
from .rawclient import RawClient, established_client

Context = zmq.Context[zmq.Socket[bytes]]


def mirror(public_key: bytes) -> bytes:
    """-P: the same Curve25519 key, the other sign of the Edwards x coordinate."""
    return public_key[:31] + bytes([public_key[31] ^ 0x80])


def _text(key: bytes) -> str:
    return format_public_key(key)


def _identity_of(envelope: dict[str, object]) -> str:
    """``name@domain`` of the node the server established us as (its ``to``)."""
    to = str(envelope.get("to", ""))
    return to.split("/", 1)[0]


@pytest.fixture
def alice() -> Identity:
    return Identity.generate()


def test_the_mirror_is_a_valid_key_with_the_same_curve_form(alice: Identity) -> None:
    minus = mirror(alice.public_key)
    assert minus != alice.public_key
    assert parse_public_key(_text(minus)) == minus  # a key the table would accept alone
    assert curve_public_key(minus) == alice.curve_keypair()[0]


def test_a_table_with_a_key_and_its_mirror_is_refused_at_start(
    tmp_path: Path, alice: Identity
) -> None:
    table = (f"{alice.public_key_text} alice@irf\n"
             f"{_text(mirror(alice.public_key))} bob@irf\n")
    site = make_site(tmp_path, authorized=table)
    process = subprocess.Popen(
        [sys.executable, "-m", "rain_envelopes.cli", "serve", str(site.config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        out, err = process.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate(timeout=5)
    assert process.returncode != 0, f"rain serve served a table with a mirror pair:\n{out}"
    assert "serving" not in out
    assert "authorized_keys:1" in err, err
    assert "authorized_keys:2" in err, err


def test_a_reload_to_a_mirror_pair_is_refused_and_the_old_table_kept(
    context: Context, tmp_path: Path
) -> None:
    with serving(tmp_path) as (site, server):
        table = site.folder / "authorized_keys"
        minus = _text(mirror(site.alice.public_key))
        table.write_text(table.read_text() + f"{minus} mallory@irf\n")
        before = server.log_bytes()
        server.process.send_signal(signal.SIGHUP)
        refused = eventually(
            lambda: "keeping the old authorised keys" in server.log_text(before), 5.0
        )
        assert refused is not None, server.log_text(before)
        assert "authorized_keys:3" in server.log_text(before)
        # The old table is in force: alice is alice, and nobody is mallory.
        with established_client(context, server.endpoint, site.bob, site.station) as bob:
            check_serves(bob)
        with RawClient(context, server.endpoint, identity=site.alice,
                       server=site.station) as again:
            again.open()
            assert _identity_of(again.establish()) == "alice@irf"


def test_a_lone_mirror_entry_names_its_one_holder(context: Context, tmp_path: Path) -> None:
    holder = Identity.generate()
    table = f"{_text(mirror(holder.public_key))} bob@irf\n"
    with serving(tmp_path, authorized=table) as (site, server):
        with RawClient(context, server.endpoint, identity=holder, server=site.station) as client:
            client.open()
            # Whatever node it claims, the server names it by the listed entry.
            reply = client.establish(node="alice@irf/claimed")
            assert reply.get("state") == "established", reply
            assert _identity_of(reply) == "bob@irf"
        # The two keys the site made authorised are not in this table.
        with RawClient(context, server.endpoint, identity=site.alice,
                       server=site.station) as stranger:
            assert stranger.wait_handshake(5.0) == zmq.EVENT_HANDSHAKE_FAILED_AUTH
