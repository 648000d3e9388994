//! Qwen v1's tokenizer: a tiktoken BPE ranks file (`qwen.tiktoken`: one "base64(token) rank"
//! per line) with Qwen's split pattern and special tokens, as tokenization_qwen.py of
//! Qwen/Qwen-7B builds it. The BPE itself is the `tiktoken-rs` crate's.
//!
//! Encoding: the text is NFC-normalised first, and special tokens written in the text are
//! encoded as themselves (QWenTokenizer.tokenize: `allowed_special="all"`). No BOS is added.
//! Special tokens ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|extra_0|>" ..
//! "<|extra_204|>") take the ids after the ranks; for Qwen's own file (151643 ranks) that is
//! 151643.., the ids upstream hard-codes.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use tiktoken_rs::CoreBPE;
use unicode_normalization::UnicodeNormalization;

/// Qwen's pre-tokenizer pattern (tokenization_qwen.py, PAT_STR).
pub const QWEN_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen's special tokens in id order.
pub fn qwen_special_tokens() -> Vec<String> {
    let mut v: Vec<String> = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.extend((0..205).map(|i| format!("<|extra_{i}|>")));
    v
}

#[derive(Clone)]
pub struct TiktokenBpe {
    bpe: Arc<CoreBPE>,
    /// id -> token bytes (ranks and special tokens).
    tokens: Arc<Vec<Vec<u8>>>,
    specials: Arc<HashMap<String, u32>>,
}

impl TiktokenBpe {
    /// Read a tiktoken ranks file and add Qwen's special tokens after its ranks.
    pub fn qwen_from_file(path: &Path) -> Result<Self> {
        let text = crate::fsutil::read_capped_text(path, crate::fsutil::caps::TOKENIZER)?;
        // ranks are 0..N without gaps, so none can reach the number of lines: a larger one is
        // refused before anything is allocated for it
        let lines = text.lines().count();
        let mut by_rank: Vec<Option<Vec<u8>>> = Vec::new();
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        for (n, line) in text.lines().enumerate() {
            if line.is_empty() {
                continue;
            }
            let bad = |why: &str| {
                format!(
                    "{}:{}: {why} (expected \"<base64 token> <rank>\")",
                    path.display(),
                    n + 1
                )
            };
            let (tok, rank) = line.split_once(' ').with_context(|| bad("no rank"))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(tok)
                .with_context(|| bad("the token is not base64"))?;
            let rank: usize = rank
                .trim()
                .parse()
                .with_context(|| bad("the rank is not a non-negative integer"))?;
            if rank >= lines {
                bail!(
                    "{}",
                    bad(&format!(
                        "rank {rank} is beyond the file's {lines} lines (ranks must be 0..N)"
                    ))
                );
            }
            if rank >= by_rank.len() {
                by_rank.resize(rank + 1, None);
            }
            if by_rank[rank].is_some() {
                bail!("{}", bad(&format!("rank {rank} appears twice")));
            }
            if !seen.insert(bytes.clone()) {
                bail!("{}", bad("this token appears twice"));
            }
            by_rank[rank] = Some(bytes);
        }
        if let Some(gap) = by_rank.iter().position(|t| t.is_none()) {
            bail!(
                "{}: rank {gap} is missing (ranks must be 0..N)",
                path.display()
            );
        }
        let mut tokens: Vec<Vec<u8>> = by_rank.into_iter().flatten().collect();
        if tokens.len() < 256 {
            bail!(
                "{}: {} ranks; a byte-level BPE file has at least the 256 single bytes",
                path.display(),
                tokens.len()
            );
        }
        let first_special = tokens.len() as u32;
        let specials: HashMap<String, u32> = qwen_special_tokens()
            .into_iter()
            .enumerate()
            .map(|(i, s)| (s, first_special + i as u32))
            .collect();
        let bpe = CoreBPE::new(
            tokens
                .iter()
                .enumerate()
                .map(|(r, t)| (t.clone(), r as u32))
                .collect(),
            specials.iter().map(|(s, &id)| (s.clone(), id)).collect(),
            QWEN_PATTERN,
        )
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let mut special_list: Vec<(&String, &u32)> = specials.iter().collect();
        special_list.sort_by_key(|(_, &id)| id);
        tokens.extend(special_list.iter().map(|(s, _)| s.as_bytes().to_vec()));
        Ok(Self {
            bpe: Arc::new(bpe),
            tokens: Arc::new(tokens),
            specials: Arc::new(specials),
        })
    }

    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let text: String = text.nfc().collect();
        let allowed: HashSet<&str> = self.specials.keys().map(|s| s.as_str()).collect();
        let (ids, _) = self
            .bpe
            .encode(&text, &allowed)
            .map_err(|e| anyhow::anyhow!("tokenizing failed: {e}"))?;
        Ok(ids)
    }

    /// The text of `ids`; bytes that are not UTF-8 become U+FFFD (errors="replace").
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let mut bytes = Vec::new();
        for &id in ids {
            let t = self
                .tokens
                .get(id as usize)
                .with_context(|| format!("token id {id} is outside the vocabulary"))?;
            bytes.extend_from_slice(t);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        if let Some(&id) = self.specials.get(token) {
            return Some(id);
        }
        self.tokens
            .iter()
            .position(|t| t == token.as_bytes())
            .map(|i| i as u32)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.tokens
            .get(id as usize)
            .map(|t| String::from_utf8_lossy(t).into_owned())
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }
}
