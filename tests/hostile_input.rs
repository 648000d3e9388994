//! Hostile and absurd input (issue 34): each test is named after what it guarantees, and each
//! failed on the code before the fix. What a pipeline file, a model file, a bundle or a
//! command-line value can make layerprune do is bounded: a clear error (exit 2, naming the
//! file, key or path), never a panic, a hang, an unbounded allocation, a shell command or a
//! file written outside the cache and results/.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::cli::{stderr, stdout, Env};
use common::fixtures;

/// The binary with a test cache, in `dir`, killed (and the test failed) after `limit`.
fn run_within(dir: &Path, args: &[&str], envs: &[(&str, &str)], limit: Duration) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_layerprune"));
    c.args(args)
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .current_dir(dir)
        .env("LAYERPRUNE_TEST_STAGES", "1")
        .env_remove("LAYERPRUNE_CACHE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{args:?} did not finish within {limit:?} (a hang)\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run(dir: &Path, args: &[&str]) -> Output {
    run_within(dir, args, &[], Duration::from_secs(60))
}

/// Exit 2 with `needle` in the message, and no panic.
fn assert_refused(out: &Output, needle: &str) {
    let e = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{needle}: {e}\n{}", stdout(out));
    assert!(e.contains(needle), "expected {needle:?} in: {e}");
    assert!(!e.contains("panicked"), "{e}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

// ---------------------------------------------------------------------------------------------
// 2. stage names

#[test]
fn stage_names_outside_the_character_set_are_exit_2_at_their_line() {
    let env = Env::new();
    for (text, line) in [
        ("name = \"x\"\n[stages.\"my.load\"]\nkind = \"load\"\n", 2),
        ("name = \"x\"\n\n[stages.\"\"]\nkind = \"test-value\"\n", 3),
        (
            "name = \"x\"\n[stages.a]\nkind = \"test-value\"\n[stages.\"b c\"]\nkind = \"test-value\"\n",
            4,
        ),
    ] {
        env.write("p.toml", text);
        for cmd in ["plan", "run", "status"] {
            let out = env.run(&[cmd, "p.toml"]);
            assert_refused(&out, &format!("p.toml:{line}: stages: "));
            assert!(stderr(&out).contains("stage name"), "{}", stderr(&out));
        }
    }
    // a stage added by --set follows the same rule
    env.write(
        "p.toml",
        "name = \"x\"\n[stages.a]\nkind = \"test-value\"\n",
    );
    let out = env.run(&["plan", "p.toml", "--set", "stages.b$c.kind=test-value"]);
    assert_refused(&out, "stage name");
}

// ---------------------------------------------------------------------------------------------
// 3. GGUF byte ranges

/// The byte position of tensor `index`'s offset field in a GGUF file's tensor table.
fn tensor_offset_field(
    bytes: &[u8],
    g: &layerprune::formats::gguf::GgufFile,
    index: usize,
) -> usize {
    let t = &g.tensors[index];
    let mut needle = (t.name.len() as u64).to_le_bytes().to_vec();
    needle.extend(t.name.as_bytes());
    needle.extend((t.dims.len() as u32).to_le_bytes());
    let at = bytes
        .windows(needle.len())
        .rposition(|w| w == needle.as_slice())
        .expect("tensor entry");
    at + needle.len() + 8 * t.dims.len() + 4
}

#[test]
fn gguf_tensor_ranges_lie_inside_the_data_section_without_overlap() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixtures().join("models/tiny-llama.gguf");
    let bytes = std::fs::read(&src).unwrap();
    let g = layerprune::formats::gguf::GgufFile::open(&src).unwrap();
    // an offset near 2^64 used to wrap the bounds check and read the header's strings as weights
    for (i, offset) in [(0usize, u64::MAX - 31), (1, u64::MAX - (1 << 20) + 1)] {
        let mut b = bytes.clone();
        let at = tensor_offset_field(&b, &g, i);
        b[at..at + 8].copy_from_slice(&offset.to_le_bytes());
        let path = tmp.path().join(format!("wrap{i}.gguf"));
        std::fs::write(&path, &b).unwrap();
        let out = run(
            tmp.path(),
            &["forward", path.to_str().unwrap(), "--prompt", "hi"],
        );
        assert_refused(&out, &format!("tensor {}", g.tensors[i].name));
        assert!(stderr(&out).contains("data section"), "{}", stderr(&out));
    }
    // two tensors at one offset overlap
    let mut b = bytes.clone();
    let first = tensor_offset_field(&b, &g, 0);
    let second = tensor_offset_field(&b, &g, 1);
    let offset0: [u8; 8] = b[first..first + 8].try_into().unwrap();
    b[second..second + 8].copy_from_slice(&offset0);
    let path = tmp.path().join("overlap.gguf");
    std::fs::write(&path, &b).unwrap();
    let out = run(tmp.path(), &["inspect", path.to_str().unwrap()]);
    assert_refused(&out, "overlap");
}

// ---------------------------------------------------------------------------------------------
// 4. sizes checked before allocation

/// The position of the value of metadata `key` (after its type) and its type id.
fn metadata_value(bytes: &[u8], key: &str) -> (usize, u32) {
    let mut needle = (key.len() as u64).to_le_bytes().to_vec();
    needle.extend(key.as_bytes());
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .expect("metadata key");
    let ty_at = at + needle.len();
    let ty = u32::from_le_bytes(bytes[ty_at..ty_at + 4].try_into().unwrap());
    (ty_at + 4, ty)
}

#[test]
fn sizes_from_model_files_are_checked_before_anything_is_allocated() {
    let tmp = tempfile::tempdir().unwrap();
    // GGUF block_count = 2^31: inspect said it was fine and forward aborted allocating 16 GiB
    let mut b = std::fs::read(fixtures().join("models/tiny-llama.gguf")).unwrap();
    let (at, ty) = metadata_value(&b, "llama.block_count");
    match ty {
        4 | 5 => b[at..at + 4].copy_from_slice(&(1u32 << 31).to_le_bytes()),
        10 | 11 => b[at..at + 8].copy_from_slice(&(1u64 << 31).to_le_bytes()),
        other => panic!("block_count has type {other}"),
    }
    let path = tmp.path().join("layers.gguf");
    std::fs::write(&path, &b).unwrap();
    for cmd in ["inspect", "forward"] {
        let mut args = vec![cmd, path.to_str().unwrap()];
        if cmd == "forward" {
            args.extend(["--prompt", "hi"]);
        }
        assert_refused(&run(tmp.path(), &args), "block_count");
    }
    // one layer more than the file holds: named with the first missing tensor
    let mut b = std::fs::read(fixtures().join("models/tiny-llama.gguf")).unwrap();
    let layers = match ty {
        4 | 5 => u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as u64,
        _ => u64::from_le_bytes(b[at..at + 8].try_into().unwrap()),
    };
    match ty {
        4 | 5 => b[at..at + 4].copy_from_slice(&((layers + 1) as u32).to_le_bytes()),
        _ => b[at..at + 8].copy_from_slice(&(layers + 1).to_le_bytes()),
    }
    let path = tmp.path().join("one-more.gguf");
    std::fs::write(&path, &b).unwrap();
    assert_refused(
        &run(tmp.path(), &["inspect", path.to_str().unwrap()]),
        &format!("(layer {layers}) is not in the file"),
    );
    // config.json num_hidden_layers = 2^62: a "capacity overflow" panic before
    let dir = tmp.path().join("hf");
    copy_dir(&fixtures().join("models/tiny-llama"), &dir);
    let config_path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["num_hidden_layers"] = serde_json::json!(1u64 << 62);
    std::fs::write(&config_path, config.to_string()).unwrap();
    assert_refused(
        &run(tmp.path(), &["inspect", dir.to_str().unwrap()]),
        "num_hidden_layers",
    );
    config["num_hidden_layers"] = serde_json::json!(layers + 1);
    std::fs::write(&config_path, config.to_string()).unwrap();
    assert_refused(
        &run(
            tmp.path(),
            &["forward", dir.to_str().unwrap(), "--prompt", "hi"],
        ),
        "is not in the file",
    );
    // a tokenizer id beyond the vocabulary: a panic inside the backend before
    config["num_hidden_layers"] = serde_json::json!(layers);
    std::fs::write(&config_path, config.to_string()).unwrap();
    let vocab = config["vocab_size"].as_u64().unwrap();
    let tok_path = dir.join("tokenizer.json");
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tok_path).unwrap()).unwrap();
    tok["added_tokens"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "id": vocab + 1000, "content": "<evil>", "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true
        }));
    std::fs::write(&tok_path, tok.to_string()).unwrap();
    let out = run(
        tmp.path(),
        &["forward", dir.to_str().unwrap(), "--prompt", "a <evil> b"],
    );
    assert_refused(&out, "beyond the model's vocabulary");
    // the same model still runs on text without that token
    let out = run(
        tmp.path(),
        &["forward", dir.to_str().unwrap(), "--prompt", "a b"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

// ---------------------------------------------------------------------------------------------
// 5. the planner's arithmetic

fn tiny_pipeline(dir: &Path, similarity: &str) -> PathBuf {
    let text = format!(
        "name = \"tiny\"\nmemory_limit = \"100GiB\"\n[sources]\nmodel = \"{}\"\ntext = \"{}\"\n\
         [stages.load]\n[stages.similarity]\ntext = {{ source = \"text\", part = \"all\" }}\n{similarity}\n",
        fixtures().join("models/tiny-llama").display(),
        fixtures().join("text").display()
    );
    let p = dir.join("tiny.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn a_memory_estimate_that_overflows_is_too_large_not_wrapped() {
    let tmp = tempfile::tempdir().unwrap();
    for (batch, seq) in [(1u64 << 32, 1u64 << 32), (i64::MAX as u64, i64::MAX as u64)] {
        tiny_pipeline(
            tmp.path(),
            &format!("samples = {batch}\nbatch_size = {batch}\nseq_len = {seq}"),
        );
        let out = run(tmp.path(), &["run", "tiny.toml"]);
        assert_refused(&out, "would not fit in memory");
        assert!(
            stderr(&out).contains("too large to compute"),
            "{}",
            stderr(&out)
        );
        let out = run(tmp.path(), &["plan", "tiny.toml"]);
        assert!(
            stdout(&out).contains("too large to compute"),
            "{}",
            stdout(&out)
        );
    }
    // a batch larger than the samples is planned at the batch that runs: 12 samples of 32
    // tokens fit, whatever batch_size says
    tiny_pipeline(
        tmp.path(),
        "samples = 12\nbatch_size = 1000000\nseq_len = 32",
    );
    let out = run(tmp.path(), &["plan", "tiny.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("would not fit"), "{}", stderr(&out));
}

// ---------------------------------------------------------------------------------------------
// 6. sources that never end

#[test]
fn sources_that_never_end_are_refused_before_anything_reads_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let fifo = dir.join("model.gguf");
    mkfifo(&fifo);
    let limit = Duration::from_secs(30);
    let out = run_within(dir, &["inspect", fifo.to_str().unwrap()], &[], limit);
    assert_refused(&out, "FIFO");
    // /dev/zero as a pipeline's model source used to be hashed forever
    let text = "name = \"z\"\n[sources]\nmodel = \"/dev/zero\"\n[stages.load]\n";
    std::fs::write(dir.join("z.toml"), text).unwrap();
    let out = run_within(dir, &["run", "z.toml"], &[], limit);
    assert_refused(&out, "/dev/zero: a device");
    let text = format!(
        "name = \"f\"\n[sources]\nmodel = \"{}\"\n[stages.load]\n",
        fifo.display()
    );
    std::fs::write(dir.join("f.toml"), text).unwrap();
    let out = run_within(dir, &["run", "f.toml"], &[], limit);
    assert_refused(&out, "FIFO");
    // a loop of links is named as one, not as a missing file
    std::os::unix::fs::symlink(dir.join("b"), dir.join("a")).unwrap();
    std::os::unix::fs::symlink(dir.join("a"), dir.join("b")).unwrap();
    let out = run_within(
        dir,
        &["inspect", dir.join("a").to_str().unwrap()],
        &[],
        limit,
    );
    assert_refused(&out, "loop of symbolic links");
    // a pipeline file that is a FIFO or a device is refused, not read without end
    let pipe_file = dir.join("p.toml");
    mkfifo(&pipe_file);
    let out = run_within(dir, &["plan", "p.toml"], &[], limit);
    assert_refused(&out, "FIFO");
    let out = run_within(dir, &["plan", "/dev/zero"], &[], limit);
    assert_refused(&out, "a device");
    // and a pipeline file larger than the cap is refused without reading it all
    let big = dir.join("big.toml");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(64 << 20).unwrap();
    let out = run_within(dir, &["plan", "big.toml"], &[], limit);
    assert_refused(&out, "larger than 16 MiB");
}

// ---------------------------------------------------------------------------------------------
// 7. deep keys

#[test]
fn a_deep_set_key_or_variable_is_refused_not_a_stack_overflow() {
    let env = Env::new();
    env.write(
        "p.toml",
        "name = \"x\"\n[stages.a]\nkind = \"test-value\"\n",
    );
    let deep = format!("stages.{}x=1", "a.".repeat(5000));
    let out = env.run(&["plan", "p.toml", "--set", &deep]);
    assert_refused(&out, "levels; at most 16 are allowed");
    let var = format!("LAYERPRUNE_STAGES__{}X", "A__".repeat(5000));
    let out = env.cmd(&["plan", "p.toml"]).env(var, "1").output().unwrap();
    assert_refused(&out, "levels; at most 16 are allowed");
    assert!(stderr(&out).contains("environment variable LAYERPRUNE_STAGES__A__"));
    // empty segments are not a key either
    let out = env.run(&["plan", "p.toml", "--set", "stages..a.value=1"]);
    assert_refused(&out, "not a key path");
}

// ---------------------------------------------------------------------------------------------
// 8. bundles

const SWEEP: &str = "name = \"sweep\"\n[sweep]\nx = [1, 2]\n[stages.base]\nkind = \"test-value\"\nvalue = 10\n[stages.per_x]\nkind = \"test-value\"\nvalue = \"${x}\"\ninputs = { parent = \"base\" }\n";

/// A bundle of the sweep's three artifacts, exported from a run in a fresh cache.
fn exported_bundle(env: &Env) -> Vec<u8> {
    env.write("p.toml", SWEEP);
    assert!(env.run(&["run", "p.toml"]).status.success());
    let out = env.run(&["cache", "export", "p.toml", "--out", "b.zip"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::read(env.path("b.zip")).unwrap()
}

/// The entries of a zip: (name, bytes), in order.
fn entries(zip_bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes)).unwrap();
    (0..z.len())
        .map(|i| {
            let mut e = z.by_index(i).unwrap();
            let mut b = Vec::new();
            e.read_to_end(&mut b).unwrap();
            (e.name().to_string(), b)
        })
        .collect()
}

fn zip_of(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in entries {
        w.start_file(name.as_str(), opts).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// Everything under the cache's stage-kind directories: artifact directories, lock files and
/// temporary directories.
fn cache_entries(cache: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for kind in ["test-value"] {
        for e in std::fs::read_dir(cache.join(kind))
            .into_iter()
            .flatten()
            .flatten()
        {
            out.push(e.file_name().to_string_lossy().to_string());
        }
    }
    out.sort();
    out
}

fn import(env: &Env, bundle: &[u8], extra: &[&str]) -> Output {
    std::fs::write(env.path("in.zip"), bundle).unwrap();
    let mut args = vec!["cache", "import", "in.zip"];
    args.extend(extra);
    env.run(&args)
}

#[test]
fn a_bundle_is_imported_by_its_declared_sizes_and_a_rejected_artifact_leaves_nothing() {
    let source = Env::new();
    let good = exported_bundle(&source);
    let good_entries = entries(&good);
    let value_entry = good_entries
        .iter()
        .position(|(n, _)| n.ends_with("/value.json"))
        .unwrap();
    let key = good_entries[value_entry]
        .0
        .split('/')
        .nth(1)
        .unwrap()
        .to_string();
    let check_rejected = |bundle: Vec<u8>, why: &str| {
        let env = Env::new();
        let out = import(&env, &bundle, &[]);
        assert_eq!(out.status.code(), Some(1), "{why}: {}", stdout(&out));
        let text = stdout(&out);
        assert!(
            text.contains(&format!("rejected test-value/{key}: ")) && text.contains(why),
            "expected {why:?}: {text}"
        );
        assert!(text.contains("2 artifacts imported"), "{text}");
        // the others are in; of the rejected one nothing: no directory, no lock, no temporary
        let left = cache_entries(&env.path("cache"));
        assert!(
            left.iter()
                .all(|n| !n.contains(&key) && !n.starts_with(".import") && !n.starts_with(".tmp")),
            "{why}: {left:?}"
        );
    };
    // an entry that inflates far beyond its declared size: copying stops at the declared size
    let mut e = good_entries.clone();
    e[value_entry].1 = vec![b' '; 64 << 20];
    check_rejected(zip_of(&e), "larger than the");
    // a file twice: two names of equal length in the zip, then the second renamed to the first
    let mut e = good_entries.clone();
    let name = e[value_entry].0.clone();
    let twin = name.replace("value.json", "valuf.json");
    e.insert(value_entry + 1, (twin.clone(), b"{}".to_vec()));
    let mut bytes = zip_of(&e);
    let (from, to) = (twin.as_bytes(), name.as_bytes());
    let mut i = 0;
    while let Some(p) = bytes[i..].windows(from.len()).position(|w| w == from) {
        bytes[i + p..i + p + from.len()].copy_from_slice(to);
        i += p + from.len();
    }
    let env = Env::new();
    let out = import(&env, &bytes, &[]);
    assert_refused(&out, "a name repeats");
    assert!(cache_entries(&env.path("cache")).is_empty());
    // a manifest whose settings do not make its key (the value changed, hashes kept)
    let mut e = good_entries.clone();
    let m = e
        .iter()
        .position(|(n, _)| n == &format!("test-value/{key}/manifest.json"))
        .unwrap();
    let mut manifest: serde_json::Value = serde_json::from_slice(&e[m].1).unwrap();
    let v = manifest["params"]["value"].as_f64().unwrap();
    manifest["params"]["value"] = serde_json::json!(v + 1.0);
    e[m].1 = serde_json::to_vec(&manifest).unwrap();
    check_rejected(zip_of(&e), "settings make the key");
    // a bundle declaring more than --max-size: refused before anything is written
    let env = Env::new();
    let out = import(&env, &good, &["--max-size", "100"]);
    assert_refused(&out, "more than the 0 MiB an import may write");
    assert!(cache_entries(&env.path("cache")).is_empty());
    // and the good bundle imports whole
    let out = import(&env, &good, &[]);
    assert!(
        stdout(&out).contains("3 artifacts imported"),
        "{}",
        stdout(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// 9. ~ and relative paths

#[test]
fn a_tilde_in_cache_dir_is_home_and_a_refused_run_creates_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let work = tmp.path().join("work");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let cmd = |args: &[&str], dir: &Path| {
        Command::new(env!("CARGO_BIN_EXE_layerprune"))
            .args(args)
            .current_dir(dir)
            .env("HOME", &home)
            .env("LAYERPRUNE_TEST_STAGES", "1")
            .env_remove("LAYERPRUNE_CACHE")
            .output()
            .unwrap()
    };
    let text = "name = \"t\"\ncache_dir = \"~/lp-cache\"\n[stages.a]\nkind = \"test-value\"\n";
    std::fs::write(work.join("p.toml"), text).unwrap();
    let out = cmd(&["run", "p.toml"], &work);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(home.join("lp-cache/test-value").is_dir());
    assert!(!work.join("~").exists(), "a directory named ~ was created");
    // relative paths resolve against the current directory: results/ where the command runs
    assert!(work.join("results/t/jobs.csv").is_file());
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let out = cmd(&["run", work.join("p.toml").to_str().unwrap()], &elsewhere);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(elsewhere.join("results/t/jobs.csv").is_file());
    // another user's home is not looked up: refused, and nothing is created
    let text = "name = \"u\"\ncache_dir = \"~bob/x\"\n[stages.a]\nkind = \"test-value\"\n";
    let fresh = tmp.path().join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    std::fs::write(fresh.join("p.toml"), text).unwrap();
    let out = cmd(&["run", "p.toml"], &fresh);
    assert_refused(
        &out,
        "p.toml:2: cache_dir: \"~bob/x\": only \"~\" and \"~/...\" are expanded",
    );
    let left: Vec<_> = std::fs::read_dir(&fresh)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("p.toml")]);
}

// ---------------------------------------------------------------------------------------------
// 10. cache export --out

#[test]
fn cache_export_writes_only_a_new_or_regular_file_that_is_not_an_input() {
    let env = Env::new();
    env.write("p.toml", SWEEP);
    assert!(env.run(&["run", "p.toml"]).status.success());
    let export = |out: &str| env.run(&["cache", "export", "p.toml", "--out", out]);
    // a symbolic link stays a link, its target untouched
    env.write("target.txt", "keep");
    std::os::unix::fs::symlink(env.path("target.txt"), env.path("link.zip")).unwrap();
    assert_refused(&export("link.zip"), "a symbolic link");
    assert!(std::fs::symlink_metadata(env.path("link.zip"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(
        std::fs::read_to_string(env.path("target.txt")).unwrap(),
        "keep"
    );
    // a FIFO and a device are not replaced
    mkfifo(&env.path("fifo.zip"));
    assert_refused(&export("fifo.zip"), "not a regular file (a FIFO");
    assert_refused(&export("/dev/null"), "not a regular file (a device)");
    // the pipeline file itself is not overwritten
    let out = export("p.toml");
    assert_refused(&out, "this is the pipeline file");
    assert_eq!(std::fs::read_to_string(env.path("p.toml")).unwrap(), SWEEP);
    // a directory is refused; inside the cache too
    std::fs::create_dir_all(env.path("d")).unwrap();
    assert_refused(&export("d"), "a directory");
    assert_refused(&export("cache/b.zip"), "inside the cache");
    // a regular file is replaced through a temporary file
    env.write("old.zip", "old");
    assert!(export("old.zip").status.success());
    assert!(std::fs::read(env.path("old.zip"))
        .unwrap()
        .starts_with(b"PK"));
}

// ---------------------------------------------------------------------------------------------
// weak answers mended on the way

#[test]
fn weak_answers_are_clear_errors() {
    let env = Env::new();
    // nan is named as nan, not as "null"
    env.write(
        "p.toml",
        "name = \"x\"\n[stages.a]\nkind = \"test-value\"\nvalue = nan\n",
    );
    let out = env.run(&["plan", "p.toml"]);
    assert_refused(
        &out,
        "p.toml:4: stages.a.value: nan and inf are not allowed",
    );
    // a runtime variable that is not a number is refused, not ignored
    env.write(
        "p.toml",
        "name = \"x\"\n[stages.a]\nkind = \"test-value\"\n",
    );
    let out = env
        .cmd(&["plan", "p.toml"])
        .env("LAYERPRUNE_STREAM_MEMO_MB", "lots")
        .output()
        .unwrap();
    assert_refused(
        &out,
        "LAYERPRUNE_STREAM_MEMO_MB=\"lots\": expected a whole number",
    );
    // a corrupt refresh file says how to recover
    std::fs::create_dir_all(env.path("cache/pipelines")).unwrap();
    env.write("cache/pipelines/x.refresh.json", "{not json");
    let out = env.run(&["run", "p.toml"]);
    assert_refused(&out, "remove the file to forget the marks");
    std::fs::remove_file(env.path("cache/pipelines/x.refresh.json")).unwrap();
    assert!(env.run(&["run", "p.toml"]).status.success());
    // report --out names the path that cannot be used
    env.write("taken", "a file");
    let out = env.run(&["report", "p.toml", "--out", "taken"]);
    assert_refused(&out, "report --out taken: a file, expected a directory");
    // a task listed twice is refused, not scored twice
    env.write(
        "q.toml",
        &format!(
            "name = \"q\"\n[sources]\nmodel = \"{}\"\n[stages.load]\n[stages.eval]\nkind = \"eval-qa\"\ntasks = [\"boolq\", \"arc_easy\", \"boolq\"]\n",
            fixtures().join("models/tiny-llama").display()
        ),
    );
    let out = env.run(&["plan", "q.toml"]);
    assert_refused(&out, "listed twice");
}
