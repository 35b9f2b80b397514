"""`sweep storage-server`: Optuna's gRPC storage proxy in front of an RDB storage, so that many
workers share its few database connections and its cache of finished trials."""

from __future__ import annotations

import signal
import socket
import warnings
from concurrent.futures import ThreadPoolExecutor

import optuna

from bertclf.errors import UserError
from bertclf.masking import mask
from sweep.study import open_storage


def serve(url: str, host: str, port: int, threads: int = 10) -> None:
    """Serve the RDB storage at `url` on `host`:`port` (no TLS, no authentication: a trusted
    network only) until Ctrl-C or SIGTERM; `threads` requests are handled at once."""
    if "://" not in url or url.startswith("grpc://"):
        raise UserError(f"the storage proxy serves an RDB storage (postgresql://... or "
                        f"sqlite:///...), not {url}: Optuna's proxy cannot serve journal "
                        "files, and a proxy in front of a proxy gains nothing")
    check_port_free(host, port)
    # get_storage adds Optuna's cache of finished trials, as its proxy's docs advise.
    storage = optuna.storages.get_storage(open_storage(url))
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"sweep: Optuna storage proxy for {mask(url)} on grpc://{host}:{port} "
          f"({threads} threads); workers use --storage grpc://HOST:{port}", flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            optuna.storages.run_grpc_proxy_server(storage, host=host, port=port,
                                                  thread_pool=ThreadPoolExecutor(threads))
        except RuntimeError as e:  # gRPC could not bind the address
            raise UserError(f"cannot serve on {host}:{port}: {e}") from None


def check_port_free(host: str, port: int) -> None:
    """UserError if `host`:`port` is taken. gRPC binds with SO_REUSEPORT, so a second proxy on
    a port would share it with the first instead of failing; a plain bind fails instead."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((host, port))
    except OSError as e:
        raise UserError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
