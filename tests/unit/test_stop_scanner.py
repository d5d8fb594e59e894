from typing import Any

from shipway.backends.llamacpp import _StopScanner


def _run(stops: list[str], pieces: list[str]) -> tuple[str, bool, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []
    scanner = _StopScanner(stops, sent.append)
    stopped = False
    for piece in pieces:
        if scanner.feed(piece, None):
            stopped = True
            break
    if not stopped:
        scanner.flush()
    return "".join(m["text"] for m in sent), stopped, sent


def test_no_stops_passes_everything_through_at_once() -> None:
    text, stopped, sent = _run([], ["Hel", "lo"])
    assert (text, stopped) == ("Hello", False)
    assert [m["text"] for m in sent] == ["Hel", "lo"]


def test_stop_split_across_pieces_is_caught_and_cut() -> None:
    text, stopped, _ = _run(["END"], ["one E", "N", "D two"])
    assert (text, stopped) == ("one ", True)


def test_earliest_of_several_stops_wins() -> None:
    text, stopped, _ = _run(["b", "zz"], ["a zz b"])
    assert (text, stopped) == ("a ", True)


def test_held_back_text_is_flushed_at_the_end() -> None:
    text, stopped, _ = _run(["STOP"], ["ab", "ST"])
    assert (text, stopped) == ("abST", False)


def test_logprobs_travel_with_text() -> None:
    sent: list[dict[str, Any]] = []
    scanner = _StopScanner(["xyz"], sent.append)
    scanner.feed("a", {"token": "a"})
    scanner.flush()
    assert sum(len(m.get("logprobs", [])) for m in sent) == 1
