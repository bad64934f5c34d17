"""This module is the paho-mqtt glue shared by publishers and subscribers.

A node connects to the broker in the background, retries with backoff when
it is unreachable, keeps a retained status topic (``online`` while it runs,
``offline`` after a clean stop, ``lost`` through its last will), and hands
every incoming message to one callback that may not raise.

An "online" status may carry a summary of the node's work (`Node.set_summary`,
a subscriber's cache figures), replaced whole. Its owner's thread publishes it
while paho's thread may publish the status too (at a reconnection): should the
older land last, the node sees its own status differ from the current one and
restores that (`Node._message`). An earlier status of its own coming back live,
late, is not put right at once: the node asks the broker which status it holds.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from . import __version__
from .config import BrokerAddress
from .schema import SCHEMA, dumps
from .topics import node_topic

log = logging.getLogger(__name__)

KEEPALIVE = 30
# The most statuses remembered as on their way back from the broker, and as
# published lately (see Node._echo and Node._status_seen).
UNECHOED = 16
# Seconds between two restores of a topic that someone else overwrites.
RESTORE_INTERVAL = 1.0
# A LogThrottle writes at most this many lines every this many seconds.
THROTTLE_LINES = 20
THROTTLE_SECONDS = 60.0


class LogThrottle:
    """Writes at most THROTTLE_LINES lines every THROTTLE_SECONDS, then how many it left
    out: anyone who can publish on the broker decides how often they are due."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self._lock = threading.Lock()
        self._since = -THROTTLE_SECONDS
        self._written = 0
        self._left_out = 0

    def info(self, message: str, *args: Any) -> None:
        self._write(logging.INFO, message, args)

    def warning(self, message: str, *args: Any) -> None:
        self._write(logging.WARNING, message, args)

    def _write(self, level: int, message: str, args: tuple[Any, ...]) -> None:
        now = time.monotonic()
        with self._lock:
            left_out = 0
            if now - self._since >= THROTTLE_SECONDS:
                left_out, self._left_out = self._left_out, 0
                self._since, self._written = now, 0
            self._written += 1
            if self._written > THROTTLE_LINES:
                self._left_out += 1
                return
            last = self._written == THROTTLE_LINES
        if left_out:
            self.logger.log(level, "(%d more such lines were left out)", left_out)
        self.logger.log(level, message, *args)
        if last:
            self.logger.log(level, "(more such lines within %g s are counted, not written)", THROTTLE_SECONDS)


class Node:
    """One MQTT connection of a publisher or subscriber."""

    def __init__(
        self,
        role: str,
        node_id: str,
        broker: BrokerAddress,
        prefix: str,
        url: str,
        *,
        user: str | None = None,
        password: str | None = None,
        cafile: str | None = None,
        on_connect: Callable[[], None] | None = None,
        on_message: Callable[[str, bytes], None] | None = None,
        sign: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.role, self.node_id, self.broker, self.prefix, self.url = role, node_id, broker, prefix, url
        self.status_topic = node_topic(prefix, role, node_id)
        self.session = int(time.time() * 1000)
        self.connected = threading.Event()
        # Set once a connection ended (paho's on_disconnect), cleared by the next.
        self._gone = threading.Event()
        self._on_connect = on_connect
        self._on_message = on_message
        self._sign = sign
        # The status this node stands by (see _stand_by), and the restores of its
        # topics: when each was last restored, what to restore, and those put off meanwhile.
        self._state = "online"
        self._current: bytes | None = None
        # The statuses published that the broker has not sent back yet, oldest first
        # (under _restore_lock): one coming back is no one else's (see _message);
        # and the last published, coming back late or replayed (see _status_seen).
        self._unechoed: list[bytes] = []
        self._published: list[bytes] = []
        # What "online" says of the node's work (a subscriber's cache), replaced whole.
        self._summary: dict[str, Any] | None = None
        self._restored: dict[str, float] = {}
        self._restoring: dict[str, bytes] = {}
        self._timers: dict[str, threading.Timer] = {}
        self._restore_lock = threading.Lock()
        self._unreachable_logged = False
        self._restore_log = LogThrottle(log)
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"catmqtt-{role}-{node_id}",
            protocol=paho.MQTTv311,
            clean_session=True,
        )
        if user is not None:
            client.username_pw_set(user, password)
        if broker.tls:
            client.tls_set(ca_certs=cafile, cert_reqs=ssl.CERT_REQUIRED)
        # A short ceiling: after a broker restart, nodes are back within seconds.
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.on_connect = self._connected
        client.on_connect_fail = self._connect_failed
        client.on_disconnect = self._disconnected
        client.on_message = self._message
        self.client = client
        # The sequence number of the last will of the next connection, if signed.
        self._will_seq: int | None = None
        self._arm_will()

    @classmethod
    def for_node(cls, role: str, node_id: str, settings: dict[str, Any], url: str, **callbacks: Any) -> Node:
        """Return the MQTT side of a node of `settings` (broker, prefix, credentials)."""
        return cls(
            role,
            node_id,
            settings["broker"],
            settings["prefix"],
            url,
            user=settings["mqtt_user"],
            password=settings["mqtt_password"],
            cafile=settings["cafile"],
            **callbacks,
        )

    def _status(self, status: str) -> bytes:
        """Return the payload of a status; every status names its session, so that a
        subscriber tells a replayed status of an earlier one from a current one."""
        info: dict[str, Any] = {
            "role": self.role,
            "id": self.node_id,
            "status": status,
            "session": self.session,
        }
        if status == "online":
            info.update(url=self.url, version=__version__)
            if self._will_seq is not None:
                info["will"] = self._will_seq
            if self._summary is not None:
                info["summary"] = self._summary
        return self.payload(self.status_topic, {**info, "time": time.time()})

    def _arm_will(self) -> None:
        """Give the next connection a last will ("lost") of its own. Its "online" names
        the will's sequence number, so that subscribers refuse the will of an earlier
        connection, replayed: anyone saw it once the broker sent it."""
        will = self._status("lost")
        self._will_seq = json.loads(will).get("seq")
        self.client.will_set(self.status_topic, will, qos=1, retain=True)

    def _stand_by(self, status: str) -> bytes:
        """Make `status` the one this node stands by, and return its payload, signed
        anew: a subscriber takes a signed status no newer than one it saw for a replay."""
        self._state = status
        self._current = self._status(status)
        with self._restore_lock:
            self._unechoed = [*self._unechoed[-(UNECHOED - 1) :], self._current]
            self._published = [*self._published[-(UNECHOED - 1) :], self._current]
        return self._current

    def payload(self, topic: str, obj: dict[str, Any]) -> bytes:
        """Return `obj` as the payload of `topic`: stamped, and signed if this node signs."""
        obj = {"schema": SCHEMA, **obj}
        return dumps(obj if self._sign is None else self._sign(topic, obj))

    def start(self) -> None:
        """Connect in the background; paho retries until the broker answers."""
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=KEEPALIVE)
        self.client.loop_start()

    def stop(self) -> None:
        """Mark this node ``offline`` and disconnect."""
        with self._restore_lock:
            for timer in self._timers.values():
                timer.cancel()
            self._timers.clear()
        connected = self.connected.is_set()
        if connected:
            info = self.client.publish(self.status_topic, self._stand_by("offline"), qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=2)
            except (RuntimeError, ValueError):
                pass
        self.client.disconnect()
        if connected:
            # Stopping paho's loop at once may close the socket before the
            # DISCONNECT is sent, and the broker then sends the will: "lost".
            self._gone.wait(timeout=2)
        self.client.loop_stop()

    def publish(self, topic: str, payload: bytes, *, retain: bool = True) -> paho.MQTTMessageInfo:
        """Publish `payload` at QoS 1; paho queues it while disconnected."""
        with self._restore_lock:
            # A restore put off restores what was published last.
            if topic in self._restoring:
                self._restoring[topic] = payload
        return self.client.publish(topic, payload, qos=1, retain=retain)

    def restore(self, topic: str, payload: bytes) -> None:
        """Publish `payload` on `topic` again, someone else having changed or cleared
        it; at most once a second per topic, so that two nodes claiming a topic do
        not take turns forever."""
        with self._restore_lock:
            self._restoring[topic] = payload
            wait = self._restored.get(topic, 0.0) + RESTORE_INTERVAL - time.monotonic()
            if wait > 0:
                if topic not in self._timers:
                    timer = self._timers[topic] = threading.Timer(wait, self._restore_later, (topic,))
                    timer.daemon = True
                    timer.start()
                return
            self._restored[topic] = time.monotonic()
        self._restore_log.warning("someone else changed or cleared %s; announcing it again", topic)
        self.publish(topic, payload)

    def _echo(self, payload: bytes) -> bool:
        """Tell whether `payload`, on the status topic, is one of this node's statuses
        coming back from the broker: the last, or an earlier one with the last still on
        its way (a summary replaced at once). The broker sends a topic's messages in
        order, so those published before it are forgotten: sent again, they are late
        or replayed (see _status_seen). It is kept itself: a status published as the
        node subscribes may come twice, live and retained."""
        with self._restore_lock:
            if payload not in self._unechoed:
                return False
            del self._unechoed[: self._unechoed.index(payload)]
            return True

    def _restore_later(self, topic: str) -> None:
        with self._restore_lock:
            self._timers.pop(topic, None)
            payload = self._restoring[topic]
        self.restore(topic, payload)

    def set_summary(self, summary: dict[str, Any]) -> None:
        """Have the "online" status carry `summary`: published at once if the node is
        connected (its retained status replaced), else with the next connection.
        Called from a thread of the node's owner (the subscriber's ``status-summary``)."""
        self._summary = summary
        if self.connected.is_set() and self._state == "online":
            self.publish(self.status_topic, self._stand_by("online"))

    def subscribe(self, topic_filter: str) -> None:
        # QoS 0: amqtt runs out of QoS 1 packet ids on large retained snapshots.
        self.client.subscribe(topic_filter, qos=0)

    def unsubscribe(self, topic_filter: str) -> None:
        self.client.unsubscribe(topic_filter)

    def _connected(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker %s refused the connection: %s", self.broker.url, reason_code)
            return
        log.info("connected to broker %s", self.broker.url)
        self._unreachable_logged = False
        self._gone.clear()
        self.publish(self.status_topic, self._stand_by("online"))
        # Someone else's status on our topic is put right (see _message).
        self.subscribe(self.status_topic)
        self.connected.set()
        if self._on_connect is not None:
            try:
                self._on_connect()
            except Exception:
                log.exception("error while (re)announcing after connecting")

    def _connect_failed(self, client, userdata) -> None:
        if not self._unreachable_logged:
            log.warning("broker %s is unreachable; retrying with backoff", self.broker.url)
            self._unreachable_logged = True

    def _disconnected(self, client, userdata, flags, reason_code, properties) -> None:
        self._arm_will()
        self._gone.set()
        if self.connected.is_set():
            self.connected.clear()
            if reason_code.is_failure:
                log.warning("lost the broker %s (%s); reconnecting", self.broker.url, reason_code)
        elif not self._unreachable_logged and reason_code.is_failure:
            log.warning(
                "broker %s closed the connection before accepting it (is it mqtts://, or mqtt://?);"
                " retrying with backoff",
                self.broker.url,
            )
            self._unreachable_logged = True

    def _status_seen(self, payload: bytes, retained: bool) -> None:
        """Put right a status on this node's topic that is not the one it stands by.

        An earlier status of its own, after a later one came back, is either late or
        replayed: amqtt may send a live copy after the retained copy of a later one
        (sent to a subscription made meanwhile), and anyone may publish it again. The
        broker's retained copy tells which: a retained one is put right, and a live
        one has the node subscribe again to get the retained copy (MQTT sends it
        at every subscription), which comes back here."""
        if self._echo(payload):
            return
        with self._restore_lock:
            earlier = payload in self._published
        if earlier and not retained:
            self.subscribe(self.status_topic)
        else:
            self.restore(self.status_topic, self._stand_by(self._state))

    def _message(self, client, userdata, message: paho.MQTTMessage) -> None:
        if message.topic == self.status_topic and self._current is not None:
            self._status_seen(message.payload, message.retain)
        if self._on_message is None:
            return
        try:
            self._on_message(message.topic, message.payload)
        except Exception:
            # Junk on a topic must never stop a node.
            log.exception("error handling a message on %r", message.topic)
