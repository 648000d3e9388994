//! Third-party parsers run on untrusted bytes, contained: a panic inside one (the `tokenizers`
//! crate unwraps while deserialising some malformed tokenizer.json files, found by
//! tests/fuzz_readers.rs) becomes an error naming the file, not a crash, and prints nothing
//! (the panic hook stays quiet for panics caught here, on this thread only).

use std::cell::Cell;
use std::sync::Once;

use anyhow::Result;

thread_local! {
    /// Whether this thread is inside `contain` (its panics are reported as errors).
    static CONTAINED: Cell<bool> = const { Cell::new(false) };
}

/// Install, once, a panic hook that stays silent for contained panics and defers to the
/// previous hook for every other.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CONTAINED.with(Cell::get) {
                previous(info);
            }
        }));
    });
}

/// Run `f`; a panic inside it is an error "`what`: ... (the parser panicked: message)".
pub fn contain<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    install_hook();
    let was = CONTAINED.with(|c| c.replace(true));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(was));
    match outcome {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("no message");
            anyhow::bail!("{what}: malformed input (the parser panicked: {message})")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_is_an_error_and_other_results_pass_through() {
        let e = contain::<()>("x.json", || panic!("boom")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "x.json: malformed input (the parser panicked: boom)"
        );
        assert_eq!(contain("y", || Ok(3)).unwrap(), 3);
        assert!(contain::<()>("z", || anyhow::bail!("plain")).is_err());
        // the flag is restored: a later panic outside would reach the previous hook
        assert!(!CONTAINED.with(Cell::get));
    }
}
