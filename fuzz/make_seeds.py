#!/usr/bin/env python3
"""Small seed inputs for the fuzz targets, written into fuzz/corpus/<target>/
(ignored by git): a two-tensor safetensors file, a llama GGUF with metadata,
a string array and f32 / Q8_0 tensors, and tokenizer_config.json files with
chat templates. Run from anywhere: python3 fuzz/make_seeds.py"""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def out(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def safetensors(tensors, meta=None):
    header, blob = {}, b""
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    if meta:
        header["__metadata__"] = meta
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + blob


def f32s(n):
    return struct.pack(f"<{n}f", *[(i % 7 - 3) / 4 for i in range(n)])


out("safetensors", "two", safetensors({
    "model.norm.weight": ("F32", [32], f32s(32)),
    "model.layers.0.mlp.up_proj.weight": ("BF16", [2, 4], b"\x80\x3f" * 8),
}, {"format": "pt"}))
out("safetensors", "empty", safetensors({}))


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf():
    kv = [gstr("general.architecture") + struct.pack("<I", 8) + gstr("llama")]
    for k, v in [("llama.block_count", 1), ("llama.embedding_length", 32),
                 ("llama.feed_forward_length", 64), ("llama.attention.head_count", 4),
                 ("llama.attention.head_count_kv", 2), ("llama.context_length", 64)]:
        kv.append(gstr(k) + struct.pack("<II", 4, v))
    kv.append(gstr("llama.attention.layer_norm_rms_epsilon") + struct.pack("<If", 6, 1e-5))
    kv.append(gstr("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 3)
              + gstr("<s>") + gstr("</s>") + gstr("a"))
    q8 = (struct.pack("<e", 1 / 128) + bytes(range(32))) * 2
    tensors = [("token_embd.weight", [32, 2], 0, f32s(64)),
               ("blk.0.attn_q.weight", [32, 2], 8, q8)]
    b = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)) + b"".join(kv)
    off, offs = 0, []
    for name, dims, ty, data in tensors:
        b += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        b += struct.pack("<IQ", ty, off)
        offs.append(off)
        off = (off + len(data) + 31) // 32 * 32
    b += b"\0" * (-len(b) % 32)
    start = len(b)
    for (_, _, _, data), o in zip(tensors, offs):
        b += b"\0" * (start + o - len(b)) + data
    return b


out("gguf", "llama", gguf())

CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
          "message['content'].strip() + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
SYS = ("{{ bos_token }}{% set ns = namespace(s='') %}{% if messages[0]['role'] == 'system' %}"
       "{% set ns.s = messages[0]['content'] | trim %}{% set messages = messages[1:] %}{% endif %}"
       "{{ ns.s }}{% for m in messages %}{% if loop.first and m['role'] != 'user' %}"
       "{{ raise_exception('user first') }}{% endif %}{{ m['role'] ~ ': ' ~ m['content'] ~ eos_token }}"
       "{% endfor %}{{ messages | tojson }}")
base = {"bos_token": "<|bos|>", "eos_token": "<|eos|>", "pad_token": None}
out("tokenizer_config", "chatml.json", json.dumps({**base, "chat_template": CHATML}))
out("tokenizer_config", "named.json",
    json.dumps({**base, "chat_template": [{"name": "default", "template": SYS}]}))
out("tokenizer_config", "plain", SYS)
