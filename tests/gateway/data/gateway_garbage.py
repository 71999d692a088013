"""Counts the reference cycles a gateway request leaves: run by tests/gateway/test_server.py.

A fake provider and the gateway serve in this process, the collector off; a
keep-alive client sends requests of every kind (Messages and Chat Completions,
whole and streamed), and after a warm-up and after N more requests, the objects
`gc.collect()` found unreachable are counted. Prints one JSON line.
"""

import gc
import http.client
import json
import os
import sys

from overnight.gateway.keys import KeyRing, key_hash
from overnight.gateway.server import running_gateway
from overnight.org.gateway import GatewayConfig
from overnight.testing.fake_provider import FakeProvider


class Sink:
    def record(self, attempt: object) -> None:
        pass

    def event(self, kind: str, payload: object) -> None:
        pass


def main() -> None:
    n = int(sys.argv[1])
    os.environ["GARBAGE_UPSTREAM_KEY"] = "sk-fake"
    fake = FakeProvider("anthropic")
    fake.start()
    config = GatewayConfig.model_validate(
        {
            "upstreams": [
                {
                    "name": "fake",
                    "protocol": "anthropic",
                    "base_url": fake.url,
                    "credentials": [{"name": "main", "env": "GARBAGE_UPSTREAM_KEY"}],
                }
            ],
            "models": {"m": ["fake/claude-sonnet-4-5"]},
        }
    )
    key = "ovn-garbage-test"
    with running_gateway(config, KeyRing({key_hash(key): "agent"}), Sink()) as url:
        conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=20)
        hello = [{"role": "user", "content": "hello"}]
        requests = []
        for stream in (False, True):
            body = {"model": "m", "max_tokens": 64, "messages": hello, "stream": stream}
            requests.append(("/v1/messages", {"x-api-key": key}, body))
            requests.append(("/v1/chat/completions", {"authorization": f"Bearer {key}"}, body))

        def send(count: int) -> None:
            for i in range(count):
                path, headers, body = requests[i % len(requests)]
                conn.request("POST", path, json.dumps(body), headers)
                answer = conn.getresponse()
                data = answer.read()
                assert answer.status == 200, (answer.status, data)

        send(40)  # connections, pools, caches: made once
        gc.collect()
        gc.disable()
        send(n)
        cyclic = gc.collect()
        conn.close()
    fake.stop()
    print(json.dumps({"requests": n, "unreachable": cyclic}))


main()
