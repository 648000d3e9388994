//! ggml's k-quants: super-blocks of 256 values (ggml-common.h, dequantize_row_q*_K in
//! ggml-quants.c), dequantised to f32 with ggml's operation order, so the values equal the `gguf`
//! Python package's `dequantize` (checked on committed fixture blocks).
//!
//! | type | bytes | layout |
//! | --- | --- | --- |
//! | Q2_K | 84 | scales[16] (low nibble scale, high nibble min), qs[64] (2 bits), f16 d, f16 dmin |
//! | Q3_K | 110 | hmask[32] (high bit), qs[64] (low 2 bits), scales[12] (16 x 6 bits), f16 d |
//! | Q4_K | 144 | f16 d, f16 dmin, scales[12] (8 x 6-bit scale and min), qs[128] (4 bits) |
//! | Q5_K | 176 | f16 d, f16 dmin, scales[12], qh[32] (fifth bit), qs[128] |
//! | Q6_K | 210 | ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (i8), f16 d |
//! | Q8_K | 292 | f32 d, qs[256] (i8), bsums[16] (i16, unused here) |

use half::f16;

pub const QK_K: usize = 256;

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The k-quant types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KQuant {
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
}

impl KQuant {
    pub fn block_bytes(self) -> usize {
        match self {
            Self::Q2K => 84,
            Self::Q3K => 110,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
            Self::Q8K => 292,
        }
    }

    /// Append the 256 values of one super-block `b` to `out`.
    pub fn dequantize_block(self, b: &[u8], out: &mut Vec<f32>) {
        match self {
            Self::Q2K => q2_k(b, out),
            Self::Q3K => q3_k(b, out),
            Self::Q4K => q4_k(b, out),
            Self::Q5K => q5_k(b, out),
            Self::Q6K => q6_k(b, out),
            Self::Q8K => {
                let d = f32::from_le_bytes(b[0..4].try_into().unwrap());
                out.extend(b[4..4 + QK_K].iter().map(|&q| d * (q as i8) as f32));
            }
        }
    }
}

fn q2_k(b: &[u8], out: &mut Vec<f32>) {
    let (scales, qs) = (&b[0..16], &b[16..80]);
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    let mut is = 0;
    for half in 0..2 {
        let q = &qs[half * 32..half * 32 + 32];
        for shift in [0u32, 2, 4, 6] {
            for part in 0..2 {
                let sc = scales[is];
                is += 1;
                let (dl, ml) = (d * (sc & 0xF) as f32, dmin * (sc >> 4) as f32);
                out.extend(
                    q[part * 16..part * 16 + 16]
                        .iter()
                        .map(|&x| dl * ((x >> shift) & 3) as f32 - ml),
                );
            }
        }
    }
}

fn q3_k(b: &[u8], out: &mut Vec<f32>) {
    let (hmask, qs, packed) = (&b[0..32], &b[32..96], &b[96..108]);
    let d = f16_at(b, 108);
    // 16 six-bit scales: low 4 bits in bytes 0..8 (two per byte), high 2 bits in bytes 8..12
    let scales: Vec<i8> = (0..16)
        .map(|i| {
            let low = (packed[i % 8] >> (4 * (i / 8))) & 0x0F;
            let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 0x03;
            ((low | (high << 4)) as i8).wrapping_sub(32)
        })
        .collect();
    let mut is = 0;
    let mut m = 1u8;
    for half in 0..2 {
        let q = &qs[half * 32..half * 32 + 32];
        for shift in [0u32, 2, 4, 6] {
            for part in 0..2 {
                let dl = d * scales[is] as f32;
                is += 1;
                out.extend((part * 16..part * 16 + 16).map(|l| {
                    let low = ((q[l] >> shift) & 3) as i8;
                    let high = if hmask[l] & m != 0 { 0 } else { 4 };
                    dl * (low - high) as f32
                }));
            }
            m <<= 1;
        }
    }
}

/// The j-th (scale, min) pair of Q4_K / Q5_K's 12 packed bytes (ggml's get_scale_min_k4).
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qs) = (&b[4..16], &b[16..144]);
    for (k, q) in qs.chunks_exact(32).enumerate() {
        let (s1, m1) = scale_min_k4(2 * k, scales);
        let (s2, m2) = scale_min_k4(2 * k + 1, scales);
        let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
        out.extend(q.iter().map(|&x| d1 * (x & 0xF) as f32 - m1));
        out.extend(q.iter().map(|&x| d2 * (x >> 4) as f32 - m2));
    }
}

fn q5_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
    for (k, ql) in qs.chunks_exact(32).enumerate() {
        let (s1, m1) = scale_min_k4(2 * k, scales);
        let (s2, m2) = scale_min_k4(2 * k + 1, scales);
        let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
        let (u1, u2) = (1u8 << (2 * k), 1u8 << (2 * k + 1));
        out.extend(
            ql.iter()
                .zip(qh)
                .map(|(&x, &h)| d1 * ((x & 0xF) + if h & u1 != 0 { 16 } else { 0 }) as f32 - m1),
        );
        out.extend(
            ql.iter()
                .zip(qh)
                .map(|(&x, &h)| d2 * ((x >> 4) + if h & u2 != 0 { 16 } else { 0 }) as f32 - m2),
        );
    }
}

fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
    let d = f16_at(b, 208);
    for n in 0..2 {
        let (ql, qh, sc) = (&ql[n * 64..], &qh[n * 32..], &sc[n * 8..]);
        let mut y = [0f32; 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            let s = |k: usize| d * (sc[is + k] as i8) as f32;
            y[l] = s(0) * q1 as f32;
            y[l + 32] = s(2) * q2 as f32;
            y[l + 64] = s(4) * q3 as f32;
            y[l + 96] = s(6) * q4 as f32;
        }
        out.extend_from_slice(&y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_k_is_d_times_the_signed_bytes() {
        // (no reference in the gguf package: Q8_K is ggml's intermediate type)
        let mut b = vec![0u8; 292];
        b[0..4].copy_from_slice(&0.5f32.to_le_bytes());
        b[4] = 4;
        b[5] = (-6i8) as u8;
        let mut out = Vec::new();
        KQuant::Q8K.dequantize_block(&b, &mut out);
        assert_eq!(out.len(), QK_K);
        assert_eq!(&out[..3], &[2.0, -3.0, 0.0]);
    }

    #[test]
    fn q4_k_scale_and_min_unpacking() {
        // scale 5 / min 3 for sub-block 0, scale 0x2A / min 0x15 for sub-block 4 (high bits
        // from bytes 0 and 4)
        let mut q = [0u8; 12];
        q[0] = 5 | (2 << 6);
        q[4] = 3 | (1 << 6);
        q[8] = 0x0A | (0x05 << 4);
        assert_eq!(scale_min_k4(0, &q), (5, 3));
        assert_eq!(scale_min_k4(4, &q), (0x0A | (2 << 4), 0x05 | (1 << 4)));
    }
}
