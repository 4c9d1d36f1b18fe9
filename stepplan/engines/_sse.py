"""The SSE → JSON → decoder loop shared by the HTTP engines (OpenAI and Anthropic upstreams).

One loop, so the two engines cannot drift: both flush the SSE parser at the end of the body (a
last event without its blank line still counts), both report a malformed frame, an in-stream
error document, a frame of the wrong shape and a stream that closed before it finished the same
way (:class:`UpstreamError`, which the pipeline turns into the client's protocol error).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, Protocol

import orjson

from ..errors import UpstreamError
from ..protocols.canonical import Event, Finish
from ..streaming.sse import SSEParser


class StreamDecoder(Protocol):
    """A protocol's upstream stream decoder (``protocols.*_response.StreamDecoder``)."""

    @property
    def finish(self) -> Finish | None: ...

    def feed(self, payload: Any) -> list[Event]:
        """One parsed frame → canonical events; ValueError/TypeError/AttributeError if it has the
        wrong shape."""
        ...

    def close(self) -> list[Event]:
        """The events that end the stream (at least a :class:`Finish`)."""
        ...


ErrorOf = Callable[[Any], "str | None"]


async def sse_events(name: str, open_source: Callable[[], AsyncGenerator[bytes, None]], decoder: StreamDecoder,
                     error_of: ErrorOf, done_data: bytes | None = None) -> AsyncIterator[Event]:
    """Canonical events from an upstream's raw SSE body.

    ``open_source()`` is called on the first iteration (so encoding the request and sending it
    happen when the caller starts reading, as with any async generator); the body it returns is
    closed whatever happens. ``error_of(payload)`` returns the message of an in-stream error
    document (else None). The stream ends at the data line ``done_data`` when one is given
    (OpenAI's ``[DONE]``); without one, when the decoder's ``done`` turns true (Anthropic's
    ``message_stop``), after the network read that carried it.
    """
    source = open_source()
    parser = SSEParser()
    loads = orjson.loads
    feed = decoder.feed
    watch_decoder = done_data is None  # else the decoder may have no ``done`` at all
    done = False
    try:
        async for raw in source:
            for _, data in parser.feed(raw):
                if data == done_data:
                    done = True
                    break
                # The body of _decode, inlined: this runs once per upstream event.
                try:
                    payload = loads(data)
                except orjson.JSONDecodeError as exc:
                    raise UpstreamError(f"upstream {name} sent a malformed stream event") from exc
                message = error_of(payload)
                if message is not None:
                    raise UpstreamError(f"upstream {name} failed mid-stream: {message}")
                try:
                    events = feed(payload)
                except (ValueError, TypeError, AttributeError) as exc:
                    raise UpstreamError(f"upstream {name} sent a stream event of the wrong shape: {exc}") from exc
                for ev in events:
                    yield ev
            if done or (watch_decoder and decoder.done):  # type: ignore[attr-defined]
                done = True
                break
        else:  # the body ended: a last event without its blank line still counts
            for _, data in parser.flush():
                if data == done_data:
                    done = True
                    break
                for ev in _decode(name, feed, error_of, data):
                    yield ev
            done = done or (watch_decoder and decoder.done)  # type: ignore[attr-defined]
    finally:
        await source.aclose()
    if not done and decoder.finish is None:
        raise UpstreamError(f"upstream {name} closed the stream before it finished")
    for ev in decoder.close():
        yield ev


def _decode(name: str, feed: Callable[[Any], list[Event]], error_of: ErrorOf, data: bytes) -> list[Event]:
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(f"upstream {name} sent a malformed stream event") from exc
    message = error_of(payload)
    if message is not None:
        raise UpstreamError(f"upstream {name} failed mid-stream: {message}")
    try:
        return feed(payload)
    except (ValueError, TypeError, AttributeError) as exc:
        raise UpstreamError(f"upstream {name} sent a stream event of the wrong shape: {exc}") from exc
