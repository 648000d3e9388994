//! ggml tensor types and their dequantisation to f32.
//!
//! Block layouts follow ggml's published definitions (ggml-common.h):
//! - Q8_0: 32 values; f16 scale d, 32 x i8 q; x = q * d.                      (34 bytes)
//! - Q4_0: 32 values; f16 d, 16 bytes; byte j holds element j in its low nibble and element
//!   j + 16 in its high nibble; x = (q - 8) * d.                               (18 bytes)
//! - Q4_1: 32 values; f16 d, f16 m, 16 bytes as Q4_0; x = q * d + m.          (20 bytes)
//! - Q5_0: 32 values; f16 d, u32 high bits, 16 bytes; x = (q5 - 16) * d.       (22 bytes)
//! - Q5_1: 32 values; f16 d, f16 m, u32 high bits, 16 bytes; x = q5 * d + m.   (24 bytes)

use anyhow::{bail, Result};
use half::{bf16, f16};

use super::kquants::{KQuant, QK_K};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    /// k-quants (super-blocks of 256 values, formats::kquants).
    K(KQuant),
    /// A type this reader knows by id but cannot dequantise (Q8_1, i-quants, ...).
    Unsupported(u32),
}

impl GgmlType {
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            6 => Self::Q5_0,
            7 => Self::Q5_1,
            8 => Self::Q8_0,
            10 => Self::K(KQuant::Q2K),
            11 => Self::K(KQuant::Q3K),
            12 => Self::K(KQuant::Q4K),
            13 => Self::K(KQuant::Q5K),
            14 => Self::K(KQuant::Q6K),
            15 => Self::K(KQuant::Q8K),
            30 => Self::BF16,
            // Known ggml ids (Q8_1, i-quants, integer types): readable table, no dequantiser.
            9 | 16..=29 | 31..=41 => Self::Unsupported(id),
            _ => return None,
        })
    }

    pub fn name(self) -> String {
        match self {
            Self::F32 => "F32".into(),
            Self::F16 => "F16".into(),
            Self::BF16 => "BF16".into(),
            Self::Q4_0 => "Q4_0".into(),
            Self::Q4_1 => "Q4_1".into(),
            Self::Q5_0 => "Q5_0".into(),
            Self::Q5_1 => "Q5_1".into(),
            Self::Q8_0 => "Q8_0".into(),
            Self::K(k) => match k {
                KQuant::Q2K => "Q2_K",
                KQuant::Q3K => "Q3_K",
                KQuant::Q4K => "Q4_K",
                KQuant::Q5K => "Q5_K",
                KQuant::Q6K => "Q6_K",
                KQuant::Q8K => "Q8_K",
            }
            .into(),
            Self::Unsupported(id) => match id {
                9 => "Q8_1".into(),
                16 => "IQ2_XXS".into(),
                17 => "IQ2_XS".into(),
                18 => "IQ3_XXS".into(),
                19 => "IQ1_S".into(),
                20 => "IQ4_NL".into(),
                21 => "IQ3_S".into(),
                22 => "IQ2_S".into(),
                23 => "IQ4_XS".into(),
                other => format!("ggml type {other}"),
            },
        }
    }

    /// (values per block, bytes per block); None for types without a dequantiser.
    fn block(self) -> Option<(u64, u64)> {
        Some(match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q5_0 => (32, 22),
            Self::Q5_1 => (32, 24),
            Self::Q8_0 => (32, 34),
            Self::K(k) => (QK_K as u64, k.block_bytes() as u64),
            Self::Unsupported(id) => match id {
                9 => (32, 36),
                16 => (256, 66),
                17 => (256, 74),
                18 => (256, 98),
                19 => (256, 50),
                20 => (32, 18),
                21 => (256, 110),
                22 => (256, 82),
                23 => (256, 136),
                _ => return None,
            },
        })
    }

    /// Bytes taken by `n` elements; None when `n` is not a whole number of blocks or the type's
    /// size is unknown.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let (per_block, bytes) = self.block()?;
        // None also where the size overflows (a corrupt element count)
        if n % per_block != 0 {
            return None;
        }
        (n / per_block).checked_mul(bytes)
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantise `n` elements of type `ty` from `raw` (exactly `ty.bytes_for(n)` bytes).
pub fn dequantize(ty: GgmlType, raw: &[u8], n: usize) -> Result<Vec<f32>> {
    let expected = ty.bytes_for(n as u64);
    if expected != Some(raw.len() as u64) || matches!(ty, GgmlType::Unsupported(_)) {
        if let GgmlType::Unsupported(_) = ty {
            bail!(
                "unsupported tensor type {} (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K)",
                ty.name()
            );
        }
        bail!("{} bytes do not hold {n} {} values", raw.len(), ty.name());
    }
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap())),
        ),
        GgmlType::F16 => out.extend(
            raw.chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::BF16 => out.extend(
            raw.chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for b in raw.chunks_exact(34) {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| (q as i8) as f32 * d));
            }
        }
        GgmlType::Q4_0 => {
            for b in raw.chunks_exact(18) {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|&q| ((q & 0x0F) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        GgmlType::Q4_1 => {
            for b in raw.chunks_exact(20) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qs = &b[4..20];
                out.extend(qs.iter().map(|&q| (q & 0x0F) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let (block, header) = if ty == GgmlType::Q5_0 {
                (22, 2)
            } else {
                (24, 4)
            };
            for b in raw.chunks_exact(block) {
                let d = f16_at(b, 0);
                let (m, offset) = if ty == GgmlType::Q5_0 {
                    (0.0, 16)
                } else {
                    (f16_at(b, 2), 0)
                };
                let qh = u32::from_le_bytes(b[header..header + 4].try_into().unwrap());
                let qs = &b[header + 4..header + 20];
                let value = |q: u32| (q as i32 - offset) as f32 * d + m;
                out.extend(
                    qs.iter()
                        .enumerate()
                        .map(|(j, &q)| value((q & 0x0F) as u32 | (((qh >> j) & 1) << 4))),
                );
                out.extend(
                    qs.iter()
                        .enumerate()
                        .map(|(j, &q)| value((q >> 4) as u32 | (((qh >> (j + 16)) & 1) << 4))),
                );
            }
        }
        GgmlType::K(k) => {
            for b in raw.chunks_exact(k.block_bytes()) {
                k.dequantize_block(b, &mut out);
            }
        }
        GgmlType::Unsupported(_) => unreachable!(),
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q4_1_nibble_order_low_is_first_half() {
        let mut block = Vec::new();
        block.extend(h(0.5));
        block.extend(h(-1.0));
        // byte j: low nibble = element j, high nibble = element j+16
        for j in 0..16u8 {
            block.push((j & 0x0F) | ((15 - j) << 4));
        }
        let v = dequantize(GgmlType::Q4_1, &block, 32).unwrap();
        for j in 0..16 {
            assert_eq!(v[j], j as f32 * 0.5 - 1.0);
            assert_eq!(v[j + 16], (15 - j) as f32 * 0.5 - 1.0);
        }
    }

    #[test]
    fn q4_0_and_q8_0_signs() {
        let mut block = Vec::new();
        block.extend(h(2.0));
        block.extend([0x80u8; 16]); // low nibble 0 -> -8, high nibble 8 -> 0
        let v = dequantize(GgmlType::Q4_0, &block, 32).unwrap();
        assert!(v[..16].iter().all(|&x| x == -16.0));
        assert!(v[16..].iter().all(|&x| x == 0.0));

        let mut block = Vec::new();
        block.extend(h(0.25));
        block.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let v = dequantize(GgmlType::Q8_0, &block, 32).unwrap();
        assert_eq!(v[0], -4.0);
        assert_eq!(v[31], 15.0 * 0.25);
    }

    #[test]
    fn q5_0_high_bits() {
        let mut block = Vec::new();
        block.extend(h(1.0));
        block.extend(0xFFFF_0001u32.to_le_bytes()); // element 0 and elements 16..31 get bit 4
        block.extend([0u8; 16]);
        let v = dequantize(GgmlType::Q5_0, &block, 32).unwrap();
        assert_eq!(v[0], 0.0); // 16 - 16
        assert_eq!(v[1], -16.0);
        assert_eq!(v[16], 0.0);
    }

    #[test]
    fn wrong_sizes_and_unsupported_types_are_errors() {
        assert!(dequantize(GgmlType::Q4_1, &[0u8; 19], 32).is_err());
        let err = dequantize(GgmlType::Unsupported(16), &[0u8; 66], 256).unwrap_err();
        assert!(
            err.to_string().contains("unsupported tensor type IQ2_XXS"),
            "{err}"
        );
    }
}
