"""The session state machine: every legal step of a LIME session in one table.

Theory of operation
-------------------
A LIME session runs over one ordered link, so client and server see the same envelopes in the
same order, and therefore walk through the same *phases*. A phase is a public
:class:`SessionState` refined by whose turn it is (``negotiating`` is three phases: the server has
offered, the client has chosen, the server has echoed). Each step is keyed by
``(phase, sender, what was sent)`` where *what* is the state of a session envelope or the kind of
any other envelope. For a given role, a step whose sender is that role is a *send*, any other a
*receive*: a send that misses the table is our bug (:class:`LocalProtocolError`); a receive that
misses it is the peer's (:class:`RemoteProtocolError`, code 15, which a server answers with
``failed``). A miss never changes the phase.

Only the server changes the session state; the client requests (``new``, a choice, credentials,
``finishing``). Only session envelopes pass before ``established``; after the client asks to
finish, the server may still deliver what it had in flight, the client may send nothing more.

The shortcut (RAIN extension, issue 8: long round trips)
--------------------------------------------------------
Plain LIME costs a round trip per stage: ``new`` -> offer, choice -> echo, credentials ->
verdict. A RAIN client instead opens with ``new`` carrying a *proposal* (the extension field
:data:`PROPOSAL_KEY`: its preferred compression, the scheme it would choose, the credentials
that need no challenge, its node). That envelope is its own step, :attr:`Step.PROPOSE`, and leads
to its own phase, :attr:`Phase.PROPOSAL_SENT`, from which the server may answer exactly as it may
answer a plain ``new``: with ``established`` when it accepts the whole proposal (one round trip),
``authenticating`` with a challenge for ``keypair`` (whose signature must cover a fresh server
challenge: two round trips), or the plain ``negotiating``/``authenticating`` offer for the first
stage it cannot accept. A LIME peer that does not know the extension sees a ``new`` with one
unknown key, ignores it and answers the plain way, which the client follows; a plain ``new``
never carries the key, so a RAIN server gives LIME clients the plain exchange. What the reply
*confirms* (the compression both sides switch to after it) is the protocol's business
(:mod:`rain_envelopes.protocol`); which replies are legal is this table's.

This module is pure: no I/O, no asyncio, no zmq. ``docs/explanation/session.md``'s diagram is
generated from :data:`TRANSITIONS` by :func:`mermaid_diagram`.
"""

from __future__ import annotations

from enum import Enum, StrEnum

from .envelopes import Command, Envelope, Message, Notification, Session, SessionState
from .errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "PHASE_STATE",
    "PROPOSAL_KEY",
    "TRANSITIONS",
    "Phase",
    "Role",
    "SessionMachine",
    "Step",
    "mermaid_diagram",
    "step_of",
]


class Role(Enum):
    """Which end of the session a machine tracks; the table's steps name their sender."""

    #: The side that opens the session, asks for each change of state and is authenticated.
    CLIENT = "client"
    #: The side that answers: it offers options, decides, and alone changes the session state.
    SERVER = "server"

    @property
    def peer(self) -> Role:
        """The other end."""
        return Role.SERVER if self is Role.CLIENT else Role.CLIENT


class Phase(Enum):
    """A session state refined by whose turn it is: the rows of :data:`TRANSITIONS`.

    Both ends walk through the same phases (one ordered link), so one value names the same
    moment on either side. The ``#:`` comments are read into ``docs/explanation/session.md``.
    """

    #: Nothing sent yet; only the client's ``new`` (or the server's ``failed``) may come.
    START = "start"
    #: The client sent a plain ``new``; the server answers with its first stage.
    NEW_SENT = "new sent"
    #: The client sent ``new`` with a proposal (the RAIN shortcut); the server may take all of
    #: it, ask for a keypair signature, or answer as to a plain ``new``.
    PROPOSAL_SENT = "proposal sent"
    #: The server offered compression and encryption options; the client must choose.
    NEGOTIATION_OFFERED = "negotiation offered"
    #: The client chose; the server must echo the choice.
    NEGOTIATION_CHOSEN = "negotiation chosen"
    #: Both sides switched to the agreed options; the server moves on to authentication.
    NEGOTIATED = "negotiated"
    #: The server offered schemes (or a challenge); the client must answer with credentials.
    AUTHENTICATION_OFFERED = "authentication offered"
    #: The client answered; the server sends another round or its verdict.
    AUTHENTICATION_ANSWERED = "authentication answered"
    #: Messages, notifications and commands flow both ways.
    ESTABLISHED = "established"
    #: The client asked to finish; only the server may still send, to deliver what was in
    #: flight.
    FINISHING = "finishing"
    #: Terminal: the server ended the session normally.
    FINISHED = "finished"
    #: Terminal: the server ended the session on an error.
    FAILED = "failed"


class Step(StrEnum):
    """What an envelope is, for the table: a session state, or the kind of a non-session one."""

    #: A plain ``new``: the client opens the session.
    NEW = "new"
    #: ``new`` carrying a proposal (:data:`PROPOSAL_KEY`): the RAIN shortcut.
    PROPOSE = "new+proposal"
    #: An offer of options (server), a choice (client) or its echo (server).
    NEGOTIATING = "negotiating"
    #: An offer of schemes or a challenge (server), or credentials (client).
    AUTHENTICATING = "authenticating"
    #: The server's verdict: the session is open.
    ESTABLISHED = "established"
    #: The client asks to end the session.
    FINISHING = "finishing"
    #: The server ends the session normally.
    FINISHED = "finished"
    #: The server ends the session on an error (allowed at any time, even before ``new``).
    FAILED = "failed"
    #: Any Message (traffic: legal once established).
    MESSAGE = "message"
    #: Any Notification (traffic).
    NOTIFICATION = "notification"
    #: Any Command, request or response (traffic).
    COMMAND = "command"


#: The public session state each phase belongs to.
PHASE_STATE: dict[Phase, SessionState] = {
    Phase.START: SessionState.NEW,
    Phase.NEW_SENT: SessionState.NEW,
    Phase.PROPOSAL_SENT: SessionState.NEW,
    Phase.NEGOTIATION_OFFERED: SessionState.NEGOTIATING,
    Phase.NEGOTIATION_CHOSEN: SessionState.NEGOTIATING,
    Phase.NEGOTIATED: SessionState.NEGOTIATING,
    Phase.AUTHENTICATION_OFFERED: SessionState.AUTHENTICATING,
    Phase.AUTHENTICATION_ANSWERED: SessionState.AUTHENTICATING,
    Phase.ESTABLISHED: SessionState.ESTABLISHED,
    Phase.FINISHING: SessionState.FINISHING,
    Phase.FINISHED: SessionState.FINISHED,
    Phase.FAILED: SessionState.FAILED,
}

#: The phases nothing leaves: the link may close once one is reached.
TERMINAL = frozenset({Phase.FINISHED, Phase.FAILED})

#: The extension field of a ``new`` that carries a proposal. A codec that does not know it keeps
#: it in ``extras``; a LIME peer ignores it.
PROPOSAL_KEY = "rainProposal"

C, S = Role.CLIENT, Role.SERVER
# Envelopes that are not session envelopes: legal only once established, and never changing the
# phase (they are traffic inside the session, not steps of it).
_TRAFFIC = (Step.MESSAGE, Step.NOTIFICATION, Step.COMMAND)


def _build() -> dict[tuple[Phase, Role, Step], Phase]:
    table: dict[tuple[Phase, Role, Step], Phase] = {
        (Phase.START, C, Step.NEW): Phase.NEW_SENT,
        (Phase.START, C, Step.PROPOSE): Phase.PROPOSAL_SENT,
    }
    # The server answers `new` with whichever stage comes first; each may be skipped. It answers
    # a proposal the same ways: `established` when it takes all of it, `authenticating` when
    # the scheme needs a challenge, or the plain offer of the first stage it cannot take (a
    # server that does not know proposals just answers as to `new`).
    for opened in (Phase.NEW_SENT, Phase.PROPOSAL_SENT):
        table[(opened, S, Step.NEGOTIATING)] = Phase.NEGOTIATION_OFFERED
        table[(opened, S, Step.AUTHENTICATING)] = Phase.AUTHENTICATION_OFFERED
        table[(opened, S, Step.ESTABLISHED)] = Phase.ESTABLISHED
    table.update({
        (Phase.NEGOTIATION_OFFERED, C, Step.NEGOTIATING): Phase.NEGOTIATION_CHOSEN,
        (Phase.NEGOTIATION_CHOSEN, S, Step.NEGOTIATING): Phase.NEGOTIATED,
        (Phase.NEGOTIATED, S, Step.AUTHENTICATING): Phase.AUTHENTICATION_OFFERED,
        (Phase.NEGOTIATED, S, Step.ESTABLISHED): Phase.ESTABLISHED,
        (Phase.AUTHENTICATION_OFFERED, C, Step.AUTHENTICATING): Phase.AUTHENTICATION_ANSWERED,
        # Another round (e.g. a challenge after the client named its key) or the verdict.
        (Phase.AUTHENTICATION_ANSWERED, S, Step.AUTHENTICATING): Phase.AUTHENTICATION_OFFERED,
        (Phase.AUTHENTICATION_ANSWERED, S, Step.ESTABLISHED): Phase.ESTABLISHED,
        (Phase.ESTABLISHED, C, Step.FINISHING): Phase.FINISHING,
    })
    for step in _TRAFFIC:
        table[(Phase.ESTABLISHED, C, step)] = Phase.ESTABLISHED
        table[(Phase.ESTABLISHED, S, step)] = Phase.ESTABLISHED
        # After `finishing` the server may still deliver what it had in flight.
        table[(Phase.FINISHING, S, step)] = Phase.FINISHING
    # The server may end the session at any time: `failed` even before `new` (a client whose
    # first frame is garbage is answered), `finished` once there is a session to finish.
    for phase in Phase:
        if phase not in TERMINAL:
            table[(phase, S, Step.FAILED)] = Phase.FAILED
            if phase is not Phase.START:
                table[(phase, S, Step.FINISHED)] = Phase.FINISHED
    return table


#: Every legal step: ``(phase, sender, step) -> next phase``.
TRANSITIONS: dict[tuple[Phase, Role, Step], Phase] = _build()

_KIND_STEP: dict[type[Envelope], Step] = {
    Message: Step.MESSAGE,
    Notification: Step.NOTIFICATION,
    Command: Step.COMMAND,
}


def step_of(envelope: Envelope) -> Step:
    """The table step an envelope is."""
    if isinstance(envelope, Session):
        if (
            envelope.state is SessionState.NEW
            and envelope.extras is not None
            and PROPOSAL_KEY in envelope.extras
        ):
            return Step.PROPOSE
        return Step(envelope.state.value)
    return _KIND_STEP[type(envelope)]


class SessionMachine:
    """Tracks one side's view of a session and refuses every step the table does not allow.

    The machine knows nothing of bytes, ids or credentials: the protocol object
    (:mod:`rain_envelopes.protocol`) decodes, decides what to answer, and tells the machine each
    envelope it sends (:meth:`send`) or receives (:meth:`receive`) *before* acting on it, so an
    illegal step is refused before it has any effect.
    """

    __slots__ = ("phase", "role")

    def __init__(self, role: Role) -> None:
        self.role = role
        self.phase = Phase.START

    @property
    def state(self) -> SessionState:
        """The public session state of the current phase."""
        return PHASE_STATE[self.phase]

    @property
    def terminal(self) -> bool:
        """True once the session has finished or failed."""
        return self.phase in TERMINAL

    def _advance(self, sender: Role, step: Step) -> None:
        next_phase = TRANSITIONS.get((self.phase, sender, step))
        if next_phase is None:
            who = "we" if sender is self.role else f"the {sender.value}"
            message = (
                f"{who} cannot send {step.value} in session phase {self.phase.value!r} "
                f"(state {self.state.value})"
            )
            if sender is self.role:
                raise LocalProtocolError(message)
            raise RemoteProtocolError(message, code=15)
        self.phase = next_phase

    def send(self, envelope: Envelope) -> None:
        """Record that we send ``envelope``. Raises LocalProtocolError if that is illegal now."""
        self._advance(self.role, step_of(envelope))

    def receive(self, envelope: Envelope) -> None:
        """Record that the peer sent ``envelope``. Raises RemoteProtocolError (code 15)."""
        self._advance(self.role.peer, step_of(envelope))

    def process_error(self) -> None:
        """Record that our side gave up on the session with no step on the wire (as h11's
        ``process_error``): every live phase leads to :attr:`Phase.FAILED`; a phase that has
        ended stays where it is (nothing leaves a terminal phase).

        This is how a client fails: only the server may send ``failed``, so a client that finds
        the server broke the protocol fails its own view and closes the link. The rule lives
        here, beside the table, so the protocol never sets a phase itself.
        """
        if not self.terminal:
            self.phase = Phase.FAILED

    def send_step(self, step: Step) -> None:
        """Record that we take ``step`` without an envelope at hand (as :meth:`send`)."""
        self._advance(self.role, step)

    def receive_step(self, step: Step) -> None:
        """Record that the peer took ``step`` without an envelope at hand (as :meth:`receive`)."""
        self._advance(self.role.peer, step)


def _name(phase: Phase) -> str:
    # Mermaid state names cannot hold spaces.
    return phase.value.replace(" ", "_")


def mermaid_diagram() -> str:
    """The state diagram of :data:`TRANSITIONS` in Mermaid syntax (for the docs)."""
    lines = ["stateDiagram-v2", "    [*] --> start"]
    edges: dict[tuple[Phase, Phase], list[str]] = {}
    for (phase, sender, step), target in TRANSITIONS.items():
        if phase is target and step in _TRAFFIC:
            continue
        edges.setdefault((phase, target), []).append(f"{sender.value[0].upper()}: {step.value}")
    for (source, target), labels in edges.items():
        lines.append(f"    {_name(source)} --> {_name(target)}: {', '.join(labels)}")
    lines.append("    established --> established: C/S: message, notification, command")
    lines.append("    finishing --> finishing: S: message, notification, command")
    lines.append("    finished --> [*]")
    lines.append("    failed --> [*]")
    return "\n".join(lines) + "\n"
