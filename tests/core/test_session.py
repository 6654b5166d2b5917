"""Every cell of the session transition table, for both roles and both directions.

For each (phase, sender, step) the protocol either allows the step, in which case both the
sending role (``send``) and the receiving role (``receive``) move to the next phase, or it does
not, in which case the sender's machine raises LocalProtocolError, the receiver's
RemoteProtocolError (code 15), and neither changes phase.

The expectations are :data:`LEGAL`, written out here by hand from PROTOCOL.md ("Session
sequence") and DESIGN.md section 4, not read from the table under test: a test that took its
expectations from ``TRANSITIONS`` would pass whatever a cell said (issue 7, defect 10). The
shortcut's rows (issue 8, "long round trips") follow docs/explanation/session.md.
"""

from __future__ import annotations

import itertools

import pytest

from rain_envelopes.envelopes import Command, Message, Notification, Reason, Session
from rain_envelopes.errors import LocalProtocolError, RemoteProtocolError
from rain_envelopes.session import (
    PHASE_STATE,
    TRANSITIONS,
    Phase,
    Role,
    SessionMachine,
    Step,
    mermaid_diagram,
    step_of,
)

CELLS = list(itertools.product(Phase, Role, Step))

P, C, S = Phase, Role.CLIENT, Role.SERVER
_UP = (P.START, P.NEW_SENT, P.PROPOSAL_SENT, P.NEGOTIATION_OFFERED, P.NEGOTIATION_CHOSEN,
       P.NEGOTIATED, P.AUTHENTICATION_OFFERED, P.AUTHENTICATION_ANSWERED, P.ESTABLISHED,
       P.FINISHING)

#: Every legal step, ``(phase, sender, step) -> next phase``; any other cell is illegal.
LEGAL: dict[tuple[Phase, Role, Step], Phase] = {
    # C: {"state":"new"}
    (P.START, C, Step.NEW): P.NEW_SENT,
    # The server answers `new` with the first stage it has (negotiation and authentication may
    # each be skipped); `failed` and `finished` are below.
    (P.NEW_SENT, S, Step.NEGOTIATING): P.NEGOTIATION_OFFERED,
    (P.NEW_SENT, S, Step.AUTHENTICATING): P.AUTHENTICATION_OFFERED,
    (P.NEW_SENT, S, Step.ESTABLISHED): P.ESTABLISHED,
    # The shortcut: `new` with a proposal. The server may answer it in every way it may answer
    # `new`: `established` (it took the whole proposal), `authenticating` (a keypair challenge,
    # or the plain offer when it cannot take the scheme), `negotiating` (the plain offer when it
    # cannot take the options, or a LIME server that ignores the proposal).
    (P.START, C, Step.PROPOSE): P.PROPOSAL_SENT,
    (P.PROPOSAL_SENT, S, Step.NEGOTIATING): P.NEGOTIATION_OFFERED,
    (P.PROPOSAL_SENT, S, Step.AUTHENTICATING): P.AUTHENTICATION_OFFERED,
    (P.PROPOSAL_SENT, S, Step.ESTABLISHED): P.ESTABLISHED,
    # Negotiation: offer, the client's choice, the server's echo.
    (P.NEGOTIATION_OFFERED, C, Step.NEGOTIATING): P.NEGOTIATION_CHOSEN,
    (P.NEGOTIATION_CHOSEN, S, Step.NEGOTIATING): P.NEGOTIATED,
    (P.NEGOTIATED, S, Step.AUTHENTICATING): P.AUTHENTICATION_OFFERED,
    (P.NEGOTIATED, S, Step.ESTABLISHED): P.ESTABLISHED,
    # Authentication: offer, answer, then another round or the verdict.
    (P.AUTHENTICATION_OFFERED, C, Step.AUTHENTICATING): P.AUTHENTICATION_ANSWERED,
    (P.AUTHENTICATION_ANSWERED, S, Step.AUTHENTICATING): P.AUTHENTICATION_OFFERED,
    (P.AUTHENTICATION_ANSWERED, S, Step.ESTABLISHED): P.ESTABLISHED,
    # Established: traffic both ways; the client may ask to finish.
    (P.ESTABLISHED, C, Step.MESSAGE): P.ESTABLISHED,
    (P.ESTABLISHED, C, Step.NOTIFICATION): P.ESTABLISHED,
    (P.ESTABLISHED, C, Step.COMMAND): P.ESTABLISHED,
    (P.ESTABLISHED, S, Step.MESSAGE): P.ESTABLISHED,
    (P.ESTABLISHED, S, Step.NOTIFICATION): P.ESTABLISHED,
    (P.ESTABLISHED, S, Step.COMMAND): P.ESTABLISHED,
    (P.ESTABLISHED, C, Step.FINISHING): P.FINISHING,
    # Finishing: the server may still deliver what it had in flight; the client sends nothing.
    (P.FINISHING, S, Step.MESSAGE): P.FINISHING,
    (P.FINISHING, S, Step.NOTIFICATION): P.FINISHING,
    (P.FINISHING, S, Step.COMMAND): P.FINISHING,
    # The server may fail the session from every phase that has not ended (even before `new`,
    # to answer a first frame that is garbage) and finish it once there is one.
    **{(phase, S, Step.FAILED): P.FAILED for phase in _UP},
    **{(phase, S, Step.FINISHED): P.FINISHED for phase in _UP if phase is not P.START},
}


def _cell_id(cell: tuple[Phase, Role, Step]) -> str:
    phase, sender, step = cell
    return f"{phase.value}|{sender.value}|{step.value}"


def _machine(role: Role, phase: Phase) -> SessionMachine:
    machine = SessionMachine(role)
    machine.phase = phase
    return machine


@pytest.mark.parametrize("cell", CELLS, ids=_cell_id)
def test_every_cell(cell: tuple[Phase, Role, Step]) -> None:
    phase, sender, step = cell
    expected = LEGAL.get(cell)
    as_sender = _machine(sender, phase)
    as_receiver = _machine(sender.peer, phase)
    if expected is None:
        with pytest.raises(LocalProtocolError):
            as_sender.send_step(step)
        with pytest.raises(RemoteProtocolError) as caught:
            as_receiver.receive_step(step)
        assert caught.value.code == 15
        assert as_sender.phase is phase
        assert as_receiver.phase is phase
    else:
        as_sender.send_step(step)
        as_receiver.receive_step(step)
        assert as_sender.phase is expected
        assert as_receiver.phase is expected


def test_the_table_is_exactly_the_legal_steps() -> None:
    # The same check as test_every_cell in one place, so a changed cell shows as one diff.
    assert len(LEGAL) == 44
    assert {cell: TRANSITIONS.get(cell) for cell in CELLS if cell in TRANSITIONS} == LEGAL


def test_table_has_the_documented_shape() -> None:
    legal = {key for key in TRANSITIONS}
    # Only the server ends sessions or changes state; the client only requests.
    client_steps = {step for (_, sender, step) in legal if sender is Role.CLIENT}
    assert client_steps == {
        Step.NEW, Step.PROPOSE, Step.NEGOTIATING, Step.AUTHENTICATING, Step.FINISHING,
        Step.MESSAGE, Step.NOTIFICATION, Step.COMMAND,
    }
    # Nothing leaves a terminal phase.
    assert not [key for key in legal if key[0] in (Phase.FINISHED, Phase.FAILED)]
    # Only session envelopes pass before established.
    traffic = {Step.MESSAGE, Step.NOTIFICATION, Step.COMMAND}
    early = [key for key in legal if key[2] in traffic and key[0] not in (
        Phase.ESTABLISHED, Phase.FINISHING)]
    assert early == []
    # The server can fail the session from every non-terminal phase.
    for phase in Phase:
        if phase not in (Phase.FINISHED, Phase.FAILED):
            assert TRANSITIONS[(phase, Role.SERVER, Step.FAILED)] is Phase.FAILED
    # A client accepts negotiating, authenticating, established or failed in reply to new,
    # with or without a proposal (a LIME server answers a proposal as a plain new).
    for opened in (Phase.NEW_SENT, Phase.PROPOSAL_SENT):
        replies = {step for (phase, sender, step) in legal if phase is opened}
        assert replies == {
            Step.NEGOTIATING, Step.AUTHENTICATING, Step.ESTABLISHED, Step.FAILED, Step.FINISHED
        }


def test_every_phase_has_a_public_state() -> None:
    assert set(PHASE_STATE) == set(Phase)


def test_step_of_each_envelope_kind() -> None:
    assert step_of(Session("new")) is Step.NEW
    assert step_of(Session("new", extras={"rainProposal": {}})) is Step.PROPOSE
    assert step_of(Session("new", extras={"somethingElse": 1})) is Step.NEW
    # Only `new` can be a proposal: the key on any other session envelope changes nothing.
    assert step_of(Session("negotiating", extras={"rainProposal": {}})) is Step.NEGOTIATING
    assert step_of(Message("text/plain", "x")) is Step.MESSAGE
    assert step_of(Notification("received", id="1")) is Step.NOTIFICATION
    assert step_of(Command("get", "/x", id="1")) is Step.COMMAND
    assert step_of(Session("failed", reason=Reason(1))) is Step.FAILED


def test_machine_send_and_receive_take_envelopes() -> None:
    client = SessionMachine(Role.CLIENT)
    client.send(Session("new"))
    assert client.phase is Phase.NEW_SENT
    with pytest.raises(LocalProtocolError):
        client.send(Command("get", "/x", id="1"))
    client.receive(Session("established", id="s"))
    assert client.state.value == "established"
    client.send(Command("get", "/x", id="1"))
    assert client.phase is Phase.ESTABLISHED


def test_diagram_is_drawn_from_the_table() -> None:
    diagram = mermaid_diagram()
    assert diagram.startswith("stateDiagram-v2")
    for (phase, _sender, _step), target in TRANSITIONS.items():
        if phase is not target:
            source_name = phase.value.replace(" ", "_")
            target_name = target.value.replace(" ", "_")
            assert f"{source_name} --> {target_name}:" in diagram


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("phase", list(Phase))
def test_process_error_fails_every_live_phase_and_leaves_an_ended_one(
    role: Role, phase: Phase
) -> None:
    # A local failure (a client that gives up cannot send `failed`) is the machine's rule too,
    # outside the table because no envelope carries it.
    machine = _machine(role, phase)
    machine.process_error()
    assert machine.phase is (phase if phase in (Phase.FINISHED, Phase.FAILED) else Phase.FAILED)
