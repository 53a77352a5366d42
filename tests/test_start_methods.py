"""Start-method choice: the fork server is used only where it is private (CVE-2022-42919)."""

from __future__ import annotations

import sys
import warnings

import pytest

import concur
from concur import processes

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CVE is Linux-only")


@pytest.mark.parametrize(
    ("version", "exposed"),
    [
        ((3, 10, 0), True),
        ((3, 10, 8), True),
        ((3, 10, 9), False),
        ((3, 11, 0), False),
        ((3, 13, 1), False),
    ],
)
@linux
def test_the_abstract_socket_fork_server_is_known_by_version(version, exposed):
    assert processes.forkserver_exposed(version) is exposed


@linux
def test_where_the_fork_server_is_exposed_spawn_is_used_with_a_warning(monkeypatch):
    monkeypatch.setattr(processes, "forkserver_exposed", lambda version=None: True)
    with pytest.warns(RuntimeWarning, match="CVE-2022-42919"):
        assert processes.default_start_method() == "spawn"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with concur.ProcessPool(1) as pool:
            assert pool.start_method == "spawn"
            assert pool.submit(abs, -3).result(timeout=30) == 3
    with pytest.raises(ValueError, match=r"CVE-2022-42919.*3\.10\.9.*spawn"):
        concur.ProcessPool(1, mp_context="forkserver")


@linux
def test_where_it_is_private_the_fork_server_stays_the_default():
    if processes.forkserver_exposed():
        pytest.skip("this interpreter has the exposed fork server")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert processes.default_start_method() == "forkserver"
