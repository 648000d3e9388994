//! Configuration errors that name where the bad value came from (file and line, environment
//! variable or --set), the key path, what was expected, and the nearest valid key.

use std::fmt;
use std::path::PathBuf;

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    File { path: PathBuf, line: Option<usize> },
    Env(String),
    Set(String),
    Defaults(String),
    Unknown,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File {
                path,
                line: Some(l),
            } => write!(f, "{}:{l}", path.display()),
            Origin::File { path, line: None } => write!(f, "{}", path.display()),
            Origin::Env(v) => write!(f, "environment variable {v}"),
            Origin::Set(s) => write!(f, "--set {s}"),
            Origin::Defaults(k) => write!(f, "stages/{k}.toml (built-in defaults)"),
            Origin::Unknown => write!(f, "configuration"),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub origin: Origin,
    /// Dotted key path, e.g. "stages.prune.fraction" (empty for whole-file errors).
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(f, "{}: {}: {}", self.origin, self.key, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// The candidate closest to `word` by edit distance, if it is close enough to be a likely typo.
pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// " (did you mean \"x\"?)" or "".
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    match nearest(word, candidates) {
        Some(c) => format!(" (did you mean \"{c}\"?)"),
        None => String::new(),
    }
}

/// The 1-based line of a dotted key path in a TOML text: exact key lines first, else the line of
/// the closest enclosing key (an inline table), else the table header.
pub fn find_line(text: &str, path: &str) -> Option<usize> {
    // an array element ("tasks[1]", or "tasks.1") is found on its array's key line
    let target: Vec<&str> = path
        .split('.')
        .map(|c| c.split('[').next().unwrap_or(c))
        .filter(|c| !c.is_empty() && !c.chars().all(|ch| ch.is_ascii_digit()))
        .collect();
    let mut table: Vec<String> = Vec::new();
    let mut best: Option<(usize, usize)> = None; // (matched components, line)
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.starts_with('[') {
            let inner = line.trim_start_matches('[').split(']').next().unwrap_or("");
            table = split_key(inner);
            let m = common_prefix(&table, &target);
            if m == table.len() && m > best.map_or(0, |b| b.0) {
                best = Some((m, i + 1));
            }
            continue;
        }
        let Some((k, _)) = line.split_once('=') else {
            continue;
        };
        let mut full = table.clone();
        full.extend(split_key(k));
        let m = common_prefix(&full, &target);
        if m == full.len() && m > best.map_or(0, |b| b.0) {
            best = Some((m, i + 1));
        }
    }
    best.map(|(_, l)| l)
}

fn split_key(k: &str) -> Vec<String> {
    k.split('.')
        .map(|p| p.trim().trim_matches('"').trim_matches('\'').to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

fn common_prefix(a: &[String], b: &[&str]) -> usize {
    a.iter()
        .zip(b)
        .take_while(|(x, y)| x.as_str() == **y)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_lines_of_keys() {
        let text = "name = \"x\"\n\n[stages.prune]\nkind = \"prune\"\nfracton = 0.1\ninputs = { model = \"load\" }\n[sweep]\nfraction = [1]\n";
        assert_eq!(find_line(text, "name"), Some(1));
        assert_eq!(find_line(text, "stages.prune.fracton"), Some(5));
        assert_eq!(find_line(text, "stages.prune.inputs.model"), Some(6));
        assert_eq!(find_line(text, "stages.prune.other"), Some(3));
        assert_eq!(find_line(text, "sweep.fraction"), Some(8));
        // array elements: the array's own line, not the table header
        assert_eq!(find_line(text, "sweep.fraction[0]"), Some(8));
        assert_eq!(find_line(text, "sweep.fraction.0"), Some(8));
        let text = "[stages.eval]\nkind = \"eval-qa\"\n\ntasks = [\"mmlu\", \"bogus\"]\n";
        assert_eq!(find_line(text, "stages.eval.tasks[1]"), Some(4));
    }

    #[test]
    fn suggests_near_keys() {
        assert_eq!(
            nearest("fracton", ["fraction", "strategy"]),
            Some("fraction")
        );
        assert_eq!(nearest("zzz", ["fraction", "strategy"]), None);
    }
}
