"""The blocking API (issue 10, item 1) against a real server on 127.0.0.1 over ZeroMQ + CURVE:
get, set, list and monitor by name or URI; keys in every form the CLI takes; timeouts on every
call; the async API's own exceptions; several threads at once; a running loop in the caller's
thread (a Jupyter kernel); and closing that leaves no thread behind.

Waits are on the API's own blocking calls, each with a timeout; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import rain_envelopes
from rain_envelopes import (
    Backoff,
    BlockingClient,
    Client,
    ClientClosed,
    CommandFailed,
    Disconnected,
    KeyFileError,
    ReasonCode,
    ResponseTimeout,
    Update,
    sync,
)
from rain_envelopes.sync import _Sink

from .conftest import ServerThread, Site

FAST = Backoff(initial=0.05, maximum=0.5)


def open_client(site: Site, endpoint: str, **options: Any) -> BlockingClient:
    options = {"timeout": 5.0, "backoff": FAST, **options}
    return sync.connect(endpoint, key=site.alice_key, server_key=site.station_pub, **options)


def sync_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("rain-sync ")]


# ------------------------------------------------------------------------------ requests


def test_get_set_list_ping_by_name_or_uri(site: Site, station: ServerThread) -> None:
    assert station.endpoint is not None
    with open_client(site, station.endpoint) as client:
        assert client.state == "established"
        assert client.get("temperature") == client.get("/params/temperature") == 20.5
        sample = client.get_sample("temperature")
        assert sample["value"] == 20.5
        assert {"timestamp", "seq", "epoch"} <= set(sample)
        assert client.set("temperature", 3.25) == 3.25
        assert client.get("temperature") == 3.25
        assert client.set("/params/knob", 7) == 7
        assert client.get("knob") == 7
        names = [item["name"] for item in client.list()]
        assert names == ["knob", "model", "slow", "temperature"]
        assert 0 < client.ping() < 5
        with pytest.raises(ValueError, match="empty parameter name"):
            client.get("")
    assert client.closed
    assert client.state == "closed"
    assert not sync_threads()


def test_keys_in_every_form_the_cli_takes(
    site: Site, station: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = station.endpoint
    assert endpoint is not None
    forms: list[dict[str, Any]] = [
        {"key": site.alice, "server_key": site.station.public_key},          # objects, bytes
        {"key": str(site.alice_key), "server_key": site.station.public_key_text},  # text
        {"key": site.alice_key, "server_key": site.station},                 # Path, Identity
        {"key": site.alice_key, "server_key": str(site.station_pub)},        # .pub path
    ]
    for form in forms:
        with sync.connect(endpoint, timeout=5.0, **form) as client:
            assert client.get("model") == "WS-1"
    # A known-hosts file, and the environment as the CLI reads it.
    hosts = site.folder / "known_hosts"
    hosts.write_text(f"{endpoint} {site.station.public_key_text}\n")
    with sync.connect(endpoint, key=site.alice_key, known_hosts=hosts, timeout=5.0) as client:
        assert client.get("model") == "WS-1"
    monkeypatch.setenv("RAIN_KEY", str(site.alice_key))
    monkeypatch.setenv("RAIN_SERVER_KEY", str(site.station_pub))
    with sync.connect(endpoint, timeout=5.0) as client:
        assert client.get("model") == "WS-1"


def test_bad_keys_are_named_before_anything_starts(
    site: Site, station: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("RAIN_KEY", "RAIN_SERVER_KEY", "RAIN_KNOWN_HOSTS"):
        monkeypatch.delenv(name, raising=False)
    endpoint = station.endpoint
    assert endpoint is not None
    missing = site.folder / "nowhere" / "station.key.pub"
    with pytest.raises(KeyFileError, match=r"server_key: public key file \S+ does not") as error:
        sync.connect(endpoint, key=site.alice_key, server_key=str(missing))
    assert str(missing) in str(error.value)
    with pytest.raises(KeyFileError, match="does not exist"):
        sync.connect(endpoint, key=site.alice_key, server_key=missing)  # a Path: a file
    with pytest.raises(KeyFileError, match="no server key"):
        sync.connect(endpoint, key=site.alice_key)
    with pytest.raises(KeyFileError, match="no key"):
        sync.connect(endpoint, server_key=site.station_pub)
    with pytest.raises(KeyFileError, match="32 raw bytes"):
        sync.connect(endpoint, key=site.alice_key, server_key=b"short")
    with pytest.raises(TypeError, match="key must be"):
        sync.connect(endpoint, key=b"\0" * 32, server_key=site.station_pub)  # type: ignore[arg-type]
    assert not sync_threads()


# ------------------------------------------------------------------------------ exceptions


def async_error(site: Site, endpoint: str, call: Callable[[Client], Any]) -> BaseException:
    """What the async Client raises for the same request."""

    async def run() -> BaseException:
        client = Client(endpoint, identity=site.alice, server_key=site.station.public_key,
                        command_timeout=5.0)
        async with client:
            try:
                await call(client)
            except Exception as exc:
                return exc
        raise AssertionError("the async client raised nothing")

    return asyncio.run(run())


def test_exceptions_are_the_async_apis_own(site: Site, station: ServerThread) -> None:
    endpoint = station.endpoint
    assert endpoint is not None
    cases: list[tuple[Callable[[BlockingClient], Any], Callable[[Client], Any], int]] = [
        (lambda c: c.get("nope"), lambda c: c.get("/params/nope"),
         ReasonCode.COMMAND_RESOURCE_NOT_FOUND),
        (lambda c: c.set("knob", 99), lambda c: c.set("/params/knob", 99),
         ReasonCode.COMMAND_INVALID_ARGUMENT),
        (lambda c: c.set("model", "x"), lambda c: c.set("/params/model", "x"),
         ReasonCode.COMMAND_NOT_ALLOWED),
        (lambda c: c.monitor("nope"), lambda c: c.subscribe("/params/nope", print),
         ReasonCode.COMMAND_RESOURCE_NOT_FOUND),
    ]
    with open_client(site, endpoint) as client:
        for blocking, asynchronous, code in cases:
            with pytest.raises(CommandFailed) as error:
                blocking(client)
            expected = async_error(site, endpoint, asynchronous)
            assert type(error.value) is type(expected)
            assert isinstance(expected, CommandFailed)
            assert error.value.reason.code == code == expected.reason.code
        assert client.get("knob") == 1  # a refused set changed nothing
        assert client.state == "established"  # and nothing stayed subscribed
        assert not client._runner.topics


# ------------------------------------------------------------------------------ timeouts


def test_every_call_has_a_timeout(site: Site, station: ServerThread) -> None:
    endpoint = station.endpoint
    assert endpoint is not None
    # Each error is the async client's, naming the limit it kept (the blocking side's backstop,
    # 2 s later, says "no outcome from the client's loop" instead): no wall clock needed.
    with open_client(site, endpoint, timeout=0.5) as client:
        with pytest.raises(ResponseTimeout, match=r"within 0\.5 s$"):  # the client's default
            client.get("slow")
        with pytest.raises(ResponseTimeout, match=r"within 0\.3 s$"):  # a per-call limit
            client.get("slow", timeout=0.3)
        with pytest.raises(TimeoutError):  # ResponseTimeout is a TimeoutError too
            client.get("slow", timeout=0.3)
        assert client.get("temperature", timeout=5) == 20.5  # the client is still fine
        with pytest.raises(ValueError, match="positive"):
            client.get("temperature", timeout=0)


def test_no_server_fails_within_the_connect_timeout(site: Site) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on (bound, then released)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    started = time.monotonic()
    with pytest.raises(Disconnected, match=r"within 0\.5 s"):
        open_client(site, endpoint, connect_timeout=0.5)
    assert time.monotonic() - started < 0.5 + 3.0
    assert not sync_threads()  # the failed connect cleaned up after itself
    # Not waiting for the link: the client keeps trying, and each call has its limit.
    with open_client(site, endpoint, wait=False) as client:
        with pytest.raises(Disconnected):
            client.get("temperature", timeout=0.3)
        assert client.state in ("connecting", "retrying")


def test_a_refused_key_gives_up_at_once_saying_why(site: Site, station: ServerThread) -> None:
    endpoint = station.endpoint
    assert endpoint is not None
    started = time.monotonic()
    with pytest.raises(ClientClosed, match=r"gave up|closed") as error:
        sync.connect(endpoint, key=site.stranger, server_key=site.station_pub, timeout=10.0)
    assert time.monotonic() - started < 5.0  # definitive: no waiting out the timeout
    assert error.value.cause is not None  # the refusal itself
    assert not sync_threads()


# ------------------------------------------------------------------------------ threads


def test_two_threads_get_and_set_at_once(site: Site, station: ServerThread) -> None:
    endpoint = station.endpoint
    assert endpoint is not None
    rounds = 40
    start = threading.Barrier(2, timeout=10)
    errors: list[BaseException] = []
    seen: dict[str, list[Any]] = {"temperature": [], "knob": []}

    def worker(client: BlockingClient, name: str, values: list[Any]) -> None:
        try:
            start.wait()
            for value in values:
                assert client.set(name, value) == value
                seen[name].append(client.get(name))
        except BaseException as exc:
            errors.append(exc)

    with open_client(site, endpoint) as client:
        threads = [
            threading.Thread(target=worker, args=(client, "temperature",
                                                  [float(i) / 4 for i in range(rounds)])),
            threading.Thread(target=worker, args=(client, "knob", [i % 11 for i in range(rounds)])),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(25)
        assert not any(thread.is_alive() for thread in threads)
        assert not errors, errors
        # Each thread read back exactly what it had set: no answer went to the wrong caller.
        assert seen["temperature"] == [float(i) / 4 for i in range(rounds)]
        assert seen["knob"] == [i % 11 for i in range(rounds)]


def test_a_call_waiting_in_another_thread_ends_when_the_client_closes(
    site: Site, station: ServerThread
) -> None:
    endpoint = station.endpoint
    assert endpoint is not None
    client = open_client(site, endpoint)
    outcome: list[BaseException] = []
    monitor = client.monitor("temperature")
    assert next(monitor).snapshot

    def blocked() -> None:
        try:
            client.get("slow", timeout=20)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=blocked)
    thread.start()
    client.ping()  # the slow get is on the loop by now (it was submitted first)
    started = time.monotonic()
    client.close()
    thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 8.0
    assert len(outcome) == 1, outcome
    assert isinstance(outcome[0], ClientClosed), outcome
    with pytest.raises(StopIteration):  # a monitor of a closed client just ends
        next(monitor)
    with pytest.raises(ClientClosed):
        client.get("temperature")
    assert not sync_threads()


class Interrupted(BaseException):
    """What the test's signal handler raises, as Ctrl-C raises KeyboardInterrupt."""


def loop_tasks(client: BlockingClient) -> set[str]:
    """The names of the coroutines of the tasks in the client's loop, but the asker's."""

    async def names() -> set[str]:
        current = asyncio.current_task()
        return {
            task.get_coro().__qualname__  # type: ignore[union-attr]
            for task in asyncio.all_tasks() if task is not current
        }

    return client._runner.call(names, 5.0)


def test_an_interrupted_call_cancels_its_request_in_the_loop(
    site: Site, station: ServerThread
) -> None:
    endpoint = station.endpoint
    assert endpoint is not None

    def on_signal(signum: int, frame: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGUSR1, on_signal)
    with open_client(site, endpoint) as client:
        before = loop_tasks(client)

        def interrupt_once_the_get_is_in() -> None:
            if station.entered.wait(10):  # the server is reading: the request is in the loop
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)

        helper = threading.Thread(target=interrupt_once_the_get_is_in)
        helper.start()
        started = time.monotonic()
        try:
            with pytest.raises(Interrupted):
                client.get("slow", timeout=20)
        finally:
            helper.join(10)
            signal.signal(signal.SIGUSR1, previous)
        assert time.monotonic() - started < 8.0
        # The request's task is gone from the loop, not left waiting out its 20 s.
        assert loop_tasks(client) == before
        assert client.get("temperature") == 20.5  # and the client carries on


def test_calling_from_the_loop_thread_is_refused(site: Site, station: ServerThread) -> None:
    endpoint = station.endpoint
    assert endpoint is not None
    errors: list[BaseException] = []
    holder: list[BlockingClient] = []

    def on_state(change: Any) -> None:
        if holder and change.state == "closed":
            try:
                holder[0].get("temperature")
            except BaseException as exc:
                errors.append(exc)

    client = open_client(site, endpoint, on_state=on_state)
    holder.append(client)
    client.close()
    assert len(errors) == 1, errors
    assert isinstance(errors[0], RuntimeError), errors
    assert "own loop thread" in str(errors[0])


# ------------------------------------------------------------------------------ a running loop


def test_works_under_a_running_loop_as_in_a_jupyter_kernel(
    site: Site, station: ServerThread
) -> None:
    endpoint = station.endpoint
    assert endpoint is not None

    async def notebook_cell() -> list[Any]:
        # A notebook cell runs inside the kernel's loop; blocking code in it just blocks.
        with sync.connect(endpoint, key=site.alice_key, server_key=site.station_pub,
                          timeout=5.0) as client:
            values = [client.get("temperature"), client.set("knob", 3)]
            with client.monitor("knob") as monitor:
                values.append(next(monitor).value)
            return values

    assert asyncio.run(notebook_cell()) == [20.5, 3, 3]
    assert not sync_threads()


# ------------------------------------------------------------------------------ monitors


def test_monitor_snapshot_updates_and_close_unsubscribes(
    site: Site, station: ServerThread
) -> None:
    endpoint = station.endpoint
    assert endpoint is not None
    with open_client(site, endpoint) as client:
        with client.monitor("knob") as monitor:
            first = next(monitor)
            assert first.snapshot
            assert first.value == 1
            assert first.uri == "/params/knob"
            for value in (2, 3, 4):
                client.set("knob", value)
            values = [monitor.get(timeout=5).value for _ in range(3)]
            assert values == [2, 3, 4]
            with pytest.raises(TimeoutError):
                monitor.get(timeout=0.05)  # nothing more was published
        assert monitor.closed
        with pytest.raises(StopIteration):
            next(monitor)
        assert not client._runner.topics
        assert client._runner.client is not None
        assert not client._runner.client._subscriptions  # unsubscribed
        # Monitoring again after the unsubscribe starts afresh with a snapshot.
        with client.monitor("knob", idle_timeout=0.05) as again:
            assert next(again).snapshot
            with pytest.raises(TimeoutError):
                next(again)  # idle_timeout applies to iteration


def test_two_monitors_of_one_parameter_share_its_subscription(
    site: Site, station: ServerThread
) -> None:
    endpoint = station.endpoint
    assert endpoint is not None
    with open_client(site, endpoint) as client:
        one = client.monitor("temperature")
        assert next(one).value == 20.5
        two = client.monitor("/params/temperature")
        joined = next(two)
        assert joined.snapshot
        assert joined.value == 20.5
        client.set("temperature", 1.5)
        assert one.get(timeout=5).value == two.get(timeout=5).value == 1.5
        one.close()
        client.set("temperature", 2.5)
        assert two.get(timeout=5).value == 2.5  # the other one is still subscribed
        subscriptions = client._runner.client._subscriptions  # type: ignore[union-attr]
        assert list(subscriptions) == ["/params/temperature"]
        del two  # garbage collection closes a monitor too
        gc.collect()
        client.ping()  # the detach was scheduled before this request
        assert not client._runner.topics


def test_monitor_drops_the_oldest_and_counts(site: Site, station: ServerThread) -> None:
    endpoint = station.endpoint
    assert endpoint is not None
    with open_client(site, endpoint) as client, client.monitor("knob", queue_length=2) as m:
        assert next(m).value == 1
        for value in range(2, 11):
            client.set("knob", value)
        # Read until the last value: every sample is either delivered or counted as dropped.
        taken: list[Update] = []
        while not taken or taken[-1].value != 10:
            taken.append(m.get(timeout=5))
        assert len(taken) + sum(update.dropped for update in taken) == 9
        values = [update.value for update in taken]
        assert values == sorted(values)


def make_update(value: int, *, dropped: int = 0, restarted: bool = False) -> Update:
    command = rain_envelopes.Command(
        "observe", "/params/x", type="application/json", resource={"value": value, "epoch": "e"}
    )
    return Update("/params/x", command, False, dropped, restarted)


def test_the_monitor_queue_drops_oldest_and_carries_counts_and_restarts() -> None:
    sink = _Sink(2)
    sink.put(make_update(1, dropped=2))
    sink.put(make_update(2, restarted=True))
    sink.put(make_update(3))
    sink.put(make_update(4))  # 1 and 2 dropped here; 1 had 2 dropped before it
    first = sink.take(0)
    assert (first.value, first.dropped, first.restarted) == (3, 2 + 1 + 1, True)
    second = sink.take(0)
    assert (second.value, second.dropped, second.restarted) == (4, 0, False)
    with pytest.raises(TimeoutError):
        sink.take(0)
    sink.end(ClientClosed("gave up"))
    with pytest.raises(ClientClosed):
        sink.take(0)


@pytest.mark.timeout(60)
def test_monitor_and_requests_survive_a_server_restart(
    site: Site, station: ServerThread
) -> None:
    endpoint = station.endpoint
    assert endpoint is not None
    with open_client(site, endpoint, timeout=15.0) as client:
        monitor = client.monitor("temperature")
        before = next(monitor)
        assert before.value == 20.5
        client.set("temperature", 9.0)
        assert monitor.get(timeout=5).value == 9.0
        station.stop()
        station.start()
        # The new server starts from its initial value and a new epoch.
        after = monitor.get(timeout=20)
        assert after.restarted
        assert after.snapshot
        assert after.value == 20.5
        assert after.epoch != before.epoch
        assert client.get("temperature") == 20.5
        client.set("temperature", 11.0)
        assert monitor.get(timeout=5).value == 11.0
        monitor.close()


def test_closing_is_idempotent_and_leaves_nothing_running(
    site: Site, station: ServerThread
) -> None:
    endpoint = station.endpoint
    assert endpoint is not None
    client = open_client(site, endpoint)
    assert len(sync_threads()) == 1
    client.close()
    client.close()
    assert not sync_threads()
    assert repr(client).endswith("closed>")
    # A client dropped without close() is closed by its finalizer.
    forgotten = open_client(site, endpoint)
    assert forgotten.get("model") == "WS-1"
    del forgotten
    gc.collect()
    assert not sync_threads()


def test_the_package_exports_the_blocking_api() -> None:
    assert rain_envelopes.BlockingClient is sync.BlockingClient
    assert "BlockingClient" in rain_envelopes.__all__
