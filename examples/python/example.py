#!/usr/bin/env python3
"""A sitegrid client in Python, generated from proto/ with grpcio-tools.

What an identity node does with sitegrid, in a few calls: follow the `sessions` cache
(Listen), create a session with tags and a max-idle time (Put), read it back with its
metadata (Get), use an action token once (PutIfAbsent, twice: the second is refused),
and log out (Remove). Every change shows up on the listener.

    pip install -r examples/python/requirements.txt
    python3 examples/python/example.py --target 127.0.0.1:11222
"""

import argparse
import os
import queue
import sys
import tempfile
import threading
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(HERE, "..", "..", "proto")


def generate_stubs(out_dir, proto_dir=PROTO_DIR):
    """Generates the Python modules of sitegrid's protos into `out_dir`."""
    from grpc_tools import protoc

    proto_dir = os.path.abspath(proto_dir)
    api = os.path.join(proto_dir, "sitegrid", "v1", "sitegrid.proto")
    if not os.path.exists(api):
        raise SystemExit(f"error: no {api}: --proto-dir must be sitegrid's proto/ folder")
    os.makedirs(out_dir, exist_ok=True)
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_dir}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            api,
        ]
    )
    if status != 0:
        raise SystemExit(f"error: generating the stubs from {api} failed ({status})")


def load_stubs(stubs_dir, proto_dir):
    """Imports the generated modules, generating them first if they are not there."""
    if not os.path.exists(os.path.join(stubs_dir, "sitegrid", "v1", "sitegrid_pb2.py")):
        generate_stubs(stubs_dir, proto_dir)
    sys.path.insert(0, stubs_dir)
    from sitegrid.v1 import sitegrid_pb2, sitegrid_pb2_grpc

    return sitegrid_pb2, sitegrid_pb2_grpc


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:11222", help="a node's gRPC address")
    parser.add_argument(
        "--stubs-dir",
        default=os.path.join(HERE, "generated"),
        help="where the generated modules are (generated there if missing)",
    )
    parser.add_argument("--proto-dir", default=PROTO_DIR, help="sitegrid's proto/ folder")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call")
    args = parser.parse_args()

    import grpc

    pb, pb_grpc = load_stubs(args.stubs_dir, args.proto_dir)
    channel = grpc.insecure_channel(args.target)
    cache = pb_grpc.CacheStub(channel)
    run = uuid.uuid4().hex[:8]
    session, token, user = f"session-{run}", f"token-{run}", f"user-{run}"

    # Follow `sessions`, in a thread; SYNCED says the stream is live.
    events = queue.Queue()
    listen = cache.Listen(
        pb.ListenRequest(caches=["sessions"], with_values=True, sync_markers=True)
    )

    def follow():
        try:
            for event in listen:
                events.put(event)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                events.put(error)

    threading.Thread(target=follow, daemon=True).start()

    def next_event(what):
        while True:
            try:
                event = events.get(timeout=args.timeout)
            except queue.Empty:
                raise SystemExit(f"error: no {what} event within {args.timeout} s")
            if isinstance(event, grpc.RpcError):
                raise SystemExit(f"error: the listener failed: {event.code().name}: {event.details()}")
            if event.key.decode() == session or event.kind == pb.EVENT_KIND_SYNCED:
                return event

    if next_event("SYNCED").kind != pb.EVENT_KIND_SYNCED:
        raise SystemExit("error: the stream did not start with SYNCED")
    print("listening to sessions")

    # Log in: a session that expires after 30 minutes unused, tagged with its user.
    put = cache.Put(
        pb.PutRequest(
            cache="sessions",
            key=session.encode(),
            value=b'{"user": "alice"}',
            max_idle_ms=30 * 60 * 1000,
            tags=[f"user={user}", "realm=demo"],
            request_id=str(uuid.uuid4()),
        ),
        timeout=args.timeout,
    )
    print(f"put {session}: version {put.version}")
    got = cache.Get(pb.GetRequest(cache="sessions", key=session.encode()), timeout=args.timeout)
    if not got.found:
        raise SystemExit(f"error: {session} not found right after it was written")
    print(
        f"get {session}: {got.value.decode()} version {got.metadata.version} "
        f"origin {got.metadata.origin_site} tags {list(got.metadata.tags)}"
    )

    # A single-use action token: the first use stores it, a replay finds it there.
    for attempt in ("first use", "replay"):
        answer = cache.PutIfAbsent(
            pb.PutIfAbsentRequest(
                cache="actionTokens",
                key=token.encode(),
                value=b"used",
                lifespan_ms=5 * 60 * 1000,
                request_id=str(uuid.uuid4()),
            ),
            timeout=args.timeout,
        )
        print(f"put-if-absent {token} ({attempt}): {'stored' if answer.stored else 'not stored'}")

    # Log out.
    removed = cache.Remove(
        pb.RemoveRequest(cache="sessions", key=session.encode(), request_id=str(uuid.uuid4())),
        timeout=args.timeout,
    )
    print(f"remove {session}: {'removed' if removed.removed else 'absent'}")

    for what in ("CREATED", "REMOVED"):
        event = next_event(what)
        kind = pb.EventKind.Name(event.kind)
        print(f"event {kind} {event.cache}/{event.key.decode()} version {event.version} from {event.origin_site}")
        if kind != f"EVENT_KIND_{what}":
            raise SystemExit(f"error: expected {what}, got {kind}")

    listen.cancel()
    print(f"token-key {token}")


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # grpc.RpcError and the like: say what failed
        import grpc

        if isinstance(error, grpc.RpcError):
            print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
        else:
            print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
