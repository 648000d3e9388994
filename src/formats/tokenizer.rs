//! Text <-> token ids with the `tokenizers` crate, from a Hugging Face `tokenizer.json` or from
//! GGUF metadata (`tokenizer.ggml.*`, byte-level BPE as transformers converts it), or with
//! `tiktoken-rs` from Qwen v1's `qwen.tiktoken` (formats/tiktoken.rs).
//!
//! BOS follows each model's own default: the tokenizer.json post-processor (HF) or
//! `tokenizer.ggml.add_bos_token` (GGUF). SmolLM2 adds none.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};

use super::gguf::GgufFile;
use super::tiktoken::TiktokenBpe;

/// ggml token types 3 (control: special) and 4 (user defined: added whole, not special) as
/// tokenizer.json added tokens. Types: 1 normal, 2 unknown, 3 control, 4 user defined, 5 unused,
/// 6 byte.
fn added_tokens<S: AsRef<str>>(tokens: &[S], types: &[i64]) -> Vec<Value> {
    let mut added = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        let ty = types.get(id).copied().unwrap_or(1);
        if ty == 3 || ty == 4 {
            added.push(
                json!({"id": id, "content": tok.as_ref(), "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty == 3}),
            );
        }
    }
    added
}

/// The ggml token types of a GGUF vocabulary (1, normal, where absent).
fn token_types(g: &GgufFile, n: usize) -> Vec<i64> {
    match g
        .get("tokenizer.ggml.token_type")
        .and_then(|v| v.as_array())
    {
        Some(a) => a.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
        None => vec![1; n],
    }
}

/// A post-processor putting `bos` (token `bos_tok`, id `bos`) before every sequence, as
/// transformers' TemplateProcessing "<bos>:0 $A:0" (pairs: "<bos>:0 $A:0 <bos>:1 $B:1" when
/// `bos_before_pair`, else "<bos>:0 $A:0 $B:1").
fn bos_post_processor(bos_tok: &str, bos: usize, bos_before_pair: bool) -> Value {
    let mut pair = vec![
        json!({"SpecialToken": {"id": bos_tok, "type_id": 0}}),
        json!({"Sequence": {"id": "A", "type_id": 0}}),
    ];
    if bos_before_pair {
        pair.push(json!({"SpecialToken": {"id": bos_tok, "type_id": 1}}));
    }
    pair.push(json!({"Sequence": {"id": "B", "type_id": 1}}));
    json!({"type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos_tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": pair,
        "special_tokens": {bos_tok: {"id": bos_tok, "ids": [bos], "tokens": [bos_tok]}}})
}

/// The split a byte-level vocabulary's merges were learned with, by `tokenizer.ggml.pre` (as
/// transformers' GGUF loader picks it): Qwen2's (digits one by one); `None`: GPT-2's own, inside
/// `ByteLevel`.
fn pre_tokenizer_split(pre: &str) -> Option<&'static str> {
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    match pre {
        "qwen2" | "deepseek-r1-qwen" | "megrez" => Some(QWEN2),
        _ => None,
    }
}

/// Byte-level pre-tokenization: the file's split (`pre_tokenizer_split`) then bytes to the
/// byte alphabet, or GPT-2's split inside `ByteLevel`.
fn byte_level_pre_tokenizer(g: &GgufFile) -> Value {
    let pre = g.get("tokenizer.ggml.pre").and_then(|v| v.as_str());
    match pre.and_then(pre_tokenizer_split) {
        Some(split) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": split}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        ]}),
        None => {
            if let Some(other) = pre.filter(|p| !matches!(*p, "gpt-2" | "default" | "smollm")) {
                tracing::warn!(
                    "{}: tokenizer.ggml.pre = \"{other}\" has no split here; GPT-2's is used, \
                     which may split digits and spaces differently from the model's own tokenizer",
                    g.path().display()
                );
            }
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
        }
    }
}

#[derive(Clone)]
enum Engine {
    Hf(Box<tokenizers::Tokenizer>),
    Tiktoken(TiktokenBpe),
}

#[derive(Clone)]
pub struct TextTokenizer {
    engine: Engine,
    /// Whether encode() prepends a BOS token (recorded in artifacts holding token ids).
    pub adds_bos: bool,
    /// The files that describe it, for export next to a pruned model: (file name, bytes), e.g.
    /// tokenizer.json (HF, or converted from GGUF) or qwen.tiktoken.
    pub files: Vec<(String, Vec<u8>)>,
    /// Ids from this one on are refused by `encode` (the model's vocabulary; `limit_ids`).
    vocab_limit: Option<u32>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("adds_bos", &self.adds_bos)
            .finish()
    }
}

impl TextTokenizer {
    pub fn from_json_str(json: String, origin: &str) -> Result<Self> {
        // the tokenizers crate panics on some malformed files: contained, an error here
        let (inner, probe, plain) = super::contained::contain(origin, || {
            let inner = tokenizers::Tokenizer::from_bytes(json.as_bytes())
                .map_err(|e| anyhow::anyhow!("{origin}: invalid tokenizer ({e})"))?;
            // Detect whether the post-processor adds a token in front of a plain sequence.
            let probe = inner
                .encode("a", true)
                .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
            let plain = inner
                .encode("a", false)
                .map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
            Ok((inner, probe, plain))
        })?;
        let adds_bos = probe.get_ids().len() > plain.get_ids().len()
            && probe.get_ids().first() != plain.get_ids().first();
        Ok(Self {
            engine: Engine::Hf(Box::new(inner)),
            adds_bos,
            files: vec![("tokenizer.json".into(), json.into_bytes())],
            vocab_limit: None,
        })
    }

    /// Qwen v1's tokenizer from its tiktoken ranks file (no BOS).
    pub fn from_qwen_tiktoken(path: &Path) -> Result<Self> {
        let bpe = TiktokenBpe::qwen_from_file(path)?;
        let bytes =
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_else(|| "qwen.tiktoken".into());
        Ok(Self {
            engine: Engine::Tiktoken(bpe),
            adds_bos: false,
            files: vec![(name, bytes)],
            vocab_limit: None,
        })
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let json = crate::fsutil::read_capped_text(path, crate::fsutil::caps::TOKENIZER)?;
        Self::from_json_str(json, &path.display().to_string())
    }

    /// Build the tokenizer described by GGUF metadata: `gpt2` (byte-level BPE), or the
    /// SentencePiece `llama` kind of Gemma files (built as transformers' GGUF loader does).
    pub fn from_gguf(g: &GgufFile) -> Result<Self> {
        let origin = g.path().display().to_string();
        let model = g.require_str("tokenizer.ggml.model")?;
        let arch = g.get("general.architecture").and_then(|v| v.as_str());
        if model == "llama" && matches!(arch, Some("gemma" | "gemma2" | "gemma3")) {
            return Self::gemma_from_gguf(g, &origin);
        }
        if model != "gpt2" {
            bail!(
                "{origin}: tokenizer.ggml.model = \"{model}\" is not supported (supported: gpt2, the byte-level BPE); \
                 use a Hugging Face directory with tokenizer.json instead"
            );
        }
        let tokens = g.require_str_array("tokenizer.ggml.tokens")?;
        let merges = g.require_str_array("tokenizer.ggml.merges")?;
        let types = token_types(g, tokens.len());
        let mut vocab = Map::new();
        for (id, tok) in tokens.iter().enumerate() {
            vocab.insert(tok.to_string(), json!(id));
        }
        let added = added_tokens(&tokens, &types);
        let add_bos = g
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let post_processor = if add_bos {
            let bos = g.require_u64("tokenizer.ggml.bos_token_id")? as usize;
            let bos_tok = tokens
                .get(bos)
                .with_context(|| format!("{origin}: bos_token_id {bos} out of range"))?;
            bos_post_processor(bos_tok, bos, false)
        } else {
            Value::Null
        };
        let tokenizer = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": byte_level_pre_tokenizer(g),
            "post_processor": post_processor,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges},
        });
        Self::from_json_str(tokenizer.to_string(), &origin)
    }

    /// Gemma's SentencePiece vocabulary from GGUF, as transformers' `gemma_tokenizer` builds it:
    /// tokens of only spaces respelled with "▁", merges rebuilt from the vocabulary (every split
    /// of a token into two tokens, ranked by the token's position in the file, then longer left
    /// and right pieces), BPE with byte fallback and fused unknowns, spaces normalised to "▁",
    /// control tokens special, user-defined tokens added whole, BOS as the file says.
    fn gemma_from_gguf(g: &GgufFile, origin: &str) -> Result<Self> {
        let raw = g.require_str_array("tokenizer.ggml.tokens")?;
        let tokens: Vec<String> = raw
            .iter()
            .map(|t| {
                if t.contains(' ') && t.trim().is_empty() {
                    "\u{2581}".repeat(t.chars().count())
                } else {
                    t.to_string()
                }
            })
            .collect();
        let types = token_types(g, tokens.len());
        // Python dict semantics: a repeated token keeps its first position, takes the last id
        let mut id_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        let mut order: Vec<&str> = Vec::new();
        for (id, t) in tokens.iter().enumerate() {
            if id_of.insert(t.as_str(), id).is_none() {
                order.push(t.as_str());
            }
        }
        // (left, right, score = -position of the merged token); stable sorts as Python's
        let mut merges: Vec<(&str, &str, i64)> = Vec::new();
        for &merged in &order {
            let score = -(id_of[merged] as i64);
            let bounds: Vec<usize> = merged.char_indices().map(|(i, _)| i).skip(1).collect();
            let mut local: Vec<(&str, &str, i64)> = bounds
                .iter()
                .filter_map(|&i| {
                    let (l, r) = merged.split_at(i);
                    (id_of.contains_key(l) && id_of.contains_key(r)).then_some((l, r, score))
                })
                .collect();
            local.sort_by_key(|(l, r, _)| (id_of[l], id_of[r]));
            merges.extend(local);
        }
        // sorted by (score, len(left), len(right)) descending, lengths in characters; stable
        merges.sort_by(|a, b| {
            let key = |m: &(&str, &str, i64)| (m.2, m.0.chars().count(), m.1.chars().count());
            key(b).cmp(&key(a))
        });
        let mut vocab = Map::new();
        for &t in &order {
            vocab.insert(t.to_string(), json!(id_of[t]));
        }
        let merges_json: Vec<Value> = merges.iter().map(|(l, r, _)| json!([l, r])).collect();
        let special_id = |key: &str| g.get(key).and_then(|v| v.as_u64()).map(|x| x as usize);
        let name_of = |id: Option<usize>, default: &str| {
            id.and_then(|i| tokens.get(i).cloned())
                .unwrap_or_else(|| default.to_string())
        };
        let unk = name_of(special_id("tokenizer.ggml.unknown_token_id"), "<unk>");
        let added = added_tokens(&tokens, &types);
        let add_bos = g
            .get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        let post_processor = if add_bos {
            let bos = special_id("tokenizer.ggml.bos_token_id")
                .with_context(|| format!("{origin}: add_bos_token without bos_token_id"))?;
            bos_post_processor(&name_of(Some(bos), "<bos>"), bos, true)
        } else {
            Value::Null
        };
        let tokenizer = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
            "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false},
            "post_processor": post_processor,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"}]},
            "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                "vocab": vocab, "merges": merges_json},
        });
        Self::from_json_str(tokenizer.to_string(), origin)
    }

    /// Token ids of `text`, with the model's default special tokens (BOS where the model adds one).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, true)
    }

    /// Token ids with or without the model's special tokens (tiktoken: never a BOS; special
    /// tokens written in the text are always themselves, as QWenTokenizer does).
    pub fn encode_with(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let ids = match &self.engine {
            Engine::Hf(t) => {
                let enc = t
                    .encode(text, add_special_tokens)
                    .map_err(|e| anyhow::anyhow!("tokenizing failed: {e}"))?;
                enc.get_ids().to_vec()
            }
            Engine::Tiktoken(t) => t.encode(text)?,
        };
        if let Some(limit) = self.vocab_limit {
            if let Some(&id) = ids.iter().find(|&&id| id >= limit) {
                bail!(
                    "the tokenizer produced token id {id} ({:?}), beyond the model's vocabulary \
                     of {limit} embedding rows: the tokenizer does not belong to this model",
                    self.id_to_token(id).unwrap_or_default()
                );
            }
        }
        Ok(ids)
    }

    /// Refuse, from now on, any id at or beyond `vocab_size` (the model's embedding rows):
    /// every id `encode` returns then indexes the embedding.
    pub fn limit_ids(&mut self, vocab_size: usize) {
        self.vocab_limit = Some(u32::try_from(vocab_size).unwrap_or(u32::MAX));
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.engine {
            Engine::Hf(t) => t
                .decode(ids, false)
                .map_err(|e| anyhow::anyhow!("decoding failed: {e}")),
            Engine::Tiktoken(t) => t.decode(ids),
        }
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match &self.engine {
            Engine::Hf(t) => t.token_to_id(token),
            Engine::Tiktoken(t) => t.token_to_id(token),
        }
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match &self.engine {
            Engine::Hf(t) => t.id_to_token(id),
            Engine::Tiktoken(t) => t.id_to_token(id),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match &self.engine {
            Engine::Hf(t) => t.get_vocab_size(true),
            Engine::Tiktoken(t) => t.vocab_size(),
        }
    }
}
