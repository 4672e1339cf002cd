"""A Pub/Sub server for tests: the real ``google.pubsub.v1`` gRPC protocol, held in memory.

No usable Pub/Sub emulator installs here, so this one speaks the wire protocol the client
libraries use, with the request/response types of ``google.pubsub_v1.types`` as (de)serializers
under the real service names. It implements what the publisher and subscriber clients need:
CreateTopic, GetTopic, Publish (server-assigned message ids and publish times, and the service's
limits on attributes, ordering keys and sizes), CreateSubscription, GetSubscription, Pull,
Acknowledge, ModifyAckDeadline and StreamingPull. Unacked messages stay outstanding (there is
no ack-deadline expiry); a nack (deadline 0) makes one ready again.

    with PubsubServer() as server:                    # plain text on 127.0.0.1:<free port>
        server.add_topic("projects/p/topics/t")
        server.fail_publish(grpc.StatusCode.UNAVAILABLE, times=3)   # then normal service
        ... clients with PUBSUB_EMULATOR_HOST=server.host ...
        server.messages("projects/p/topics/t")        # what Publish stored, in order

``PubsubServer(tls=(cert_path, key_path))`` serves TLS instead, for clients with credentials.
"""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2, empty_pb2
from google.pubsub_v1 import types
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

# The service's documented limits (cloud.google.com/pubsub/quotas#resource_limits).
MAX_ATTRIBUTES = 100
MAX_KEY_BYTES = 256
MAX_VALUE_BYTES = 1024
MAX_ORDERING_KEY_BYTES = 1024
MAX_MESSAGE_BYTES = 10_000_000
MAX_REQUEST_BYTES = 10_000_000

Matcher = Callable[[types.PublishRequest], bool]


@dataclass
class Fault:
    """The next ``times`` Publish calls (that ``match``, if set) fail with ``code``."""

    code: grpc.StatusCode
    times: int
    message: str
    retry_after: float | None
    delay: float
    match: Matcher | None


@dataclass(frozen=True)
class PublishCall:
    topic: str
    count: int  # messages in the request
    metadata: dict[str, str]  # the call's gRPC metadata (authorization...)
    status: grpc.StatusCode
    at: float  # time.monotonic() when it was answered


@dataclass
class _Subscription:
    topic: str
    ready: collections.deque[types.PubsubMessage] = field(default_factory=collections.deque)
    outstanding: dict[str, types.PubsubMessage] = field(default_factory=dict)


def _abort(
    context: grpc.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    retry_after: float | None = None,
) -> NoReturn:
    if retry_after is None:
        context.abort(code, message)
    # A RetryInfo detail, as the real service attaches to some RESOURCE_EXHAUSTED answers.
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=_duration(retry_after)))
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    context.abort_with_status(rpc_status.to_status(status))
    raise AssertionError("unreachable: abort_with_status raises")


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(int(seconds * 1e9))
    return duration


def _check_message(message: types.PubsubMessage) -> str | None:
    """What the real service would reject in this message, or None."""
    attributes = dict(message.attributes)
    if not message.data and not attributes:
        return "Some messages are empty: a message needs data or attributes."
    if len(attributes) > MAX_ATTRIBUTES:
        return f"A message has {len(attributes)} attributes; the limit is {MAX_ATTRIBUTES}."
    for key, value in attributes.items():
        if not key or len(key.encode()) > MAX_KEY_BYTES:
            return "An attribute key is empty or longer than 256 bytes."
        if key.startswith("goog"):
            return f"The attribute key {key!r} starts with the reserved prefix goog."
        if len(value.encode()) > MAX_VALUE_BYTES:
            return f"The value of attribute {key!r} is longer than 1024 bytes."
    if len(message.ordering_key.encode()) > MAX_ORDERING_KEY_BYTES:
        return "An ordering key is longer than 1024 bytes."
    if types.PubsubMessage.pb(message).ByteSize() > MAX_MESSAGE_BYTES:
        return "A message is larger than 10 MB."
    return None


class PubsubServer:
    def __init__(self, tls: tuple[str, str] | None = None) -> None:
        self._tls = tls
        self._lock = threading.Condition()
        self._topics: dict[str, types.Topic] = {}
        self._subscriptions: dict[str, _Subscription] = {}
        self._messages: dict[str, list[types.PubsubMessage]] = collections.defaultdict(list)
        self._faults: collections.deque[Fault] = collections.deque()
        self._ids = itertools.count(1)
        self._stopping = False
        self.calls: list[PublishCall] = []
        self.port = 0
        self._server: grpc.Server | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> PubsubServer:
        limit = 2 * MAX_REQUEST_BYTES  # let oversized requests reach the checks below
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=32),
            options=[("grpc.max_receive_message_length", limit)],
        )
        server.add_generic_rpc_handlers([self._publisher(), self._subscriber()])
        if self._tls is None:
            self.port = server.add_insecure_port("127.0.0.1:0")
        else:
            cert, key = (Path(p).read_bytes() for p in self._tls)
            credentials = grpc.ssl_server_credentials([(key, cert)])
            self.port = server.add_secure_port("127.0.0.1:0", credentials)
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._server is not None:
            self._server.stop(grace=0.5).wait()

    def __enter__(self) -> PubsubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def host(self) -> str:
        """``host:port``, what ``PUBSUB_EMULATOR_HOST`` or an api_endpoint takes."""
        return f"127.0.0.1:{self.port}"

    # -- what tests use --------------------------------------------------------------------

    def add_topic(self, name: str) -> None:
        with self._lock:
            self._topics.setdefault(name, types.Topic(name=name))

    def remove_topic(self, name: str) -> None:
        with self._lock:
            self._topics.pop(name, None)

    def fail_publish(
        self,
        code: grpc.StatusCode,
        times: int = 1,
        message: str = "",
        *,
        retry_after: float | None = None,
        delay: float = 0.0,
        match: Matcher | None = None,
    ) -> None:
        """Queue a fault; faults apply in order, each to its next ``times`` matching calls.
        ``delay`` holds the call that long first (beyond a client's deadline, if you like)."""
        with self._lock:
            self._faults.append(
                Fault(code, times, message or f"injected {code.name}", retry_after, delay, match)
            )

    def messages(self, topic: str) -> list[types.PubsubMessage]:
        with self._lock:
            return list(self._messages[topic])

    def wait_messages(
        self, topic: str, count: int, timeout: float = 10.0
    ) -> list[types.PubsubMessage]:
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._messages[topic]) >= count, timeout):
                raise TimeoutError(f"{len(self._messages[topic])} of {count} messages on {topic}")
            return list(self._messages[topic])

    # -- Publisher -------------------------------------------------------------------------

    def _publisher(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "google.pubsub.v1.Publisher",
            {
                "CreateTopic": _unary(self._create_topic, types.Topic, types.Topic),
                "GetTopic": _unary(self._get_topic, types.GetTopicRequest, types.Topic),
                "Publish": _unary(self._publish, types.PublishRequest, types.PublishResponse),
            },
        )

    def _create_topic(self, topic: types.Topic, context: grpc.ServicerContext) -> types.Topic:
        with self._lock:
            if topic.name in self._topics:
                _abort(context, grpc.StatusCode.ALREADY_EXISTS, "Resource already exists.")
            self._topics[topic.name] = topic
            return topic

    def _get_topic(
        self, request: types.GetTopicRequest, context: grpc.ServicerContext
    ) -> types.Topic:
        with self._lock:
            if request.topic not in self._topics:
                _abort(context, grpc.StatusCode.NOT_FOUND, f"Resource not found ({request.topic}).")
            return self._topics[request.topic]

    def _next_fault(self, request: types.PublishRequest) -> Fault | None:
        for fault in self._faults:
            if fault.match is None or fault.match(request):
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _publish(
        self, request: types.PublishRequest, context: grpc.ServicerContext
    ) -> types.PublishResponse:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}

        def record(status: grpc.StatusCode) -> None:
            self.calls.append(
                PublishCall(
                    request.topic, len(request.messages), metadata, status, time.monotonic()
                )
            )

        with self._lock:
            fault = self._next_fault(request)
        if fault is not None:
            time.sleep(fault.delay)
            with self._lock:
                record(fault.code)
            _abort(context, fault.code, fault.message, fault.retry_after)
        with self._lock:
            if request.topic not in self._topics:
                record(grpc.StatusCode.NOT_FOUND)
                _abort(
                    context,
                    grpc.StatusCode.NOT_FOUND,
                    f"Resource not found (resource={request.topic.rsplit('/', 1)[-1]}).",
                )
            problems = [p for p in map(_check_message, request.messages) if p]
            if types.PublishRequest.pb(request).ByteSize() > MAX_REQUEST_BYTES:
                problems.append("The request is larger than 10 MB.")
            if problems or not request.messages:
                record(grpc.StatusCode.INVALID_ARGUMENT)
                _abort(
                    context,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    problems[0] if problems else "No messages.",
                )
            now = dt.datetime.now(dt.UTC)
            ids = []
            for message in request.messages:
                stored = types.PubsubMessage(
                    data=message.data,
                    attributes=dict(message.attributes),
                    ordering_key=message.ordering_key,
                    message_id=str(next(self._ids)),
                    publish_time=now,
                )
                self._messages[request.topic].append(stored)
                for subscription in self._subscriptions.values():
                    if subscription.topic == request.topic:
                        subscription.ready.append(stored)
                ids.append(stored.message_id)
            record(grpc.StatusCode.OK)
            self._lock.notify_all()
            return types.PublishResponse(message_ids=ids)

    # -- Subscriber ------------------------------------------------------------------------

    def _subscriber(self) -> grpc.GenericRpcHandler:
        empty = empty_pb2.Empty
        return grpc.method_handlers_generic_handler(
            "google.pubsub.v1.Subscriber",
            {
                "CreateSubscription": _unary(
                    self._create_subscription, types.Subscription, types.Subscription
                ),
                "GetSubscription": _unary(
                    self._get_subscription, types.GetSubscriptionRequest, types.Subscription
                ),
                "Pull": _unary(self._pull, types.PullRequest, types.PullResponse),
                "Acknowledge": grpc.unary_unary_rpc_method_handler(
                    self._acknowledge, types.AcknowledgeRequest.deserialize, empty.SerializeToString
                ),
                "ModifyAckDeadline": grpc.unary_unary_rpc_method_handler(
                    self._modify,
                    types.ModifyAckDeadlineRequest.deserialize,
                    empty.SerializeToString,
                ),
                "StreamingPull": grpc.stream_stream_rpc_method_handler(
                    self._streaming_pull,
                    types.StreamingPullRequest.deserialize,
                    types.StreamingPullResponse.serialize,
                ),
            },
        )

    def _create_subscription(
        self, request: types.Subscription, context: grpc.ServicerContext
    ) -> types.Subscription:
        with self._lock:
            if request.topic not in self._topics:
                _abort(context, grpc.StatusCode.NOT_FOUND, f"Resource not found ({request.topic}).")
            if request.name in self._subscriptions:
                _abort(context, grpc.StatusCode.ALREADY_EXISTS, "Resource already exists.")
            self._subscriptions[request.name] = _Subscription(request.topic)
            if not request.ack_deadline_seconds:
                request.ack_deadline_seconds = 10
            return request

    def _get_subscription(
        self, request: types.GetSubscriptionRequest, context: grpc.ServicerContext
    ) -> types.Subscription:
        subscription = self._find(request.subscription, context)
        return types.Subscription(
            name=request.subscription, topic=subscription.topic, ack_deadline_seconds=10
        )

    def _find(self, name: str, context: grpc.ServicerContext) -> _Subscription:
        with self._lock:
            if name not in self._subscriptions:
                _abort(context, grpc.StatusCode.NOT_FOUND, f"Resource not found ({name}).")
            return self._subscriptions[name]

    def _take(
        self, subscription: _Subscription, limit: int, wait: float
    ) -> list[types.ReceivedMessage]:
        with self._lock:
            self._lock.wait_for(lambda: subscription.ready or self._stopping, wait)
            taken = []
            while subscription.ready and len(taken) < limit:
                message = subscription.ready.popleft()
                ack_id = f"ack-{next(self._ids)}"
                subscription.outstanding[ack_id] = message
                taken.append(types.ReceivedMessage(ack_id=ack_id, message=message))
            return taken

    def _pull(
        self, request: types.PullRequest, context: grpc.ServicerContext
    ) -> types.PullResponse:
        subscription = self._find(request.subscription, context)
        wait = 0.0 if request.return_immediately else min(2.0, context.time_remaining() or 2.0)
        taken = self._take(subscription, request.max_messages or 100, wait)
        return types.PullResponse(received_messages=taken)

    def _settle(self, subscription: _Subscription, ack_ids: list[str], nack: bool) -> None:
        with self._lock:
            for ack_id in ack_ids:
                message = subscription.outstanding.pop(ack_id, None)
                if message is not None and nack:
                    subscription.ready.appendleft(message)
            self._lock.notify_all()

    def _acknowledge(
        self, request: types.AcknowledgeRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        self._settle(self._find(request.subscription, context), list(request.ack_ids), False)
        return empty_pb2.Empty()

    def _modify(
        self, request: types.ModifyAckDeadlineRequest, context: grpc.ServicerContext
    ) -> empty_pb2.Empty:
        subscription = self._find(request.subscription, context)
        if request.ack_deadline_seconds == 0:
            self._settle(subscription, list(request.ack_ids), True)
        return empty_pb2.Empty()

    def _streaming_pull(
        self, requests: Iterator[types.StreamingPullRequest], context: grpc.ServicerContext
    ) -> Iterator[types.StreamingPullResponse]:
        first = next(requests)
        subscription = self._find(first.subscription, context)
        closed = threading.Event()

        def apply(request: types.StreamingPullRequest) -> None:
            self._settle(subscription, list(request.ack_ids), False)
            nacks = [
                a
                for a, s in zip(
                    request.modify_deadline_ack_ids, request.modify_deadline_seconds, strict=False
                )
                if s == 0
            ]
            self._settle(subscription, nacks, True)

        def read() -> None:
            # The client sends acks, deadline changes and heartbeats on the same stream, while
            # this handler's thread is busy sending messages.
            try:
                for request in requests:
                    apply(request)
            except grpc.RpcError:
                pass
            finally:
                closed.set()

        apply(first)
        threading.Thread(target=read, name="streaming-pull-reader", daemon=True).start()
        while context.is_active() and not closed.is_set() and not self._stopping:
            taken = self._take(subscription, 100, 0.2)
            if taken:
                yield types.StreamingPullResponse(received_messages=taken)


def _unary(
    handler: Callable[[Any, grpc.ServicerContext], Any], request: Any, response: Any
) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(handler, request.deserialize, response.serialize)
