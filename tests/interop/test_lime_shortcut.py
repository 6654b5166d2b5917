"""lime-python 2.0.13 reading what the RAIN session shortcut puts on the wire (issue 8).

The shortcut must be invisible to a LIME peer that does not know it: the proposal travels in
one extension key of ``new`` (``rainProposal``), and what a RAIN server sends back uses only
LIME's own session fields. lime-python has no server to run against our client, so these tests
hand it the exact bytes our protocol objects produce and check what its envelope classes make
of them: a plain ``new`` with nothing changed, and ordinary session envelopes.
"""

from __future__ import annotations

import json
from typing import Any

from lime_python import Session as LimeSession

from rain_envelopes.auth import ClientCredentials, ServerAuthenticator
from rain_envelopes.envelopes import SessionCompression
from rain_envelopes.keys import AuthorizedKeys, Identity
from rain_envelopes.protocol import ClientProtocol, ServerProtocol
from rain_envelopes.session import PROPOSAL_KEY

ALICE = Identity.generate()


def _lime(data: bytes) -> Any:
    return LimeSession.from_json(json.loads(data))


def test_lime_reads_a_proposal_as_a_plain_new() -> None:
    client = ClientProtocol(
        node="alice@lab/bench",
        credentials=ClientCredentials(identity=ALICE, transport_secured=True),
        compression=SessionCompression.GZIP,
    )
    client.start()
    (new,) = client.data_to_send()
    assert PROPOSAL_KEY in json.loads(new)
    session = _lime(new)
    assert session.state == "new"
    # Nothing of the proposal lands in a LIME field: what lime-python would act on (and send
    # on, were it relaying) is exactly the plain `new`.
    assert session.to_json() == {"state": "new"}


def test_lime_reads_the_replies_of_a_server_that_took_a_proposal() -> None:
    keys = AuthorizedKeys({ALICE.public_key: "alice@lab"})
    server = ServerProtocol(
        node="station@lab", authenticator=ServerAuthenticator(keys), session_id="s1"
    )
    client = ClientProtocol(
        node="alice@lab/bench", credentials=ClientCredentials(identity=ALICE),
    )
    client.start()
    replies: list[Any] = []
    while not client.is_established:
        for data in client.data_to_send():
            server.receive_data(data)
        for data in server.data_to_send():
            replies.append(_lime(data))
            client.receive_data(data)
    assert [reply.state for reply in replies] == ["authenticating", "established"]
    challenge, established = replies
    assert challenge.id == established.id == "s1"
    assert set(challenge.authentication) == {"challenge"}
    assert challenge.compression == "none"
    assert established.to == "alice@lab/bench"
