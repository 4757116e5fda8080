"""A catalog server outage delays work instead of failing it: opening the catalog waits for the server, with a
growing delay and up to a bound, while checks before any work and servers that answer with an error fail at once.

The outage is real: the catalog is reached through a TCP proxy that the test stops (refusing and cutting every
connection) and starts again.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tasks.catalog import CatalogError, open_catalog
from tasks.catalog.store import CATALOG_WAIT_ENV, catalog_wait

PG_HOST, PG_PORT = "127.0.0.1", 5432


class TcpProxy:
    """Forwards a local port to the PostgreSQL server; ``stop`` refuses and cuts connections, ``start`` serves again."""

    def __init__(self) -> None:
        probe = socket.socket()
        probe.bind((PG_HOST, 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((PG_HOST, self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close() alone keeps it listening
            except OSError:
                pass
            listener.close()
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            server = socket.create_connection((PG_HOST, PG_PORT))
            with self._lock:
                self._open += [client, server]
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


@pytest.fixture
def proxy(postgres_problem: str | None) -> Iterator[TcpProxy]:
    if postgres_problem is not None:
        pytest.skip(postgres_problem)
    running = TcpProxy()
    running.start()
    try:
        yield running
    finally:
        running.stop()


def _through(proxy: TcpProxy, pg_url: str) -> str:
    return pg_url.replace(f"{PG_HOST}:{PG_PORT}", f"{PG_HOST}:{proxy.port}")


def test_an_outage_is_waited_out_and_the_work_goes_on(proxy: TcpProxy, pg_url: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    url = _through(proxy, pg_url)
    with open_catalog(url) as catalog:
        assert catalog.list_videos() == []
    proxy.stop()
    threading.Timer(3.0, proxy.start).start()
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="tasks.catalog.store"), open_catalog(url, wait_s=60) as catalog:
        assert catalog.list_videos() == []
    assert time.monotonic() - began >= 2.5
    waits = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert waits and all("trying again in" in message for message in waits)
    assert len(waits) < 10  # the delay grows: 0.5, 1, 2 s, ... not a busy loop


def test_a_long_outage_ends_in_one_line_after_the_wait(proxy: TcpProxy, pg_url: str) -> None:
    proxy.stop()
    began = time.monotonic()
    with pytest.raises(CatalogError) as info:
        open_catalog(_through(proxy, pg_url), wait_s=1.5)
    assert time.monotonic() - began >= 1.5
    message = str(info.value)
    assert "\n" not in message and "(waited 1.5 s)" in message
    assert message.endswith("check the server is running and the URL")


def test_a_server_that_answers_with_an_error_is_not_waited_for(proxy: TcpProxy) -> None:
    missing = f"postgresql+psycopg://postgres@{PG_HOST}:{proxy.port}/no_such_database"
    with pytest.raises(CatalogError, match='database "no_such_database" does not exist') as info:
        open_catalog(missing, wait_s=600)  # fails at once, or the test would time out
    assert "waited" not in str(info.value)


def test_the_wait_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CATALOG_WAIT_ENV, raising=False)
    assert catalog_wait() == 120.0
    monkeypatch.setenv(CATALOG_WAIT_ENV, "15")
    assert catalog_wait() == 15.0
    for bad in ("soon", "-1", "inf"):
        monkeypatch.setenv(CATALOG_WAIT_ENV, bad)
        with pytest.raises(CatalogError, match=f"\\${CATALOG_WAIT_ENV} is '{bad}'; give the seconds to wait"):
            catalog_wait()
