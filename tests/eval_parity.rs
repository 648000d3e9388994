//! Evaluation against Hugging Face transformers and lm-evaluation-harness rules (fixtures made
//! by tests/fixtures/make_fixtures.py with lm_eval 0.4.13's task YAMLs): the exact prompt
//! strings of each task, the harness's context/continuation token split, and per-request
//! log-likelihoods within 1e-4 relative (|ours - ref| <= 1e-4 * max(1, |ref|)); the paper's
//! next-token scoring; the validation loss; the angular distances and the other criteria (all-token
//! cosines, greedy removal by loss); a pruned model's logits.

mod common;

use burn::tensor::DType;
use common::{fixtures, read_reference, rel_err, B};
use layerprune::data::tasks::{
    item_from_row, mmlu_cloze_item, mmlu_cloze_prefix, mmlu_item, mmlu_prefix, McItem, TaskName,
};
use layerprune::eval::harness::encode_pair;
use layerprune::eval::loglik::{next_token_logprobs, score, score_sets, Request, ScoreOptions};
use layerprune::model::to_f32_vec;
use layerprune::model::{Capture, Logits, ModelFiles, TokenBatch, Transformer};
use layerprune::source;
use serde_json::Value;

fn tiny() -> (ModelFiles, Transformer<B>) {
    let cache = common::temp_cache();
    let files = ModelFiles::open(
        source::resolve_str(
            fixtures().join("models/tiny-llama").to_str().unwrap(),
            cache.path(),
        )
        .unwrap(),
    )
    .unwrap();
    let model = files.build::<B>(&Default::default(), DType::F32).unwrap();
    (files, model)
}

fn fixture(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("reference").join(name)).unwrap())
        .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn task_of(name: &str) -> TaskName {
    serde_json::from_value(Value::String(name.into())).unwrap()
}

/// Our item for a fixture entry, built from the same dataset row(s).
fn build_item(entry: &Value) -> McItem {
    let task = task_of(entry["task"].as_str().unwrap());
    let index = entry["index"].as_u64().unwrap() as usize;
    if task.is_mmlu() {
        let subject = entry["subject"].as_str().unwrap();
        let shots = entry["shots"].as_u64().unwrap() as usize;
        let dev: Vec<Value> = entry
            .get("fewshot_rows")
            .and_then(|v| v.as_array())
            .cloned()
            .unwrap_or_default();
        if task == TaskName::MmluCloze {
            let prefix = mmlu_cloze_prefix(subject, &dev, shots, "fixture").unwrap();
            mmlu_cloze_item(subject, &prefix, &entry["row"], index, "fixture").unwrap()
        } else {
            let prefix = mmlu_prefix(subject, &dev, shots, "fixture").unwrap();
            mmlu_item(subject, &prefix, &entry["row"], index, "fixture").unwrap()
        }
    } else {
        item_from_row(task, &entry["row"], index, "fixture").unwrap()
    }
}

fn opts(batch_size: usize, workers: usize, shared_prefix: bool) -> ScoreOptions {
    ScoreOptions {
        batch_size,
        workers,
        shared_prefix,
        max_length: 100_000,
        pad_id: 0,
    }
}

#[test]
fn prompts_token_splits_and_logliks_match_the_harness() {
    let (files, model) = tiny();
    let fx = fixture("eval-tiny-llama.json");
    let entries = fx["items"].as_array().unwrap();
    let tasks: std::collections::BTreeSet<&str> = entries
        .iter()
        .map(|e| e["task"].as_str().unwrap())
        .collect();
    assert_eq!(
        tasks.len(),
        layerprune::data::tasks::TASKS.len(),
        "every task is covered: {tasks:?}"
    );
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for e in entries {
        let item = build_item(e);
        let what = format!("{} #{} ({}-shot)", e["task"], e["index"], e["shots"]);
        // the exact prompt strings
        let contexts: Vec<String> = e["contexts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(item.contexts, contexts, "{what}: contexts");
        assert_eq!(
            item.gold as u64,
            e["gold"].as_u64().unwrap(),
            "{what}: gold"
        );
        let reqs = e["requests"].as_array().unwrap();
        let ours = item.requests();
        assert_eq!(ours.len(), reqs.len(), "{what}: number of requests");
        for (k, (r, (ctx, cont))) in reqs.iter().zip(&ours).enumerate() {
            assert_eq!(
                cont,
                r["continuation"].as_str().unwrap(),
                "{what}: continuation {k}"
            );
            let context_index = r["context_index"].as_u64().unwrap_or(0) as usize;
            assert_eq!(
                ctx,
                &contexts[context_index.min(contexts.len() - 1)],
                "{what}: context of request {k}"
            );
            // the harness's split into context and continuation tokens
            let req = encode_pair(&files.tokenizer, ctx, cont).unwrap();
            assert_eq!(
                req.context,
                ids(&r["context_ids"]),
                "{what}: context ids {k}"
            );
            assert_eq!(
                req.continuation,
                ids(&r["continuation_ids"]),
                "{what}: continuation ids {k}"
            );
            requests.push(req);
            expected.push((
                r["loglik"].as_f64().unwrap(),
                r["is_greedy"].as_bool().unwrap(),
                what.clone(),
            ));
        }
        // acc_norm denominators: characters of the choice strings
        if let Some(chars) = e.get("choice_chars").and_then(|v| v.as_array()) {
            let ours: Vec<u64> = item
                .choices
                .iter()
                .map(|c| c.chars().count() as u64)
                .collect();
            assert_eq!(
                ours,
                chars
                    .iter()
                    .map(|v| v.as_u64().unwrap())
                    .collect::<Vec<_>>(),
                "{what}: choice lengths"
            );
        }
    }
    // one batched call and one request at a time give the reference values
    for o in [opts(4, 1, false), opts(1, 1, false), opts(3, 2, false)] {
        let scored = score(&model, &requests, &o).unwrap();
        for (s, (ll, greedy, what)) in scored.iter().zip(&expected) {
            assert!(
                (s.loglik - ll).abs() <= 1e-4 * ll.abs().max(1.0),
                "{what}: loglik {} vs {ll} ({o:?})",
                s.loglik
            );
            assert_eq!(s.greedy, *greedy, "{what}: is_greedy");
        }
    }
}

/// MMLU 5-shot items of a subject share their exemplars: scored through a cached prefix they
/// give the same log-likelihoods as full recomputation (and as transformers).
#[test]
fn shared_prefix_scoring_equals_full_scoring() {
    let (_, model) = tiny();
    let fx = fixture("eval-tiny-llama.json");
    for subject in ["abstract_algebra", "high_school_geography"] {
        let entries: Vec<&Value> = fx["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["task"] == "mmlu" && e["shots"] == 5 && e["subject"] == subject)
            .collect();
        assert_eq!(entries.len(), 3);
        let mut requests: Vec<Request> = Vec::new();
        let mut expected = Vec::new();
        for e in &entries {
            for r in e["requests"].as_array().unwrap() {
                requests.push(Request {
                    context: ids(&r["context_ids"]),
                    continuation: ids(&r["continuation_ids"]),
                });
                expected.push(r["loglik"].as_f64().unwrap());
            }
        }
        let shared = score(&model, &requests, &opts(2, 1, true)).unwrap();
        let full = score(&model, &requests, &opts(2, 1, false)).unwrap();
        for ((a, b), ll) in shared.iter().zip(&full).zip(&expected) {
            assert!(
                (a.loglik - b.loglik).abs() < 1e-4,
                "{subject}: shared {} vs full {}",
                a.loglik,
                b.loglik
            );
            assert!(
                (a.loglik - ll).abs() <= 1e-4 * ll.abs().max(1.0),
                "{subject}: shared {} vs transformers {ll}",
                a.loglik
            );
        }
    }
}

/// Subjects scored as request sets, side by side on two workers (shared few-shot prefixes) or
/// pooled into common batches (0-shot), give transformers' log-likelihoods in set order.
#[test]
fn subjects_scored_as_sets_match_transformers() {
    let (_, model) = tiny();
    let fx = fixture("eval-tiny-llama.json");
    for shots in [0, 5] {
        let mut sets: Vec<Vec<Request>> = Vec::new();
        let mut expected: Vec<Vec<f64>> = Vec::new();
        for subject in ["abstract_algebra", "high_school_geography"] {
            let mut reqs = Vec::new();
            let mut lls = Vec::new();
            for e in
                fx["items"].as_array().unwrap().iter().filter(|e| {
                    e["task"] == "mmlu" && e["shots"] == shots && e["subject"] == subject
                })
            {
                for r in e["requests"].as_array().unwrap() {
                    reqs.push(Request {
                        context: ids(&r["context_ids"]),
                        continuation: ids(&r["continuation_ids"]),
                    });
                    lls.push(r["loglik"].as_f64().unwrap());
                }
            }
            assert!(!reqs.is_empty(), "fixture has {subject} {shots}-shot");
            sets.push(reqs);
            expected.push(lls);
        }
        let done = std::sync::atomic::AtomicUsize::new(0);
        let scored = score_sets(&model, &sets, &opts(2, 2, shots > 0), &|| {
            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .unwrap();
        assert_eq!(done.into_inner(), sets.len());
        assert_eq!(scored.len(), sets.len());
        for (got, want) in scored.iter().zip(&expected) {
            assert_eq!(got.len(), want.len());
            for (a, ll) in got.iter().zip(want) {
                assert!(
                    (a.loglik - ll).abs() <= 1e-4 * ll.abs().max(1.0),
                    "{shots}-shot: {} vs transformers {ll}",
                    a.loglik
                );
            }
        }
    }
}

#[test]
fn paper_scoring_matches_next_token_logprobs() {
    let (files, model) = tiny();
    let fx = fixture("eval-tiny-llama.json");
    let mut checked = 0;
    for e in fx["items"].as_array().unwrap() {
        let Some(paper) = e.get("paper") else {
            continue;
        };
        let cand = ids(&paper["candidate_ids"]);
        let texts: Vec<String> = paper["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        for (t, &id) in texts.iter().zip(&cand) {
            assert_eq!(
                *files
                    .tokenizer
                    .encode_with(t, false)
                    .unwrap()
                    .last()
                    .unwrap(),
                id,
                "candidate {t:?}"
            );
        }
        let ctx = files
            .tokenizer
            .encode(e["contexts"][0].as_str().unwrap())
            .unwrap();
        let lp = next_token_logprobs(&model, &[ctx], &cand, &opts(4, 1, false)).unwrap();
        let reference: Vec<f64> = paper["logprobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        for (a, b) in lp[0].iter().zip(&reference) {
            assert!((a - b).abs() < 1e-4, "{}: {a} vs {b}", e["task"]);
        }
        checked += 1;
    }
    assert!(checked >= 9, "paper variants checked: {checked}");
}

#[test]
fn validation_loss_matches_transformers() {
    let (_, model) = tiny();
    let fx = fixture("loss-tiny-llama.json");
    let windows: Vec<Vec<u32>> = fx["windows"].as_array().unwrap().iter().map(ids).collect();
    for workers in [1, 2] {
        let per = layerprune::eval::loss::window_losses(&model, &windows, 3, workers).unwrap();
        let total: f64 = per.iter().map(|(s, _)| s).sum();
        let n: usize = per.iter().map(|(_, n)| n).sum();
        assert_eq!(n, 4 * 15);
        let loss = total / n as f64;
        let reference = fx["loss"].as_f64().unwrap();
        assert!(
            ((loss - reference) / reference).abs() < 1e-4,
            "loss {loss} vs {reference}"
        );
        for ((s, n), r) in per.iter().zip(fx["loss_per_window"].as_array().unwrap()) {
            let r = r.as_f64().unwrap();
            assert!(((s / *n as f64 - r) / r).abs() < 1e-4);
        }
    }
}

#[test]
fn angular_distances_match_transformers() {
    let (_, model) = tiny();
    let fx = fixture("similarity-tiny-llama.json");
    let rows: Vec<Vec<u32>> = fx["rows"].as_array().unwrap().iter().map(ids).collect();
    for (batch, workers) in [(6, 1), (4, 2), (1, 1)] {
        let d = layerprune::method::similarity::measure(&model, &rows, batch, workers, 0, false)
            .unwrap();
        assert!(d.all_tokens.is_none());
        assert_eq!(d.layers, 4);
        assert_eq!(d.samples, 6);
        let reference = fx["d"].as_array().unwrap();
        let ref_se = fx["stderr"].as_array().unwrap();
        assert_eq!(d.d.len(), reference.len());
        for (n, (row, r)) in d.d.iter().zip(reference).enumerate() {
            let r: Vec<f64> = r
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            assert_eq!(row.len(), r.len(), "row n={}", n + 1);
            for (l, (a, b)) in row.iter().zip(&r).enumerate() {
                assert!((a - b).abs() < 1e-5, "d(l={l}, n={}) = {a} vs {b}", n + 1);
            }
            for (a, b) in d.stderr[n].iter().zip(ref_se[n].as_array().unwrap()) {
                assert!((a - b.as_f64().unwrap()).abs() < 1e-5);
            }
        }
    }
}

/// The all-token statistics (mean cosine of x_t(l), x_t(l+n) over every real token) against numpy
/// on transformers' hidden states, the final-token distances unchanged by asking for them, and
/// the layers bi, cosine_all and reverse drop (make_fixtures.py part "criteria").
#[test]
fn all_token_cosines_and_criteria_match_the_reference() {
    use layerprune::method::selection::{choose, Strategy};
    let (_, model) = tiny();
    let fx = fixture("criteria-tiny-llama.json");
    let rows: Vec<Vec<u32>> = fx["rows"].as_array().unwrap().iter().map(ids).collect();
    let plain = layerprune::method::similarity::measure(&model, &rows, 6, 1, 0, false).unwrap();
    for (batch, workers) in [(6, 1), (4, 2), (1, 1)] {
        let d = layerprune::method::similarity::measure(&model, &rows, batch, workers, 0, true)
            .unwrap();
        for (a, b) in d.d.iter().flatten().zip(plain.d.iter().flatten()) {
            assert!((a - b).abs() < 1e-6, "final-token d changed: {a} vs {b}");
        }
        let all = d.all_tokens.as_ref().unwrap();
        assert_eq!(all.tokens as u64, fx["tokens"].as_u64().unwrap());
        let reference = fx["cos"].as_array().unwrap();
        assert_eq!(all.cos.len(), reference.len());
        for (n, (row, r)) in all.cos.iter().zip(reference).enumerate() {
            let r = r.as_array().unwrap();
            assert_eq!(row.len(), r.len());
            for (l, (a, b)) in row.iter().zip(r).enumerate() {
                let b = b.as_f64().unwrap();
                assert!((a - b).abs() < 1e-5, "cos(l={l}, n={}) = {a} vs {b}", n + 1);
            }
        }
        for (a, b) in all
            .block_influence()
            .iter()
            .zip(fx["block_influence"].as_array().unwrap())
        {
            assert!((a - b.as_f64().unwrap()).abs() < 1e-5);
        }
        for (strategy, name) in [
            (Strategy::Bi, "bi"),
            (Strategy::CosineAll, "cosine_all"),
            (Strategy::Reverse, "reverse"),
        ] {
            for n in 1..4 {
                let want: Vec<usize> = fx["dropped"][name][n.to_string()]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as usize)
                    .collect();
                let block = choose(&d, n, strategy).unwrap();
                assert_eq!(block.dropped(), want, "{name} n={n}");
            }
        }
    }
}

/// LLM-Drop's attention importance against numpy on transformers' states, the sublayers the
/// `attention` strategy drops, and the logits of attention-dropped models against transformers
/// with those layers' o_proj zeroed (make_fixtures.py part "attention"); the shared-prefix
/// scoring path (zero keys and values in dropped layers) equals full scoring there.
#[test]
fn attention_sublayer_drop_matches_the_reference() {
    use layerprune::method::selection::{choose, Strategy};
    let (_, model) = tiny();
    let fx = fixture("attention-tiny-llama.json");
    let rows: Vec<Vec<u32>> = fx["rows"].as_array().unwrap().iter().map(ids).collect();
    for (batch, workers) in [(6, 1), (4, 2)] {
        let d = layerprune::method::similarity::measure(&model, &rows, batch, workers, 0, true)
            .unwrap();
        let all = d.all_tokens.as_ref().unwrap();
        assert_eq!(all.tokens as u64, fx["tokens"].as_u64().unwrap());
        let want: Vec<f64> = serde_json::from_value(fx["attention_cos"].clone()).unwrap();
        assert_eq!(all.attention_cos.len(), want.len());
        for (l, (a, b)) in all.attention_cos.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() < 1e-5,
                "attention cos of layer {l}: {a} vs {b}"
            );
        }
        for n in 1..4 {
            let want: Vec<usize> =
                serde_json::from_value(fx["dropped"][n.to_string()].clone()).unwrap();
            let block = choose(&d, n, Strategy::Attention).unwrap();
            assert!(block.attention_only);
            assert_eq!(block.dropped(), want, "attention n={n}");
        }
    }
    for (name, entry) in fx["logits"].as_object().unwrap() {
        let cache = common::temp_cache();
        let files = ModelFiles::open(
            source::resolve_str(
                fixtures().join("models").join(name).to_str().unwrap(),
                cache.path(),
            )
            .unwrap(),
        )
        .unwrap();
        let mut net = files.build::<B>(&Default::default(), DType::F32).unwrap();
        let drop: Vec<usize> = serde_json::from_value(entry["attention_dropped"].clone()).unwrap();
        net.drop_attention(&drop).unwrap();
        let reference = read_reference(
            &fixtures()
                .join("reference")
                .join(entry["file"].as_str().unwrap()),
        );
        let (rows, mask) = common::reference_rows(&reference);
        let out = net
            .forward(
                &TokenBatch::right_padded(&rows, 0),
                Capture::None,
                Logits::All,
            )
            .unwrap();
        let logits = to_f32_vec(out.logits.unwrap()).unwrap();
        let vocab = files.config.vocab_size;
        let pick = |flat: &[f32]| common::real_positions(flat, &mask, vocab);
        let e = rel_err(&pick(&logits), &pick(&reference["logits"].f32));
        assert!(
            e < 1e-4,
            "{name}: attention-dropped logits relative error {e:e}"
        );
        // scoring with a shared prefix (keys/values cached) equals scoring in full
        // (two continuations of each context, so the prefix is shared)
        let requests: Vec<Request> = rows
            .iter()
            .filter(|r| r.len() > 3)
            .flat_map(|r| {
                [r[r.len() - 2..].to_vec(), vec![5, 6, 7]].map(|c| Request {
                    context: r[..r.len() - 2].to_vec(),
                    continuation: c,
                })
            })
            .collect();
        let shared = score(&net, &requests, &opts(2, 1, true)).unwrap();
        let full = score(&net, &requests, &opts(2, 1, false)).unwrap();
        for (a, b) in shared.iter().zip(&full) {
            assert!(
                (a.loglik - b.loglik).abs() < 1e-4,
                "{name}: {} vs {}",
                a.loglik,
                b.loglik
            );
        }
    }
}

/// Greedy removal by calibration loss (SLEB / BlockPruner) against a naive reference that runs
/// a full transformers pass per candidate (make_fixtures.py part "greedy"): the same removal
/// order and the loss after each removal within 1e-4 relative, with any batching and workers.
#[test]
fn greedy_removal_by_loss_matches_the_reference() {
    use layerprune::method::loss_greedy::greedy_removal;
    use layerprune::method::selection::{choose, Strategy};
    let (_, model) = tiny();
    let fx = fixture("greedy-tiny-llama.json");
    let rows: Vec<Vec<u32>> = fx["rows"].as_array().unwrap().iter().map(ids).collect();
    let want_order: Vec<usize> = serde_json::from_value(fx["order"].clone()).unwrap();
    let want_loss: Vec<f64> = serde_json::from_value(fx["loss"].clone()).unwrap();
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * b.abs();
    for (batch, workers) in [(6, 1), (4, 2), (1, 1)] {
        let g = greedy_removal(&model, &rows, batch, workers, 3).unwrap();
        assert_eq!(g.tokens as u64, fx["tokens"].as_u64().unwrap());
        assert_eq!(g.order, want_order, "batch {batch}, workers {workers}");
        let base = fx["base_loss"].as_f64().unwrap();
        assert!(close(g.base_loss, base), "base {} vs {base}", g.base_loss);
        for (k, (a, b)) in g.loss.iter().zip(&want_loss).enumerate() {
            assert!(close(*a, *b), "loss after {} removals: {a} vs {b}", k + 1);
        }
        // the strategy drops the first n removed layers
        let mut d = layerprune::method::similarity::measure(&model, &rows, 6, 1, 0, false).unwrap();
        d.loss_greedy = Some(g);
        for n in 1..4 {
            let mut first = want_order[..n].to_vec();
            first.sort_unstable();
            assert_eq!(
                choose(&d, n, Strategy::LossGreedy).unwrap().dropped(),
                first
            );
        }
    }
    assert!(
        greedy_removal(&model, &rows, 6, 1, 4).is_err(),
        "cannot remove every layer"
    );
}

#[test]
fn pruned_model_logits_match_transformers_light_and_exported() {
    let (files, _) = tiny();
    let reference = read_reference(&fixtures().join("reference/tiny-llama-pruned.safetensors"));
    let ids = &reference["input_ids"];
    let mask = &reference["attention_mask"].i64;
    let (b, t) = (ids.shape[0], ids.shape[1]);
    let rows: Vec<Vec<u32>> = (0..b)
        .map(|i| {
            (0..t)
                .filter(|&j| mask[i * t + j] == 1)
                .map(|j| ids.i64[i * t + j] as u32)
                .collect()
        })
        .collect();
    let batch = TokenBatch::right_padded(&rows, 0);
    let vocab = files.config.vocab_size;
    let pick = |flat: &[f32]| -> Vec<f32> {
        let mut v = Vec::new();
        for i in 0..b {
            for j in 0..rows[i].len() {
                v.extend_from_slice(&flat[(i * t + j) * vocab..(i * t + j + 1) * vocab]);
            }
        }
        v
    };
    let want = pick(&reference["logits"].f32);
    // light: the base weights, layers 1 and 2 skipped
    let light = files
        .build_with_layers::<B>(&Default::default(), DType::F32, &[0, 3])
        .unwrap();
    let got = to_f32_vec(
        light
            .forward(&batch, Capture::None, Logits::All)
            .unwrap()
            .logits
            .unwrap(),
    )
    .unwrap();
    assert!(rel_err(&pick(&got), &want) < 1e-4);
    // exported Hugging Face directory
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("model");
    layerprune::model::export::export_hf(
        &files,
        &[0, 3],
        &out,
        layerprune::backend::Precision::F32,
        serde_json::json!({"kept_layers": [0, 3]}),
    )
    .unwrap();
    let cache = common::temp_cache();
    let exported =
        ModelFiles::open(source::resolve_str(out.to_str().unwrap(), cache.path()).unwrap())
            .unwrap();
    assert_eq!(exported.config.num_hidden_layers, 2);
    let m = exported
        .build::<B>(&Default::default(), DType::F32)
        .unwrap();
    let got = to_f32_vec(
        m.forward(&batch, Capture::None, Logits::All)
            .unwrap()
            .logits
            .unwrap(),
    )
    .unwrap();
    assert!(rel_err(&pick(&got), &want) < 1e-4);
}

/// A sweep of pruned models continues from the base stream below each cut: the second model
/// (deeper cut) starts from the first one's boundary, and the log-likelihoods equal transformers'
/// for the unpruned model and a full recomputation for the pruned ones, single- and multi-token.
#[test]
fn pruned_models_reuse_the_stream_below_the_cut() {
    use layerprune::eval::below_cut::{score_reusing, Cut};
    let (files, base) = tiny();
    let fx = fixture("eval-tiny-llama.json");
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for e in fx["items"].as_array().unwrap().iter().filter(|e| {
        e["shots"] == 0 && (e["task"] == "mmlu" || e["task"] == "arc_easy" || e["task"] == "boolq")
    }) {
        for r in e["requests"].as_array().unwrap() {
            requests.push(Request {
                context: ids(&r["context_ids"]),
                continuation: ids(&r["continuation_ids"]),
            });
            expected.push(r["loglik"].as_f64().unwrap());
        }
    }
    assert!(requests.iter().any(|r| r.continuation.len() > 1));
    let base_id = "tiny-llama reuse test";
    // the unpruned model as a "cut" at L: transformers' values
    let (got, stats) = score_reusing(
        &base,
        &requests,
        &opts(3, 2, false),
        &Cut {
            base: format!("{base_id} unpruned"),
            cut: 4,
            base_layers: 4,
        },
    )
    .unwrap();
    assert_eq!(stats.from_boundary, 0);
    for (a, ll) in got.iter().zip(&expected) {
        assert!(
            (a.loglik - ll).abs() <= 1e-4 * ll.abs().max(1.0),
            "{} vs transformers {ll}",
            a.loglik
        );
    }
    // two pruned models: drop [1, 2) (cut 1), then drop [2, 3) (cut 2)
    let pruned = |start: usize| {
        let mut m = files.build::<B>(&Default::default(), DType::F32).unwrap();
        m.drop_block(start, 1).unwrap();
        m
    };
    for (start, from) in [(1, 0), (2, 1), (1, 1), (2, 2)] {
        let m = pruned(start);
        let full = score(&m, &requests, &opts(3, 1, false)).unwrap();
        let (got, stats) = score_reusing(
            &m,
            &requests,
            &opts(3, 2, false),
            &Cut {
                base: base_id.into(),
                cut: start,
                base_layers: 4,
            },
        )
        .unwrap();
        assert_eq!(stats.from_boundary, from, "cut {start}");
        for (a, b) in got.iter().zip(&full) {
            assert!(
                (a.loglik - b.loglik).abs() <= 1e-5 * b.loglik.abs().max(1.0),
                "cut {start}: reused {} vs recomputed {}",
                a.loglik,
                b.loglik
            );
            assert_eq!(a.greedy, b.greedy);
        }
    }
    // the base model last, as a run orders it: it continues from the deepest boundary (2) and
    // still equals transformers; its own last boundary is not kept
    let (got, stats) = score_reusing(
        &base,
        &requests,
        &opts(3, 2, false),
        &Cut {
            base: base_id.into(),
            cut: 4,
            base_layers: 4,
        },
    )
    .unwrap();
    assert_eq!((stats.from_boundary, stats.stored), (2, false));
    for (a, ll) in got.iter().zip(&expected) {
        assert!(
            (a.loglik - ll).abs() <= 1e-4 * ll.abs().max(1.0),
            "base from boundary 2: {} vs transformers {ll}",
            a.loglik
        );
    }
    // other requests share nothing with the stored streams
    let (_, stats) = score_reusing(
        &pruned(2),
        &requests[..3],
        &opts(3, 1, false),
        &Cut {
            base: base_id.into(),
            cut: 2,
            base_layers: 4,
        },
    )
    .unwrap();
    assert_eq!(stats.from_boundary, 0);
}
