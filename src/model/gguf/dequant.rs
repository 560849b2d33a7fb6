//! The ggml tensor types and the dequantisation of the common block formats
//! to f32.
//!
//! Each block format as ggml defines it; the arithmetic is f32 in the order
//! gguf-py (which transformers uses) evaluates it, so results match bit for
//! bit.

use crate::error::{Error, Result};

/// The ggml type ids boomgpu reads (`enum ggml_type`).
pub mod ggml_type {
    pub const F32: u32 = 0;
    pub const F16: u32 = 1;
    pub const Q4_0: u32 = 2;
    pub const Q4_1: u32 = 3;
    pub const Q5_0: u32 = 6;
    pub const Q5_1: u32 = 7;
    pub const Q8_0: u32 = 8;
    pub const Q4_K: u32 = 12;
    pub const Q5_K: u32 = 13;
    pub const Q6_K: u32 = 14;
    pub const BF16: u32 = 30;
}

/// Name, elements per block and bytes per block of a ggml type, or None for
/// an id ggml does not define.
pub fn ggml_type_layout(id: u32) -> Option<(&'static str, usize, usize)> {
    Some(match id {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        6 => ("Q5_0", 32, 22),
        7 => ("Q5_1", 32, 24),
        8 => ("Q8_0", 32, 34),
        9 => ("Q8_1", 32, 36),
        10 => ("Q2_K", 256, 84),
        11 => ("Q3_K", 256, 110),
        12 => ("Q4_K", 256, 144),
        13 => ("Q5_K", 256, 176),
        14 => ("Q6_K", 256, 210),
        15 => ("Q8_K", 256, 292),
        16 => ("IQ2_XXS", 256, 66),
        17 => ("IQ2_XS", 256, 74),
        18 => ("IQ3_XXS", 256, 98),
        19 => ("IQ1_S", 256, 50),
        20 => ("IQ4_NL", 32, 18),
        21 => ("IQ3_S", 256, 110),
        22 => ("IQ2_S", 256, 82),
        23 => ("IQ4_XS", 256, 136),
        24 => ("I8", 1, 1),
        25 => ("I16", 1, 2),
        26 => ("I32", 1, 4),
        27 => ("I64", 1, 8),
        28 => ("F64", 1, 8),
        29 => ("IQ1_M", 256, 56),
        30 => ("BF16", 1, 2),
        34 => ("TQ1_0", 256, 54),
        35 => ("TQ2_0", 256, 66),
        39 => ("MXFP4", 32, 17),
        _ => return None,
    })
}

/// Whether [`dequantize`] reads this ggml type.
pub fn is_supported_type(id: u32) -> bool {
    use ggml_type::*;
    matches!(
        id,
        F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4_K | Q5_K | Q6_K
    )
}

pub(super) const SUPPORTED_TYPES: &str =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K";

pub(super) fn type_name(id: u32) -> String {
    ggml_type_layout(id)
        .map(|l| l.0.to_string())
        .unwrap_or_else(|| format!("type {id}"))
}
fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantise `n` elements of ggml type `ty` from `data`.
pub fn dequantize(ty: u32, data: &[u8], n: usize) -> Result<Vec<f32>> {
    use ggml_type::*;
    let (name, block, block_bytes) =
        ggml_type_layout(ty).ok_or_else(|| Error::Invalid(format!("unknown ggml type {ty}")))?;
    if !is_supported_type(ty) {
        return Err(Error::Invalid(format!(
            "unsupported ggml type {ty} ({name}); boomgpu reads {SUPPORTED_TYPES}"
        )));
    }
    let need = (n / block).checked_mul(block_bytes);
    if !n.is_multiple_of(block) || need != Some(data.len()) {
        return Err(Error::Invalid(format!(
            "{n} elements of {name} (blocks of {block}, {block_bytes} bytes each) do not fit {} bytes",
            data.len()
        )));
    }
    let mut out = vec![0f32; n];
    let blocks = data
        .chunks_exact(block_bytes)
        .zip(out.chunks_exact_mut(block));
    match ty {
        F32 => {
            for (b, y) in blocks {
                y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        F16 => {
            for (b, y) in blocks {
                y[0] = f16_at(b, 0);
            }
        }
        BF16 => {
            for (b, y) in blocks {
                y[0] = half::bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        Q8_0 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                for j in 0..32 {
                    y[j] = d * (b[2 + j] as i8) as f32;
                }
            }
        }
        Q4_0 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                legacy_codes(&b[2..18], 0, y, |q| d * (q as i32 - 8) as f32);
            }
        }
        Q4_1 => {
            for (b, y) in blocks {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                legacy_codes(&b[4..20], 0, y, |q| d * q as f32 + m);
            }
        }
        Q5_0 => {
            for (b, y) in blocks {
                let d = f16_at(b, 0);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                legacy_codes(&b[6..22], qh, y, |q| d * (q as i32 - 16) as f32);
            }
        }
        Q5_1 => {
            for (b, y) in blocks {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
                legacy_codes(&b[8..24], qh, y, |q| d * q as f32 + m);
            }
        }
        Q4_K => {
            for (b, y) in blocks {
                k_quant_groups(b, None, &b[16..144], y);
            }
        }
        Q5_K => {
            for (b, y) in blocks {
                k_quant_groups(b, Some(&b[16..48]), &b[48..176], y);
            }
        }
        Q6_K => {
            for (b, y) in blocks {
                let ql = &b[0..128];
                let qh = &b[128..192];
                let sc = &b[192..208];
                let d = f16_at(b, 208);
                for half in 0..2 {
                    let ql = &ql[64 * half..64 * half + 64];
                    let qh = &qh[32 * half..32 * half + 32];
                    let sc = &sc[8 * half..8 * half + 8];
                    let y = &mut y[128 * half..128 * half + 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q1 = ((ql[l] & 0x0f) | (qh[l] & 3) << 4) as i32 - 32;
                        let q2 = ((ql[l + 32] & 0x0f) | ((qh[l] >> 2) & 3) << 4) as i32 - 32;
                        let q3 = ((ql[l] >> 4) | ((qh[l] >> 4) & 3) << 4) as i32 - 32;
                        let q4 = ((ql[l + 32] >> 4) | ((qh[l] >> 6) & 3) << 4) as i32 - 32;
                        let s = |k: usize| d * (sc[is + k] as i8) as f32;
                        y[l] = s(0) * q1 as f32;
                        y[l + 32] = s(2) * q2 as f32;
                        y[l + 64] = s(4) * q3 as f32;
                        y[l + 96] = s(6) * q4 as f32;
                    }
                }
            }
        }
        _ => unreachable!("checked by is_supported_type"),
    }
    Ok(out)
}

/// The 32 codes of a Q4_0/Q4_1/Q5_0/Q5_1 block: codes `j` and `j + 16` are
/// the low and high nibbles of `qs[j]`, each with a fifth bit from `qh`
/// (bits `j` and `j + 16`; zero for the 4-bit formats). `value` turns a code
/// into the element, which is where the four formats differ.
fn legacy_codes(qs: &[u8], qh: u32, y: &mut [f32], value: impl Fn(u32) -> f32) {
    for j in 0..16 {
        let lo = (qs[j] & 0x0f) as u32 | ((qh >> j) & 1) << 4;
        let hi = (qs[j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4;
        y[j] = value(lo);
        y[j + 16] = value(hi);
    }
}

/// One Q4_K or Q5_K super-block `b` into `y`: d and dmin, twelve bytes of
/// packed 6-bit scales and mins, then four groups of 64 values whose low
/// nibbles are in `qs`. Q5_K adds a fifth bit per value from `qh` (bit
/// `2g` for the first 32 values of group `g`, `2g + 1` for the second);
/// Q4_K has none.
fn k_quant_groups(b: &[u8], qh: Option<&[u8]>, qs: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    for g in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * g, scales);
        let (sc2, m2) = scale_min_k4(2 * g + 1, scales);
        let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
        let q = &qs[32 * g..32 * g + 32];
        let y = &mut y[64 * g..64 * g + 64];
        for l in 0..32 {
            let (h1, h2) = match qh {
                Some(qh) => (
                    ((qh[l] >> (2 * g)) & 1) << 4,
                    ((qh[l] >> (2 * g + 1)) & 1) << 4,
                ),
                None => (0, 0),
            };
            y[l] = d1 * ((q[l] & 0x0f) | h1) as f32 - m1;
            y[l + 32] = d2 * ((q[l] >> 4) | h2) as f32 - m2;
        }
    }
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K/Q5_K block.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}
