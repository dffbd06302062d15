"""The actor runtime: actors with bounded mailboxes, ask/tell, and the task group that owns them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..core.errors import ActorBroken, ActorClosed, RequestTimeout, UbloxError
from ..core.logsetup import get_logger
from ..core.tasks import Reply, joined_or_owned, owned_task_group

__all__ = ["Actor", "ActorSystem", "Ask", "Later", "Reply", "joined_or_owned", "owned_task_group"]

log = get_logger(__name__)


# -- actors ----------------------------------------------------------------------------

M = TypeVar("M")


R = TypeVar("R")


class Ask(Generic[R]):
    """Base of a message that is asked: ``R`` is the type of its answer, so
    ``await actor.ask(Buy(...))`` is typed as the handler's result for ``Buy``."""

    __slots__ = ()


class Later:
    """A handler's answer that comes later, when the store acknowledges a unit.

    The handler returns it at once and the actor takes its next message; whoever
    learns the outcome (a commit callback) calls ``finish``, which answers the asker
    directly, without another trip through the event loop. See ``actors.player``."""

    __slots__ = ("_error", "_finished", "_name", "_reply", "_result")

    def __init__(self) -> None:
        self._reply: Reply | None = None
        self._name = ""
        self._finished = False
        self._result: object = None
        self._error: BaseException | None = None

    def finish(self, result: object = None, error: BaseException | None = None) -> None:
        if self._finished:
            return
        self._finished, self._result, self._error = True, result, error
        self._deliver()

    def outcome(self) -> object:
        """The answer once finished (its error raised): for a caller that drove the unit
        itself (``actors.pto.Staged``) rather than asking."""
        assert self._finished, "not answered yet"
        if self._error is not None:
            raise self._error
        return self._result

    def _attach(self, reply: Reply | None, name: str) -> None:
        self._reply, self._name = reply, name
        if self._finished:
            self._deliver()

    def _deliver(self) -> None:
        if self._reply is not None:
            self._reply.finish(self._result, self._error)
        elif self._error is not None and self._name:
            log.warning("actor.told_message_failed", actor=self._name, error=str(self._error))


def answer_when_done(
    later: Later, acknowledged: Callable[[Any], object], failed: Callable[[], None]
) -> Callable[[object], None]:
    """The ``done`` callback of a unit a handler submitted: on success ``later`` answers
    ``acknowledged(outcome)``; on failure ``failed()`` runs and ``later`` answers the error."""

    def done(outcome: object) -> None:
        # Runs as the store's callback: whatever happens here, the asker gets an answer
        # (a bug applying the events reaches it as the error, and the log).
        try:
            if isinstance(outcome, BaseException):
                failed()
                later.finish(error=outcome)
            else:
                later.finish(acknowledged(outcome))
        except Exception as exc:
            log.error("actor.apply_failed", error=repr(exc))
            later.finish(error=exc)

    return done


@dataclass(eq=False, slots=True)
class _Envelope(Generic[M]):
    message: M
    reply: Reply | None
    handled: anyio.Event | None = None  # set once ``handle`` has returned or raised


def _handled(envelope: _Envelope[Any]) -> None:
    if envelope.handled is not None:
        envelope.handled.set()


class Actor(Generic[M]):
    """One task, one bounded mailbox, state nobody else touches.

    Subclasses implement ``handle(message)``; its return value answers an ``ask``.
    A ``UbloxError`` raised by ``handle`` (a refusal, a failed write) answers that
    caller and the actor goes on. Anything else is a bug: the caller and everyone
    queued get ``ActorBroken``, and the error propagates to the owning task group.
    """

    def __init__(self, name: str, *, mailbox_size: int = 256) -> None:
        self.name = name
        # The mailbox and the stopped event are made with the first message (``_open``):
        # most actors a run activates are read directly and never sent anything.
        self._size = mailbox_size
        self._send: MemoryObjectSendStream[_Envelope[M]] | None = None
        self._receive: MemoryObjectReceiveStream[_Envelope[M]] | None = None
        self._broken: BaseException | None = None
        self._stopped: anyio.Event | None = None
        self._closed = False
        self._overflow: TaskGroup | None = None
        self._launched = False  # its task runs from the first message on (``_launch``)
        self.passivated = False  # set by the directory before it closes the mailbox
        self._quiet: anyio.Event | None = None

    # -- passivation (see ``actors.directory``) ----------------------------------

    def quiet(self) -> bool:
        """Nothing this actor started is unfinished (overridden by stateful actors)."""
        return True

    async def wait_quiet(self) -> None:
        """Wait until ``quiet()``; subclasses call ``_maybe_quiet`` when it may have become so."""
        while not self.quiet():
            self._quiet = anyio.Event()
            await self._quiet.wait()

    def _maybe_quiet(self) -> None:
        if self._quiet is not None and self.quiet():
            self._quiet.set()

    async def handle(self, message: M) -> object:
        raise NotImplementedError

    def mailbox_depth(self) -> int:
        """Messages waiting in the mailbox now (anyio's stream statistics, for metrics)."""
        return 0 if self._send is None else self._send.statistics().current_buffer_used

    def _open(self) -> MemoryObjectSendStream[_Envelope[M]]:
        if self._send is None:
            self._send, self._receive = anyio.create_memory_object_stream[_Envelope[M]](self._size)
            self._stopped = anyio.Event()
            if self._closed:  # closed before its first message: it takes none
                self._send.close()
                self._receive.close()
                self._stopped.set()
        return self._send

    # -- sending ---------------------------------------------------------------

    async def ask(
        self,
        message: Ask[R],
        *,
        timeout: float = 60.0,  # noqa: ASYNC109 (the ask pattern's own deadline)
        handled: anyio.Event | None = None,
    ) -> R:
        """Send and wait for the answer (or the error ``handle`` raised). ``handled`` is
        set as soon as the handler returns, before a ``Later`` answer comes: a caller
        that must order several actors' units waits for it before asking the next."""
        reply = Reply()
        await self._post(_Envelope(message, reply, handled))  # type: ignore[arg-type]  # M's members are Asks
        expired = False

        def expire() -> None:
            nonlocal expired
            expired = True
            reply.done.cancel()

        timer = asyncio.get_running_loop().call_later(timeout, expire)
        try:
            return await reply.done  # type: ignore[return-value]  # the handler answers R
        except asyncio.CancelledError:
            if not expired:
                raise  # our caller was cancelled: let it through
            raise RequestTimeout(
                f"{self.name} did not answer {type(message).__name__} within {timeout:g} s"
            ) from None
        finally:
            timer.cancel()

    async def tell(self, message: M) -> None:
        """Send without waiting for an answer (waits only for mailbox room)."""
        await self._post(_Envelope(message, None))

    def tell_soon(self, message: M) -> None:
        """Send without ever blocking the sender: if the mailbox is full, deliver from a task.

        Used between actors for notifications (a credit after a committed transfer),
        so two actors telling each other can never deadlock on full mailboxes.
        """
        envelope = _Envelope(message, None)
        send = self._open()
        self._launch()
        try:
            send.send_nowait(envelope)
        except anyio.WouldBlock:
            assert self._overflow is not None, "actor not started"
            self._overflow.start_soon(self._post, envelope)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # shutting down: nothing to notify

    async def _post(self, envelope: _Envelope[M]) -> None:
        if self._broken is not None:
            raise ActorBroken(f"{self.name} crashed") from self._broken
        send = self._open()
        self._launch()
        try:
            await send.send(envelope)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError) as exc:
            if self._broken is not None:
                raise ActorBroken(f"{self.name} crashed") from self._broken
            raise ActorClosed(f"{self.name} is closed") from exc

    # -- running ---------------------------------------------------------------

    def start(self, tg: TaskGroup) -> None:
        """Owned by ``tg`` from now on. Its task is spawned with its first message: many
        actors are activated and never asked (a buyer whose funds a PTO reserves
        directly), and a task costs more than the rest of an actor."""
        self._overflow = tg

    def _launch(self) -> None:
        if not self._launched and self._overflow is not None:
            self._launched = True
            self._overflow.start_soon(self._run, name=self.name)

    async def _run(self) -> None:
        current: _Envelope[M] | None = None
        self._open()
        receive, stopped = self._receive, self._stopped
        assert self._send is not None and receive is not None and stopped is not None
        try:
            async with receive:
                async for current in receive:
                    try:
                        result = await self.handle(current.message)
                    except UbloxError as exc:
                        _handled(current)
                        if current.reply is None:
                            log.warning(
                                "actor.told_message_failed", actor=self.name, error=str(exc)
                            )
                        else:
                            current.reply.finish(error=exc)
                    else:
                        _handled(current)
                        if isinstance(result, Later):
                            result._attach(current.reply, self.name)
                        elif current.reply is not None:
                            current.reply.finish(result)
                    current = None
        except BaseException as exc:
            self._broken = exc
            broken = ActorBroken(f"{self.name} crashed while handling a message")
            broken.__cause__ = exc
            if current is not None:
                _handled(current)
                if current.reply is not None:
                    current.reply.finish(error=broken)
            while True:
                try:
                    queued = receive.receive_nowait()
                except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                    break
                _handled(queued)
                if queued.reply is not None:
                    queued.reply.finish(error=broken)
            raise
        finally:
            self._send.close()
            stopped.set()

    def close(self) -> None:
        """Stop taking messages; those already queued are still handled."""
        self._closed = True
        if self._send is None:  # never sent anything: no mailbox, no task
            self._launched = True
            return
        self._send.close()
        if not self._launched:  # never asked anything: nothing to handle, no task
            self._launched = True
            assert self._receive is not None and self._stopped is not None
            self._receive.close()
            self._stopped.set()

    async def wait_stopped(self) -> None:
        if self._stopped is not None:
            await self._stopped.wait()

    @property
    def broken(self) -> BaseException | None:
        return self._broken


class InFlight:
    """Whether an actor has units in flight, to wait for none (``settled``).

    The event is made only when someone waits while units are in flight: thousands of
    actors start and stop units without anyone waiting. One event serves every waiter
    of one busy stretch (a unit decided while others are in flight keeps it), and
    waiting when idle still yields to the loop once, as an ``anyio.Event`` that is set."""

    __slots__ = ("_busy", "_event")

    def __init__(self) -> None:
        self._busy = False
        self._event: anyio.Event | None = None

    def busy(self) -> None:
        self._busy = True

    def idle(self) -> None:
        self._busy = False
        if self._event is not None:
            self._event.set()
            self._event = None

    async def wait(self) -> None:
        if not self._busy:
            await anyio.lowlevel.checkpoint()
            return
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()


class ActorSystem:
    """Owns the actors' tasks inside one task group; shuts them down in the order given."""

    def __init__(self, tg: TaskGroup) -> None:
        self.tg = tg

    def spawn(self, actor: Actor[M]) -> Actor[M]:
        actor.start(self.tg)
        return actor

    async def drain(self, actors: Sequence[Actor[Any]]) -> None:
        """Close the mailboxes and wait until every queued message was handled."""
        for actor in actors:
            actor.close()
        with anyio.CancelScope(shield=True):
            for actor in actors:
                await actor.wait_stopped()
