"""The embedded-model scenario's baseline: llama-cpp-python called directly, in its own process.

Loads the GGUF file with the service's own defaults (``n_ctx`` = LOCAL_CONTEXT_TOKENS,
``n_threads`` = LOCAL_THREADS, passed explicitly) and, for every line ``run`` read on stdin,
streams one chat completion of the prompt given in the request JSON (``--request``: the same
``messages``, ``max_tokens`` and ``temperature`` the service receives) and prints one JSON
line: ``{"tokens": N, "seconds": S, "first_token_seconds": F, "text": ...}``. ``tokens``
counts the chunks with non-empty content, exactly as the harness counts the service's stream.
Prints ``READY`` once the model is loaded and warmed up; exits on end of input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any


def generate(llama: Any, request: dict[str, Any]) -> dict[str, Any]:
    """One streamed completion; times from the call to the last chunk (seconds)."""
    started = time.perf_counter()
    first = None
    tokens = 0
    text = []
    for part in llama.create_chat_completion(
        messages=request["messages"],
        max_tokens=request["max_tokens"],
        temperature=request["temperature"],
        stream=True,
    ):
        content = part["choices"][0]["delta"].get("content")
        if content:
            tokens += 1
            text.append(content)
            if first is None:
                first = time.perf_counter() - started
    return {
        "tokens": tokens,
        "seconds": time.perf_counter() - started,
        "first_token_seconds": first,
        "text": "".join(text),
    }


def main(argv: list[str] | None = None) -> int:
    """Load, warm up, then answer ``run`` lines until stdin closes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--model", required=True, help="GGUF file")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--ctx", type=int, required=True)
    parser.add_argument("--request", required=True, help="JSON: messages, max_tokens, ...")
    args = parser.parse_args(argv)
    from llama_cpp import Llama

    llama = Llama(model_path=args.model, n_ctx=args.ctx, n_threads=args.threads, verbose=False)
    request = json.loads(args.request)
    generate(llama, {**request, "max_tokens": 8})
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    for line in sys.stdin:
        if line.strip() != "run":
            continue
        sys.stdout.write(json.dumps(generate(llama, request)) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
