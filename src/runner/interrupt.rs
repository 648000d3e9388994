//! What SIGINT (Ctrl-C) and SIGTERM (Slurm and cron at a time limit, `kill`) do to `run`: the
//! run stops where it is, records itself, removes its temporary job directories and exits 130 /
//! 143 (128 + the signal's number, as shells report a process a signal ended).
//!
//! Jobs compute in the main thread with no points where they could be cancelled (a stage's `run`
//! can compute for minutes), so a signal is not turned into a flag for jobs to poll: a thread of
//! its own waits for the signals (`install`) and, on the first one, runs the command's hook
//! (`set_hook`; `run` writes jobs.csv, STALE.md and runs.csv from its `RunJournal`), removes the
//! temporary directories of the jobs computing (`register_tmp`, called by `Store::begin`) and
//! ends the process. Nothing a job half wrote is left behind, the next run resumes from the
//! artifacts that were published, and the locks (the pipeline's and each key's, all flock) are
//! released by the OS when the process exits. A second signal while that cleanup runs ends the
//! process at once, with the same code.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard, Once};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// What a command runs on the first signal, before the temporary directories are removed and
/// the process exits; it is given the signal's number. It runs on the signal thread while the
/// main thread goes on computing, so it must only read shared state (e.g. a `RunJournal`).
pub type Hook = Box<dyn FnOnce(i32) + Send>;

/// The temporary directories (`.tmp-<key>-<pid>`) of the jobs computing now.
static TMP_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// The command's hook. The signal thread holds this lock from taking the hook until the process
/// exits, so a command clearing the hook meanwhile waits for the end instead of recording the
/// run a second time.
static HOOK: Mutex<Option<Hook>> = Mutex::new(None);
static INSTALL: Once = Once::new();
/// The first signal received (0: none yet).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// A lock that a panic elsewhere does not make unusable (the registry stays consistent: every
/// change is a single push, retain or take).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The exit code of a process a signal stopped: 128 + its number (130 for SIGINT, 143 for
/// SIGTERM), as shells and Slurm report it.
pub fn exit_code(signum: i32) -> u8 {
    u8::try_from(128 + signum).unwrap_or(u8::MAX)
}

/// The signal's name for messages and records: "SIGINT", "SIGTERM".
pub fn signal_name(signum: i32) -> &'static str {
    match signum {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// A job's temporary directory now exists: removed if a signal stops the process before the
/// job publishes it or drops it (`unregister_tmp`).
pub fn register_tmp(path: &Path) {
    let mut dirs = lock(&TMP_DIRS);
    if !dirs.iter().any(|d| d == path) {
        dirs.push(path.to_path_buf());
    }
}

/// The temporary directory was moved into place or removed: nothing left to clean up.
pub fn unregister_tmp(path: &Path) {
    lock(&TMP_DIRS).retain(|d| d != path);
}

/// Set the hook the first signal runs (replacing any earlier one).
pub fn set_hook(hook: Hook) {
    *lock(&HOOK) = Some(hook);
}

/// Remove the hook: a signal from now on only removes the temporary directories and exits.
/// Waits (until the process exits) if a signal's hook is running.
pub fn clear_hook() {
    lock(&HOOK).take();
}

/// Remove the hook and run `f` (a command writing its own records) with the reaction to a
/// signal held off until `f` returns: the run is recorded once, by the hook or by `f`, never by
/// both nor half by one of them. A signal arriving meanwhile then removes the temporary
/// directories and exits. `f` must not call `set_hook` or `clear_hook` (it would wait for
/// itself).
pub fn clear_hook_while<T>(f: impl FnOnce() -> T) -> T {
    let mut hook = lock(&HOOK);
    hook.take();
    let out = f();
    drop(hook);
    out
}

/// Watch for SIGINT and SIGTERM from now on (idempotent): on the first one, the hook, the
/// temporary directories removed, exit 128 + the signal's number. The watch is set up before
/// this returns; if it cannot be, the signals keep their default action (a warning says so).
pub fn install() {
    INSTALL.call_once(|| {
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(), String>>(1);
        // the signals are registered on the thread itself, so that nothing is registered
        // (leaving the signals with no one to read them) when the thread cannot start
        let spawned = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut signals = match Signals::new([SIGINT, SIGTERM]) {
                    Ok(s) => {
                        let _ = ready_tx.send(Ok(()));
                        s
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                for signum in signals.forever() {
                    on_signal(signum);
                }
            });
        let ready = match spawned {
            Ok(_) => ready_rx
                .recv()
                .unwrap_or_else(|_| Err("the signal thread ended".into())),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = ready {
            tracing::warn!(
                "cannot watch for SIGINT and SIGTERM ({e}): a run they stop will not record itself"
            );
        }
    });
}

/// A signal arrived (on the signal thread): the first starts the cleanup on a thread of its
/// own, so that this one can still see a second, which ends the process at once.
fn on_signal(signum: i32) {
    if let Err(first) = RECEIVED.compare_exchange(0, signum, Ordering::SeqCst, Ordering::SeqCst) {
        // SAFETY: _exit ends the process without running anything more (no exit handlers, no
        // flushing, no waiting for the cleanup that holds locks): what a second signal asks for.
        unsafe { libc::_exit(i32::from(exit_code(first))) };
    }
    let cleanup = std::thread::Builder::new()
        .name("interrupt".into())
        .spawn(move || stop(signum));
    if cleanup.is_err() {
        stop(signum);
    }
}

/// Record (the hook), clean up and exit with 128 + `signum`. Never returns.
fn stop(signum: i32) {
    let code = exit_code(signum);
    // held until the process exits: see HOOK
    let mut hook = lock(&HOOK);
    match hook.take() {
        Some(h) => {
            // a panicking hook must not keep the process from cleaning up and exiting
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || h(signum)));
        }
        None => tracing::warn!("interrupted by {}: stopping", signal_name(signum)),
    }
    remove_tmp_dirs();
    // The flock locks (the pipeline's run lock, each computing key's lock) are released by the
    // OS when the process exits, with its file descriptors: nothing to unlock here.
    std::process::exit(i32::from(code));
}

/// Remove every registered temporary directory; a directory registered meanwhile is taken in
/// a further pass.
fn remove_tmp_dirs() {
    for _ in 0..3 {
        let dirs = std::mem::take(&mut *lock(&TMP_DIRS));
        if dirs.is_empty() {
            return;
        }
        remove_dirs(&dirs);
    }
}

/// Remove each directory with its contents. The job may still be writing into one (it goes on
/// in the main thread until the exit), so a removal that fails is tried again.
fn remove_dirs(dirs: &[PathBuf]) {
    for dir in dirs {
        for attempt in 0..5 {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if attempt == 4 => {
                    tracing::warn!("cannot remove {}: {e}", dir.display());
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::exit;

    #[test]
    fn exit_codes_and_names_follow_the_shell_convention() {
        assert_eq!(exit_code(SIGINT), 130);
        assert_eq!(exit_code(SIGTERM), 143);
        assert_eq!(exit_code(SIGINT), exit::INTERRUPTED_SIGINT);
        assert_eq!(exit_code(SIGTERM), exit::INTERRUPTED_SIGTERM);
        assert_eq!(signal_name(SIGINT), "SIGINT");
        assert_eq!(signal_name(SIGTERM), "SIGTERM");
    }

    // The registry is process-wide and other tests' jobs register in it too: this test touches
    // only its own entries (never `remove_tmp_dirs`, which would take theirs).
    #[test]
    fn the_registry_lists_a_directory_once_until_unregistered_and_removal_takes_it_all() {
        let root = tempfile::tempdir().unwrap();
        let (a, b) = (root.path().join(".tmp-a-1"), root.path().join(".tmp-b-1"));
        let listed = |d: &Path| lock(&TMP_DIRS).iter().filter(|x| x.as_path() == d).count();
        for d in [&a, &b] {
            std::fs::create_dir_all(d.join("sub")).unwrap();
            std::fs::write(d.join("sub").join("f"), "x").unwrap();
            register_tmp(d);
        }
        register_tmp(&a);
        assert_eq!(listed(a.as_path()), 1);
        unregister_tmp(&b);
        assert_eq!(listed(b.as_path()), 0);
        remove_dirs(&[a.clone(), root.path().join(".tmp-gone-1")]);
        unregister_tmp(&a);
        assert!(!a.exists());
        assert!(b.join("sub").join("f").exists());
    }
}
