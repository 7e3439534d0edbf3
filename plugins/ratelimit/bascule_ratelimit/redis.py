"""The Redis backend: exact across any number of gateway processes and hosts.

Each decision is one Lua script (EVALSHA), atomic on the server, with the time
read from the Redis server (``TIME``), never from a gateway's clock. Every key
of one request shares a hash tag, so the script also suits a cluster slot.
The decisions that requests ask for while one round trip is under way leave
together in the next, as one pipeline: every request still waits for its own
answer from Redis, and a busy gateway pays one round trip per batch, not per
request (about a quarter of the client's CPU time per decision at 25 a batch).
On a plain ``redis://`` or ``unix://`` URL a batch goes over a connection
of its own (``resp.Pipe``: a third of coredis' CPU time per batch); on any
other, through coredis; on a Cluster as single commands (see ``RedisBackend._send``).
Each call is bounded by ``timeout``; a failure raises ``BackendError`` and the
plugin applies ``on_error``. The client reconnects by itself once Redis is
back (and reloads the script if Redis lost it). The URL may name a Sentinel
service or a Cluster (``bascule_sdk.redis``): through a failover decisions
fail until the new primary answers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import coredis
import trio
from bascule_sdk.redis import open_redis

from .policy import Decision, Outcome, Policy
from .resp import Pipe, ReplyError

__all__ = ["SCRIPT", "BackendError", "RedisBackend"]

SCRIPT = """
-- One request against every limit of its route, atomically.
-- KEYS[i]: the bucket of limit i. ARGV, 4 per limit: algorithm, limit, window (us), burst.
-- Nothing is written unless every limit admits the request: a rejected request consumes nothing.
-- Returns {admitted, then per limit: admitted, remaining, grows_in (ms), reset (ms)}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])

local function ms(us) return math.max(1, math.ceil(us / 1000)) end
local function int(x) return string.format('%.0f', x) end

local function gcra(key, limit, window, burst)
  local interval = window / limit
  local tat = tonumber(redis.call('GET', key)) or now
  if tat < now then tat = now end
  local wait = (tat - now) - (burst - 1) * interval
  if wait > 0.001 then return 0, 0, wait, tat - now, nil end
  local remaining = math.floor(-wait / interval + 1e-9)
  local new_tat = tat + interval
  return 1, remaining, (remaining + 1) * interval + wait, new_tat - now, function()
    redis.call('SET', key, int(new_tat), 'PX', ms(new_tat - now))
  end
end

local function fixed_window(key, limit, window)
  local count = tonumber(redis.call('GET', key)) or 0
  local left = redis.call('PTTL', key) * 1000
  if count == 0 or left < 0 then count, left = 0, window end
  if count >= limit then return 0, 0, left, left, nil end
  return 1, limit - count - 1, left, left, function()
    if count == 0 then redis.call('SET', key, 1, 'PX', ms(window)) else redis.call('INCR', key) end
  end
end

local function score(key, index)
  return tonumber(redis.call('ZRANGE', key, index, index, 'WITHSCORES')[2])
end

local function sliding_window(key, limit, window)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', int(now - window))
  local n = redis.call('ZCARD', key)
  if n >= limit then
    return 0, 0, score(key, n - limit) + window - now, score(key, -1) + window - now, nil
  end
  local oldest = now
  if n > 0 then oldest = score(key, 0) end
  return 1, limit - n - 1, oldest + window - now, window, function()
    redis.call('ZADD', key, int(now), int(now) .. '-' .. n)
    redis.call('PEXPIRE', key, ms(window))
  end
end

local checks = {gcra = gcra, ['fixed-window'] = fixed_window, ['sliding-window'] = sliding_window}
local out, consume, admitted = {0}, {}, 1
for i, key in ipairs(KEYS) do
  local a = (i - 1) * 4
  local ok, remaining, grows_in, reset, write = checks[ARGV[a + 1]](
    key, tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), tonumber(ARGV[a + 4]))
  if ok == 0 then admitted = 0 end
  consume[i] = write
  for _, v in ipairs({ok, remaining, ms(grows_in), ms(reset)}) do out[#out + 1] = v end
end
if admitted == 1 then
  for _, write in ipairs(consume) do write() end
end
out[1] = admitted
return out
"""


class BackendError(Exception):
    """The backend could not decide (unreachable, too slow, or failed)."""


class _Call:
    """One decision waiting for its batch: the script's keys and arguments, the time it must be
    answered by (``trio.current_time()``), then its answer."""

    __slots__ = ("keys", "args", "deadline", "done", "answer", "error", "abandoned")

    def __init__(self, keys: list[str], args: list[Any], deadline: float) -> None:
        self.keys = keys
        self.args = args
        self.deadline = deadline
        self.done = trio.Event()
        self.answer: list[Any] | None = None
        self.error: str | None = None
        self.abandoned = False  # its request stopped waiting: never send it (it would consume unseen)

    def settle(self, answer: Any) -> None:
        if isinstance(answer, BaseException):
            self.error = f"{type(answer).__name__}: {answer}"
        else:
            self.answer = answer
        self.done.set()


class RedisBackend:
    """Decisions on a Redis server through one open coredis client, batched (the batches over
    ``pipe``, a connection of their own, when the URL is a plain one): see ``opened``."""

    def __init__(self, timeout: float, *, pipelines: bool = True, pipe: Pipe | None = None) -> None:
        self.timeout = timeout
        self._pipelines = pipelines  # batch decisions (not on a Cluster: see ``decide``)
        self._pipe = pipe  # the batches' own connection, else they go through coredis
        self._alone = False  # a pipeline failed: decisions go as single commands until one works
        self._script: Any = None  # the client's, while open
        self._pending: list[_Call] = []
        self._wake = trio.Event()  # set when ``_pending`` gets its first call
        # Batched calls not yet past their deadline, oldest first (so by deadline: one ``timeout``).
        self._waiting: deque[_Call] = deque()
        self._watch = trio.Event()  # set when ``_waiting`` gets a call

    @classmethod
    @asynccontextmanager
    async def opened(cls, url: str, timeout: float) -> AsyncIterator[RedisBackend]:
        """The backend of ``url``, open inside the block (``Gateway.acquire`` holds it), its
        batches sent by a task of the block.

        Does not wait for Redis to answer: a gateway starts while Redis is down
        and decisions fail (``on_error``) until it is back.
        """
        backend = cls(timeout, pipelines=not url.startswith("redis+cluster://"), pipe=Pipe.for_url(url))
        async with open_redis(url, timeout=timeout) as client:  # coredis' pool lives in this block
            script = client.register_script(SCRIPT)
            with trio.move_on_after(timeout):
                try:  # load the script now rather than on the first requests; Redis may be down
                    await client.script_load(SCRIPT)
                except coredis.exceptions.RedisError:
                    pass
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(backend._send_batches, client, script)
                    nursery.start_soon(backend._expire_late_calls)
                    backend._script = script
                    try:
                        yield backend
                    finally:
                        nursery.cancel_scope.cancel()
            finally:
                backend._script = None
                if backend._pipe is not None:
                    backend._pipe.close()
                for call in backend._waiting:  # queued, or sent and unanswered
                    call.settle(BackendError("the Redis client stopped"))
                backend._pending = []
                backend._waiting.clear()

    async def _send_batches(self, client: Any, script: Any) -> None:
        """Send what is pending as one pipeline, wait for its answers, and again."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            batch, self._pending = [c for c in self._pending if not (c.abandoned or c.done.is_set())], []
            if batch:
                await self._send(client, script, batch)

    async def _expire_late_calls(self) -> None:
        """Answer each batched call that is still waiting at its deadline with "no answer": one
        task and one sleep per ``timeout`` or so, not a cancel scope per decision (7 µs each here).
        A call expired before its batch left is not sent."""
        waiting = self._waiting
        while True:
            if not waiting:
                self._watch = trio.Event()
                await self._watch.wait()
            await trio.sleep_until(waiting[0].deadline)
            now = trio.current_time()
            while waiting and (waiting[0].done.is_set() or waiting[0].deadline <= now):
                waiting.popleft().done.set()  # answered already, or now: no answer in time

    async def _send(self, client: Any, script: Any, batch: list[_Call]) -> None:
        """``batch``'s scripts as one pipeline; each call gets its answer or error.

        A call that met a Redis that lost the script (restarted, flushed) did not run: it goes
        again alone (coredis loads the script and retries). A pipeline that failed may have run
        some of its scripts, so none is sent again (that would consume twice): each call fails
        (``on_error``), and decisions go as single commands until one works (``decide``), as
        coredis recovers on those."""
        answers: list[Any] = [None] * len(batch)  # None: not run (NOSCRIPT)
        with trio.move_on_after(self.timeout) as waited:
            try:
                if self._pipe is not None:
                    commands = [("EVALSHA", script.sha, len(call.keys), *call.keys, *call.args) for call in batch]
                    replies = await self._pipe.send(commands)
                    answers = [None if _no_script(reply) else reply for reply in replies]
                else:
                    async with client.pipeline(transaction=False, raise_on_error=False) as pipe:
                        sent = [pipe.evalsha(script.sha, keys=call.keys, args=call.args) for call in batch]
                    for i, request in enumerate(sent):
                        try:
                            answers[i] = await request
                        except coredis.exceptions.NoScriptError:
                            pass
                        except coredis.exceptions.RedisError as e:
                            answers[i] = e
            except Exception as e:
                answers = [e] * len(batch)
        if waited.cancelled_caught:  # Redis does not answer: each call is answered at its deadline
            self._alone = True
            return
        self._alone = any(isinstance(answer, Exception) for answer in answers)
        async with trio.open_nursery() as nursery:
            for call, answer in zip(batch, answers, strict=True):
                if answer is None:
                    nursery.start_soon(self._send_alone, script, call)
                else:
                    call.settle(answer)

    async def _send_alone(self, script: Any, call: _Call) -> None:
        """``call`` as a command of its own, by its deadline (coredis loads a missing script
        and retries); unsettled if the time ran out."""
        if call.abandoned:
            return
        with trio.move_on_at(call.deadline):
            try:
                call.settle(await script(keys=call.keys, args=call.args))
            except Exception as e:
                call.settle(e)

    def _queue(self, call: _Call) -> None:
        if not self._pending:
            self._wake.set()
        self._pending.append(call)

    async def decide(self, keys: Sequence[str], policies: Sequence[Policy]) -> Decision:
        """Check and consume on Redis; raise ``BackendError`` on any failure or timeout.

        The decision goes with the next batch; as a command of its own, sent at once, on a
        Cluster (a cluster pipeline that loses a node mid-batch fails all its calls, those that
        ran included: decisions consumed unseen through a failover, ``tests/test_redis_ha.py``)
        and after a pipeline failed, until one works."""
        script = self._script
        if script is None:
            raise BackendError("the Redis client is not running")
        args: list[Any] = []
        for p in policies:
            args += [p.algorithm, p.limit, int(p.window * 1_000_000), p.burst]
        call = _Call(list(keys), args, trio.current_time() + self.timeout)
        if self._pipelines and not self._alone:
            self._queue(call)
            self._waiting.append(call)
            self._watch.set()
            try:
                await call.done.wait()  # answered, or its deadline passed (``_expire_late_calls``)
            finally:  # the request was cancelled
                call.abandoned = not call.done.is_set()
        else:
            await self._send_alone(script, call)
            self._alone = call.answer is None
        raw = call.answer
        if raw is None:
            raise BackendError(call.error or f"no answer within {self.timeout * 1000:g} ms")
        outcomes = tuple(
            Outcome(p, bool(raw[i]), int(raw[i + 1]), raw[i + 2] / 1000, raw[i + 3] / 1000)
            for p, i in zip(policies, range(1, len(raw), 4), strict=True)
        )
        return Decision(bool(raw[0]), outcomes)


def _no_script(reply: object) -> bool:
    """Whether ``reply`` says the server does not have the script (it did not run)."""
    return isinstance(reply, ReplyError) and str(reply).startswith("NOSCRIPT")
