//! Helpers shared by the integration tests: fixture paths, reference tensors, comparisons.
#![allow(dead_code)]

pub mod cli;

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

/// The backend the parity tests run on: flex, or with `--features wgpu-tests` Burn's wgpu
/// backend (the CubeCL kernels of the GPU backends; lavapipe in CI).
#[cfg(not(feature = "wgpu-tests"))]
pub type B = burn::backend::Flex;
#[cfg(feature = "wgpu-tests")]
pub type B = burn::backend::Wgpu;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

/// A reference tensor read from a fixture safetensors file.
pub struct RefTensor {
    pub shape: Vec<usize>,
    pub f32: Vec<f32>,
    pub i64: Vec<i64>,
    pub u8: Vec<u8>,
}

pub fn read_reference(file: &Path) -> std::collections::BTreeMap<String, RefTensor> {
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, t)| {
            let data = t.data();
            let mut r = RefTensor {
                shape: t.shape().to_vec(),
                f32: vec![],
                i64: vec![],
                u8: vec![],
            };
            match t.dtype() {
                Dtype::F32 => {
                    r.f32 = data
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                        .collect()
                }
                Dtype::I64 => {
                    r.i64 = data
                        .chunks_exact(8)
                        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                        .collect()
                }
                Dtype::U8 => r.u8 = data.to_vec(),
                other => panic!("unexpected dtype {other:?} in {}", file.display()),
            }
            (name, r)
        })
        .collect()
}

/// max |a - b| / max |b|: the error relative to the reference tensor's scale.
pub fn rel_err(ours: &[f32], reference: &[f32]) -> f32 {
    assert_eq!(ours.len(), reference.len(), "length mismatch");
    let scale = reference
        .iter()
        .fold(0f32, |m, x| m.max(x.abs()))
        .max(f32::MIN_POSITIVE);
    let diff = ours
        .iter()
        .zip(reference)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

/// A unique temporary cache root for a test.
pub fn temp_cache() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// The cache shared by tests that fetch real packages: $LAYERPRUNE_TEST_CACHE or target/test-cache.
pub fn test_cache() -> PathBuf {
    std::env::var_os("LAYERPRUNE_TEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target")
                .join("test-cache")
        })
}

/// The rows (real tokens only) of a reference's right-padded `input_ids` under its
/// `attention_mask`, and the mask, flat [batch * seq].
pub fn reference_rows(
    r: &std::collections::BTreeMap<String, RefTensor>,
) -> (Vec<Vec<u32>>, Vec<i64>) {
    let ids = &r["input_ids"];
    let mask = r["attention_mask"].i64.clone();
    let (b, t) = (ids.shape[0], ids.shape[1]);
    let rows = (0..b)
        .map(|i| {
            (0..t)
                .filter(|&j| mask[i * t + j] == 1)
                .map(|j| ids.i64[i * t + j] as u32)
                .collect()
        })
        .collect();
    (rows, mask)
}

/// The `width`-wide vectors at the real (mask 1) positions of a flat [batch, seq, width] tensor.
pub fn real_positions(flat: &[f32], mask: &[i64], width: usize) -> Vec<f32> {
    (0..mask.len())
        .filter(|&p| mask[p] == 1)
        .flat_map(|p| flat[p * width..(p + 1) * width].to_vec())
        .collect()
}

/// Words of State of the Union prose for synthetic benchmark items.
const WORDS: &[&str] = &[
    "the",
    "people",
    "of",
    "nation",
    "law",
    "congress",
    "war",
    "peace",
    "year",
    "trade",
    "great",
    "country",
    "state",
    "public",
    "our",
    "government",
    "union",
    "power",
    "free",
    "time",
];

/// `n` words, a deterministic function of `seed` (synthetic benchmark items).
pub fn words(seed: usize, n: usize) -> String {
    (0..n)
        .map(|k| WORDS[(seed * 7 + k * 13 + k * k) % WORDS.len()])
        .collect::<Vec<_>>()
        .join(" ")
}

/// Each `{"text", "ids"}` case of a reference's `tokenizer_cases` encodes to the same ids.
#[allow(dead_code)]
pub fn assert_tokenizer_cases(
    tokenizer: &layerprune::formats::tokenizer::TextTokenizer,
    cases: &serde_json::Value,
) {
    for case in cases.as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let ids: Vec<u64> = tokenizer
            .encode(text)
            .unwrap()
            .into_iter()
            .map(u64::from)
            .collect();
        let want: Vec<u64> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(ids, want, "{text:?}");
    }
}
