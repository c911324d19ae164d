"""Verified rewards: math-verify in worker processes, with a hard time limit per answer and a cache.

math-verify's own timeouts use `signal.alarm` (main thread only) and some inputs hang inside C code regardless, so
every check runs in a worker process; a worker that overruns the time limit is killed and replaced, and its answer
counts as incorrect (logged, `timed_out=True`). Golds are parsed as `\\boxed{gold}`: a bare LaTeX gold mis-parses.

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
import multiprocessing.connection
import os
import re
import resource
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

logger = logging.getLogger(__name__)

EXTRACTIONS = ("boxed", "last")
BOX_OPENING = "\\boxed{"
# Pairs every new worker judges before taking work: the first parse/compare of each kind is slow (lazy imports).
WARM_UP = (("\\boxed{2\\sqrt{2}}", "(0,1]"), ("so x = \\frac{1}{2}", "0.5"), ("\\boxed{x=5}", "5, 6"))
PIPELINE_DEPTH = 2  # tasks sent ahead to each worker, so it never waits for this process to hand it the next one
STARTUP_TIMEOUT = 120.0  # seconds for a new worker process to come up (imports sympy unless preloaded)


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
def _parsed_gold(gold: str, parse_timeout: int):
    from math_verify import LatexExtractionConfig, parse

    return parse(BOX_OPENING + gold + "}", extraction_config=[LatexExtractionConfig()],
                 parsing_timeout=parse_timeout, raise_on_error=True)


def judge(response: str, gold: str, extraction: str, parse_timeout: int = 5) -> tuple[bool, str | None, bool]:
    """(correct, extracted, timed_out) for one response, in this process (math-verify's timeouts need the main
    thread). Workers run this; so does the serial baseline of the benchmark."""
    # imported here so that importing this module (data loading, the trainer) does not pay for sympy
    from math_verify import LatexExtractionConfig, parse, verify
    from math_verify.errors import TimeoutException

    if extraction not in EXTRACTIONS:
        raise ValueError(f"unknown extraction policy {extraction!r}; policies: {', '.join(EXTRACTIONS)}")
    if is_truncated(response):
        return False, None, False
    extracted = None
    try:
        if extraction == "boxed":
            extracted = last_boxed(response)
            if extracted is None:
                return False, None, False
            answer = parse(BOX_OPENING + extracted + "}", extraction_config=[LatexExtractionConfig()],
                           parsing_timeout=parse_timeout, raise_on_error=True)
        else:
            answer = parse(response, parsing_timeout=parse_timeout, raise_on_error=True)
            extracted = next((item for item in reversed(answer) if isinstance(item, str)), None)
        if not answer:
            return False, extracted, False
        correct = verify(_parsed_gold(gold, parse_timeout), answer, timeout_seconds=parse_timeout,
                         raise_on_error=True)
        return bool(correct), extracted, False
    except TimeoutException:
        return False, extracted, True
    except Exception:  # math-verify raises many kinds of parse/compare errors: all mean "not verified"
        logger.debug("verification error for gold %r", gold, exc_info=True)
        return False, extracted, False


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * resource.getpagesize()


def _worker_loop(connection, extraction: str, parse_timeout: int, memory_headroom_bytes: int | None) -> None:
    if memory_headroom_bytes is not None:
        # headroom over what is already mapped (the forkserver may hold torch, with gigabytes of CUDA mappings)
        limit = _address_space_bytes() + memory_headroom_bytes
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for response, gold in WARM_UP:  # pay math-verify's first-call costs before any answer is on the clock
        judge(response, gold, extraction, parse_timeout)
    connection.send("ready")
    while True:
        try:
            message = connection.recv()
        except EOFError:
            return
        if message is None:
            return
        response, gold = message
        connection.send(judge(response, gold, extraction, parse_timeout))


class _Worker:
    """One verification process, its pipe, and the tasks sent to it (oldest, the one being judged, first)."""

    def __init__(self, context, extraction: str, parse_timeout: int, memory_headroom_bytes: int | None):
        self.connection, child_end = context.Pipe()
        self.process = context.Process(target=_worker_loop, daemon=True, name="conspo-verifier",
                                       args=(child_end, extraction, parse_timeout, memory_headroom_bytes))
        self.process.start()
        child_end.close()
        if not self._came_up():
            self.kill()
            raise RuntimeError(f"a verifier worker did not start within {STARTUP_TIMEOUT:.0f} s")
        self.queue: deque[bytes] = deque()
        self.deadline = math.inf  # when the oldest task's time is up

    def _came_up(self) -> bool:
        try:
            return self.connection.poll(STARTUP_TIMEOUT) and self.connection.recv() == "ready"
        except (EOFError, OSError):
            return False

    def submit(self, task: bytes, response: str, gold: str, timeout: float) -> None:
        self.connection.send((response, gold))
        self.queue.append(task)
        if len(self.queue) == 1:
            self.deadline = time.monotonic() + timeout

    def finish(self, timeout: float) -> bytes:
        """The oldest task, whose answer just arrived; the worker is on the next one now, so its clock starts."""
        task = self.queue.popleft()
        self.deadline = time.monotonic() + timeout if self.queue else math.inf
        return task

    def stop(self, grace: float = 1.0) -> None:
        try:
            self.connection.send(None)
        except OSError:
            pass
        self.process.join(grace)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.connection.close()

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.connection.close()


def job_cpus() -> int:
    """The CPUs this job was given: the threads Snakemake gave it (a rule's shell command sees them as
    OMP_NUM_THREADS, locally and inside a SLURM job) when set, capped by the CPUs this process may run on."""
    usable = len(os.sched_getaffinity(0))
    threads = os.environ.get("OMP_NUM_THREADS", "")
    return min(int(threads), usable) if threads.isdigit() and int(threads) > 0 else usable


class Verifier:
    """Checks responses against golds with math-verify on `workers` processes (default: `job_cpus()`).

    `timeout` (seconds) is the hard limit for one response; `cache_size` (entries) bounds the cache of decided
    (answer, gold) pairs; `memory_headroom_gb` caps how far each worker's address space may grow, so a runaway
    expression fails with a MemoryError instead of exhausting the machine.
    Counters: `checked` (answers judged by a worker), `cache_hits`, `timeouts`, `restarts` (workers replaced).
    """

    def __init__(self, extraction: str = "boxed", timeout: float = 5.0, workers: int | None = None,
                 cache_size: int = 65536, memory_headroom_gb: float | None = 4.0):
        if extraction not in EXTRACTIONS:
            raise ValueError(f"unknown extraction policy {extraction!r}; policies: {', '.join(EXTRACTIONS)}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.extraction = extraction
        self.timeout = float(timeout)
        self.workers = workers if workers is not None else job_cpus()
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        self.cache_size = cache_size
        # math-verify's own alarms let a worker give up on slow parses without being killed; the outer limit
        # (`timeout`) still bounds everything.
        self._parse_timeout = max(1, int(self.timeout / 2))
        self._memory_headroom_bytes = None if memory_headroom_gb is None else int(memory_headroom_gb * 2**30)
        self._context = multiprocessing.get_context("forkserver")
        self._pool: list[_Worker] = []
        self._cache: OrderedDict[bytes, tuple[bool, str | None]] = OrderedDict()
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
        return _Worker(self._context, self.extraction, self._parse_timeout, self._memory_headroom_bytes)

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

    def _remember(self, key: bytes, decided: tuple[bool, str | None]) -> None:
        if self.cache_size <= 0:
            return
        self._cache[key] = decided
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def verify(self, responses: list[str], golds: list[str]) -> list[Verdict]:
        """One `Verdict` per (response, gold), in order."""
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} golds")
        verdicts: list[Verdict | None] = [None] * len(responses)
        waiting: dict[bytes, list[int]] = {}
        tasks: list[tuple[bytes, str, str]] = []
        for index, (response, gold) in enumerate(zip(responses, golds)):
            answer_text = self._answer_text(response)
            if answer_text is None:
                verdicts[index] = Verdict(False, None, False, self.extraction)
                continue
            key = self._task_key(answer_text, str(gold))
            if key in self._cache:
                self.cache_hits += 1
                self._cache.move_to_end(key)
                correct, extracted = self._cache[key]
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

        def replace(slot: int) -> None:
            """Kill the worker in `slot`, start another, and hand back the tasks it had not begun."""
            not_begun = list(self._pool[slot].queue)[1:]
            self._replace(slot)
            pending.extendleft((key, *task_of[key]) for key in reversed(not_begun))

        while pending or any(worker.queue for worker in self._pool):
            for slot in range(len(self._pool)):
                while pending and len(self._pool[slot].queue) < PIPELINE_DEPTH:
                    try:
                        self._pool[slot].submit(*pending[0], self.timeout)
                    except OSError:  # the worker is dead: whatever it was judging killed it
                        if self._pool[slot].queue:
                            key = self._pool[slot].queue[0]
                            logger.error("verifier worker died on gold %r, answer %.80r; counted incorrect",
                                         task_of[key][1], task_of[key][0])
                            results[key] = (False, None, False)
                        replace(slot)
                        continue
                    pending.popleft()
            busy = [worker for worker in self._pool if worker.queue]
            wait_for = max(0.0, min(worker.deadline for worker in busy) - time.monotonic())
            ready = set(multiprocessing.connection.wait([worker.connection for worker in busy], wait_for))
            for slot, worker in enumerate(self._pool):
                if not worker.queue:
                    continue
                answer_text, gold = task_of[worker.queue[0]]
                if worker.connection in ready:
                    try:
                        correct, extracted, timed_out = worker.connection.recv()
                    except (EOFError, OSError):
                        logger.error("verifier worker died on gold %r, answer %.80r; counted incorrect",
                                     gold, answer_text)
                        results[worker.queue[0]] = (False, None, False)
                        replace(slot)
                        continue
                    key = worker.finish(self.timeout)
                    self.checked += 1
                    if timed_out:
                        self.timeouts += 1
                        logger.warning("math-verify timed out on gold %r, answer %.80r; counted incorrect",
                                       gold, answer_text)
                    else:
                        self._remember(key, (correct, extracted))
                    results[key] = (correct, extracted, timed_out)
                elif time.monotonic() >= worker.deadline:
                    self.checked += 1
                    self.timeouts += 1
                    logger.warning("verification exceeded %.1f s on gold %r, answer %.80r; worker killed, counted "
                                   "incorrect", self.timeout, gold, answer_text)
                    results[worker.queue[0]] = (False, None, True)
                    replace(slot)
        return results

    def _replace(self, slot: int) -> None:
        self._pool[slot].kill()
        self._pool[slot] = self._new_worker()
        self.restarts += 1
