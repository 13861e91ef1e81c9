"""What ``logprobs`` costs on the embedded model: CPU per token and resident memory.

In its own process: loads the GGUF file as the service does (``n_ctx`` LOCAL_CONTEXT_TOKENS,
``n_threads`` LOCAL_THREADS, both given) and generates the same greedy answer (a fixed prompt,
``max_tokens`` 200, temperature 0) without logprobs, with ``logprobs`` and with
``top_logprobs`` 20, in interleaved rounds. CPU time (``time.process_time``: every thread of
this process, so other work on the machine does not inflate it) per generated token is
compared, the best round of each side (other work only ever slows a round down). VmRSS is read
after loading, after one answer without logprobs and after all the runs. With ``--logits-all``
the model is then loaded again as llama-cpp-python's own logprobs need it (``logits_all=True``)
and gives the same answer with ``top_logprobs`` 20, for its CPU per token and memory.
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROMPT = [{"role": "user", "content": "Explain in detail how a bicycle works."}]


def rss_kib() -> int:
    """This process's VmRSS (KiB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def generate(llama: Any, top: int | None, max_tokens: int) -> tuple[int, float]:
    """One greedy answer; its tokens and the CPU seconds it took."""
    from llama_cpp import LogitsProcessorList

    from chatservice.backends.logprobs import TokenLogprobs

    kwargs: dict[str, Any] = {"messages": PROMPT, "max_tokens": max_tokens, "temperature": 0}
    if top is not None:
        kwargs["logits_processor"] = LogitsProcessorList([TokenLogprobs(llama, top)])
    started = time.process_time()
    body = llama.create_chat_completion(**kwargs)
    return body["usage"]["completion_tokens"], time.process_time() - started


def main(argv: list[str] | None = None) -> int:
    """Measure, print the JSON document."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--logits-all", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from chatservice.backends.local import bundled_model_path
    from chatservice.backends.logprobs import ObservedLlama

    before = rss_kib()
    options = {"n_ctx": args.ctx, "n_threads": args.threads, "verbose": False}
    llama = ObservedLlama(model_path=bundled_model_path(), **options)
    generate(llama, None, 8)  # warm-up
    loaded = rss_kib()
    generate(llama, None, args.max_tokens)
    plain_answered = rss_kib()
    sides = {"plain": None, "logprobs": 0, "top_logprobs_20": 20}
    runs: dict[str, list[float]] = {name: [] for name in sides}
    tokens: dict[str, int] = {}
    for _ in range(args.rounds):
        for name, top in sides.items():
            count, seconds = generate(llama, top, args.max_tokens)
            tokens[name] = count
            runs[name].append(seconds / count * 1000)
    result: dict[str, Any] = {
        "threads": args.threads,
        "ctx": args.ctx,
        "tokens": tokens,
        "cpu_ms_per_token_best": {name: round(min(ms), 3) for name, ms in runs.items()},
        "cpu_ms_per_token_runs": {name: [round(m, 3) for m in ms] for name, ms in runs.items()},
        # llama-cpp-python's logits array: n_batch rows without logits_all.
        "scores_array_mib": round(llama.scores.nbytes / 2**20, 1),
        "rss_kib": {
            "before_load": before,
            "loaded": loaded,
            "after_a_plain_answer": plain_answered,
            "after_all_runs": rss_kib(),
        },
    }
    plain = min(runs["plain"])
    result["added_cpu_ms_per_token"] = {
        name: round(min(ms) - plain, 3) for name, ms in runs.items() if name != "plain"
    }
    if args.logits_all:
        from llama_cpp import Llama

        del llama
        start = rss_kib()
        full = Llama(model_path=bundled_model_path(), logits_all=True, **options)
        cpu = time.process_time()
        body = full.create_chat_completion(
            messages=PROMPT, max_tokens=args.max_tokens, temperature=0, logprobs=True,
            top_logprobs=20,
        )  # fmt: skip
        count = body["usage"]["completion_tokens"]
        result["logits_all"] = {
            "tokens": count,
            "cpu_ms_per_token": round((time.process_time() - cpu) / count * 1000, 3),
            # n_ctx rows: resident as they are written, so all of it once a context is full.
            "scores_array_mib": round(full.scores.nbytes / 2**20, 1),
            # After the first model was freed (the allocator keeps some of its memory).
            "rss_kib_added_by_model_and_answer": rss_kib() - start,
        }
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
