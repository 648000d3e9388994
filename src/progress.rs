//! Progress for long work: an indicatif bar when stderr is a terminal, otherwise plain log lines
//! (at most one per 10% of the work), so cron logs stay readable.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    len: u64,
    pos: u64,
    next_log: u64,
    start: Instant,
}

impl Progress {
    pub fn new(len: u64, label: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(len);
            b.set_style(
                ProgressStyle::with_template("{msg:24} [{bar:40}] {pos}/{len} ({eta} left)")
                    .unwrap()
                    .progress_chars("=> "),
            );
            b.set_message(label.to_string());
            b
        });
        if bar.is_none() {
            tracing::info!("{label}: 0/{len}");
        }
        Self {
            bar,
            label: label.to_string(),
            len,
            pos: 0,
            next_log: len.div_ceil(10).max(1),
            start: Instant::now(),
        }
    }

    pub fn inc(&mut self, n: u64) {
        self.pos += n;
        match &self.bar {
            Some(b) => b.inc(n),
            None => {
                if self.pos >= self.next_log || self.pos == self.len {
                    tracing::info!(
                        "{}: {}/{} ({:.0} s)",
                        self.label,
                        self.pos,
                        self.len,
                        self.start.elapsed().as_secs_f64()
                    );
                    self.next_log = self.pos + self.len.div_ceil(10).max(1);
                }
            }
        }
    }

    pub fn finish(self) {
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}
