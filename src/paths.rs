//! Where layerprune keeps things on disk.

use std::path::PathBuf;

/// The cache root: `$LAYERPRUNE_CACHE`, else `$XDG_CACHE_HOME/layerprune`, else
/// `~/.cache/layerprune`. Holds artifacts, extracted packages and the file-digest table.
pub fn default_cache_root() -> PathBuf {
    if let Some(p) = std::env::var_os("LAYERPRUNE_CACHE").filter(|p| !p.is_empty()) {
        // "~/x" as a shell would; an unexpandable "~user" stays as written (the caller's
        // configuration checks report the pipeline's own values)
        let p = PathBuf::from(p);
        return expand_home(&p).unwrap_or(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("layerprune");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache").join("layerprune"),
        None => PathBuf::from(".layerprune-cache"),
    }
}

/// A path from a configuration value with a leading `~` expanded to $HOME, as a shell would:
/// `~` and `~/x`. `~user/x` is refused (layerprune does not look up other users), as is `~`
/// without $HOME: left alone, `~` would become a directory literally named "~" in the
/// working directory. Other paths are returned as they are (relative ones resolve against the
/// current directory, as every path on layerprune's command line does).
pub fn expand_home(path: &std::path::Path) -> Result<PathBuf, String> {
    let Some(text) = path.to_str() else {
        return Ok(path.to_path_buf());
    };
    let rest = match text.strip_prefix('~') {
        None => return Ok(path.to_path_buf()),
        Some(rest) => rest,
    };
    if !(rest.is_empty() || rest.starts_with('/')) {
        return Err(format!(
            "\"{text}\": only \"~\" and \"~/...\" are expanded (to $HOME); write the full path"
        ));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(rest.trim_start_matches('/'))),
        None => Err(format!(
            "\"{text}\": $HOME is not set, so \"~\" cannot be expanded; write the full path"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn a_leading_tilde_is_home_and_other_forms_are_refused() {
        let home = PathBuf::from(std::env::var_os("HOME").expect("HOME in tests"));
        assert_eq!(expand_home(Path::new("~")).unwrap(), home);
        assert_eq!(expand_home(Path::new("~/a/b")).unwrap(), home.join("a/b"));
        assert_eq!(expand_home(Path::new("a/~")).unwrap(), Path::new("a/~"));
        assert_eq!(expand_home(Path::new("/x")).unwrap(), Path::new("/x"));
        assert!(expand_home(Path::new("~bob/x"))
            .unwrap_err()
            .contains("only"));
    }
}
