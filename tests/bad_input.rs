//! Bad model input gives a clear error naming the file and what was wrong, never a panic.

mod common;

use std::path::Path;
use std::process::Command;

use common::fixtures;
use layerprune::formats::gguf::GgufFile;
use layerprune::model::ModelFiles;
use layerprune::source;

fn open_err(path: &Path) -> String {
    let cache = common::temp_cache();
    let result =
        source::resolve_str(path.to_str().unwrap(), cache.path()).and_then(ModelFiles::open);
    match result {
        Ok(_) => panic!("{} should not open", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A minimal GGUF v3 writer for crafted test files: string/u32/f32 metadata, raw tensors.
fn write_gguf(path: &Path, meta: &[(&str, MetaValue)], tensors: &[(&str, &[u64], u32, Vec<u8>)]) {
    let mut b: Vec<u8> = Vec::new();
    let s = |b: &mut Vec<u8>, x: &str| {
        b.extend((x.len() as u64).to_le_bytes());
        b.extend(x.as_bytes());
    };
    b.extend(b"GGUF");
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        s(&mut b, k);
        match v {
            MetaValue::U32(x) => {
                b.extend(4u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            MetaValue::F32(x) => {
                b.extend(6u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            MetaValue::Str(x) => {
                b.extend(8u32.to_le_bytes());
                s(&mut b, x);
            }
        }
    }
    let mut offset = 0u64;
    for (name, dims, ty, data) in tensors {
        s(&mut b, name);
        b.extend((dims.len() as u32).to_le_bytes());
        for d in *dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(ty.to_le_bytes());
        b.extend(offset.to_le_bytes());
        offset += (data.len() as u64).div_ceil(32) * 32;
    }
    while b.len() % 32 != 0 {
        b.push(0);
    }
    for (_, _, _, data) in tensors {
        b.extend(data);
        while b.len() % 32 != 0 {
            b.push(0);
        }
    }
    std::fs::write(path, b).unwrap();
}

enum MetaValue {
    U32(u32),
    F32(f32),
    Str(&'static str),
}

#[test]
fn missing_path_is_named() {
    let e = open_err(Path::new("/nonexistent/model-dir"));
    assert!(
        e.contains("/nonexistent/model-dir: no such file or directory"),
        "{e}"
    );
}

#[test]
fn directory_without_config_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = open_err(dir.path());
    assert!(e.contains("missing config.json"), "{e}");
    assert!(e.contains(&dir.path().display().to_string()), "{e}");
}

#[test]
fn config_missing_key_names_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("models/tiny-llama"), dir.path());
    let cfg_path = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("intermediate_size");
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = open_err(dir.path());
    assert!(
        e.contains(&format!(
            "{}: missing key \"intermediate_size\"",
            cfg_path.display()
        )),
        "{e}"
    );
}

#[test]
fn unsupported_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("models/tiny-llama"), dir.path());
    let cfg_path = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["model_type"] = "gpt_neox".into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let e = open_err(dir.path());
    assert!(
        e.contains(
            "unsupported architecture model_type = \"gpt_neox\" (supported: llama, mistral, qwen2, qwen3, qwen, phi, gemma3_text, olmo2)"
        ),
        "{e}"
    );
}

#[test]
fn truncated_safetensors_is_named() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("models/tiny-llama"), dir.path());
    let st = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let e = open_err(dir.path());
    assert!(
        e.contains(&format!("{}: not a valid safetensors file", st.display())),
        "{e}"
    );
}

#[test]
fn missing_shard_is_named() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("models/tiny-mistral"), dir.path());
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = open_err(dir.path());
    assert!(
        e.contains("cannot open") && e.contains("model-00002-of-00002.safetensors"),
        "{e}"
    );
}

#[test]
fn unsupported_safetensors_dtype_is_named() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("models/tiny-llama"), dir.path());
    // rewrite model.safetensors with the norm weight stored as I32
    let st = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = tensors
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    for t in &mut owned {
        if t.0 == "model.norm.weight" {
            t.1 = safetensors::Dtype::I32;
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = owned
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &st).unwrap();
    let cache = common::temp_cache();
    let files =
        ModelFiles::open(source::resolve_str(dir.path().to_str().unwrap(), cache.path()).unwrap())
            .unwrap();
    let e = format!(
        "{:#}",
        files
            .build::<common::B>(&Default::default(), burn::tensor::DType::F32)
            .unwrap_err()
    );
    assert!(
        e.contains("tensor model.norm.weight has dtype I32; supported: F32, F16, BF16"),
        "{e}"
    );
    assert!(e.contains(&st.display().to_string()), "{e}");
}

#[test]
fn gguf_bad_magic_and_truncation_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let src = std::fs::read(fixtures().join("models/tiny-llama.gguf")).unwrap();

    let bad_magic = dir.path().join("bad-magic.gguf");
    let mut b = src.clone();
    b[..4].copy_from_slice(b"GGML");
    std::fs::write(&bad_magic, &b).unwrap();
    let e = open_err(&bad_magic);
    assert!(
        e.contains(&bad_magic.display().to_string()) && e.contains("not a GGUF file"),
        "{e}"
    );

    let truncated = dir.path().join("truncated.gguf");
    std::fs::write(&truncated, &src[..src.len() - 1000]).unwrap();
    let e = open_err(&truncated);
    assert!(
        e.contains(&truncated.display().to_string()) && e.contains("truncated file: tensor"),
        "{e}"
    );

    let header_cut = dir.path().join("header-cut.gguf");
    std::fs::write(&header_cut, &src[..200]).unwrap();
    let e = open_err(&header_cut);
    assert!(e.contains("truncated header"), "{e}");
}

#[test]
fn gguf_unsupported_tensor_type_and_missing_metadata_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kquant.gguf");
    write_gguf(
        &path,
        &[
            ("general.architecture", MetaValue::Str("llama")),
            ("llama.embedding_length", MetaValue::U32(256)),
        ],
        &[("token_embd.weight", &[256, 1], 16, vec![0u8; 66])],
    );
    let g = GgufFile::open(&path).unwrap();
    let e = format!("{:#}", g.tensor_f32("token_embd.weight").unwrap_err());
    assert!(
        e.contains("token_embd.weight") && e.contains("unsupported tensor type IQ2_XXS"),
        "{e}"
    );
    let e = open_err(&path);
    assert!(
        e.contains(&format!(
            "{}: missing metadata key llama.attention.head_count",
            path.display()
        )),
        "{e}"
    );

    let arch = dir.path().join("arch.gguf");
    write_gguf(
        &arch,
        &[
            ("general.architecture", MetaValue::Str("falcon")),
            ("x", MetaValue::F32(1.0)),
        ],
        &[],
    );
    let e = open_err(&arch);
    assert!(
        e.contains("unsupported architecture general.architecture = \"falcon\""),
        "{e}"
    );
}

#[test]
fn cli_reports_errors_with_exit_code_2_and_no_panic() {
    let cache = common::temp_cache();
    let out = Command::new(env!("CARGO_BIN_EXE_layerprune"))
        .args(["inspect", "/nonexistent/x.gguf", "--cache-dir"])
        .arg(cache.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error: /nonexistent/x.gguf: no such file or directory"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
