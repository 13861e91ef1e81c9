"""The ceiling of this stack: a naive Flask + urllib3 proxy, run by bench/peers.py under
gunicorn's gevent worker like the service. No validation, no errors, no logs, no metrics.

A body asking for ``"stream": true`` is relayed as the upstream's bytes as they arrive (the
streaming scenario's floor); any other is read whole and answered at once."""

import os

import urllib3
from flask import Flask, Response, request

app = Flask(__name__)
upstream = os.environ["NAIVE_UPSTREAM"] + "/chat/completions"
pool = urllib3.PoolManager(maxsize=int(os.environ.get("NAIVE_POOL", "100")))
headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-naive"}
timeout = urllib3.Timeout(connect=10, read=120)


@app.post("/v1/chat/completions")
def chat() -> Response:
    body = request.get_data()
    streamed = b'"stream": true' in body or b'"stream":true' in body
    answer = pool.request(
        "POST",
        upstream,
        body=body,
        headers=headers,
        timeout=timeout,
        retries=False,
        preload_content=not streamed,
    )
    if not streamed:
        return Response(answer.data, status=answer.status, content_type="application/json")

    def relay():  # each read returns what has arrived: one write per upstream chunk
        try:
            while data := answer.read1(65536):
                yield data
        finally:
            answer.release_conn()

    return Response(relay(), status=answer.status, content_type="text/event-stream")
