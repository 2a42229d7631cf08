"""Request ids the server makes up for requests that bring none."""

import os

from framewire.service.interceptors import new_request_id


def test_ids_are_sixteen_hex_digits_and_never_repeat():
    ids = [new_request_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)


def test_a_forked_process_numbers_its_own():
    parent = new_request_id()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id, written back
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    os.close(read)
    assert child[:8] != parent[:8]
    assert new_request_id()[:8] == parent[:8]
