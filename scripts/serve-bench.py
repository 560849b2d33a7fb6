#!/usr/bin/env python3
"""Throughput of a running `boomgpu serve`: requests/s and generated
tokens/s with 1, 4 and 16 concurrent clients, each sending completions of
MAX_TOKENS tokens (ignore_eos, greedy) to one model id. Standard library only.

Usage: python3 scripts/serve-bench.py [--url http://127.0.0.1:8080] [--model teacher]
                                      [--max-tokens 32] [--requests 16]
"""
import argparse
import json
import threading
import time
import urllib.request


def complete(url, model, max_tokens):
    body = json.dumps({"model": model, "prompt": "The Debian project is", "max_tokens": max_tokens,
                       "temperature": 0, "ignore_eos": True}).encode()
    req = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)["usage"]["completion_tokens"]


def run(url, model, max_tokens, clients, requests):
    done, tokens, lock = [0], [0], threading.Lock()

    def client():
        while True:
            with lock:
                if done[0] >= requests:
                    return
                done[0] += 1
            n = complete(url, model, max_tokens)
            with lock:
                tokens[0] += n

    t0 = time.time()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.time() - t0
    return requests / secs, tokens[0] / secs, secs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--model", default="teacher")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--requests", type=int, default=16)
    a = ap.parse_args()
    complete(a.url, a.model, 2)  # warm up
    print(f"{'clients':>7} {'requests/s':>10} {'tokens/s':>9} {'seconds':>8}")
    for c in [1, 4, 16]:
        rps, tps, secs = run(a.url, a.model, a.max_tokens, c, a.requests)
        print(f"{c:>7} {rps:>10.2f} {tps:>9.1f} {secs:>8.1f}")


if __name__ == "__main__":
    main()
