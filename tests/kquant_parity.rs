//! GGUF k-quant (and Q5_0 / Q5_1) dequantisation against the `gguf` Python package's
//! `dequantize` on random blocks (tests/fixtures/make_fixtures.py, part "kquants"): equal to
//! the bit.

mod common;

use common::{fixtures, read_reference};
use layerprune::formats::ggml_quant::{dequantize, GgmlType};

#[test]
fn k_quants_equal_the_gguf_package_bit_for_bit() {
    let r = read_reference(&fixtures().join("reference/kquants.safetensors"));
    for (name, id) in [
        ("Q2_K", 10),
        ("Q3_K", 11),
        ("Q4_K", 12),
        ("Q5_K", 13),
        ("Q6_K", 14),
        ("Q5_0", 6),
        ("Q5_1", 7),
    ] {
        let ty = GgmlType::from_id(id).unwrap();
        assert_eq!(ty.name(), name);
        let raw = &r[&format!("{name}.raw")].u8;
        let want = &r[&format!("{name}.values")].f32;
        let got = dequantize(ty, raw, want.len()).unwrap();
        assert_eq!(got.len(), want.len());
        let differ = got
            .iter()
            .zip(want)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differ,
            0,
            "{name}: {differ} of {} values differ",
            want.len()
        );
        assert!(want.iter().any(|&x| x != 0.0));
    }
}
