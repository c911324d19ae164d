import math
import os
import random
import signal
import string
import time

import pytest

from conspo.verifier import (
    KILL_GRACE,
    Verdict,
    Verifier,
    is_truncated,
    judge,
    last_boxed,
    normalise_number,
    normalise_olympiad_answer,
)

TIMEOUT = 2.0
MARGIN = 1.5  # scheduling slack on a shared 2-core machine
RESTART = 4.0  # a replacement worker's start and warm-up on a loaded 2-core machine

# (response, gold, correct under "boxed", correct under "last")
TABLE = [
    # integers
    ("So the total is \\boxed{42}.", "42", True, True),
    ("\\boxed{41}", "42", False, False),
    ("\\boxed{-7}", "-7", True, True),
    # fractions
    ("\\boxed{\\frac{3}{4}}", "\\frac34", True, True),
    ("\\boxed{0.75}", "\\frac{3}{4}", True, True),
    ("\\boxed{\\dfrac{2}{3}}", "\\frac{3}{2}", False, False),
    # radicals: the gold must be parsed inside \boxed{} (a bare `2\sqrt{2}` parses to 2)
    ("\\boxed{2\\sqrt{2}}", "2\\sqrt{2}", True, True),
    ("\\boxed{\\sqrt{8}}", "2\\sqrt{2}", True, True),
    ("\\boxed{2}", "2\\sqrt{2}", False, False),
    ("\\boxed{1+\\sqrt{3}}", "\\sqrt3+1", True, True),
    # tuples
    ("\\boxed{(3, -1)}", "(3,-1)", True, True),
    ("\\boxed{(-1, 3)}", "(3,-1)", False, False),
    # intervals
    ("\\boxed{[0, 1)}", "[0,1)", True, True),
    ("\\boxed{(0, 1]}", "[0,1)", False, False),
    ("\\boxed{(-\\infty, 2]}", "(-\\infty,2]", True, True),
    # percentages (math-verify accepts the bare number for a percentage gold)
    ("\\boxed{50\\%}", "50\\%", True, True),
    ("\\boxed{50}", "50\\%", True, True),
    ("\\boxed{40\\%}", "50\\%", False, False),
    # AMC stores answers as floats
    ("\\boxed{142}", normalise_number("142.0"), True, True),
    ("\\boxed{142}", "142.0", True, True),
    ("\\boxed{143}", normalise_number("142.0"), False, False),
    # OlympiadBench multi-answer golds compare as sets
    ("\\boxed{3, 2}", normalise_olympiad_answer(["$2$", "$3$"]), True, True),
    ("\\boxed{2, 3}", normalise_olympiad_answer(["$2$, $3$"]), True, True),
    ("\\boxed{2}", normalise_olympiad_answer(["$2, 3$"]), False, False),
    ("\\boxed{\\frac{1}{2}}", normalise_olympiad_answer(["$\\frac{1}{2}$"]), True, True),
    # several boxes: "boxed" takes the last; math-verify's own extraction joins comma-separated boxes into a set
    ("First \\boxed{4}, then on reflection \\boxed{5}", "5", True, False),
    ("First \\boxed{4}, then on reflection \\boxed{5}", "4", False, False),
    ("First \\boxed{4}, then on reflection \\boxed{5}", "4, 5", False, True),
    ("First \\boxed{4}. On reflection it is \\boxed{5}", "5", True, True),
    # unboxed answers count only under "last"
    ("The answer is 7.", "7", False, True),
    ("The final answer is $\\frac{1}{2}$. I hope it is correct.", "0.5", False, True),
    ("I do not know.", "7", False, False),
    # truncated responses (the last box never closes) are incorrect under both policies
    ("so the answer is \\boxed{12", "12", False, False),
    ("\\boxed{5} hmm, wait: the answer is \\boxed{\\frac{5", "5", False, False),
]

ADVERSARIAL = [
    "\\boxed{9^{9^{9^{9}}}}",
    "\\boxed{9^9^9^9}",
    "\\boxed{(9^{9^9})!}",
    "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
    "{" * 20000 + "\\boxed{1}",
    "\\boxed{" + "\\frac{" * 2000,
    "".join(random.Random(0).choices(string.printable, k=100_000)) + " \\boxed{3}",
    "".join(random.Random(1).choices("\\{}^_$()0123456789+-*/=,.", k=100_000)),
    "答案是 \\boxed{５}  π ∑ 😀 \u200b\x00 \ud800",
    "\\boxed{\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{\\sqrt{2^{1000000}}}}}}}}",
]


def _started(extraction: str, timeout: float) -> Verifier:
    verifier = Verifier(extraction, timeout=timeout, workers=2)
    verifier.verify(["\\boxed{1}"], ["1"])  # start the pool outside the timed sections
    return verifier


@pytest.fixture(scope="module", params=["boxed", "last"])
def verifier(request):
    """A pool with a generous limit: correctness checks must not depend on the load of a shared machine."""
    with _started(request.param, timeout=20.0) as started:
        yield started


@pytest.fixture(scope="module", params=["boxed", "last"])
def strict_verifier(request):
    """A pool with the short per-answer limit the timing checks hold it to."""
    with _started(request.param, timeout=TIMEOUT) as started:
        yield started


def test_table_under_each_extraction_policy(verifier):
    expected = [row[2] if verifier.extraction == "boxed" else row[3] for row in TABLE]
    verdicts = verifier.verify([row[0] for row in TABLE], [row[1] for row in TABLE])
    assert [verdict.correct for verdict in verdicts] == expected
    assert all(verdict.extraction == verifier.extraction and not verdict.timed_out for verdict in verdicts)


def test_verdicts_carry_the_judged_answer(verifier):
    verdicts = verifier.verify(["We get \\boxed{\\frac{1}{2}}.", "no answer here", "\\boxed{3"], ["0.5"] * 3)
    assert verdicts[0] == Verdict(True, "\\frac{1}{2}", False, verifier.extraction)
    assert verdicts[1].extracted is None and not verdicts[1].correct
    assert verdicts[2] == Verdict(False, None, False, verifier.extraction)


def test_in_process_judge_agrees_with_the_pool(verifier):
    rows = TABLE[::4]
    pooled = verifier.verify([row[0] for row in rows], [row[1] for row in rows])
    for (response, gold, *_), verdict in zip(rows, pooled):
        assert judge(response, gold, verifier.extraction, timeout=10)[:2] == (verdict.correct, verdict.extracted)


@pytest.mark.parametrize("index", range(len(ADVERSARIAL)))
def test_adversarial_input_returns_within_the_time_limit(strict_verifier, index):
    started = time.monotonic()
    (verdict,) = strict_verifier.verify([ADVERSARIAL[index]], ["2"])
    assert time.monotonic() - started < TIMEOUT + MARGIN
    assert verdict.correct is False
    assert strict_verifier.verify(["\\boxed{2}"], ["2"])[0].correct  # the pool still answers


def test_adversarial_batch_is_bounded_by_the_per_answer_limit(strict_verifier):
    started = time.monotonic()
    verdicts = strict_verifier.verify(ADVERSARIAL + ["\\boxed{3}"], ["3"] * (len(ADVERSARIAL) + 1))
    rounds = math.ceil((len(ADVERSARIAL) + 1) / strict_verifier.workers)
    assert time.monotonic() - started < rounds * TIMEOUT + MARGIN
    assert verdicts[-1].correct


def test_the_configured_timeout_is_the_limit_that_applies():
    """A slow answer is given `timeout` seconds, not math-verify's own whole-second alarms (which stopped it at
    timeout / 2 before), and the worker stops itself there: no restart."""
    for timeout in (1.0, 3.0):
        with Verifier("boxed", timeout=timeout, workers=1) as verifier:
            assert verifier.verify(["\\boxed{1}"], ["1"])[0].correct
            started = time.monotonic()
            (verdict,) = verifier.verify(["\\boxed{1000000!}"], ["1"])
            elapsed = time.monotonic() - started
            assert verdict == Verdict(False, "1000000!", True, "boxed")
            assert timeout - 0.05 <= elapsed < timeout + MARGIN, elapsed
            assert verifier.restarts == 0 and verifier.timeouts == 1


@pytest.mark.timeout(120)  # a parent blocked on the stopped worker's full pipe would hang here
def test_a_stuck_worker_with_a_large_task_queued_behind_it_never_blocks_the_parent():
    """A worker stopped where no signal reaches it (SIGSTOP, like C code ignoring SIGALRM) is killed KILL_GRACE after
    the limit and replaced; the tasks queued behind it, one larger than the pipe can buffer (with a blocking send
    it held the parent until the worker was resumed), go to the replacement. Wall time: two limits and a restart."""
    timeout = 1.0
    large = "\\boxed{" + "+".join(["1"] * 600_000) + "}"  # 1.2 MB: more than any pipe or socket buffer here
    with Verifier("boxed", timeout=timeout, workers=1) as verifier:
        assert verifier.verify(["\\boxed{1}"], ["1"])[0].correct
        stuck = verifier.worker_pids[0]
        os.kill(stuck, signal.SIGSTOP)
        try:
            started = time.monotonic()
            verdicts = verifier.verify(["\\boxed{2}", large, "\\boxed{6}", "\\boxed{7}"], ["2", "600000", "6", "8"])
            elapsed = time.monotonic() - started
        finally:
            if stuck in verifier.worker_pids:
                os.kill(stuck, signal.SIGCONT)
        assert stuck not in verifier.worker_pids and verifier.restarts >= 1
        assert verdicts[0] == Verdict(False, None, True, "boxed")  # the answer the stopped worker held
        assert verdicts[2:] == [Verdict(True, "6", False, "boxed"), Verdict(False, "7", False, "boxed")]
        assert elapsed < 2 * (timeout + KILL_GRACE) + RESTART + MARGIN, elapsed
        assert verifier.verify(["\\boxed{8}"], ["8"])[0].correct


def test_a_response_that_is_not_a_string_is_one_incorrect_verdict(caplog):
    with Verifier("boxed", timeout=TIMEOUT, workers=1) as verifier:
        with caplog.at_level("WARNING", logger="conspo.verifier"):
            verdicts = verifier.verify([None, 3, "\\boxed{2}", "\\boxed{5}"], ["3", "3", "2", None])
    assert [v.correct for v in verdicts] == [False, False, True, False]
    assert all(not v.timed_out and v.extracted is None for v in verdicts[:2])
    logged = caplog.text
    assert "response 0: a NoneType, not a string" in logged and "response 1: a int, not a string" in logged
    assert "response 3: a gold of None" in logged


def test_the_cache_is_bounded_in_bytes():
    budget = 20_000
    answers = [f"\\boxed{{{'1' * 900}{i:03d}}}" for i in range(40)]  # each entry ~1.1 kB (its extracted answer)
    with Verifier("boxed", timeout=TIMEOUT, workers=1, cache_bytes=budget) as verifier:
        verifier.verify(answers, [a[7:-1] for a in answers])
        assert 0 < verifier.cache_used_bytes <= budget
        assert 10 < len(verifier._cache) < 40  # the oldest were evicted
        checked = verifier.checked
        assert all(v.correct for v in verifier.verify(answers[-5:], [a[7:-1] for a in answers[-5:]]))
        assert verifier.checked == checked and verifier.cache_hits == 5  # the newest stayed
        verifier.verify(answers[:1], [answers[0][7:-1]])
        assert verifier.checked == checked + 1  # the oldest had gone
        huge = "\\boxed{" + "1" * 30_000 + "}"  # an entry above the whole budget is not kept
        verifier.verify([huge], ["2"])
        assert verifier.cache_used_bytes <= budget


def test_a_worker_killed_from_outside_is_replaced():
    with Verifier("boxed", timeout=TIMEOUT, workers=1) as verifier:
        assert verifier.verify(["\\boxed{1}"], ["1"])[0].correct
        victim = verifier._pool[0].process
        os.kill(victim.pid, signal.SIGKILL)
        victim.join()
        assert verifier.verify(["\\boxed{2}"], ["2"])[0].correct
        assert verifier.restarts == 1


def test_repeated_pairs_are_checked_once():
    with Verifier("boxed", timeout=TIMEOUT, workers=1) as verifier:
        verdicts = verifier.verify(["\\boxed{4}", "so \\boxed{ 4 }", "\\boxed{4}"], ["4", "4", "5"])
        assert [verdict.correct for verdict in verdicts] == [True, True, False]
        assert verifier.checked == 2  # the first two share the normalised answer "4" and gold "4"
        assert verifier.verify(["again \\boxed{4}"], ["4"])[0].correct
        assert verifier.checked == 2 and verifier.cache_hits == 1


def test_close_then_reuse_restarts_workers():
    verifier = Verifier("last", timeout=TIMEOUT, workers=1)
    assert verifier.verify(["x = 3"], ["3"])[0].correct
    verifier.close()
    assert verifier.verify(["y = 4"], ["4"])[0].correct
    verifier.close()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="boxed"):
        Verifier("first")
    with pytest.raises(ValueError, match="golds"):
        Verifier(workers=1).verify(["a"], [])


@pytest.mark.parametrize("text, content", [
    ("a \\boxed{1} b \\boxed{\\frac{1}{2}} c", "\\frac{1}{2}"),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
    ("\\boxed{" + "{" * 10000 + "}" * 10000 + "}", "{" * 10000 + "}" * 10000),
    ("\\boxed{1} then \\boxed{2", None),
    ("no box", None),
])
def test_last_boxed(text, content):
    assert last_boxed(text) == content
    assert is_truncated(text) == (content is None and "\\boxed{" in text)


@pytest.mark.parametrize("raw, gold", [("142.0", "142"), ("-3.00", "-3"), ("2.5", "2.5"), (" 7 ", "7"),
                                       ("\\frac{1}{2}", "\\frac{1}{2}")])
def test_normalise_number(raw, gold):
    assert normalise_number(raw) == gold


@pytest.mark.parametrize("raw, gold", [
    (["$\\frac{1}{2}$"], "\\frac{1}{2}"),
    (["$2$", "$3$"], "2, 3"),
    (["$2$, $3$"], "2, 3"),
    ("$x=5$", "x=5"),
    (["$\\$12$"], "\\$12"),
])
def test_normalise_olympiad_answer(raw, gold):
    assert normalise_olympiad_answer(raw) == gold


def test_workers_default_to_the_cpus_the_job_was_given(monkeypatch):
    from conspo.verifier import job_cpus

    usable = len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # Snakemake's threads for the job
    assert job_cpus() == 1 and Verifier().workers == 1
    monkeypatch.setenv("OMP_NUM_THREADS", str(usable + 7))  # more than the process may use: capped
    assert job_cpus() == usable
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert job_cpus() == usable
