//! Healing against references (tests/fixtures/make_heal_fixtures.py): NF4 with double
//! quantisation equal to bitsandbytes 0.50 bit for bit; one and two LoRA steps on a pruned tiny
//! model (gradients, clipped norm, AdamW update) equal to PyTorch + PEFT within 1e-4 relative,
//! on a dense base and on the NF4-dequantised base; the PEFT adapter layout; two steps of
//! partial fine-tuning (the last layer and the tied LM head in full rank) equal to PyTorch.

mod common;

use burn::tensor::DType;
use common::{fixtures, read_reference, rel_err, RefTensor};
use layerprune::formats::nf4::{dynamic_map_signed, Nf4Host, NF4};
use layerprune::heal::adapter::{AdapterSet, LoraConfig, ModuleAdapter};
use layerprune::heal::gradients::{GradientPass, LossPath};
use layerprune::heal::optim::{clip_grad_norm, AdamW, AdamWConfig};
use layerprune::heal::train::{micro_step, micro_step_with};
use layerprune::model::ModelFiles;
use layerprune::source;

type AD = burn::backend::Autodiff<common::B>;

#[test]
fn nf4_double_quantisation_is_bitsandbytes_exact() {
    let r = read_reference(&fixtures().join("reference/nf4.safetensors"));
    assert_eq!(r["code_nf4"].f32, NF4.to_vec());
    let map = dynamic_map_signed();
    assert_eq!(map.len(), 256);
    for (i, (a, b)) in map.iter().zip(&r["code_dynamic_signed"].f32).enumerate() {
        assert_eq!(
            a.to_bits(),
            b.to_bits(),
            "dynamic map entry {i}: {a} vs {b}"
        );
    }
    for name in ["normal", "edge", "down_proj"] {
        let input = &r[&format!("{name}.input")];
        let q = Nf4Host::quantize(&input.shape, &input.f32).unwrap();
        assert_eq!(
            q.packed,
            r[&format!("{name}.packed")].u8,
            "{name}: packed codes"
        );
        assert_eq!(
            q.absmax_codes,
            r[&format!("{name}.absmax_codes")].u8,
            "{name}: 8-bit absmax codes"
        );
        assert_eq!(
            q.absmax2,
            r[&format!("{name}.absmax2")].f32,
            "{name}: absmax2"
        );
        assert_eq!(
            q.offset.to_bits(),
            r[&format!("{name}.offset")].f32[0].to_bits(),
            "{name}: offset"
        );
        let deq = q.dequantize();
        let want = &r[&format!("{name}.dequantized")].f32;
        assert_eq!(deq.len(), want.len());
        for (i, (a, b)) in deq.iter().zip(want).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{name}: dequantized[{i}] {a} vs {b}"
            );
        }
    }
}

/// NF4 dequantised on the device (code book lookup, blockwise absmax) equals bitsandbytes'
/// dequantisation, on whichever backend the tests run (flex, or wgpu with --features wgpu-tests).
#[test]
fn nf4_on_the_device_equals_bitsandbytes() {
    let r = read_reference(&fixtures().join("reference/nf4.safetensors"));
    for name in ["normal", "edge", "down_proj"] {
        let input = &r[&format!("{name}.input")];
        if input.shape.len() != 2 {
            continue;
        }
        let q = Nf4Host::quantize(&input.shape, &input.f32).unwrap();
        let w = layerprune::model::nf4_linear::Nf4Weight::<common::B>::from_host(
            &q,
            &Default::default(),
            DType::F32,
        )
        .unwrap();
        let deq = layerprune::model::to_f32_vec(w.dequantize()).unwrap();
        let want = &r[&format!("{name}.dequantized")].f32;
        assert_eq!(deq.len(), want.len(), "{name}");
        for (i, (a, b)) in deq.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-7 * b.abs().max(1.0),
                "{name}[{i}]: {a} vs {b}"
            );
        }
    }
}

fn adapters_from(r: &std::collections::BTreeMap<String, RefTensor>, prefix: &str) -> AdapterSet {
    let mut modules = Vec::new();
    for layer in 0..2 {
        for module in ["gate_proj", "up_proj", "down_proj"] {
            let name = |w: &str| {
                format!(
                    "{prefix}base_model.model.model.layers.{layer}.mlp.{module}.lora_{w}.weight"
                )
            };
            let a = &r[&name("A")];
            let b = &r[&name("B")];
            modules.push(ModuleAdapter {
                layer,
                module: module.into(),
                path: format!("model.layers.{layer}.mlp.{module}"),
                in_features: a.shape[1],
                out_features: b.shape[0],
                a: a.f32.clone(),
                b: b.f32.clone(),
            });
        }
    }
    AdapterSet {
        config: LoraConfig {
            r: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: vec!["gate_proj".into(), "up_proj".into(), "down_proj".into()],
        },
        modules,
    }
}

fn tiny_llama(cache: &std::path::Path) -> ModelFiles {
    ModelFiles::open(
        source::resolve_str(
            fixtures().join("models/tiny-llama").to_str().unwrap(),
            cache,
        )
        .unwrap(),
    )
    .unwrap()
}

/// The fixtures' AdamW (make_heal_fixtures.py: betas 0.9 / 0.999, eps 1e-8, weight decay 0.01).
/// A fixture's input ids [rows, len] as token rows.
fn token_rows(ids: &RefTensor) -> Vec<Vec<u32>> {
    ids.i64
        .chunks(ids.shape[1])
        .map(|c| c.iter().map(|&x| x as u32).collect())
        .collect()
}

fn reference_adamw(sizes: &[usize]) -> AdamW {
    AdamW::new(
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        },
        sizes,
    )
}

fn check(what: &str, ours: &[f32], want: &[f32]) {
    let e = rel_err(ours, want);
    assert!(e < 1e-4, "{what}: relative error {e:e}");
}

fn two_steps(variant: &str, nf4: bool, max_norm: f64) {
    two_steps_with(variant, nf4, max_norm, false)
}

/// `two_steps`, checkpointed or not (heal::gradients).
fn two_steps_with(variant: &str, nf4: bool, max_norm: f64, checkpointing: bool) {
    let r = read_reference(&fixtures().join("reference/lora-step.safetensors"));
    let cache = common::temp_cache();
    let files = tiny_llama(cache.path());
    let mut model = files
        .build_with_layers::<AD>(&Default::default(), DType::F32, &[0, 3])
        .unwrap();
    if nf4 {
        use layerprune::model::Projection;
        // as the heal stage quantises: dequantised once and kept where the device is the host
        // and the step is not checkpointed
        layerprune::model::surgery::quantize_nf4(
            &mut model,
            &[Projection::Gate, Projection::Up, Projection::Down],
            layerprune::backend::on_host::<AD>(&Default::default()) && !checkpointing,
        )
        .unwrap();
    }
    let p = |k: &str| format!("{variant}{k}");
    let mut adapters = adapters_from(&r, "init.");
    let sizes: Vec<usize> = adapters
        .modules
        .iter()
        .flat_map(|m| [m.a.len(), m.b.len()])
        .collect();
    let mut opt = reference_adamw(&sizes);
    for step in 0..2 {
        let ids = &r[&format!("batch{step}.input_ids")];
        let rows = token_rows(ids);
        let pass = GradientPass::checkpointed(checkpointing);
        let (loss, mut grads) = micro_step_with(&mut model, &adapters, &rows, 1.0, pass).unwrap();
        let want_loss = r[&p(&format!("loss{step}"))].f32[0] as f64;
        assert!(
            ((loss - want_loss) / want_loss).abs() < 1e-5,
            "{variant} step {step}: loss {loss} vs {want_loss}"
        );
        let want_grads = adapters_from(&r, &p(&format!("grad{step}.")));
        for (k, m) in want_grads.modules.iter().enumerate() {
            check(
                &format!("{variant} step {step} grad {} A", m.peft_name("A")),
                &grads[2 * k],
                &m.a,
            );
            check(
                &format!("{variant} step {step} grad {} B", m.peft_name("B")),
                &grads[2 * k + 1],
                &m.b,
            );
        }
        let norm = clip_grad_norm(&mut grads, max_norm);
        let want_norm = r[&p(&format!("norm{step}"))].f32[0] as f64;
        assert!(
            ((norm - want_norm) / want_norm).abs() < 1e-4,
            "{variant} step {step}: norm {norm} vs {want_norm}"
        );
        let mut params = adapters.params_mut();
        opt.step(&mut params, &grads, 1e-3);
        let want = adapters_from(&r, &p(&format!("after{step}.")));
        for (m, w) in adapters.modules.iter().zip(&want.modules) {
            check(
                &format!("{variant} step {step} updated {} A", m.peft_name("A")),
                &m.a,
                &w.a,
            );
            check(
                &format!("{variant} step {step} updated {} B", m.peft_name("B")),
                &m.b,
                &w.b,
            );
        }
    }
}

/// On the host (flex, f32) the LM head's cross-entropy and its gradient are computed outside the
/// autodiff graph (heal::host_loss): one micro-step on each path, with dropout active, gives the
/// same loss and adapter gradients (the PEFT parity above runs on the host path).
#[test]
fn the_host_head_loss_gives_the_graph_gradients() {
    let r = read_reference(&fixtures().join("reference/lora-step.safetensors"));
    let cache = common::temp_cache();
    let files = tiny_llama(cache.path());
    let mut model = files
        .build_with_layers::<AD>(&Default::default(), DType::F32, &[0, 3])
        .unwrap();
    let adapters = adapters_from(&r, "init.");
    let host = layerprune::heal::host_loss::usable(&model);
    let flex = <common::B as burn::tensor::backend::Backend>::name(&Default::default()) == "flex";
    assert_eq!(host, flex, "the host loss serves flex in f32, and only it");
    if !host {
        eprintln!("skipped: the head's loss stays in the graph on this backend");
        return;
    }
    let ids = &r["batch0.input_ids"];
    let rows = token_rows(ids);
    let pass = |loss| GradientPass {
        loss,
        ..GradientPass::default()
    };
    let (loss, grads) =
        micro_step_with(&mut model, &adapters, &rows, 0.5, pass(LossPath::Auto)).unwrap();
    let (want_loss, want) =
        micro_step_with(&mut model, &adapters, &rows, 0.5, pass(LossPath::Graph)).unwrap();
    assert!(
        ((loss - want_loss) / want_loss).abs() < 1e-6,
        "loss {loss} vs {want_loss}"
    );
    for (k, (g, w)) in grads.iter().zip(&want).enumerate() {
        let e = rel_err(g, w);
        assert!(e < 1e-5, "gradient {k}: relative error {e:e}");
    }
}

#[test]
fn lora_steps_match_peft_on_a_dense_base() {
    two_steps("", false, 1.0);
}

#[test]
fn lora_steps_match_peft_on_an_nf4_base() {
    two_steps("nf4.", true, 1.0);
}

/// Gradient checkpointing (layer-by-layer recomputation) against PEFT, on the NF4 base as QLoRA
/// runs it: a dequantised weight lives only while its block runs.
#[test]
fn lora_steps_match_peft_checkpointed_on_an_nf4_base() {
    two_steps_with("nf4.", true, 1.0, true);
}

#[test]
fn lora_steps_match_peft_checkpointed_on_a_dense_base() {
    two_steps_with("", false, 1.0, true);
}

#[test]
fn lora_steps_match_peft_with_active_clipping() {
    let r = read_reference(&fixtures().join("reference/lora-step.safetensors"));
    let max_norm = r["clip.max_norm"].f32[0] as f64;
    assert!(
        max_norm < r["clip.norm0"].f32[0] as f64,
        "the fixture's clipping is active"
    );
    two_steps("clip.", false, max_norm);
}

#[test]
fn peft_adapter_layout_matches_peft() {
    let reference_dir = fixtures().join("reference/peft-adapter");
    let theirs = AdapterSet::load_peft(&reference_dir).unwrap();
    assert_eq!(theirs.config.r, 4);
    assert_eq!(theirs.modules.len(), 6);
    let dir = tempfile::tempdir().unwrap();
    theirs
        .save_peft(dir.path(), "tests/fixtures/models/tiny-llama")
        .unwrap();
    let ours = AdapterSet::load_peft(dir.path()).unwrap();
    assert_eq!(ours, theirs, "round trip through our writer");
    // the same tensor names, shapes and dtypes as PEFT's file
    let names = |p: &std::path::Path| {
        let b = std::fs::read(p).unwrap();
        let st = safetensors::SafeTensors::deserialize(&b).unwrap();
        let mut v: Vec<(String, Vec<usize>, String)> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| (n, t.shape().to_vec(), format!("{:?}", t.dtype())))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(&dir.path().join("adapter_model.safetensors")),
        names(&reference_dir.join("adapter_model.safetensors"))
    );
    let cfg = |p: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(p.join("adapter_config.json")).unwrap())
            .unwrap()
    };
    let (a, b) = (cfg(dir.path()), cfg(&reference_dir));
    for key in [
        "peft_type",
        "task_type",
        "r",
        "lora_alpha",
        "lora_dropout",
        "bias",
        "fan_in_fan_out",
        "use_rslora",
        "use_dora",
    ] {
        assert_eq!(a[key], b[key], "adapter_config.json key {key}");
    }
    let sorted = |v: &serde_json::Value| {
        let mut x: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        x.sort();
        x
    };
    assert_eq!(sorted(&a["target_modules"]), sorted(&b["target_modules"]));
}

/// Partial fine-tuning (heal-partial): two AdamW steps with the last kept layer and the tied LM
/// head trained in full, against PyTorch (make_heal_fixtures.py part "partial"): the loss, every
/// gradient (the tied embedding's through both of its uses), the clipped norm and the updated
/// tensors within 1e-4 relative; the trained tensors come out in Hugging Face names and layout.
#[test]
fn partial_finetune_steps_match_pytorch() {
    partial_steps(false);
}

/// The same two steps checkpointed: every block recomputed (the tied embedding is trained, so
/// the stream's gradient goes down to the lookup, whose gradient adds to the head's).
#[test]
fn partial_finetune_steps_match_pytorch_checkpointed() {
    partial_steps(true);
}

fn partial_steps(checkpointing: bool) {
    use layerprune::heal::partial::{PartialSet, Site};
    use layerprune::heal::train::Trainable;
    let r = read_reference(&fixtures().join("reference/partial-step.safetensors"));
    let cache = common::temp_cache();
    let files = tiny_llama(cache.path());
    let mut model = files
        .build_with_layers::<AD>(&Default::default(), DType::F32, &[0, 3])
        .unwrap();
    let mut set = PartialSet::from_model(&model, 1).unwrap();
    let mut names: Vec<String> = set.params.iter().map(|p| p.name.clone()).collect();
    names.sort();
    let mut want_names: Vec<String> = r
        .keys()
        .filter_map(|k| k.strip_prefix("grad0.").map(String::from))
        .collect();
    want_names.sort();
    assert_eq!(names, want_names, "the trained tensors");
    let sizes = set.param_sizes();
    let mut opt = reference_adamw(&sizes);
    // model layout -> Hugging Face layout ([in, out] -> [out, in] for linear weights)
    let to_hf = |site: Site, shape: &[usize], v: &[f32]| -> Vec<f32> {
        match site {
            Site::Weight(..) | Site::Head => {
                layerprune::formats::host_tensor::transpose(v, shape[0], shape[1])
            }
            _ => v.to_vec(),
        }
    };
    for step in 0..2 {
        let ids = &r[&format!("batch{step}.input_ids")];
        let rows = token_rows(ids);
        let (loss, mut grads) = set
            .micro_step(&mut model, &rows, 1.0, 0, 0, checkpointing)
            .unwrap();
        let want_loss = r[&format!("loss{step}")].f32[0] as f64;
        assert!(
            ((loss - want_loss) / want_loss).abs() < 1e-5,
            "step {step}: loss {loss} vs {want_loss}"
        );
        for (p, g) in set.params.iter().zip(&grads) {
            let want = &r[&format!("grad{step}.{}", p.name)].f32;
            check(
                &format!("step {step} grad {}", p.name),
                &to_hf(p.site, &p.shape, g),
                want,
            );
        }
        let norm = clip_grad_norm(&mut grads, 1.0);
        let want_norm = r[&format!("norm{step}")].f32[0] as f64;
        assert!(
            ((norm - want_norm) / want_norm).abs() < 1e-4,
            "step {step}: norm {norm} vs {want_norm}"
        );
        let mut params = set.params_mut();
        opt.step(&mut params, &grads, 1e-3);
        for (name, t) in set.hf_tensors().unwrap() {
            let want = &r[&format!("after{step}.{name}")];
            assert_eq!(t.shape, want.shape, "{name}: Hugging Face shape");
            check(&format!("step {step} updated {name}"), &t.data, &want.f32);
        }
    }
}

/// LoRA on a model that drops attention sublayers: the dropped layers' attention projections get
/// no adapter (they compute nothing), and one step trains every adapter there is.
#[test]
fn lora_skips_the_projections_of_dropped_attention() {
    let cache = common::temp_cache();
    let files = tiny_llama(cache.path());
    let mut model = files.build::<AD>(&Default::default(), DType::F32).unwrap();
    model.drop_attention(&[1]).unwrap();
    let config = LoraConfig {
        r: 2,
        alpha: 2.0,
        dropout: 0.0,
        target_modules: vec!["q_proj".into(), "o_proj".into(), "down_proj".into()],
    };
    let adapters = AdapterSet::init(&config, &model, 0).unwrap();
    let in_layer = |l: usize| -> Vec<&str> {
        adapters
            .modules
            .iter()
            .filter(|m| m.layer == l)
            .map(|m| m.module.as_str())
            .collect()
    };
    assert_eq!(in_layer(0), ["q_proj", "o_proj", "down_proj"]);
    assert_eq!(in_layer(1), ["down_proj"]);
    let rows = vec![vec![5u32, 9, 13, 200, 7, 8]];
    let (loss, grads) = micro_step(&mut model, &adapters, &rows, 1.0).unwrap();
    assert!(loss.is_finite());
    assert_eq!(grads.len(), 2 * adapters.modules.len());
}

/// The heal stage runs each micro-batch as sub-batches on their own threads (one autodiff graph
/// each): two optimizer steps with 1, 2 and 3 of them give the update of one pass over the
/// micro-batch (which `lora_steps_match_peft_*` check against PEFT), with and without dropout
/// (its masks depend on the row, not on the split).
#[test]
fn sub_batches_on_threads_give_the_one_pass_update() {
    use layerprune::heal::train::{train, TrainState};
    let r = read_reference(&fixtures().join("reference/lora-step.safetensors"));
    let cache = common::temp_cache();
    let files = tiny_llama(cache.path());
    let ids = &r["batch0.input_ids"];
    let rows = token_rows(ids);
    // seven rows: 2 sub-batches take 4 + 3 rows, 3 take 3 + 3 + 1 (unequal shares)
    let rows: Vec<Vec<u32>> = rows.iter().cycle().take(7).cloned().collect();
    for dropout in [0.0, 0.1] {
        let run = |workers: usize| {
            let mut model = files
                .build_with_layers::<AD>(&Default::default(), DType::F32, &[0, 3])
                .unwrap();
            let mut adapters = adapters_from(&r, "init.");
            adapters.config.dropout = dropout;
            let config = layerprune::commands::bench::one_batch_config(
                adapters.config.clone(),
                rows.len(),
                1e-2,
            );
            let config = layerprune::heal::train::TrainConfig { steps: 2, ..config };
            let state = TrainState::fresh(&config, adapters);
            let execution = layerprune::heal::train::Execution {
                workers,
                checkpointing: false,
            };
            train(&mut model, &rows, &config, state, None, &|_| {}, execution).unwrap()
        };
        let one = run(1);
        for workers in [2, 3] {
            let split = run(workers);
            for (a, b) in one.log.iter().zip(&split.log) {
                let rel = ((a.loss - b.loss) / a.loss).abs();
                assert!(
                    rel < 1e-5,
                    "dropout {dropout}, {workers} sub-batches: loss {} vs {}",
                    b.loss,
                    a.loss
                );
                let rel = ((a.grad_norm - b.grad_norm) / a.grad_norm).abs();
                assert!(
                    rel < 1e-4,
                    "dropout {dropout}, {workers} sub-batches: grad norm {} vs {}",
                    b.grad_norm,
                    a.grad_norm
                );
            }
            for (m, n) in one.params.modules.iter().zip(&split.params.modules) {
                check(
                    &format!(
                        "dropout {dropout}, {workers} sub-batches: {} A",
                        m.peft_name("A")
                    ),
                    &n.a,
                    &m.a,
                );
                check(
                    &format!(
                        "dropout {dropout}, {workers} sub-batches: {} B",
                        m.peft_name("B")
                    ),
                    &n.b,
                    &m.b,
                );
            }
        }
        if dropout > 0.0 {
            // dropout is on: the loss differs from the run without it
            let mut model = files
                .build_with_layers::<AD>(&Default::default(), DType::F32, &[0, 3])
                .unwrap();
            let plain = micro_step(&mut model, &adapters_from(&r, "init."), &rows, 1.0)
                .unwrap()
                .0;
            assert!(
                (one.log[0].loss - plain).abs() > 1e-6,
                "dropout had no effect: {plain}"
            );
        }
    }
}
