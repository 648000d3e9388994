//! Fuzzing, on stable Rust, of every reader of untrusted bytes: GGUF files, the safetensors
//! header, Hugging Face `config.json`, `tokenizer.json`, Qwen's tiktoken ranks file, cache
//! bundles (`cache import`), pipeline TOML and `--set` overrides.
//!
//! Each reader gets one `#[test]`. It starts from the committed fixtures (the unmutated seeds are
//! read first: none may panic and at least one must be accepted, else the harness is broken),
//! then reads a bounded number of mutants, each made by 1 to 4 random operations with a fixed
//! seed per reader (the `rand` crate's `StdRng`; case N's generator is seeded from the reader's
//! seed and N, so every case can be replayed on its own):
//!
//! - bytes: flip a bit, overwrite a byte, insert random bytes, delete a range, truncate,
//!   duplicate a range; write an aligned 8- or 4-byte little-endian word with a "size" value
//!   (0, 1, 2, 2^24, 2^31, 2^32, 2^63, 2^64-1, the file length, the file length + 1, ...);
//! - structure: the same size values written into the format's real integer fields, found by
//!   walking the clean seed (GGUF: tensor and metadata counts, string lengths, value and array
//!   types, array counts, tensor ranks, dimensions, types and offsets; safetensors: the header
//!   length; zip: sizes, name lengths, offsets and entry counts of the local headers, central
//!   directory and end record), with most byte positions drawn from the header region;
//! - text (TOML, JSON, tiktoken lines, the safetensors JSON header): replace a number with
//!   "0", "-1", "1e308", "nan", "inf", "18446744073709551615", "9223372036854775808", ...;
//!   replace a string; duplicate, delete or swap lines; put 10_000-deep brackets in place of a
//!   value; insert a key path thousands of levels deep;
//! - `--set`: generated KEY=VALUE arguments (valid and odd keys, key paths 1 to 10_000 levels
//!   deep, empty segments, unicode; numbers, strings with newlines and quotes, arrays, nested
//!   arrays and tables, huge strings);
//! - cache bundles: besides the byte mutations, zips rebuilt with renamed entries (`..`,
//!   absolute paths, backslashes, other kinds, short keys), changed contents, added files,
//!   directories and symbolic links, removed, repeated and reordered entries.
//!
//! Each case runs the reader in this process under `catch_unwind`; an `Ok` or an `Err` is fine,
//! but an error's message (`{:#}`) must not be empty. A panic, an empty message or a broken
//! promise (cache import: a leftover temporary directory, an artifact reported as imported that
//! does not verify, a file written outside the cache) fails the test with the reader's seed, the
//! case number and the operations, and writes the mutated bytes to
//! `target/fuzz-failures/<reader>-<case>.bin` (the operations beside it in `.txt`).
//! A watchdog aborts the process when one case runs for more than 20 s (a hang), after saving
//! the case the same way. The address space of this test process is limited (RLIMIT_AS, 8 GiB,
//! only ever lowered), so an allocation sized from a corrupt field fails instead of succeeding
//! lazily; the test binary's allocator then saves the running case before Rust aborts.
//! Readers run on a thread with an 8 MiB stack, the main thread's size where the CLI runs them.
//!
//! Defaults are sized for CI (`cargo test --release`: all readers together well under a minute
//! on two slow cores; a quarter of the cases in a debug build). Settings:
//!
//! - `LAYERPRUNE_FUZZ_CASES=N`: N cases for every reader, e.g.
//!   `LAYERPRUNE_FUZZ_CASES=100000 cargo test --release --test fuzz_readers`;
//! - `LAYERPRUNE_FUZZ_SEED=S`: other mutants (XORed into each reader's fixed seed);
//! - `LAYERPRUNE_FUZZ_CASE=N`: only case N (replaying a failure);
//! - `LAYERPRUNE_FUZZ_AS_GIB=G`: the address-space limit in GiB (0: none, e.g. under a sanitizer).
//!
//! The per-reader summary lines go to the process's stderr directly, so CI logs show them even
//! for passing tests.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fmt::Display;
use std::io::{Read as _, Write as _};
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use layerprune::formats::gguf::GgufFile;
use layerprune::formats::safetensors_dir::SafetensorsSet;
use layerprune::formats::tokenizer::TextTokenizer;
use layerprune::model::config::ModelConfig;
use layerprune::model::ModelFiles;
use layerprune::runner::bundle::{self, Imported};
use layerprune::runner::store::{Status, Store};
use layerprune::source::{ResolvedSource, SourceSpec};

// ---------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------

/// The address-space limit of this test process, in GiB (LAYERPRUNE_FUZZ_AS_GIB overrides).
const DEFAULT_AS_LIMIT_GIB: u64 = 8;
/// Longer than this for one case is a hang.
const CASE_DEADLINE: Duration = Duration::from_secs(20);
/// The stack readers run on: the size of the main thread's, where the CLI runs them.
const READER_STACK_BYTES: usize = 8 << 20;
/// Text every tokenizer that opens is asked to encode (and decode).
const PROBE_TEXT: &str = "Hello world 123";
/// A harder one: NUL, combining marks, emoji, special-token look-alikes, long digits.
const ODD_TEXT: &str = "\u{0}e\u{301} \u{1F600} <s></s><|endoftext|> 12345678901234567890\n\t";
/// Tensors (Hugging Face names) read through a whole opened model.
const HF_NAMES: &[&str] = &[
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
    "model.norm.weight",
    "lm_head.weight",
];

/// A whole-number environment variable (decimal or 0x hex); a bad value is a test error.
fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let t = v.trim();
    let parsed = match t.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16),
        None => t.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v:?}: expected a whole number")))
}

/// The number of cases of a reader: LAYERPRUNE_FUZZ_CASES, else its default (a quarter of it in
/// a debug build, where every reader is several times slower).
fn case_count(default: u64) -> u64 {
    env_u64("LAYERPRUNE_FUZZ_CASES").unwrap_or(if cfg!(debug_assertions) {
        (default / 4).max(25)
    } else {
        default
    })
}

/// A line on the process's stderr, past the test harness's capture (so CI logs show it).
fn note(msg: impl Display) {
    let _ = writeln!(std::io::stderr().lock(), "{msg}");
}

/// Once per process: the test stage kinds (the bundles and test pipelines use `test-value`),
/// and the address-space limit.
fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = layerprune::runtime::install(layerprune::runtime::RuntimeOptions {
            test_stages: true,
            ..Default::default()
        });
        limit_address_space();
    });
}

// ---------------------------------------------------------------------------------------------
// Address-space limit
// ---------------------------------------------------------------------------------------------

/// The soft RLIMIT_AS this process started with (restored in the child processes it starts).
static ORIGINAL_AS_SOFT: AtomicU64 = AtomicU64::new(u64::MAX);

/// Lower the soft RLIMIT_AS of this process to the limit (never raise it; the hard limit is
/// left as it is). Process-wide, which every test of this binary wants.
#[cfg(unix)]
fn limit_address_space() {
    let gib = env_u64("LAYERPRUNE_FUZZ_AS_GIB").unwrap_or(DEFAULT_AS_LIMIT_GIB);
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-parameter of the right type.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut r) } != 0 {
        note("fuzz: cannot read RLIMIT_AS; running without an address-space limit");
        return;
    }
    ORIGINAL_AS_SOFT.store(r.rlim_cur as u64, Ordering::SeqCst);
    if gib == 0 {
        note("fuzz: no address-space limit (LAYERPRUNE_FUZZ_AS_GIB=0)");
        return;
    }
    let want = gib.saturating_mul(1 << 30) as libc::rlim_t;
    if r.rlim_cur <= want {
        note(format!(
            "fuzz: the address space is already limited to {} MiB",
            (r.rlim_cur as u64) >> 20
        ));
        return;
    }
    let lowered = libc::rlimit {
        rlim_cur: want,
        rlim_max: r.rlim_max,
    };
    // SAFETY: a valid rlimit value; lowering the soft limit needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_AS, &lowered) } != 0 {
        note("fuzz: cannot set RLIMIT_AS; running without an address-space limit");
    } else {
        note(format!(
            "fuzz: address space limited to {gib} GiB (RLIMIT_AS)"
        ));
    }
}

#[cfg(not(unix))]
fn limit_address_space() {
    note("fuzz: no address-space limit on this platform");
}

/// A child process (the layerprune binary, run to make a seed) gets the original soft limit
/// back: only the readers in this process are under the fuzzing limit.
#[cfg(unix)]
fn restore_address_space(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    let soft = ORIGINAL_AS_SOFT.load(Ordering::SeqCst) as libc::rlim_t;
    // SAFETY: between fork and exec only async-signal-safe calls (getrlimit, setrlimit) run.
    unsafe {
        cmd.pre_exec(move || {
            let mut r = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_AS, &mut r) == 0 {
                r.rlim_cur = soft.min(r.rlim_max);
                libc::setrlimit(libc::RLIMIT_AS, &r);
            }
            Ok(())
        });
    }
}

#[cfg(not(unix))]
fn restore_address_space(_cmd: &mut std::process::Command) {}

// ---------------------------------------------------------------------------------------------
// Cases, outcomes, failures
// ---------------------------------------------------------------------------------------------

/// Where most byte mutations land, and the integer fields of the format.
#[derive(Clone, Debug, Default)]
struct Hints {
    /// The byte range holding the structure (a header); most positions are drawn from it. An
    /// empty range means the whole file.
    hot: Range<usize>,
    /// Known little-endian integer fields: (offset, width in bytes: 2, 4 or 8).
    fields: Vec<(usize, usize)>,
}

/// One committed fixture that mutants start from.
struct Seed {
    /// Its path (relative to the repository) or a description.
    name: String,
    bytes: Vec<u8>,
    hints: Hints,
}

/// A mutant: the bytes a reader gets, and how they were made.
#[derive(Clone, Debug, Default)]
struct Mutant {
    bytes: Vec<u8>,
    /// The operations applied, in order (for the failure report).
    ops: Vec<String>,
    /// `--set` arguments (the `--set` reader only).
    sets: Vec<String>,
}

/// One case as the reader and the watchdog see it.
struct Case {
    /// None for an unmutated seed.
    number: Option<u64>,
    /// Index of its seed.
    seed: usize,
    /// Name of its seed.
    origin: String,
    mutant: Mutant,
}

impl Case {
    fn label(&self) -> String {
        match self.number {
            Some(n) => format!("case {n}"),
            None => format!("unmutated seed {}", self.origin),
        }
    }
}

/// What a case did: fine unless a promise was broken.
#[derive(Debug, Default)]
struct Outcome {
    /// Whether the reader's first call (opening or parsing) succeeded; None when none ran.
    primary_ok: Option<bool>,
    /// Not run (e.g. non-UTF-8 text for a reader of &str); counted.
    skipped: bool,
    first_error: Option<String>,
    /// A broken promise other than a panic: an empty error message, a leftover file, ...
    violation: Option<String>,
}

impl Outcome {
    fn skipped() -> Self {
        Self {
            skipped: true,
            ..Self::default()
        }
    }

    /// A reader call's result: Ok, or an error that must say something.
    fn check<T, E: Display>(&mut self, what: &str, r: Result<T, E>) -> Option<T> {
        if self.primary_ok.is_none() {
            self.primary_ok = Some(r.is_ok());
        }
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                let msg = format!("{e:#}");
                if msg.trim().is_empty() {
                    self.violate(format!("{what} returned an error with an empty message"));
                }
                if self.first_error.is_none() {
                    self.first_error = Some(format!("{what}: {msg}"));
                }
                None
            }
        }
    }

    fn violate(&mut self, why: impl Into<String>) {
        if self.violation.is_none() {
            self.violation = Some(why.into());
        }
    }
}

/// The counts a reader's summary line gives.
#[derive(Default)]
struct Stats {
    cases: u64,
    accepted: u64,
    rejected: u64,
    skipped: u64,
}

impl Stats {
    fn count(&mut self, o: &Outcome) {
        self.cases += 1;
        if o.skipped {
            self.skipped += 1;
        } else if o.primary_ok == Some(true) {
            self.accepted += 1;
        } else {
            self.rejected += 1;
        }
    }
}

fn failures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("fuzz-failures")
}

/// Write a case's bytes to target/fuzz-failures/<reader>-<case>.bin and what happened to
/// <reader>-<case>.txt; returns where (best effort: this runs while failing, even from the
/// allocator or the watchdog).
fn save_case(reader: &str, seed: u64, case: &Case, what: &str) -> String {
    let dir = failures_dir();
    let stem = match case.number {
        Some(n) => format!("{reader}-{n}"),
        None => format!("{reader}-seed{}", case.seed),
    };
    let _ = std::fs::create_dir_all(&dir);
    let bin = dir.join(format!("{stem}.bin"));
    let txt = dir.join(format!("{stem}.txt"));
    let _ = std::fs::write(&bin, &case.mutant.bytes);
    let mut t = format!(
        "reader: {reader}\nseed: {seed:#x}\n{}\nmutating: {}\nfailure: {what}\noperations:\n",
        case.label(),
        case.origin
    );
    for op in &case.mutant.ops {
        t.push_str(&format!("  {op}\n"));
    }
    for s in &case.mutant.sets {
        t.push_str(&format!("  --set {s:?}\n"));
    }
    let _ = std::fs::write(&txt, t);
    format!("{} (operations in {})", bin.display(), txt.display())
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(a panic without a message)".into()
    }
}

/// A string for a message: quoted, at most 80 characters of it.
fn short(s: &str) -> String {
    const MAX: usize = 80;
    if s.chars().count() <= MAX {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head:?}... ({} bytes)", s.len())
    }
}

/// Bytes for a message: hex, at most 16 of them.
fn hex(data: &[u8]) -> String {
    let mut s: String = data.iter().take(16).map(|b| format!("{b:02x}")).collect();
    if data.len() > 16 {
        s.push_str(&format!("... ({} bytes)", data.len()));
    }
    s
}

// ---------------------------------------------------------------------------------------------
// The driver: seeds first, then the mutants; panics caught; watchdog; big stack
// ---------------------------------------------------------------------------------------------

/// One reader's fuzzing run.
struct Reader<'a> {
    /// Short name: failure files and log lines.
    name: &'static str,
    /// Its #[test] function (for the rerun hint).
    test: &'static str,
    /// Its fixed seed.
    seed: u64,
    /// Cases in a release build unless LAYERPRUNE_FUZZ_CASES says otherwise.
    default_cases: u64,
    seeds: &'a [Seed],
}

/// Run a closure on a thread with READER_STACK_BYTES of stack; its panic is re-raised here.
fn on_big_stack<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name(format!("fuzz-{name}"))
            .stack_size(READER_STACK_BYTES)
            .spawn_scoped(s, f)
            .expect("cannot start the fuzzing thread");
        match handle.join() {
            Ok(v) => v,
            Err(payload) => std::panic::resume_unwind(payload),
        }
    })
}

/// Read every seed unmutated, then `cases` mutants (seeds in turn), each made by `generate`
/// from its own generator and read by `run`.
fn fuzz<G, R>(reader: Reader<'_>, mut generate: G, mut run: R)
where
    G: FnMut(&mut StdRng, &Seed) -> Mutant + Send,
    R: FnMut(&Case) -> Outcome + Send,
{
    assert!(
        !reader.seeds.is_empty(),
        "fuzz {}: no seed files found",
        reader.name
    );
    let seed = reader.seed ^ env_u64("LAYERPRUNE_FUZZ_SEED").unwrap_or(0);
    let cases = case_count(reader.default_cases);
    let only = env_u64("LAYERPRUNE_FUZZ_CASE");
    let numbers = match only {
        Some(n) => n..n.saturating_add(1),
        None => 0..cases,
    };
    let name = reader.name;
    on_big_stack(name, move || {
        let watchdog = Watchdog::start(reader.name, seed);
        let started = Instant::now();
        if only.is_none() {
            let mut accepted = 0;
            for (i, s) in reader.seeds.iter().enumerate() {
                let case = Arc::new(Case {
                    number: None,
                    seed: i,
                    origin: s.name.clone(),
                    mutant: Mutant {
                        bytes: s.bytes.clone(),
                        ..Mutant::default()
                    },
                });
                let outcome = run_case(&reader, seed, &watchdog, &case, &mut run);
                if outcome.primary_ok == Some(true) {
                    accepted += 1;
                } else {
                    note(format!(
                        "fuzz {}: the unmutated seed {} is not accepted: {}",
                        reader.name,
                        s.name,
                        outcome.first_error.as_deref().unwrap_or("(skipped)")
                    ));
                }
            }
            assert!(
                accepted > 0,
                "fuzz {}: no unmutated seed is accepted, so the harness (not the reader) is broken",
                reader.name
            );
        }
        let mut stats = Stats::default();
        for n in numbers {
            let i = (n % reader.seeds.len() as u64) as usize;
            let s = &reader.seeds[i];
            // every case has its own generator: case N replays alone (LAYERPRUNE_FUZZ_CASE=N)
            let mut rng = StdRng::seed_from_u64(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mutant = generate(&mut rng, s);
            let case = Arc::new(Case {
                number: Some(n),
                seed: i,
                origin: s.name.clone(),
                mutant,
            });
            let outcome = run_case(&reader, seed, &watchdog, &case, &mut run);
            stats.count(&outcome);
        }
        drop(watchdog);
        note(format!(
            "fuzz {}: {} cases in {:.1?} ({} accepted, {} rejected, {} skipped; {} seeds, seed {seed:#x})",
            reader.name,
            stats.cases,
            started.elapsed(),
            stats.accepted,
            stats.rejected,
            stats.skipped,
            reader.seeds.len()
        ));
    });
}

/// One case under catch_unwind and the watchdog; a panic or a broken promise fails the test.
fn run_case<R: FnMut(&Case) -> Outcome>(
    reader: &Reader<'_>,
    seed: u64,
    watchdog: &Watchdog,
    case: &Arc<Case>,
    run: &mut R,
) -> Outcome {
    watchdog.arm(case);
    let plain: &Case = case;
    let result = catch_unwind(AssertUnwindSafe(|| run(plain)));
    watchdog.disarm();
    match result {
        Ok(outcome) => {
            if let Some(why) = &outcome.violation {
                fail(reader, seed, case, why);
            }
            outcome
        }
        Err(payload) => fail(
            reader,
            seed,
            case,
            &format!("panicked: {}", panic_message(&*payload)),
        ),
    }
}

/// Save the case and fail the test with everything needed to reproduce it.
fn fail(reader: &Reader<'_>, seed: u64, case: &Case, why: &str) -> ! {
    let saved = save_case(reader.name, seed, case, why);
    let seed_env = std::env::var("LAYERPRUNE_FUZZ_SEED")
        .map(|s| format!(" LAYERPRUNE_FUZZ_SEED={s}"))
        .unwrap_or_default();
    let rerun = match case.number {
        Some(n) => format!(
            "LAYERPRUNE_FUZZ_CASE={n}{seed_env} cargo test --release --test fuzz_readers {}",
            reader.test
        ),
        None => format!("cargo test --release --test fuzz_readers {}", reader.test),
    };
    let mut ops: Vec<String> = case.mutant.ops.clone();
    ops.extend(
        case.mutant
            .sets
            .iter()
            .map(|s| format!("--set {}", short(s))),
    );
    panic!(
        "fuzz {}: {} (seed {seed:#x}): {why}\n  mutating: {}\n  operations:\n    {}\n  saved: {saved}\n  rerun: {rerun}",
        reader.name,
        case.label(),
        case.origin,
        ops.join("\n    ")
    );
}

// ---------------------------------------------------------------------------------------------
// Watchdog, and the report of a failed allocation
// ---------------------------------------------------------------------------------------------

/// The case running on this thread (for the allocator's report).
struct Running {
    reader: &'static str,
    seed: u64,
    case: Arc<Case>,
}

thread_local! {
    static RUNNING: RefCell<Option<Running>> = const { RefCell::new(None) };
}

struct WatchShared {
    reader: &'static str,
    seed: u64,
    epoch: Instant,
    /// Milliseconds since `epoch`, plus 1, at which the running case started; 0: none runs.
    started_ms: AtomicU64,
    stop: AtomicBool,
    current: Mutex<Option<Arc<Case>>>,
}

impl WatchShared {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }
}

/// A thread that aborts the process, after saving the case, when one case runs past
/// CASE_DEADLINE: a hang would otherwise hold CI until its own timeout, with no reproducer.
struct Watchdog {
    shared: Arc<WatchShared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    fn start(reader: &'static str, seed: u64) -> Self {
        let shared = Arc::new(WatchShared {
            reader,
            seed,
            epoch: Instant::now(),
            started_ms: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            current: Mutex::new(None),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("watchdog-{reader}"))
            .spawn(move || {
                while !s.stop.load(Ordering::SeqCst) {
                    let started = s.started_ms.load(Ordering::SeqCst);
                    if started != 0
                        && s.now_ms().saturating_sub(started) > CASE_DEADLINE.as_millis() as u64
                    {
                        let case = s.current.lock().unwrap_or_else(|e| e.into_inner()).clone();
                        let (label, saved) = match &case {
                            Some(c) => (
                                c.label(),
                                save_case(s.reader, s.seed, c, "hang: ran past the deadline"),
                            ),
                            None => ("a case".into(), "(nothing saved)".into()),
                        };
                        note(format!(
                            "fuzz {}: {label} (seed {:#x}) has run for more than {CASE_DEADLINE:?}: \
                             a hang. Saved: {saved}. Aborting.",
                            s.reader, s.seed
                        ));
                        std::process::abort();
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
            .expect("cannot start the watchdog");
        Self {
            shared,
            thread: Some(thread),
        }
    }

    /// A case starts (on the thread that runs it).
    fn arm(&self, case: &Arc<Case>) {
        *self
            .shared
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(case.clone());
        let running = Running {
            reader: self.shared.reader,
            seed: self.shared.seed,
            case: case.clone(),
        };
        RUNNING.with(|r| *r.borrow_mut() = Some(running));
        self.shared
            .started_ms
            .store(self.shared.now_ms(), Ordering::SeqCst);
    }

    fn disarm(&self) {
        self.shared.started_ms.store(0, Ordering::SeqCst);
        RUNNING.with(|r| *r.borrow_mut() = None);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The system allocator, which also saves the running case when an allocation fails (under the
/// address-space limit: an allocation sized from a corrupt field). Rust aborts right after an
/// infallible allocation fails; this is the only chance to say which case did it. (A fallible
/// one, `try_reserve`, that the reader handles also lands here: then the note is moot.)
struct ReportingAllocator;

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for ReportingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            allocation_failed(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            allocation_failed(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            allocation_failed(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: ReportingAllocator = ReportingAllocator;

/// Save the case running on this thread (if any) and say so. Small allocations still succeed
/// here (the limit refused a large one); never re-entered, never unwinds.
fn allocation_failed(size: usize) {
    static REPORTING: AtomicBool = AtomicBool::new(false);
    if REPORTING.swap(true, Ordering::SeqCst) {
        return;
    }
    let _ = catch_unwind(AssertUnwindSafe(|| {
        let _ = RUNNING.try_with(|r| {
            let Ok(r) = r.try_borrow() else { return };
            let Some(run) = r.as_ref() else { return };
            let what = format!("an allocation of {size} bytes failed");
            let saved = save_case(run.reader, run.seed, &run.case, &what);
            note(format!(
                "fuzz {}: {} (seed {:#x}): {what} (the address-space limit); if the process \
                 aborts now, this case is why. Saved: {saved}",
                run.reader,
                run.case.label(),
                run.seed
            ));
        });
    }));
    REPORTING.store(false, Ordering::SeqCst);
}

// ---------------------------------------------------------------------------------------------
// Byte mutations
// ---------------------------------------------------------------------------------------------

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// A position in 0..len (len > 0), mostly inside the hot range.
fn pick_index(rng: &mut StdRng, len: usize, hints: &Hints) -> usize {
    let end = hints.hot.end.min(len);
    let start = hints.hot.start.min(end);
    if end > start && rng.random_bool(0.85) {
        rng.random_range(start..end)
    } else {
        rng.random_range(0..len)
    }
}

/// Replace b[start..end] with `with` (an insertion when start == end, a deletion when `with`
/// is empty).
fn replace_range(b: &mut Vec<u8>, start: usize, end: usize, with: &[u8]) {
    let tail = b.split_off(end);
    b.truncate(start);
    b.extend_from_slice(with);
    b.extend_from_slice(&tail);
}

fn interesting_byte(rng: &mut StdRng) -> u8 {
    const BYTES: &[u8] = &[
        0x00, 0x01, 0x7f, 0x80, 0xff, b'"', b'\\', b'\n', b'[', b'{', b'=', b'.', b'0', b'9', b'-',
    ];
    if rng.random_bool(0.3) {
        rng.random()
    } else {
        *pick(rng, BYTES)
    }
}

/// A "size" value for a field of `width` bytes of a file of `file_len` bytes.
fn magic(rng: &mut StdRng, width: usize, file_len: usize) -> u64 {
    let l = file_len as u64;
    let small = rng.random_range(0..64u64);
    match width {
        8 => *pick(
            rng,
            &[
                0,
                1,
                2,
                1 << 24,
                (1 << 24) + 1,
                1 << 31,
                1 << 32,
                1 << 63,
                u64::MAX,
                i64::MAX as u64,
                u32::MAX as u64,
                l,
                l + 1,
                small,
            ],
        ),
        4 => *pick(
            rng,
            &[
                0,
                1,
                2,
                1 << 24,
                1 << 31,
                0x7fff_ffff,
                u32::MAX as u64,
                l & 0xffff_ffff,
                (l + 1) & 0xffff_ffff,
                small,
            ],
        ),
        2 => *pick(
            rng,
            &[
                0,
                1,
                2,
                0x7fff,
                0x8000,
                0xffff,
                l & 0xffff,
                (l + 1) & 0xffff,
                small,
            ],
        ),
        _ => *pick(rng, &[0, 1, 0x7f, 0x80, 0xff]),
    }
}

fn write_le(b: &mut [u8], at: usize, width: usize, value: u64) {
    b[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
}

/// A size value written into an aligned word of `width` bytes.
fn word_op(rng: &mut StdRng, b: &mut [u8], hints: &Hints, width: usize, ops: &mut Vec<String>) {
    let len = b.len();
    let at = pick_index(rng, len, hints) / width * width;
    if at + width > len {
        ops.push(format!("(no room for a {width}-byte word at {at})"));
        return;
    }
    let v = magic(rng, width, len);
    write_le(b, at, width, v);
    ops.push(format!("set the aligned {width}-byte word at {at} to {v}"));
}

/// One random byte-level operation.
fn byte_op(rng: &mut StdRng, b: &mut Vec<u8>, hints: &Hints, ops: &mut Vec<String>) {
    if b.is_empty() {
        let n = rng.random_range(1..=16usize);
        let data: Vec<u8> = (0..n).map(|_| rng.random::<u8>()).collect();
        ops.push(format!("insert {} into the empty file", hex(&data)));
        *b = data;
        return;
    }
    let len = b.len();
    match rng.random_range(0..16u32) {
        0..=2 => {
            let at = pick_index(rng, len, hints);
            let bit = rng.random_range(0..8u32);
            b[at] ^= 1 << bit;
            ops.push(format!("flip bit {bit} of byte {at}"));
        }
        3 | 4 => {
            let at = pick_index(rng, len, hints);
            let v = interesting_byte(rng);
            b[at] = v;
            ops.push(format!("set byte {at} to {v:#04x}"));
        }
        5 => {
            let at = if rng.random_bool(0.1) {
                len
            } else {
                pick_index(rng, len, hints)
            };
            let n = rng.random_range(1..=64usize);
            let data: Vec<u8> = if rng.random_bool(0.5) {
                (0..n).map(|_| rng.random::<u8>()).collect()
            } else {
                let v = interesting_byte(rng);
                vec![v; n]
            };
            replace_range(b, at, at, &data);
            ops.push(format!("insert {} at {at}", hex(&data)));
        }
        6 => {
            let at = pick_index(rng, len, hints);
            let n = rng.random_range(1..=(len - at).min(64));
            replace_range(b, at, at + n, &[]);
            ops.push(format!("delete {n} bytes at {at}"));
        }
        7 => {
            let at = pick_index(rng, len, hints);
            b.truncate(at);
            ops.push(format!("truncate to {at} bytes"));
        }
        8 => {
            let from = pick_index(rng, len, hints);
            let n = rng.random_range(1..=(len - from).min(256));
            let chunk = b[from..from + n].to_vec();
            let at = pick_index(rng, len, hints);
            replace_range(b, at, at, &chunk);
            ops.push(format!("duplicate {n} bytes from {from} at {at}"));
        }
        9 | 10 => word_op(rng, b, hints, 8, ops),
        11 => word_op(rng, b, hints, 4, ops),
        _ => {
            if hints.fields.is_empty() {
                word_op(rng, b, hints, 8, ops);
            } else {
                let (at, width) = *pick(rng, &hints.fields);
                if at + width <= len {
                    let v = magic(rng, width, len);
                    write_le(b, at, width, v);
                    ops.push(format!("set the {width}-byte field at {at} to {v}"));
                } else {
                    ops.push(format!("(the field at {at} is past the end)"));
                }
            }
        }
    }
}

/// 1 to 4 byte-level operations on a copy of `seed`.
fn mutate_bytes(rng: &mut StdRng, seed: &[u8], hints: &Hints) -> Mutant {
    let mut bytes = seed.to_vec();
    let mut ops = Vec::new();
    for _ in 0..rng.random_range(1..=4u32) {
        byte_op(rng, &mut bytes, hints, &mut ops);
    }
    Mutant {
        bytes,
        ops,
        sets: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Text mutations (TOML, JSON, tiktoken lines)
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Syntax {
    Toml,
    Json,
    /// "<base64 token> <rank>" lines.
    RankLines,
}

const NUMBERS: &[&str] = &[
    "0",
    "-0",
    "1",
    "-1",
    "2",
    "3",
    "0.5",
    "1.5",
    "1e308",
    "-1e308",
    "1e309",
    "1e-400",
    "nan",
    "-nan",
    "inf",
    "-inf",
    "+inf",
    "4096",
    "4097",
    "8388609",
    "16777216",
    "16777217",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "340282366920938463463374607431768211456",
    "0x7fffffff",
    "0o777",
    "1_000",
    "007",
    "1e",
    "--1",
];
const JSON_VALUES: &[&str] = &["null", "true", "false", "\"7\"", "[]", "{}", "[0]", "\"\""];
const TOML_VALUES: &[&str] = &[
    "true",
    "\"7\"",
    "[]",
    "{}",
    "'x'",
    "1979-05-27T07:32:00Z",
    "\"\"",
];
const STRINGS: &[&str] = &[
    "",
    " ",
    "${x}",
    "${",
    "${nope}",
    "${x}${x}",
    "$${x}",
    "../../../../etc/passwd",
    "/dev/zero",
    "/dev/stdin",
    "\\u0000",
    "\\ud800",
    "\\",
    "\\\"",
    "\\n",
    "\t",
    "e\u{301}",
    "\u{202e}",
    "\u{1F600}",
    "\u{fffd}",
    "a.b.c",
    "null",
    "inf",
    "test-value",
    "load",
    "similarity",
    "select",
    "prune",
    "heal",
    "report",
    "eval-qa",
    "eval-loss",
    "hf:",
    "hf:a/b",
    "pip:x==1:y",
    "cuda",
    "bf16",
    "f16",
    "<|endoftext|>",
    "<s>",
    "BPE",
    "WordPiece",
    "Unigram",
    "WordLevel",
    "ByteLevel",
    "Sequence",
    "TemplateProcessing",
    "Metaspace",
    "Split",
    "NFC",
    "Replace",
    "1kb",
    "1 TiB",
    "99999999999 GiB",
    "18446744073709551615 B",
    "-1GB",
];

/// Spans of number-like tokens: a digit (or '-' and a digit) not inside a word, up to the end
/// of the word.
fn number_spans(b: &[u8]) -> Vec<(usize, usize)> {
    let word = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.');
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let starts =
            c.is_ascii_digit() || (c == b'-' && b.get(i + 1).is_some_and(|d| d.is_ascii_digit()));
        if starts && (i == 0 || !word(b[i - 1])) {
            let s = i;
            i += 1;
            while i < b.len() && (word(b[i]) || matches!(b[i], b'+' | b'-')) {
                i += 1;
            }
            out.push((s, i));
        } else {
            i += 1;
        }
    }
    out
}

/// Spans of the contents of double-quoted strings (on one line).
fn string_spans(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'"' {
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < b.len() && b[j] != b'"' && b[j] != b'\n' {
            j += if b[j] == b'\\' { 2 } else { 1 };
        }
        if j < b.len() && b[j] == b'"' {
            out.push((i + 1, j));
            i = j + 1;
        } else {
            i = j.max(i + 1);
        }
    }
    out
}

/// The start of a random line.
fn line_start(rng: &mut StdRng, b: &[u8]) -> usize {
    let mut starts = vec![0];
    starts.extend(
        b.iter()
            .enumerate()
            .filter_map(|(i, &c)| (c == b'\n').then_some(i + 1)),
    );
    *pick(rng, &starts)
}

fn magic_number(rng: &mut StdRng, syntax: Syntax) -> String {
    let r: f64 = rng.random();
    match syntax {
        Syntax::Json if r < 0.2 => pick(rng, JSON_VALUES).to_string(),
        Syntax::Toml if r < 0.2 => pick(rng, TOML_VALUES).to_string(),
        _ if r > 0.9 => rng.random::<u64>().to_string(),
        _ => pick(rng, NUMBERS).to_string(),
    }
}

fn random_unicode(rng: &mut StdRng, max_chars: usize) -> String {
    let n = rng.random_range(1..=max_chars);
    (0..n)
        .map(|_| char::from_u32(rng.random_range(0..0x11_0000u32)).unwrap_or('?'))
        .collect()
}

fn magic_string(rng: &mut StdRng) -> String {
    let r: f64 = rng.random();
    if r < 0.08 {
        "a".repeat(rng.random_range(1000..100_000usize))
    } else if r < 0.13 {
        random_unicode(rng, 32)
    } else {
        pick(rng, STRINGS).to_string()
    }
}

/// A deeply nested value (arrays or tables), and a description of it.
fn nested(rng: &mut StdRng, syntax: Syntax) -> (String, String) {
    let depth = *pick(rng, &[8usize, 64, 81, 129, 1000, 10_000]);
    let (open, close) = if rng.random_bool(0.5) {
        ("[", "]")
    } else if syntax == Syntax::Json {
        ("{\"a\":", "}")
    } else {
        ("{a=", "}")
    };
    let balanced = rng.random_bool(0.8);
    let mut s = open.repeat(depth);
    s.push('1');
    if balanced {
        s.push_str(&close.repeat(depth));
    }
    let what = format!(
        "{depth}-deep {open} ... {close}{}",
        if balanced { "" } else { " (unclosed)" }
    );
    (s, what)
}

fn replace_number(rng: &mut StdRng, b: &mut Vec<u8>, syntax: Syntax, ops: &mut Vec<String>) {
    let spans = number_spans(b);
    if spans.is_empty() {
        return byte_op(rng, b, &Hints::default(), ops);
    }
    let (s, e) = *pick(rng, &spans);
    let new = magic_number(rng, syntax);
    ops.push(format!(
        "number {} at {s} -> {}",
        short(&String::from_utf8_lossy(&b[s..e])),
        short(&new)
    ));
    replace_range(b, s, e, new.as_bytes());
}

fn replace_string(rng: &mut StdRng, b: &mut Vec<u8>, syntax: Syntax, ops: &mut Vec<String>) {
    let spans = string_spans(b);
    if spans.is_empty() {
        return replace_number(rng, b, syntax, ops);
    }
    let (s, e) = *pick(rng, &spans);
    let new = magic_string(rng);
    ops.push(format!(
        "string {} at {s} -> {}",
        short(&String::from_utf8_lossy(&b[s..e])),
        short(&new)
    ));
    replace_range(b, s, e, new.as_bytes());
}

/// A number replaced by (or a line holding) a deeply nested value.
fn nest(rng: &mut StdRng, b: &mut Vec<u8>, syntax: Syntax, ops: &mut Vec<String>) {
    let (value, what) = nested(rng, syntax);
    let spans = number_spans(b);
    if !spans.is_empty() && rng.random_bool(0.7) {
        let (s, e) = *pick(rng, &spans);
        replace_range(b, s, e, value.as_bytes());
        ops.push(format!("number at {s} -> {what}"));
    } else {
        let at = line_start(rng, b);
        let line = match syntax {
            Syntax::Json => format!("\"fuzz\": {value},\n"),
            _ => format!("fuzz = {value}\n"),
        };
        replace_range(b, at, at, line.as_bytes());
        ops.push(format!("insert a line `fuzz = {what}` at {at}"));
    }
}

/// A line with a very long key (path).
fn long_key(rng: &mut StdRng, b: &mut Vec<u8>, syntax: Syntax, ops: &mut Vec<String>) {
    let depth = *pick(rng, &[2usize, 17, 100, 1000, 10_000]);
    let at = line_start(rng, b);
    let line = match syntax {
        Syntax::Toml => {
            let seg = *pick(
                rng,
                &["a", "stages", "x", "\"q.r\"", "'l'", "\u{e9}", "0", "_"],
            );
            let path = vec![seg; depth].join(".");
            if rng.random_bool(0.5) {
                format!("{path} = 1\n")
            } else {
                format!("[{path}]\n")
            }
        }
        Syntax::Json => format!("\"{}\": 1,\n", "k".repeat(depth * 10)),
        Syntax::RankLines => format!("{} {depth}\n", "QUFB".repeat(depth)),
    };
    replace_range(b, at, at, line.as_bytes());
    ops.push(format!("insert a {depth}-level key line at {at}"));
}

#[derive(Clone, Copy)]
enum LineOp {
    Duplicate,
    Delete,
    Swap,
}

fn line_op(rng: &mut StdRng, b: &mut Vec<u8>, op: LineOp, ops: &mut Vec<String>) {
    let mut lines: Vec<Vec<u8>> = b
        .split_inclusive(|&c| c == b'\n')
        .map(|l| l.to_vec())
        .collect();
    if lines.is_empty() {
        return byte_op(rng, b, &Hints::default(), ops);
    }
    let i = rng.random_range(0..lines.len());
    match op {
        LineOp::Duplicate => {
            let l = lines[i].clone();
            lines.insert(i + 1, l);
            ops.push(format!("duplicate line {}", i + 1));
        }
        LineOp::Delete => {
            lines.remove(i);
            ops.push(format!("delete line {}", i + 1));
        }
        LineOp::Swap => {
            let j = rng.random_range(0..lines.len());
            lines.swap(i, j);
            ops.push(format!("swap lines {} and {}", i + 1, j + 1));
        }
    }
    *b = lines.concat();
}

/// 1 to 4 text-level (and some byte-level) operations on a copy of `seed`.
fn mutate_text(rng: &mut StdRng, seed: &[u8], syntax: Syntax) -> Mutant {
    let mut b = seed.to_vec();
    let mut ops = Vec::new();
    let whole = Hints::default();
    for _ in 0..rng.random_range(1..=4u32) {
        match rng.random_range(0..14u32) {
            0..=3 => replace_number(rng, &mut b, syntax, &mut ops),
            4 => nest(rng, &mut b, syntax, &mut ops),
            5 => long_key(rng, &mut b, syntax, &mut ops),
            6 | 7 => replace_string(rng, &mut b, syntax, &mut ops),
            8 => line_op(rng, &mut b, LineOp::Duplicate, &mut ops),
            9 => line_op(rng, &mut b, LineOp::Delete, &mut ops),
            10 => line_op(rng, &mut b, LineOp::Swap, &mut ops),
            _ => byte_op(rng, &mut b, &whole, &mut ops),
        }
    }
    Mutant {
        bytes: b,
        ops,
        sets: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Format structure: where the integer fields of a clean seed are
// ---------------------------------------------------------------------------------------------

/// A little-endian walk over a clean GGUF seed.
struct Walk<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Walk<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.b.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn skip_string(&mut self) -> Option<()> {
        let n = self.u64()?;
        self.take(usize::try_from(n).ok()?)?;
        Some(())
    }
}

/// A metadata value of GGUF type `t`; its integer fields recorded when `record` (not inside
/// arrays: a vocabulary's thousands of string lengths would drown the rest).
fn walk_gguf_value(
    w: &mut Walk<'_>,
    t: u32,
    fields: &mut Vec<(usize, usize)>,
    record: bool,
) -> Option<()> {
    let at = w.pos;
    match t {
        0 | 1 | 7 => {
            w.take(1)?;
        }
        2 | 3 => {
            w.take(2)?;
        }
        4 | 5 => {
            if record {
                fields.push((at, 4));
            }
            w.take(4)?;
        }
        6 => {
            w.take(4)?;
        }
        10 | 11 => {
            if record {
                fields.push((at, 8));
            }
            w.take(8)?;
        }
        12 => {
            w.take(8)?;
        }
        8 => {
            if record {
                fields.push((at, 8));
            }
            w.skip_string()?;
        }
        9 => {
            if record {
                fields.push((at, 4));
                fields.push((at + 4, 8));
            }
            let item = w.u32()?;
            let n = w.u64()?;
            if n > w.b.len() as u64 {
                return None;
            }
            for _ in 0..n {
                walk_gguf_value(w, item, fields, false)?;
            }
        }
        _ => return None,
    }
    Some(())
}

/// The integer fields of a GGUF file's header and tensor table, and where the table ends.
fn walk_gguf(w: &mut Walk<'_>, fields: &mut Vec<(usize, usize)>) -> Option<usize> {
    let n_tensors = u64::from_le_bytes(w.b.get(8..16)?.try_into().ok()?);
    let n_kv = u64::from_le_bytes(w.b.get(16..24)?.try_into().ok()?);
    if n_tensors > w.b.len() as u64 || n_kv > w.b.len() as u64 {
        return None;
    }
    w.pos = 24;
    for _ in 0..n_kv {
        fields.push((w.pos, 8)); // key length
        w.skip_string()?;
        fields.push((w.pos, 4)); // value type
        let t = w.u32()?;
        walk_gguf_value(w, t, fields, true)?;
    }
    for _ in 0..n_tensors {
        fields.push((w.pos, 8)); // name length
        w.skip_string()?;
        fields.push((w.pos, 4)); // rank
        let rank = w.u32()?;
        if rank > 8 {
            return None;
        }
        for _ in 0..rank {
            fields.push((w.pos, 8)); // a dimension
            w.u64()?;
        }
        fields.push((w.pos, 4)); // ggml type
        w.u32()?;
        fields.push((w.pos, 8)); // data offset
        w.u64()?;
    }
    Some(w.pos)
}

/// GGUF: the counts at bytes 8 (tensors) and 16 (metadata), every field found by walking the
/// header, and the header plus tensor table as the hot range.
fn gguf_hints(b: &[u8]) -> Hints {
    let mut fields = vec![(8, 8), (16, 8)];
    let mut w = Walk { b, pos: 24 };
    let hot = match walk_gguf(&mut w, &mut fields) {
        Some(end) => 0..(end + 64).min(b.len()),
        None => 0..b.len().min(64 << 10),
    };
    fields.retain(|&(at, width)| at + width <= b.len());
    Hints { hot, fields }
}

/// safetensors: the header length (the first 8 bytes) and the JSON header as the hot range.
fn safetensors_hints(b: &[u8]) -> Hints {
    let n = b
        .get(..8)
        .map(|h| u64::from_le_bytes(h.try_into().expect("8 bytes")))
        .unwrap_or(0);
    let end = usize::try_from(n)
        .ok()
        .and_then(|n| n.checked_add(8))
        .filter(|&e| e <= b.len())
        .unwrap_or(b.len());
    Hints {
        hot: 0..end,
        fields: vec![(0, 8)],
    }
}

/// zip: the size, length, offset and count fields of the local headers, the central directory
/// and the end record, found by their signatures.
fn zip_hints(b: &[u8]) -> Hints {
    let mut fields = Vec::new();
    for o in 0..b.len().saturating_sub(3) {
        let f: &[(usize, usize)] = match &b[o..o + 4] {
            // flags, method, crc, compressed and uncompressed size, name and extra lengths
            b"PK\x03\x04" => &[(6, 2), (8, 2), (14, 4), (18, 4), (22, 4), (26, 2), (28, 2)],
            // flags, method, sizes, name/extra/comment lengths, external attributes, offset
            b"PK\x01\x02" => &[
                (8, 2),
                (10, 2),
                (20, 4),
                (24, 4),
                (28, 2),
                (30, 2),
                (32, 2),
                (38, 4),
                (42, 4),
            ],
            // entry counts, directory size and offset, comment length
            b"PK\x05\x06" => &[(8, 2), (10, 2), (12, 4), (16, 4), (20, 2)],
            _ => &[],
        };
        fields.extend(
            f.iter()
                .map(|&(d, w)| (o + d, w))
                .filter(|&(at, w)| at + w <= b.len()),
        );
    }
    Hints {
        hot: 0..b.len(),
        fields,
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds
// ---------------------------------------------------------------------------------------------

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Files under `dir` (down to `max_depth` levels of subdirectories) that `keep`, sorted.
fn find_files(dir: &Path, max_depth: usize, keep: &dyn Fn(&Path) -> bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if depth < max_depth {
                    stack.push((p, depth + 1));
                }
            } else if keep(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn has_ext(p: &Path, ext: &str) -> bool {
    p.extension().is_some_and(|e| e == ext)
}

fn has_name(p: &Path, name: &str) -> bool {
    p.file_name().is_some_and(|n| n == name)
}

fn seed_from(path: &Path, hints: impl Fn(&[u8]) -> Hints) -> Seed {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let hints = hints(&bytes);
    let root = repo();
    Seed {
        name: path
            .strip_prefix(&root)
            .unwrap_or(path)
            .display()
            .to_string(),
        bytes,
        hints,
    }
}

fn models_dir() -> PathBuf {
    common::fixtures().join("models")
}

/// Every pipeline file: the test fixtures and the shipped pipelines.
fn pipeline_seeds() -> Vec<Seed> {
    let toml = |p: &Path| has_ext(p, "toml");
    let mut files = find_files(&common::fixtures().join("pipelines"), 0, &toml);
    files.extend(find_files(&repo().join("pipelines"), 3, &toml));
    files
        .iter()
        .map(|p| seed_from(p, |_: &[u8]| Hints::default()))
        .collect()
}

fn write_file(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes)
        .unwrap_or_else(|e| panic!("(harness) cannot write {}: {e}", path.display()));
}

fn local_source(path: &Path) -> ResolvedSource {
    ResolvedSource {
        spec: SourceSpec::Local(path.to_path_buf()),
        path: path.to_path_buf(),
        sha256: String::new(),
    }
}

/// A whole model opened as the CLI opens it, then some of its tensors and its tokenizer used.
fn open_model(out: &mut Outcome, path: &Path) {
    if let Some(files) = out.check("ModelFiles::open", ModelFiles::open(local_source(path))) {
        for name in HF_NAMES {
            out.check(name, files.store.get(name, &files.config));
        }
        out.check("encode", files.tokenizer.encode(PROBE_TEXT));
    }
}

/// A tokenizer that opened: encode and decode two texts.
fn use_tokenizer(out: &mut Outcome, t: &TextTokenizer) {
    for text in [PROBE_TEXT, ODD_TEXT] {
        if let Some(ids) = out.check("encode", t.encode(text)) {
            out.check("decode", t.decode(&ids));
        }
    }
    let _ = t.vocab_size();
    let _ = t.id_to_token(0);
    let _ = t.token_to_id("a");
}

// ---------------------------------------------------------------------------------------------
// The readers
// ---------------------------------------------------------------------------------------------

/// GGUF: open, then the model configuration, the tokenizer, the first tensors; every 4th case
/// also the whole model as the CLI opens it.
#[test]
fn gguf_reader_survives_mutations() {
    setup();
    let seeds: Vec<Seed> = find_files(&models_dir(), 0, &|p: &Path| has_ext(p, "gguf"))
        .iter()
        .map(|p| seed_from(p, gguf_hints))
        .collect();
    let scratch = tempfile::tempdir().unwrap();
    // the .gguf extension: ModelFiles::open goes by it
    let path = scratch.path().join("model.gguf");
    fuzz(
        Reader {
            name: "gguf",
            test: "gguf_reader_survives_mutations",
            seed: 0x6767_7566_0000_0001,
            default_cases: 3000,
            seeds: &seeds,
        },
        |rng, seed| mutate_bytes(rng, &seed.bytes, &seed.hints),
        move |case| {
            write_file(&path, &case.mutant.bytes);
            let mut out = Outcome::default();
            let Some(g) = out.check("GgufFile::open", GgufFile::open(&path)) else {
                return out;
            };
            out.check("ModelConfig::from_gguf", ModelConfig::from_gguf(&g));
            if let Some(t) = out.check("TextTokenizer::from_gguf", TextTokenizer::from_gguf(&g)) {
                use_tokenizer(&mut out, &t);
            }
            let names: Vec<String> = g.tensors.iter().take(4).map(|t| t.name.clone()).collect();
            for name in &names {
                out.check(name, g.tensor_f32(name));
            }
            drop(g);
            if case.number.is_none_or(|n| n % 4 == 0) {
                open_model(&mut out, &path);
            }
            out
        },
    );
}

/// safetensors: open (header), then every tensor as f32. Half the mutants change the JSON
/// header as text (and re-frame it with its new length), half the bytes (mostly the header's).
#[test]
fn safetensors_header_survives_mutations() {
    setup();
    let seeds: Vec<Seed> = find_files(&models_dir(), 1, &|p: &Path| {
        has_ext(p, "safetensors") && std::fs::metadata(p).is_ok_and(|m| m.len() <= 4 << 20)
    })
    .iter()
    .map(|p| seed_from(p, safetensors_hints))
    .collect();
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("model.safetensors");
    fuzz(
        Reader {
            name: "safetensors",
            test: "safetensors_header_survives_mutations",
            seed: 0x7361_6665_0000_0002,
            default_cases: 3000,
            seeds: &seeds,
        },
        |rng, seed| {
            let b = &seed.bytes;
            let header_end = seed.hints.hot.end;
            if header_end > 8 && rng.random_bool(0.5) {
                let mut m = mutate_text(rng, &b[8..header_end], Syntax::Json);
                let mut bytes = Vec::with_capacity(b.len() + 256);
                bytes.extend_from_slice(&(m.bytes.len() as u64).to_le_bytes());
                bytes.extend_from_slice(&m.bytes);
                bytes.extend_from_slice(&b[header_end..]);
                m.ops
                    .insert(0, "in the JSON header (then re-framed):".into());
                if rng.random_bool(0.2) {
                    let framing = Hints {
                        hot: 0..8 + m.bytes.len(),
                        fields: vec![(0, 8)],
                    };
                    byte_op(rng, &mut bytes, &framing, &mut m.ops);
                }
                m.bytes = bytes;
                m
            } else {
                mutate_bytes(rng, b, &seed.hints)
            }
        },
        move |case| {
            write_file(&path, &case.mutant.bytes);
            let mut out = Outcome::default();
            if let Some(set) = out.check(
                "SafetensorsSet::open_file",
                SafetensorsSet::open_file(&path),
            ) {
                let names: Vec<String> = set.names().map(String::from).collect();
                for name in names.iter().take(64) {
                    let _ = set.dtype(name);
                    out.check(name, set.tensor_f32(name));
                }
            }
            out
        },
    );
}

/// config.json: parse, use the configuration; every 4th case also the whole model directory
/// (a copy of the fixture's, with the mutated config.json) as the CLI opens it.
#[test]
fn config_json_survives_mutations() {
    setup();
    let files = find_files(&models_dir(), 1, &|p: &Path| has_name(p, "config.json"));
    let seeds: Vec<Seed> = files
        .iter()
        .map(|p| seed_from(p, |_: &[u8]| Hints::default()))
        .collect();
    let scratch = tempfile::tempdir().unwrap();
    // per seed, a copy of its model directory (top-level files)
    let dirs: Vec<PathBuf> = files
        .iter()
        .enumerate()
        .map(|(i, config)| {
            let dir = scratch.path().join(format!("model-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let src = config.parent().unwrap();
            for e in std::fs::read_dir(src).unwrap().flatten() {
                if e.path().is_file() {
                    std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
                }
            }
            dir
        })
        .collect();
    fuzz(
        Reader {
            name: "config-json",
            test: "config_json_survives_mutations",
            seed: 0x636f_6e66_0000_0003,
            default_cases: 3000,
            seeds: &seeds,
        },
        |rng, seed| mutate_text(rng, &seed.bytes, Syntax::Json),
        move |case| {
            let dir = &dirs[case.seed];
            let path = dir.join("config.json");
            write_file(&path, &case.mutant.bytes);
            let mut out = Outcome::default();
            let Some(cfg) = out.check(
                "ModelConfig::from_hf_config_file",
                ModelConfig::from_hf_config_file(&path),
            ) else {
                return out;
            };
            let _ = cfg.rotary_dim();
            for i in 0..cfg.num_hidden_layers.min(64) {
                let _ = cfg.layer_is_sliding(i);
            }
            let _ = cfg.to_hf_json();
            if case.number.is_none_or(|n| n % 4 == 0) {
                open_model(&mut out, dir);
            }
            out
        },
    );
}

/// tokenizer.json (the smallest fixture): open, encode, decode. Fewer cases: parsing a
/// tokenizer is the slowest reader.
#[test]
fn tokenizer_json_survives_mutations() {
    setup();
    let smallest = find_files(&models_dir(), 1, &|p: &Path| has_name(p, "tokenizer.json"))
        .into_iter()
        .min_by_key(|p| {
            (
                std::fs::metadata(p).map(|m| m.len()).unwrap_or(u64::MAX),
                p.clone(),
            )
        })
        .expect("no tokenizer.json under tests/fixtures/models");
    let seeds = vec![seed_from(&smallest, |_: &[u8]| Hints::default())];
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("tokenizer.json");
    fuzz(
        Reader {
            name: "tokenizer-json",
            test: "tokenizer_json_survives_mutations",
            seed: 0x746f_6b6a_0000_0004,
            default_cases: 3000,
            seeds: &seeds,
        },
        |rng, seed| mutate_text(rng, &seed.bytes, Syntax::Json),
        move |case| {
            write_file(&path, &case.mutant.bytes);
            let mut out = Outcome::default();
            if let Some(t) = out.check("TextTokenizer::from_file", TextTokenizer::from_file(&path))
            {
                use_tokenizer(&mut out, &t);
            }
            out
        },
    );
}

/// A small tiktoken ranks file (the 256 single bytes and a few merges), for when no fixture
/// has one.
fn synthetic_tiktoken() -> Vec<u8> {
    use base64::Engine as _;
    let b64 = |t: &[u8]| base64::engine::general_purpose::STANDARD.encode(t);
    let mut text = String::new();
    for b in 0..=255u8 {
        text.push_str(&format!("{} {b}\n", b64(&[b][..])));
    }
    for (i, t) in [
        "he", "ll", "llo", "hello", " w", "or", "ld", " world", "12", "123",
    ]
    .iter()
    .enumerate()
    {
        text.push_str(&format!("{} {}\n", b64(t.as_bytes()), 256 + i));
    }
    text.into_bytes()
}

/// Qwen v1's tiktoken ranks file: open, encode, decode.
#[test]
fn tiktoken_reader_survives_mutations() {
    setup();
    let mut seeds: Vec<Seed> =
        find_files(&common::fixtures(), 3, &|p: &Path| has_ext(p, "tiktoken"))
            .iter()
            .map(|p| seed_from(p, |_: &[u8]| Hints::default()))
            .collect();
    if seeds.is_empty() {
        seeds.push(Seed {
            name: "synthetic tiktoken file (no fixture found)".into(),
            bytes: synthetic_tiktoken(),
            hints: Hints::default(),
        });
    }
    let scratch = tempfile::tempdir().unwrap();
    let path = scratch.path().join("qwen.tiktoken");
    fuzz(
        Reader {
            name: "tiktoken",
            test: "tiktoken_reader_survives_mutations",
            seed: 0x7469_6b74_0000_0005,
            default_cases: 3000,
            seeds: &seeds,
        },
        |rng, seed| mutate_text(rng, &seed.bytes, Syntax::RankLines),
        move |case| {
            write_file(&path, &case.mutant.bytes);
            let mut out = Outcome::default();
            if let Some(t) = out.check(
                "TextTokenizer::from_qwen_tiktoken",
                TextTokenizer::from_qwen_tiktoken(&path),
            ) {
                use_tokenizer(&mut out, &t);
            }
            out
        },
    );
}

/// Pipeline TOML: layered and validated (`load_text`; sources are not resolved). Mutants that
/// are not UTF-8 cannot reach it (it takes &str): skipped, and counted.
#[test]
fn pipeline_toml_survives_mutations() {
    setup();
    let seeds = pipeline_seeds();
    fuzz(
        Reader {
            name: "pipeline-toml",
            test: "pipeline_toml_survives_mutations",
            seed: 0x746f_6d6c_0000_0006,
            default_cases: 3000,
            seeds: &seeds,
        },
        |rng, seed| mutate_text(rng, &seed.bytes, Syntax::Toml),
        |case| {
            let Ok(text) = std::str::from_utf8(&case.mutant.bytes) else {
                return Outcome::skipped();
            };
            let mut out = Outcome::default();
            out.check(
                "load_text",
                layerprune::pipeline::load_text(Path::new("fuzz.toml"), text, &[]),
            );
            out
        },
    );
}

const SET_KEYS: &[&str] = &[
    "name",
    "description",
    "backend",
    "precision",
    "memory_limit",
    "cache_dir",
    "results_dir",
    "sweep",
    "sweep.x",
    "sweep.y",
    "sources",
    "sources.model",
    "stages",
    "stages.new",
    "stages.new.kind",
    "stages.base.value",
    "stages.base.kind",
    "stages.base.sleep_ms",
    "stages.base.fail",
    "stages.base.data",
    "stages.per_x.value",
    "stages.per_x.inputs.parent",
    "stages.total.inputs.gather",
    "stages.prune.fraction",
    "stages.prune.strategy",
    "stages.heal.lora_rank",
    "stages.similarity.samples",
    "stages.similarity.text.source",
];
const ODD_KEYS: &[&str] = &[
    "",
    "=",
    ".",
    "..",
    "stages..x",
    "stages.",
    ".stages",
    "stages.base.",
    " stages . base . value ",
    "stages.\"base\".value",
    "stages.'base'.value",
    "stages.base.value.deeper",
    "stages.base.value.0",
    "stages.base.kind.kind",
    "sweep.x.0",
    "\u{e9}",
    "\u{1F600}.\u{1F600}",
    "stages.\u{202e}",
    "STAGES.BASE.VALUE",
    "stages.base\n.value",
    "stages.base\t.value",
    "[stages]",
    "stages.*",
    "__proto__",
    "stages.__proto__",
];
const SEGMENTS: &[&str] = &[
    "stages",
    "base",
    "value",
    "x",
    "kind",
    "sweep",
    "inputs",
    "\u{e9}",
    "\u{1F600}",
    "0",
    "-1",
    " ",
    "a\"b",
    "[",
    "_",
    "",
];
const SET_STRINGS: &[&str] = &[
    "\"a\nb\"",
    "'single'",
    "\"unterminated",
    "hello\nworld",
    "\"\\u0000\"",
    "${x}",
    "${nope}",
    "${",
    "\"\"\"multi\nline\"\"\"",
    "'''literal'''",
    "a=b",
    "x = 1\ny = 2",
    "test-value",
    "\"test-value\"",
    "prune",
    "\"${x}\"",
];
const SET_ARRAYS: &[&str] = &[
    "[]",
    "[1,2,3]",
    "[[]]",
    "[1, \"a\"]",
    "[1,",
    "[\"x\"]",
    "[${x}]",
    "[\"per_x\", \"side\"]",
    "[nan, inf]",
];
const SET_TABLES: &[&str] = &[
    "{}",
    "{a=1}",
    "{kind=\"prune\"}",
    "{ value = 3 }",
    "{a.b.c=1}",
    "{a=1",
    "{parent=\"base\"}",
    "{gather=[\"per_x\",\"side\"]}",
    "{kind=\"test-value\", value=1}",
];

fn random_key(rng: &mut StdRng) -> String {
    let r = rng.random_range(0..10u32);
    if r < 4 {
        pick(rng, SET_KEYS).to_string()
    } else if r < 5 {
        pick(rng, ODD_KEYS).to_string()
    } else {
        let depth = *pick(rng, &[1usize, 2, 3, 4, 5, 15, 16, 17, 100, 1000, 10_000]);
        if rng.random_bool(0.5) {
            let seg = *pick(rng, SEGMENTS);
            vec![seg; depth].join(".")
        } else {
            (0..depth)
                .map(|_| *pick(rng, SEGMENTS))
                .collect::<Vec<&str>>()
                .join(".")
        }
    }
}

fn random_value(rng: &mut StdRng) -> String {
    match rng.random_range(0..12u32) {
        0..=2 => magic_number(rng, Syntax::Toml),
        3 => pick(rng, SET_STRINGS).to_string(),
        4 => pick(rng, SET_ARRAYS).to_string(),
        5 => nested(rng, Syntax::Toml).0,
        6 => pick(rng, SET_TABLES).to_string(),
        7 => pick(
            rng,
            &[
                "true",
                "false",
                "True",
                "1979-05-27T07:32:00Z",
                "07:32:00",
                "1979-05-27",
            ],
        )
        .to_string(),
        8 => "a".repeat(rng.random_range(1000..100_000usize)),
        9 => random_unicode(rng, 64),
        10 => magic_string(rng),
        _ => String::new(),
    }
}

/// One `--set` argument: mostly KEY=VALUE, sometimes without '=' or with odd spacing.
fn random_set(rng: &mut StdRng) -> String {
    let key = random_key(rng);
    let value = random_value(rng);
    match rng.random_range(0..10u32) {
        0 => key,
        1 => format!("{key}=={value}"),
        2 => format!(" {key} = {value} "),
        _ => format!("{key}={value}"),
    }
}

/// `--set`: 1 to 3 generated overrides layered over an unmutated pipeline file.
#[test]
fn set_overrides_survive_mutations() {
    setup();
    let seeds = pipeline_seeds();
    fuzz(
        Reader {
            name: "set",
            test: "set_overrides_survive_mutations",
            seed: 0x7365_7473_0000_0007,
            default_cases: 3000,
            seeds: &seeds,
        },
        |rng, seed| {
            let n = rng.random_range(1..=3u32);
            let sets: Vec<String> = (0..n).map(|_| random_set(rng)).collect();
            Mutant {
                bytes: seed.bytes.clone(),
                ops: vec!["(the pipeline file unmutated)".into()],
                sets,
            }
        },
        |case| {
            let Ok(text) = std::str::from_utf8(&case.mutant.bytes) else {
                return Outcome::skipped();
            };
            let mut out = Outcome::default();
            out.check(
                "load_text with --set",
                layerprune::pipeline::load_text(Path::new("fuzz.toml"), text, &case.mutant.sets),
            );
            out
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Cache bundles
// ---------------------------------------------------------------------------------------------

/// The seed bundle: the binary runs tests/fixtures/pipelines/sweep.toml (test-value stages)
/// and `cache export`s the artifacts of two of its stages, as a user would.
fn make_bundle() -> Vec<u8> {
    fn run(env: &common::cli::Env, args: &[&str]) -> std::process::Output {
        let mut cmd = env.cmd(args);
        restore_address_space(&mut cmd);
        cmd.output().expect("cannot run the layerprune binary")
    }
    let env = common::cli::Env::new();
    env.write("p.toml", include_str!("fixtures/pipelines/sweep.toml"));
    let o = run(&env, &["run", "p.toml"]);
    assert!(
        o.status.success(),
        "(harness) the seed pipeline failed: {}",
        common::cli::stderr(&o)
    );
    let out = env.path("bundle.zip");
    let o = run(
        &env,
        &[
            "cache",
            "export",
            "p.toml",
            "--stage",
            "base",
            "--stage",
            "side",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(
        o.status.success(),
        "(harness) cache export failed: {}",
        common::cli::stderr(&o)
    );
    std::fs::read(&out).unwrap()
}

#[derive(Clone)]
enum EntryKind {
    File,
    Dir,
    /// A symbolic link entry to this target.
    Symlink(String),
}

#[derive(Clone)]
struct Entry {
    name: String,
    data: Vec<u8>,
    kind: EntryKind,
}

fn zip_entries(bytes: &[u8]) -> Vec<Entry> {
    let mut z =
        zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("the seed bundle is a zip");
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).expect("a readable seed entry");
            let mut data = Vec::new();
            f.read_to_end(&mut data).expect("a readable seed entry");
            Entry {
                name: f.name().to_string(),
                data,
                kind: if f.is_dir() {
                    EntryKind::Dir
                } else {
                    EntryKind::File
                },
            }
        })
        .collect()
}

/// The (kind, key) of every artifact of a bundle.
fn artifact_keys(entries: &[Entry]) -> Vec<(String, String)> {
    let set: BTreeSet<(String, String)> = entries
        .iter()
        .filter_map(|e| {
            let mut parts = e.name.splitn(3, '/');
            let (kind, key, _) = (parts.next()?, parts.next()?, parts.next()?);
            Some((kind.to_string(), key.to_string()))
        })
        .collect();
    set.into_iter().collect()
}

/// An entry name a hostile or broken bundle might hold.
fn odd_name(rng: &mut StdRng, kind: &str, key: &str) -> String {
    let short_key = &key[..key.len().min(12)];
    let names = [
        format!("{kind}/{key}/../escape"),
        "../escape".to_string(),
        "/escape".to_string(),
        format!("/{kind}/{key}/value.json"),
        format!("{kind}/{key}/"),
        format!("{kind}/{key}/a/../../../escape"),
        format!("{kind}/{key}//value.json"),
        format!("{kind}/{key}/./value.json"),
        format!("{kind}/{key}/..\\..\\escape"),
        format!("prune/{key}/value.json"),
        format!("nosuchkind/{key}/value.json"),
        format!("{kind}/{short_key}/value.json"),
        format!("{kind}/{}/value.json", key.to_uppercase()),
        format!("{kind}/{key}/sub/dir/value.json"),
        format!("{kind}/{key}/manifest.json"),
        format!("{kind}/{key}/value.json"),
        format!("{kind}/{key}/value.json\u{0}x"),
        String::new(),
        format!("{kind}/{key}/\u{e9}\u{1F600}"),
        format!("{kind}/{key}/.tmp-x"),
        format!("{kind}/.tmp-{key}-1/value.json"),
        format!("{kind}/{key}/{}x", "a/".repeat(200)),
        format!("{kind}/{}/value.json", "f".repeat(64)),
        format!("{kind}/{key}"),
        kind.to_string(),
        "C:\\escape".to_string(),
        format!("{kind}/{key}/{}", "n".repeat(300)),
        format!("{kind}/{key}/value.json/inner"),
    ];
    names[rng.random_range(0..names.len())].clone()
}

/// Write entries as a zip (each name once: the writer refuses repeats); None if it refuses.
fn write_zip(rng: &mut StdRng, entries: &[Entry], ops: &mut Vec<String>) -> Option<Vec<u8>> {
    let method = if rng.random_bool(0.5) {
        zip::CompressionMethod::Stored
    } else {
        zip::CompressionMethod::Deflated
    };
    let large = rng.random_bool(0.1);
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(method)
        .large_file(large);
    ops.push(format!(
        "written {method:?}{}",
        if large { ", zip64" } else { "" }
    ));
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let mut seen = BTreeSet::new();
    for e in entries {
        if !seen.insert(e.name.clone()) {
            ops.push(format!("(the writer cannot repeat {})", short(&e.name)));
            continue;
        }
        let r = match &e.kind {
            EntryKind::File => w
                .start_file(e.name.clone(), opts)
                .and_then(|()| w.write_all(&e.data).map_err(zip::result::ZipError::from)),
            EntryKind::Dir => w.add_directory(e.name.clone(), opts),
            EntryKind::Symlink(target) => w.add_symlink(e.name.clone(), target.clone(), opts),
        };
        if let Err(err) = r {
            ops.push(format!("(the writer refused {}: {err})", short(&e.name)));
            return None;
        }
    }
    w.finish().ok().map(|c| c.into_inner())
}

/// A bundle rebuilt from the seed's entries with 1 to 3 entry-level changes.
fn mutate_bundle_entries(
    rng: &mut StdRng,
    seed: &Seed,
    entries: &[Entry],
    keys: &[(String, String)],
) -> Mutant {
    let mut es = entries.to_vec();
    let mut ops = Vec::new();
    for _ in 0..rng.random_range(1..=3u32) {
        let (kind, key) = pick(rng, keys).clone();
        let op = rng.random_range(0..9u32);
        if es.is_empty() && !matches!(op, 3..=5) {
            continue;
        }
        match op {
            0 | 1 => {
                let i = rng.random_range(0..es.len());
                let name = odd_name(rng, &kind, &key);
                ops.push(format!(
                    "rename entry {} to {}",
                    short(&es[i].name),
                    short(&name)
                ));
                es[i].name = name;
            }
            2 => {
                let i = rng.random_range(0..es.len());
                let m = mutate_text(rng, &es[i].data, Syntax::Json);
                ops.push(format!("change the contents of {}:", short(&es[i].name)));
                ops.extend(m.ops.into_iter().map(|o| format!("  {o}")));
                es[i].data = m.bytes;
            }
            3 => {
                let name = odd_name(rng, &kind, &key);
                let data = if rng.random_bool(0.05) {
                    vec![0u8; rng.random_range(1..=4usize) << 20]
                } else {
                    random_unicode(rng, 64).into_bytes()
                };
                ops.push(format!(
                    "add a file {} of {} bytes",
                    short(&name),
                    data.len()
                ));
                es.push(Entry {
                    name,
                    data,
                    kind: EntryKind::File,
                });
            }
            4 => {
                let name = if rng.random_bool(0.5) {
                    format!("{kind}/{key}/value.json")
                } else {
                    odd_name(rng, &kind, &key)
                };
                let target = pick(
                    rng,
                    &["/etc/passwd", "../../../../escape", "value.json", "/", "."],
                )
                .to_string();
                ops.push(format!("add a symlink {} -> {target}", short(&name)));
                es.push(Entry {
                    name,
                    data: Vec::new(),
                    kind: EntryKind::Symlink(target),
                });
            }
            5 => {
                let name = odd_name(rng, &kind, &key);
                ops.push(format!("add a directory {}", short(&name)));
                es.push(Entry {
                    name,
                    data: Vec::new(),
                    kind: EntryKind::Dir,
                });
            }
            6 => {
                let i = rng.random_range(0..es.len());
                ops.push(format!("remove entry {}", short(&es[i].name)));
                es.remove(i);
            }
            7 => {
                for i in (1..es.len()).rev() {
                    let j = rng.random_range(0..=i);
                    es.swap(i, j);
                }
                ops.push("shuffle the entries".into());
            }
            _ => {
                let i = rng.random_range(0..es.len());
                ops.push(format!("repeat entry {}", short(&es[i].name)));
                let e = es[i].clone();
                es.push(e);
            }
        }
    }
    match write_zip(rng, &es, &mut ops) {
        Some(bytes) => Mutant {
            bytes,
            ops,
            sets: Vec::new(),
        },
        None => {
            let mut m = mutate_bytes(rng, &seed.bytes, &seed.hints);
            ops.push("(so the seed's bytes mutated instead:)".into());
            ops.append(&mut m.ops);
            m.ops = ops;
            m
        }
    }
}

/// Everything under `dir` (not following links): a leftover temporary directory, a symbolic
/// link, a file or directory the import did not account for.
fn check_cache_tree(
    case_dir: &Path,
    cache: &Path,
    known: &BTreeSet<(String, String)>,
    out: &mut Outcome,
) {
    // beside the bundle and the cache nothing may appear
    for e in std::fs::read_dir(case_dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name != "bundle.zip" && name != "cache" {
            out.violate(format!("the import wrote {name:?} outside the cache"));
        }
    }
    // every name in the cache: no temporary directory left, no symbolic link
    let mut stack = vec![cache.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Ok(ft) = e.file_type() else { continue };
            if name.starts_with(".tmp-") || name.starts_with(".import") {
                out.violate(format!("a leftover temporary entry {}", e.path().display()));
            }
            if ft.is_symlink() {
                out.violate(format!(
                    "a symbolic link in the cache: {}",
                    e.path().display()
                ));
            } else if ft.is_dir() {
                stack.push(e.path());
            }
        }
    }
    // the cache's top level: kind directories, and the cache's own files
    for e in std::fs::read_dir(cache).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_file() {
            if !matches!(name.as_str(), "digests.json" | "CACHEDIR.TAG") && !name.starts_with('.') {
                out.violate(format!("the import wrote {name:?} at the top of the cache"));
            }
            continue;
        }
        if !ft.is_dir() {
            continue;
        }
        // in a kind directory: lock files, and the artifacts the import reported (or that
        // were there before it)
        for a in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
            let aname = a.file_name().to_string_lossy().to_string();
            let Ok(aft) = a.file_type() else { continue };
            let lock = aft.is_file() && aname.starts_with('.') && aname.ends_with(".lock");
            let accounted = aft.is_dir() && known.contains(&(name.clone(), aname.clone()));
            if !lock && !accounted {
                out.violate(format!(
                    "the import left {name}/{aname}, which it did not report as imported"
                ));
            }
        }
    }
}

/// One bundle case: import into a fresh cache (every 5th case one that already holds the seed's
/// artifacts, every 10th with one of them damaged; every 7th with a tiny size limit), then the
/// promises: an error says something; an artifact reported as added verifies in full; nothing
/// is left that the import did not account for.
fn run_bundle(root: &Path, seed_bundle: &Path, case: &Case) -> Outcome {
    // a directory of its own per case (removed afterwards), so nothing of one case can be
    // taken for another's
    let dir = root.join(match case.number {
        Some(n) => format!("case-{n}"),
        None => format!("seed-{}", case.seed),
    });
    let _ = std::fs::remove_dir_all(&dir);
    let cache = dir.join("cache");
    std::fs::create_dir_all(&cache)
        .unwrap_or_else(|e| panic!("(harness) cannot create {}: {e}", cache.display()));
    let bundle_path = dir.join("bundle.zip");
    write_file(&bundle_path, &case.mutant.bytes);
    let mut out = Outcome::default();
    let mut known: BTreeSet<(String, String)> = BTreeSet::new();
    let n = case.number;
    if n.is_some_and(|n| n % 5 == 1) {
        match bundle::import(&cache, seed_bundle, bundle::DEFAULT_MAX_IMPORT_BYTES) {
            Ok(list) => {
                for item in list {
                    match item {
                        Imported::Added { kind, key } => {
                            known.insert((kind, key));
                        }
                        other => {
                            out.violate(format!(
                                "the unmutated bundle did not import into an empty cache: {other:?}"
                            ));
                            return out;
                        }
                    }
                }
            }
            Err(e) => {
                out.violate(format!(
                    "the unmutated bundle did not import into an empty cache: {e:#}"
                ));
                return out;
            }
        }
        if n.is_some_and(|n| n % 10 == 1) {
            if let Some((kind, key)) = known.iter().next() {
                let f = cache.join(kind).join(key).join("value.json");
                let mut bytes = std::fs::read(&f).unwrap_or_default();
                bytes.push(b' ');
                let _ = std::fs::write(&f, bytes);
            }
        }
    }
    let max = if n.is_some_and(|n| n % 7 == 3) {
        64
    } else {
        bundle::DEFAULT_MAX_IMPORT_BYTES
    };
    if let Some(list) = out.check("bundle::import", bundle::import(&cache, &bundle_path, max)) {
        let store = Store::new(&cache);
        for item in list {
            match item {
                Imported::Added { kind, key } => {
                    if !matches!(store.status(&kind, &key, true), Status::Valid(_)) {
                        out.violate(format!(
                            "{kind}/{key} was reported as imported but does not verify"
                        ));
                    }
                    known.insert((kind, key));
                }
                Imported::AlreadyCached { kind, key } => {
                    known.insert((kind, key));
                }
                Imported::Rejected { kind, key, why } => {
                    if why.trim().is_empty() {
                        out.violate(format!("{kind}/{key} was rejected with an empty reason"));
                    }
                }
            }
        }
    }
    check_cache_tree(&dir, &cache, &known, &mut out);
    if out.violation.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    out
}

/// `cache import`: the byte mutations of a real `cache export` bundle (structure-aware for the
/// zip headers), and bundles rebuilt with hostile or broken entries.
#[test]
fn cache_bundle_import_survives_mutations() {
    setup();
    let seed_bytes = make_bundle();
    let scratch = tempfile::tempdir().unwrap();
    let seed_path = scratch.path().join("seed.zip");
    write_file(&seed_path, &seed_bytes);
    let entries = zip_entries(&seed_bytes);
    let keys = artifact_keys(&entries);
    assert!(
        !keys.is_empty(),
        "(harness) the seed bundle holds no artifact"
    );
    let seeds = vec![Seed {
        name: "a cache export of tests/fixtures/pipelines/sweep.toml".into(),
        hints: zip_hints(&seed_bytes),
        bytes: seed_bytes,
    }];
    let root = scratch.path().join("cases");
    fuzz(
        Reader {
            name: "cache-bundle",
            test: "cache_bundle_import_survives_mutations",
            seed: 0x6275_6e64_0000_0008,
            default_cases: 3000,
            seeds: &seeds,
        },
        |rng, seed| {
            if rng.random_bool(0.35) {
                mutate_bundle_entries(rng, seed, &entries, &keys)
            } else {
                mutate_bytes(rng, &seed.bytes, &seed.hints)
            }
        },
        move |case| run_bundle(&root, &seed_path, case),
    );
}

// ---------------------------------------------------------------------------------------------
// The mutators themselves
// ---------------------------------------------------------------------------------------------

/// The mutators are deterministic per seed, and the structure walkers find the known fields
/// of the fixtures (so the structure-aware mutations do land on real fields).
#[test]
fn mutators_are_deterministic_and_find_the_fields() {
    let a = mutate_bytes(
        &mut StdRng::seed_from_u64(7),
        b"GGUF\x03\0\0\0abcdefgh",
        &Hints::default(),
    );
    let b = mutate_bytes(
        &mut StdRng::seed_from_u64(7),
        b"GGUF\x03\0\0\0abcdefgh",
        &Hints::default(),
    );
    assert_eq!(a.bytes, b.bytes);
    assert_eq!(a.ops, b.ops);
    assert!(!a.ops.is_empty());

    let text = b"x = 12\nname = \"abc\"\n";
    assert_eq!(number_spans(text), vec![(4, 6)]);
    assert_eq!(string_spans(text), vec![(15, 18)]);

    for p in find_files(&models_dir(), 0, &|p: &Path| has_ext(p, "gguf")) {
        let bytes = std::fs::read(&p).unwrap();
        let h = gguf_hints(&bytes);
        // header, metadata and tensor-table fields, and a hot range short of the tensor data
        assert!(
            h.fields.len() > 20,
            "{}: {} fields",
            p.display(),
            h.fields.len()
        );
        assert!(
            h.hot.end < bytes.len(),
            "{}: hot range {:?}",
            p.display(),
            h.hot
        );
    }
    for p in find_files(&models_dir(), 1, &|p: &Path| has_ext(p, "safetensors")) {
        let bytes = std::fs::read(&p).unwrap();
        let h = safetensors_hints(&bytes);
        assert!(h.hot.end > 8 && h.hot.end < bytes.len(), "{}", p.display());
        assert_eq!(bytes[8], b'{', "{}", p.display());
    }
}
