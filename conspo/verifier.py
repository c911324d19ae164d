"""Verified rewards: math-verify in worker processes, with a hard time limit per answer and a cache.

`timeout` (the config's `verifier.timeout`) is the limit on judging one answer. A worker stops itself when it is
reached (a SIGALRM timer over the whole parse-and-compare, sub-second, instead of math-verify's own whole-second
alarms per call); an answer stuck inside C code, where no signal is handled, gets its worker killed and replaced
`KILL_GRACE` seconds later. Either way the answer counts as incorrect (logged, `timed_out=True`). The dispatching
process never blocks on a worker: tasks and results travel through non-blocking pipes, so a stuck worker with a
large task queued behind it (a full pipe) cannot hold it past the limit. A response that is not a string is one
incorrect verdict, logged with its type. The cache of decided (answer, gold) pairs is bounded in bytes.
Golds are parsed as `\\boxed{gold}`: a bare LaTeX gold mis-parses.

Extraction policies (a config value, recorded in every `Verdict`):
- "boxed": only the content of the response's last `\\boxed{...}` counts; no box means incorrect;
- "last": math-verify's default extraction (LaTeX, then plain expressions; the last answer it finds).
Under both, a response whose last `\\boxed{` never closes (cut off mid-answer) is incorrect.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import multiprocessing
import os
import pickle
import re
import resource
import select
import signal
import struct
import sys
import time
from collections import OrderedDict, deque
from contextlib import contextmanager
from dataclasses import dataclass

logger = logging.getLogger(__name__)

EXTRACTIONS = ("boxed", "last")
BOX_OPENING = "\\boxed{"
# Pairs every new worker judges before taking work: the first parse/compare of each kind is slow (lazy imports).
WARM_UP = (("\\boxed{2\\sqrt{2}}", "(0,1]"), ("so x = \\frac{1}{2}", "0.5"), ("\\boxed{x=5}", "5, 6"))
PIPELINE_DEPTH = 2  # tasks sent ahead to each worker, so it never waits for this process to hand it the next one
STARTUP_TIMEOUT = 120.0  # seconds for a new worker process to come up (imports sympy unless preloaded)
KILL_GRACE = 0.5  # seconds past the limit before a worker that did not stop itself (stuck in C code) is killed
FRAME = struct.Struct("!Q")  # length prefix of a message on the worker pipes
CACHE_ENTRY_OVERHEAD = 200  # bytes of a cache entry besides its extracted answer (key, tuple, dict slot)


class _OwnTimeNotice(logging.Filter):
    """math-verify warns once per process that its own whole-second alarms are off: `judge` times the whole check."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.grader", "math_verify.parser"):
    logging.getLogger(_name).addFilter(_OwnTimeNotice())


@dataclass(frozen=True)
class Verdict:
    correct: bool
    extracted: str | None  # the answer text that was judged; None when the response holds none
    timed_out: bool
    extraction: str | None = None  # the extraction policy that produced this verdict


def _closing_brace(text: str, start: int) -> int | None:
    """Index of the brace closing the group that opens just before `start`; escaped braces (`\\{`) do not count."""
    depth = 1
    index = start
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` of `text`; None if there is none or the last one never closes."""
    opening = text.rfind(BOX_OPENING)
    if opening < 0:
        return None
    start = opening + len(BOX_OPENING)
    end = _closing_brace(text, start)
    return None if end is None else text[start:end]


def is_truncated(text: str) -> bool:
    """Whether the response's last `\\boxed{` never closes: the response was cut off inside its answer."""
    return BOX_OPENING in text and last_boxed(text) is None


def normalise_number(answer: str) -> str:
    """`142.0` -> `142` (integral decimals, as AMC stores its answers); anything else unchanged but stripped."""
    answer = answer.strip()
    integral = re.fullmatch(r"(-?\d+)\.0*", answer)
    return integral.group(1) if integral else answer


def normalise_olympiad_answer(final_answer: list[str] | str) -> str:
    """OlympiadBench's `final_answer` (a list of `$...$` strings) as one gold: math delimiters stripped, several
    answers joined by ", " (math-verify then compares them as a set)."""
    items = [final_answer] if isinstance(final_answer, str) else list(final_answer)
    stripped = [re.sub(r"(?<!\\)\$", "", item).strip() for item in items]
    return ", ".join(item for item in stripped if item)


@functools.lru_cache(maxsize=4096)
def _parsed_gold(gold: str):
    from math_verify import LatexExtractionConfig, parse

    return parse(BOX_OPENING + gold + "}", extraction_config=[LatexExtractionConfig()], parsing_timeout=None,
                 raise_on_error=True)


@contextmanager
def _time_limit(seconds: float | None):
    """Raise math-verify's TimeoutException (a BaseException: math-verify's `except Exception` cannot swallow it)
    once `seconds` of wall time have passed; main thread only (SIGALRM)."""
    if seconds is None:
        yield
        return
    from math_verify.errors import TimeoutException

    def expire(signum, frame):
        raise TimeoutException(f"over {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def judge(response: str, gold: str, extraction: str, timeout: float | None = 5.0) -> tuple[bool, str | None, bool]:
    """(correct, extracted, timed_out) for one response, in this process, within `timeout` seconds for parsing and
    comparing together (a SIGALRM timer: main thread only). Workers run this; so does the serial baseline of the
    benchmark."""
    # imported here so that importing this module (data loading, the trainer) does not pay for sympy
    from math_verify import LatexExtractionConfig, parse, verify
    from math_verify.errors import TimeoutException

    if extraction not in EXTRACTIONS:
        raise ValueError(f"unknown extraction policy {extraction!r}; policies: {', '.join(EXTRACTIONS)}")
    if is_truncated(response):
        return False, None, False
    extracted = None
    try:
        with _time_limit(timeout):
            if extraction == "boxed":
                extracted = last_boxed(response)
                if extracted is None:
                    return False, None, False
                answer = parse(BOX_OPENING + extracted + "}", extraction_config=[LatexExtractionConfig()],
                               parsing_timeout=None, raise_on_error=True)
            else:
                answer = parse(response, parsing_timeout=None, raise_on_error=True)
                extracted = next((item for item in reversed(answer) if isinstance(item, str)), None)
            if not answer:
                return False, extracted, False
            correct = verify(_parsed_gold(gold), answer, timeout_seconds=None, raise_on_error=True)
        return bool(correct), extracted, False
    except TimeoutException:
        return False, extracted, True
    except Exception:  # math-verify raises many kinds of parse/compare errors: all mean "not verified"
        logger.debug("verification error for gold %r", gold, exc_info=True)
        return False, extracted, False


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * resource.getpagesize()


def _frame(message) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return FRAME.pack(len(payload)) + payload


def _read_exactly(fd: int, size: int) -> bytes | None:
    """`size` bytes from a blocking fd; None at end of file."""
    parts, missing = [], size
    while missing:
        chunk = os.read(fd, missing)
        if not chunk:
            return None
        parts.append(chunk)
        missing -= len(chunk)
    return b"".join(parts)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _worker_loop(tasks, results, extraction: str, timeout: float, memory_headroom_bytes: int | None) -> None:
    """A worker: read (response, gold) frames from `tasks`, write (correct, extracted, timed_out) frames to `results`,
    until a None task or the end of the pipe."""
    if memory_headroom_bytes is not None:
        # headroom over what is already mapped (the forkserver may hold torch, with gigabytes of CUDA mappings)
        limit = _address_space_bytes() + memory_headroom_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for response, gold in WARM_UP:  # pay math-verify's first-call costs before any answer is on the clock
        judge(response, gold, extraction, timeout=None)
    task_fd, result_fd = tasks.fileno(), results.fileno()
    _write_all(result_fd, _frame("ready"))
    while True:
        header = _read_exactly(task_fd, FRAME.size)
        payload = None if header is None else _read_exactly(task_fd, FRAME.unpack(header)[0])
        message = None if payload is None else pickle.loads(payload)
        if message is None:
            return
        response, gold = message
        _write_all(result_fd, _frame(judge(response, gold, extraction, timeout)))


class _Worker:
    """One verification process, the dispatching side of its two pipes (non-blocking) and the tasks sent to it
    (oldest, the one being judged, first)."""

    def __init__(self, context, extraction: str, timeout: float, memory_headroom_bytes: int | None):
        task_reader, self.tasks = context.Pipe(duplex=False)
        self.results, result_writer = context.Pipe(duplex=False)
        self.process = context.Process(target=_worker_loop, daemon=True, name="conspo-verifier",
                                       args=(task_reader, result_writer, extraction, timeout, memory_headroom_bytes))
        self.process.start()
        task_reader.close()
        result_writer.close()
        self.outbox = bytearray()  # frames not yet taken by the pipe
        self.inbox = bytearray()  # bytes of frames not yet complete
        self.queue: deque[bytes] = deque()
        self.frame_ends: deque[int] = deque()  # where each queued task's frame ends in the stream sent to the worker
        self.queued_bytes = self.sent_bytes = 0
        self.deadline = math.inf  # when the oldest task's time is up
        if self._came_up() != "ready":
            self.kill()
            raise RuntimeError(f"a verifier worker exited or did not start within {STARTUP_TIMEOUT:.0f} s")
        os.set_blocking(self.tasks.fileno(), False)
        os.set_blocking(self.results.fileno(), False)

    def _came_up(self):
        try:
            if not self.results.poll(STARTUP_TIMEOUT):
                return None
            header = _read_exactly(self.results.fileno(), FRAME.size)
            payload = None if header is None else _read_exactly(self.results.fileno(), FRAME.unpack(header)[0])
            return None if payload is None else pickle.loads(payload)
        except (EOFError, OSError):
            return None

    def submit(self, task: bytes, response: str, gold: str, limit: float) -> None:
        """Queue a task (sent as the pipe takes it: `flush`); the head task's clock starts now."""
        frame = _frame((response, gold))
        self.outbox += frame
        self.queued_bytes += len(frame)
        self.queue.append(task)
        self.frame_ends.append(self.queued_bytes)
        if len(self.queue) == 1:
            self.deadline = time.monotonic() + limit
        self.flush()

    def flush(self) -> None:
        """Write what the pipe takes without blocking (BrokenPipeError when the worker is gone)."""
        while self.outbox:
            try:
                written = os.write(self.tasks.fileno(), self.outbox)
            except BlockingIOError:
                return
            del self.outbox[:written]
            self.sent_bytes += written

    @property
    def has_head_task(self) -> bool:
        """Whether the oldest task has reached the worker whole (it may have begun it)."""
        return bool(self.queue) and self.sent_bytes >= self.frame_ends[0]

    def receive(self) -> list:
        """The results that have arrived completely, without blocking (EOFError when the worker is gone)."""
        while True:
            try:
                chunk = os.read(self.results.fileno(), 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                raise EOFError("verifier worker exited")
            self.inbox += chunk
        messages = []
        while len(self.inbox) >= FRAME.size:
            size = FRAME.unpack_from(self.inbox)[0]
            if len(self.inbox) < FRAME.size + size:
                break
            messages.append(pickle.loads(bytes(self.inbox[FRAME.size:FRAME.size + size])))
            del self.inbox[:FRAME.size + size]
        return messages

    def finish(self, limit: float) -> bytes:
        """The oldest task, whose answer just arrived; the worker is on the next one now, so its clock starts."""
        task = self.queue.popleft()
        self.frame_ends.popleft()
        self.deadline = time.monotonic() + limit if self.queue else math.inf
        return task

    def stop(self, grace: float = 1.0) -> None:
        if not self.outbox:
            try:  # without blocking: the end of the pipe stops the worker too, the None frame just says so first
                os.write(self.tasks.fileno(), _frame(None))
            except OSError:  # BlockingIOError (a full pipe) or a worker already gone
                pass
        self.tasks.close()
        self.process.join(grace)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.results.close()

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.tasks.close()
        self.results.close()


def job_cpus() -> int:
    """The CPUs this job was given: the threads Snakemake gave it (a rule's shell command sees them as
    OMP_NUM_THREADS, locally and inside a SLURM job) when set, capped by the CPUs this process may run on."""
    usable = len(os.sched_getaffinity(0))
    threads = os.environ.get("OMP_NUM_THREADS", "")
    return min(int(threads), usable) if threads.isdigit() and int(threads) > 0 else usable


class Verifier:
    """Checks responses against golds with math-verify on `workers` processes (default: `job_cpus()`).

    `timeout` (seconds) is the limit for judging one response (workers stop themselves then; one stuck in C code is
    killed `KILL_GRACE` later); `cache_bytes` bounds the memory of the cache of decided (answer, gold) pairs (0: no
    cache); `memory_headroom_gb` caps how far each worker's address space may grow, so a runaway expression fails with
    a MemoryError instead of exhausting the machine.
    Counters: `checked` (answers judged by a worker), `cache_hits`, `timeouts`, `restarts` (workers replaced),
    `cache_used_bytes`.
    """

    def __init__(self, extraction: str = "boxed", timeout: float = 5.0, workers: int | None = None,
                 cache_bytes: int = 64 * 2**20, memory_headroom_gb: float | None = 4.0):
        if extraction not in EXTRACTIONS:
            raise ValueError(f"unknown extraction policy {extraction!r}; policies: {', '.join(EXTRACTIONS)}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.extraction = extraction
        self.timeout = float(timeout)
        self.workers = workers if workers is not None else job_cpus()
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        self.cache_bytes = cache_bytes
        self._memory_headroom_bytes = None if memory_headroom_gb is None else int(memory_headroom_gb * 2**30)
        self._context = multiprocessing.get_context("forkserver")
        self._pool: list[_Worker] = []
        self._cache: OrderedDict[bytes, tuple[bool, str | None, int]] = OrderedDict()  # ..., size in bytes
        self.cache_used_bytes = 0
        self.checked = self.cache_hits = self.timeouts = self.restarts = 0

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the running workers (empty before the first `verify` and after `close`)."""
        return [worker.process.pid for worker in self._pool]

    def close(self) -> None:
        """Stop the worker processes (a later `verify` starts new ones)."""
        for worker in self._pool:
            worker.stop()
        self._pool = []

    def _new_worker(self) -> _Worker:
        return _Worker(self._context, self.extraction, self.timeout, self._memory_headroom_bytes)

    def _start(self) -> None:
        if not self._pool:
            self._context.set_forkserver_preload(["__main__", "math_verify", __name__])
            self._pool = [self._new_worker() for _ in range(self.workers)]

    def _answer_text(self, response: str) -> str | None:
        """What the workers judge: `\\boxed{content}` under "boxed", the whole response under "last"; None when
        the response cannot be correct (no box, or cut off inside one)."""
        if is_truncated(response):
            return None
        if self.extraction == "boxed":
            content = last_boxed(response)
            return None if content is None else BOX_OPENING + content.strip() + "}"
        return response.strip()

    @staticmethod
    def _task_key(answer_text: str, gold: str) -> bytes:
        return hashlib.blake2b(f"{answer_text}\x00{gold}".encode("utf-8", "surrogatepass"), digest_size=16).digest()

    def _remember(self, key: bytes, correct: bool, extracted: str | None) -> None:
        """Cache a decided pair, evicting the least recently used while the cache holds more than `cache_bytes`."""
        size = CACHE_ENTRY_OVERHEAD + (0 if extracted is None else sys.getsizeof(extracted))
        if size > self.cache_bytes:
            return
        if key in self._cache:
            self.cache_used_bytes -= self._cache.pop(key)[2]
        self._cache[key] = (correct, extracted, size)
        self.cache_used_bytes += size
        while self.cache_used_bytes > self.cache_bytes:
            self.cache_used_bytes -= self._cache.popitem(last=False)[1][2]

    def verify(self, responses: list[str], golds: list[str]) -> list[Verdict]:
        """One `Verdict` per (response, gold), in order."""
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} golds")
        verdicts: list[Verdict | None] = [None] * len(responses)
        waiting: dict[bytes, list[int]] = {}
        tasks: list[tuple[bytes, str, str]] = []
        for index, (response, gold) in enumerate(zip(responses, golds)):
            if not isinstance(response, str) or gold is None:
                logger.warning("response %d: %s, not a string; counted incorrect", index,
                               "a gold of None" if gold is None else f"a {type(response).__name__}")
                verdicts[index] = Verdict(False, None, False, self.extraction)
                continue
            answer_text = self._answer_text(response)
            if answer_text is None:
                verdicts[index] = Verdict(False, None, False, self.extraction)
                continue
            key = self._task_key(answer_text, str(gold))
            if key in self._cache:
                self.cache_hits += 1
                self._cache.move_to_end(key)
                correct, extracted, _ = self._cache[key]
                verdicts[index] = Verdict(correct, extracted, False, self.extraction)
            elif key in waiting:
                waiting[key].append(index)
            else:
                waiting[key] = [index]
                tasks.append((key, answer_text, str(gold)))
        for key, (correct, extracted, timed_out) in self._run(tasks).items():
            for index in waiting[key]:
                verdicts[index] = Verdict(correct, extracted, timed_out, self.extraction)
        return verdicts

    def _run(self, tasks: list[tuple[bytes, str, str]]) -> dict[bytes, tuple[bool, str | None, bool]]:
        """Judge distinct tasks on the pool, killing and replacing any worker that overruns its deadline or dies.
        An interruption (e.g. KeyboardInterrupt) stops the pool, so no stale answer reaches a later call."""
        if not tasks:
            return {}
        self._start()
        try:
            return self._dispatch(tasks)
        except BaseException:
            self.close()
            raise

    def _dispatch(self, tasks: list[tuple[bytes, str, str]]) -> dict[bytes, tuple[bool, str | None, bool]]:
        results: dict[bytes, tuple[bool, str | None, bool]] = {}
        pending = deque(tasks)
        task_of = {key: (answer_text, gold) for key, answer_text, gold in tasks}
        limit = self.timeout + KILL_GRACE  # the worker stops itself at `timeout`; this is for one stuck in C code

        def replace(slot: int, head_done: bool) -> None:
            """Kill the worker in `slot`, start another, and hand back the tasks it had not begun (all of them, or
            all but the oldest when that one is decided: timed out, or the one it died on)."""
            not_begun = list(self._pool[slot].queue)[1 if head_done else 0:]
            self._replace(slot)
            pending.extendleft((key, *task_of[key]) for key in reversed(not_begun))

        def died(slot: int) -> None:
            worker = self._pool[slot]
            began = worker.has_head_task
            if began:  # whatever it was judging killed it
                key = worker.queue[0]
                logger.error("verifier worker died on gold %r, answer %.80r; counted incorrect", task_of[key][1],
                             task_of[key][0])
                results[key] = (False, None, False)
            replace(slot, began)

        while pending or any(worker.queue for worker in self._pool):
            for slot in range(len(self._pool)):
                try:
                    while pending and len(self._pool[slot].queue) < PIPELINE_DEPTH:
                        self._pool[slot].submit(*pending.popleft(), limit)
                    self._pool[slot].flush()
                except BrokenPipeError:
                    died(slot)
            busy = [worker for worker in self._pool if worker.queue]
            if not busy:  # every task is decided, or handed back to `pending` by a replaced worker
                continue
            wait_for = max(0.0, min(worker.deadline for worker in busy) - time.monotonic())
            readable, _, _ = select.select([w.results for w in busy], [w.tasks for w in busy if w.outbox], [],
                                           wait_for)
            for slot, worker in enumerate(self._pool):
                if not worker.queue:
                    continue
                try:
                    answers = worker.receive() if worker.results in readable else []
                except EOFError:
                    died(slot)
                    continue
                for correct, extracted, timed_out in answers:
                    answer_text, gold = task_of[worker.queue[0]]
                    key = worker.finish(limit)
                    self.checked += 1
                    if timed_out:
                        self.timeouts += 1
                        logger.warning("verification exceeded %.1f s on gold %r, answer %.80r; counted incorrect",
                                       self.timeout, gold, answer_text)
                    elif self.cache_bytes > 0:
                        self._remember(key, correct, extracted)
                    results[key] = (correct, extracted, timed_out)
                if worker.queue and time.monotonic() >= worker.deadline:
                    answer_text, gold = task_of[worker.queue[0]]
                    self.checked += 1
                    self.timeouts += 1
                    logger.warning("verification exceeded %.1f s on gold %r, answer %.80r (stuck: worker killed); "
                                   "counted incorrect", self.timeout, gold, answer_text)
                    results[worker.queue[0]] = (False, None, True)
                    replace(slot, True)
        return results

    def _replace(self, slot: int) -> None:
        self._pool[slot].kill()
        self._pool[slot] = self._new_worker()
        self.restarts += 1
