"""docs/protocol.md section 11 (MQTT) says what the code does: every marked example
decodes with the shim's decoders or is byte for byte what the shim writes, and every MQTT
packet is well formed. (tests/test_mqtt_shim.py sends the packets to a live broker and shim.)"""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mqtt_support import doc_examples

from shoal.protocol import codec
from shoal.services.mqtt_shim import topics


def test_the_up_examples_decode_as_node_messages() -> None:
    examples = doc_examples("mqtt-up")
    assert examples
    for payload in examples.values():
        records, bad = codec.decode_ingest(payload, json=True)
        assert records and not bad


def test_the_ack_example_is_what_the_shim_writes() -> None:
    (payload,) = doc_examples("mqtt-ack").values()
    assert len(payload) == 54
    assert topics.ack_payload(msgspec.json.decode(payload)["acks"]) == payload


def test_the_will_example_decodes() -> None:
    (payload,) = doc_examples("mqtt-will").values()
    will = topics.decode_will(payload, 4096)
    assert (will.node_id, will.boot_id, will.seq) == ("esp-01", 439041101, 1)
    assert len(payload) == 54


def test_the_state_example_is_what_the_shim_writes() -> None:
    (payload,) = doc_examples("mqtt-state").values()
    assert topics.state_payload("online", "shim-1", 2882400001) == payload


def _remaining_length(data: bytes) -> tuple[int, int]:
    value, shift, i = 0, 0, 1
    while True:
        byte = data[i]
        value += (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return value, i
        shift += 7


@pytest.mark.parametrize("name", ["connect", "subscribe", "publish-hello", "ack"])
def test_each_packet_is_one_whole_mqtt_packet(name: str) -> None:
    packet = doc_examples("mqtt-packet")[name]
    length, header = _remaining_length(packet)
    assert header + length == len(packet)
    if name in ("publish-hello", "ack"):
        topic_len = int.from_bytes(packet[header : header + 2], "big")
        topic = packet[header + 2 : header + 2 + topic_len].decode()
        payload = packet[header + 2 + topic_len :]
        assert topics.parse(topic) is not None or topic == "shoal/v1/esp-01/ack"
        expected = doc_examples("mqtt-up" if name == "publish-hello" else "mqtt-ack")
        assert payload in expected.values()
