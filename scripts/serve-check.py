#!/usr/bin/env python3
"""Check a running `boomgpu serve` with the tools people point at it
(fixture-time; `cargo test` does not need it):
  1. the official `openai` client: chat, streaming chat, chat logprobs,
     completions with echo and logprobs;
  2. lm-evaluation-harness `local-completions` against the server and its
     `hf` backend on the same model, on a small multiple-choice task defined
     here (no hub datasets): per-choice loglikelihoods must agree within
     1e-2 and the accuracy must be the same.

Usage (the server serving MODEL_DIR as the size named by --model):
    pip install openai "lm-eval[api]" accelerate
    python3 scripts/serve-check.py --model-dir target/demo/smollm2 [--url http://127.0.0.1:8080] [--model teacher]
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

ITEMS = [
    ("The capital of France is", ["Paris", "Berlin", "Madrid", "Rome"]),
    ("Water freezes at zero degrees", ["Celsius", "volts", "meters", "grams"]),
    ("The sun rises in the", ["east", "west", "north", "south"]),
    ("A week has seven", ["days", "hours", "years", "cats"]),
    ("Debian is a free operating", ["system", "banana", "river", "song"]),
    ("Two plus two equals", ["four", "seven", "ten", "one"]),
    ("The opposite of hot is", ["cold", "tall", "blue", "fast"]),
    ("Cats like to drink", ["milk", "petrol", "sand", "ink"]),
    ("The first month of the year is", ["January", "July", "October", "May"]),
    ("Birds can", ["fly", "read", "type", "drive"]),
    ("Paris is a city in", ["France", "Japan", "Brazil", "Canada"]),
    ("Snow is usually", ["white", "green", "purple", "orange"]),
]


def check_openai(url, model):
    from openai import OpenAI

    c = OpenAI(base_url=url + "/v1", api_key=os.environ.get("BOOMGPU_API_KEY", "unused"))
    ids = [m.id for m in c.models.list().data]
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    full = c.chat.completions.create(model=model, messages=msgs, max_tokens=16, temperature=0)
    text = full.choices[0].message.content
    streamed = "".join(
        ch.choices[0].delta.content or ""
        for ch in c.chat.completions.create(model=model, messages=msgs, max_tokens=16, temperature=0, stream=True)
    )
    assert streamed == text, (streamed, text)
    # Chat logprobs through the client's own types: one per answer token,
    # the greedy choice first among the top ones.
    lc = c.chat.completions.create(model=model, messages=msgs, max_tokens=16, temperature=0,
                                   logprobs=True, top_logprobs=2)
    content = lc.choices[0].logprobs.content
    assert lc.choices[0].message.content == text
    assert len(content) == lc.usage.completion_tokens, (len(content), lc.usage)
    for e in content:
        assert e.logprob <= 0 and abs(e.logprob - e.top_logprobs[0].logprob) < 1e-5, e
    chat_lp = sum(e.logprob for e in content)
    r = c.completions.create(model=model, prompt="The capital of France is", max_tokens=3, temperature=0,
                             logprobs=2, echo=True)
    lp = r.choices[0].logprobs
    assert lp.token_logprobs[0] is None and len(lp.tokens) == len(lp.text_offset) == len(lp.top_logprobs)
    print(f"openai: {len(ids)} models; chat {text!r} (streamed the same; {len(content)} token logprobs, "
          f"sum {chat_lp:.4f}); completion {r.choices[0].text!r} with {len(lp.tokens)} token logprobs")


def lm_eval(work, model_args, backend, out):
    cmd = [os.path.join(os.path.dirname(sys.executable), "lm_eval"), "--model", backend, "--tasks", "boomgpu_mc",
           "--include_path", work, "--model_args", model_args, "--log_samples", "--output_path", out]
    if backend == "hf":
        cmd += ["--device", "cpu"]
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    res = json.load(open(glob.glob(os.path.join(out, "*", "results_*.json"))[0]))
    acc = res["results"]["boomgpu_mc"]["acc,none"]
    ll = {}
    for line in open(glob.glob(os.path.join(out, "*", "samples_*.jsonl"))[0]):
        s = json.loads(line)
        ll[s["doc_id"]] = [float(r[0][0]) for r in s["resps"]]
    return acc, ll


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--model", default="teacher")
    ap.add_argument("--model-dir", required=True, help="the Hugging Face folder the --model size is")
    a = ap.parse_args()
    check_openai(a.url, a.model)
    work = tempfile.mkdtemp(prefix="boomgpu-lmeval-")
    with open(os.path.join(work, "mc.jsonl"), "w") as f:
        for q, c in ITEMS:
            f.write(json.dumps({"question": q, "choices": c, "answer": 0}) + "\n")
    with open(os.path.join(work, "boomgpu_mc.yaml"), "w") as f:
        f.write(f"""task: boomgpu_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {work}/mc.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
""")
    d = os.path.abspath(a.model_dir)
    acc_s, ll_s = lm_eval(work, f"model={a.model},base_url={a.url}/v1/completions,tokenizer={d},"
                                "tokenizer_backend=huggingface,num_concurrent=1", "local-completions",
                          os.path.join(work, "server"))
    acc_h, ll_h = lm_eval(work, f"pretrained={d},dtype=float32", "hf", os.path.join(work, "hf"))
    diffs = [abs(x - y) for k in ll_s for x, y in zip(ll_s[k], ll_h[k])]
    print(f"lm-eval: {len(diffs)} loglikelihoods, largest difference server vs hf {max(diffs):.2e} "
          f"(mean {sum(diffs) / len(diffs):.2e}); accuracy {acc_s:.4f} (server) vs {acc_h:.4f} (hf)")
    assert max(diffs) < 1e-2 and acc_s == acc_h
    print("agree")


if __name__ == "__main__":
    main()
