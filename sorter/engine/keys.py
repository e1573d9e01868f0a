"""CURVE keys for the engine's sockets (ZeroMQ's own authentication, through pyzmq's `zmq.auth`).

Whoever reaches an unauthenticated control port can stop the line or divert parcels, so the
engine binds control to a non-loopback address only with keys, or when told `--insecure`.
`sorter keys init DIR` writes the layout the engine and its clients load:

    DIR/engine.key, DIR/engine.key_secret     the engine's key pair (the server)
    DIR/client.key, DIR/client.key_secret     a client key pair (`sorter ctl`, a PLC gateway)
    DIR/clients/*.key                         the public keys the engine accepts

docs/engine.md, "Security".
"""
from __future__ import annotations

import ipaddress
import os
import shutil
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

ENGINE, CLIENT, CLIENTS = "engine", "client", "clients"


class KeysError(ValueError):
    """Keys missing or unreadable; the message names the file."""


def init_keys(directory, *, force: bool = False) -> dict[str, Path]:
    """Write a new engine key pair and client key pair under `directory`; the client's public
    key goes into `clients/`. Refuses to overwrite existing keys unless `force`."""
    d = Path(directory)
    if not force and any((d / f"{n}.key_secret").exists() for n in (ENGINE, CLIENT)):
        raise FileExistsError(f"{d}: keys exist already (--force writes new ones; every client "
                              f"then needs the new ones)")
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    engine_public, engine_secret = zmq.auth.create_certificates(d, ENGINE)
    client_public, client_secret = zmq.auth.create_certificates(d, CLIENT)
    (d / CLIENTS).mkdir(exist_ok=True)
    shutil.copy(client_public, d / CLIENTS / f"{CLIENT}.key")
    for secret in (engine_secret, client_secret):
        os.chmod(secret, 0o600)
    return {"engine_public": Path(engine_public), "engine_secret": Path(engine_secret),
            "client_public": Path(client_public), "client_secret": Path(client_secret),
            "clients": d / CLIENTS}


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise KeysError(f"{path}: cannot load key: {e} (write keys with `sorter keys init`)") \
            from None
    if secret and not secret_key:
        raise KeysError(f"{path}: holds no secret key")
    return public, secret_key


def check_keys(directory) -> None:
    """Every file the engine needs is there and loads (before anything binds)."""
    d = Path(directory)
    _load(d / f"{ENGINE}.key_secret", secret=True)
    if not (d / CLIENTS).is_dir():
        raise KeysError(f"{d / CLIENTS}: no directory of accepted client keys")


def start_authenticator(ctx: zmq.Context, directory) -> ThreadAuthenticator:
    """zmq.auth's authenticator on `ctx`, accepting the public keys in DIR/clients."""
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(Path(directory) / CLIENTS))
    return auth


def make_server(sock: zmq.Socket, directory) -> None:
    """CURVE server options on `sock`, before it binds."""
    public, secret = _load(Path(directory) / f"{ENGINE}.key_secret", secret=True)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True


def make_client(sock: zmq.Socket, directory, name: str = CLIENT) -> None:
    """CURVE client options on `sock` (the engine's public key, this client's pair), before
    it connects."""
    d = Path(directory)
    server_public, _ = _load(d / f"{ENGINE}.key", secret=False)
    public, secret = _load(d / f"{name}.key_secret", secret=True)
    sock.curve_serverkey = server_public
    sock.curve_publickey = public
    sock.curve_secretkey = secret


def is_loopback(endpoint: str) -> bool:
    """Only this machine can reach `endpoint`: tcp on a loopback address or `localhost`, or
    ipc/inproc (file permissions, the same process). `*`, 0.0.0.0, an interface name or any
    other address is reachable from the network."""
    transport, _, rest = endpoint.partition("://")
    if transport in ("ipc", "inproc"):
        return True
    if transport != "tcp":
        return False
    host = rest.rsplit(":", 1)[0] if ":" in rest else rest
    host = host.split(";")[-1].strip("[]")         # a source address: "src;dst"
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(config) -> None:
    """Refuse a control socket reachable from the network without keys (unless
    `config.insecure`), and CURVE on feedback without keys. Raises KeysError naming the
    endpoint; called before anything binds."""
    if config.keys:
        check_keys(config.keys)
    elif config.auth_feedback:
        raise KeysError("auth_feedback needs keys (setting keys / --keys DIR)")
    elif not config.insecure and not is_loopback(config.control):
        raise KeysError(f"control endpoint {config.control} is reachable from the network: "
                        f"give it keys (`sorter keys init DIR`, then --keys DIR) or, knowingly, "
                        f"--insecure")
