//! Where layerprune keeps things on disk.

use std::path::PathBuf;

/// The cache root: `$LAYERPRUNE_CACHE`, else `$XDG_CACHE_HOME/layerprune`, else
/// `~/.cache/layerprune`. Holds artifacts, extracted packages and the file-digest table.
pub fn default_cache_root() -> PathBuf {
    if let Some(p) = std::env::var_os("LAYERPRUNE_CACHE").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(p).join("layerprune");
    }
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".cache").join("layerprune"),
        None => PathBuf::from(".layerprune-cache"),
    }
}
