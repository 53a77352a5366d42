"""The pools' framing (``_wire``): multiprocessing's frames, read and written whole."""

import multiprocessing
import os
import threading

import pytest

from concur import _wire


@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def _in_thread(fn, *args):
    """Run fn (a writer, for messages bigger than the pipe holds) beside the reader."""
    errors = []

    def run():
        try:
            fn(*args)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


@pytest.mark.parametrize("size", [0, 1, 4095, 70_000, 3 << 20])
def test_a_frame_arrives_whole_and_alone(pipe, size):
    r, w = pipe
    head, body = b"H" * 12, os.urandom(size)
    thread, errors = _in_thread(lambda: (_wire.send(w, head, body), _wire.send(w, b"next")))
    assert bytes(_wire.recv(r)) == head + body
    assert _wire.recv(r) == b"next"
    thread.join(10)
    assert errors == []


@pytest.mark.parametrize("size", [10, 70_000, 3 << 20])
def test_frames_are_multiprocessings_both_ways(size):
    reader, writer = multiprocessing.Pipe(duplex=False)
    try:
        data = os.urandom(size)
        thread, errors = _in_thread(_wire.send, writer.fileno(), data[:5], data[5:])
        assert reader.recv_bytes() == data
        thread.join(10)
        thread, errors2 = _in_thread(writer.send_bytes, data)
        assert bytes(_wire.recv(reader.fileno())) == data
        thread.join(10)
        assert errors == errors2 == []
    finally:
        reader.close()
        writer.close()


def test_the_long_length_form_is_multiprocessings(monkeypatch):
    # Frames of 2 GiB and more carry -1 and then an 8-byte length: the same
    # path, tried on a small frame by lowering the bound.
    monkeypatch.setattr(_wire, "_LONGEST_SHORT", 8)
    reader, writer = multiprocessing.Pipe(duplex=False)
    try:
        _wire.send(writer.fileno(), b"0123456789abcdef")
        assert reader.recv_bytes() == b"0123456789abcdef"
        writer.send_bytes(b"x")
        assert _wire.recv(reader.fileno()) == b"x"
    finally:
        reader.close()
        writer.close()


@pytest.mark.parametrize("cut", [0, 2, 4, 9])
def test_an_end_of_file_before_or_within_a_frame_is_eof(pipe, cut):
    r, w = pipe
    frame = (20).to_bytes(4, "big") + b"x" * 20
    os.write(w, frame[:cut])
    os.close(w)
    with pytest.raises(EOFError):
        _wire.recv(r)


def test_a_closed_descriptor_fails_with_oserror():
    with pytest.raises(OSError, match="Bad file descriptor"):
        _wire.send(-1, b"task")
    with pytest.raises(OSError, match="Bad file descriptor"):
        _wire.recv(-1)
