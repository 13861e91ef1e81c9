"""The ceiling of this stack: a naive Flask + urllib3 proxy, run by bench/peers.py under
gunicorn's gevent worker like the service. No validation, no errors, no logs, no metrics."""

import os

import urllib3
from flask import Flask, Response, request

app = Flask(__name__)
upstream = os.environ["NAIVE_UPSTREAM"] + "/chat/completions"
pool = urllib3.PoolManager(maxsize=int(os.environ.get("NAIVE_POOL", "100")))
headers = {"Content-Type": "application/json", "Authorization": "Bearer sk-naive"}


@app.post("/v1/chat/completions")
def chat() -> Response:
    answer = pool.request(
        "POST",
        upstream,
        body=request.get_data(),
        headers=headers,
        timeout=urllib3.Timeout(connect=10, read=120),
        retries=False,
    )
    return Response(answer.data, status=answer.status, content_type="application/json")
