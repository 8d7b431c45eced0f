"""The event loop's request gathering, piece by piece: measuring a head, the buffer that
holds exactly one request, and the per-worker byte budget."""

from __future__ import annotations

import threading

import pytest

from service.runtime.intake import MAX_HEAD, ByteBudget, Intake, parse_head


def measured(raw: bytes):  # type: ignore[no-untyped-def]
    end = raw.index(b"\r\n\r\n") + 4
    return parse_head(raw, end)


@pytest.mark.parametrize("raw, length, expects", [
    (b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n", 0, False),
    (b"POST / HTTP/1.1\r\ncontent-length: 12\r\n\r\n", 12, False),
    (b"POST / HTTP/1.1\r\nContent-Length:  7 \r\nExpect: 100-Continue\r\n\r\n", 7, True),
    (b"POST / HTTP/1.0\r\nContent-Length: 7\r\nExpect: 100-continue\r\n\r\n", 7, False),
    # Not for this reader: gunicorn reads or refuses them in a thread.
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", None, False),
    (b"POST / HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n", None, False),
    (b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", None, False),
    (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", None, False),
    (b"POST / HTTP/1.1\r\nContent-Length: " + b"9" * 19 + b"\r\n\r\n", None, False),
])
def test_a_head_is_measured(raw, length, expects):
    head = measured(raw)
    assert head.end == len(raw)
    assert head.length == length
    assert head.expects_continue is expects


def test_an_intake_holds_exactly_one_request():
    intake = Intake(deadline=1e18)
    req = b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\n"
    for piece in (req[:10], req[10:]):  # the head in two reads
        with intake.room() as view:
            view[:len(piece)] = piece
        intake.got += len(piece)
    end = intake.find_head()
    assert end == len(req)
    intake.head = parse_head(intake.buf, end)
    intake.size_for(intake.head, 5)
    assert not intake.complete()
    with intake.room() as view:
        assert len(view) == 5  # up to the body's end: the next request stays on the socket
        view[:] = b"hello"
    intake.got += 5
    assert intake.complete() and intake.data() == req + b"hello"


def test_a_head_buffer_grows_to_past_what_gunicorn_accepts():
    intake = Intake(deadline=1e18)
    while intake.got < MAX_HEAD:
        with intake.room() as view:
            n = len(view)
        intake.got += n
        assert intake.find_head() == -1
    assert len(intake.buf) >= MAX_HEAD


def test_the_budget_reserves_and_releases_under_threads():
    budget = ByteBudget(100)
    assert budget.reserve(60) and not budget.reserve(41) and budget.reserve(40)
    assert budget.used == 100 and budget.refused == 1
    budget.release(60)
    budget.release(40)
    assert budget.used == 0

    def churn() -> None:
        for _ in range(2000):
            if budget.reserve(7):
                budget.release(7)

    threads = [threading.Thread(target=churn) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert budget.used == 0 and budget.peak <= 100
