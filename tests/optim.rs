//! The training tier for optimizers: 10 steps of AdamW (and SGD with momentum) with two
//! parameter groups (decay / no decay), linear warmup + decay and grad-norm clipping, against
//! torch.optim + LambdaLR + clip_grad_norm_ (tests/fixtures/optim.json), at 1e-6 per parameter;
//! every `--lr-scheduler` against transformers.get_scheduler (tests/fixtures/schedules.json).

mod common;

use common::*;
use engram::optim::{clip_grad_norm, hf_param_groups, AdamW, AdamWConfig, Schedule, Sgd, SgdConfig};
use engram::testing::assert_close;
use engram::{ops, Tape, Tensor};

const NAMES: [&str; 4] = ["LayerNorm.weight", "LayerNorm.bias", "classifier.weight", "classifier.bias"];

enum Opt {
    AdamW(AdamW),
    Sgd(Sgd),
}

fn replay(kind: &str) {
    let fx = &load("optim.json")[kind];
    let hyper = &fx["hyper"];
    let x = f32_tensor(&fx["x"]);
    let y = id_tensor(&fx["y"]);
    let mut params: Vec<Tensor> = NAMES.iter().map(|n| f32_tensor(&fx["init"][*n]).requires_grad()).collect();
    let sched = Schedule::linear(hyper["lr"].as_f64().unwrap(), fx["warmup"].as_u64().unwrap(), fx["total"].as_u64().unwrap());
    let wd = hyper["weight_decay"].as_f64().unwrap();
    let max_norm = fx["max_norm"].as_f64().unwrap();
    let mut opt = match kind {
        "adamw" => Opt::AdamW(AdamW::new(AdamWConfig {
            beta1: hyper["beta1"].as_f64().unwrap(),
            beta2: hyper["beta2"].as_f64().unwrap(),
            eps: hyper["eps"].as_f64().unwrap(),
        })),
        _ => Opt::Sgd(Sgd::new(SgdConfig { momentum: hyper["momentum"].as_f64().unwrap(), ..Default::default() })),
    };
    let mut clipped_any = false;
    for (step, want) in fx["steps"].as_array().unwrap().iter().enumerate() {
        let tape = Tape::training(0);
        let h = ops::layer_norm(&tape, &x, &params[0], &params[1], 1e-5).unwrap();
        let logits = ops::linear(&tape, &h, &params[2], Some(&params[3])).unwrap();
        let loss = ops::cross_entropy(&tape, &logits, &y).unwrap();
        assert_close(&format!("{kind} step {step} loss"), &[loss.item().unwrap()], &[want["loss"].as_f64().unwrap()], 1e-6, 1e-6);
        let mut grads = tape.backward(&loss).unwrap();
        let refs: Vec<&Tensor> = params.iter().collect();
        let norm = clip_grad_norm(&mut grads, &refs, max_norm).unwrap();
        clipped_any |= norm > max_norm;
        assert_close(&format!("{kind} step {step} grad norm"), &[norm], &[want["grad_norm"].as_f64().unwrap()], 1e-6, 1e-5);
        let lr = sched.lr(step as u64);
        assert_close(&format!("{kind} step {step} lr"), &[lr], &[want["lr"].as_f64().unwrap()], 1e-12, 0.0);
        let named: Vec<(String, &mut Tensor)> = NAMES.iter().map(|n| n.to_string()).zip(params.iter_mut()).collect();
        let mut groups = hf_param_groups(named, wd);
        // The HF rule puts classifier.weight alone in the decay group, as the fixture does.
        assert_eq!(groups[0].params.len(), 1);
        match &mut opt {
            Opt::AdamW(o) => o.step(&mut groups, &grads, lr).unwrap(),
            Opt::Sgd(o) => o.step(&mut groups, &grads, lr).unwrap(),
        }
        for (n, p) in NAMES.iter().zip(&params) {
            assert_close(&format!("{kind} step {step} {n}"), &p.to_f64_vec(), &floats(&want["params"][*n]), 1e-6, 0.0);
        }
    }
    assert!(clipped_any, "{kind}: the fixture never clipped, so clipping went untested");
}

#[test]
fn adamw_matches_torch_with_groups_schedule_and_clipping() {
    replay("adamw");
}

#[test]
fn sgd_momentum_matches_torch() {
    replay("sgd");
}

/// Every schedule kind against transformers' own `get_scheduler` (tests/fixtures/schedules.py):
/// warmup 0, warmup = total, a one-step decay, and steps past the end.
#[test]
fn schedules_match_transformers_get_scheduler() {
    use engram::optim::ScheduleKind;
    let fx = load("schedules.json");
    let cases = fx["cases"].as_array().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for c in cases {
        let name = c["kind"].as_str().unwrap();
        let kind: ScheduleKind = serde_json::from_value(c["kind"].clone()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(kind.name(), name);
        seen.insert(name);
        let s = Schedule { kind, base_lr: 2.0, warmup: c["warmup"].as_u64().unwrap(), total: c["total"].as_u64().unwrap() };
        for (step, want) in c["factors"].as_array().unwrap().iter().enumerate() {
            let want = want.as_f64().unwrap();
            let got = s.factor(step as u64);
            assert!((got - want).abs() <= 1e-12, "{name} warmup {} total {} step {step}: {got} vs transformers {want}", s.warmup, s.total);
            assert!((s.lr(step as u64) - 2.0 * want).abs() <= 2e-12);
        }
    }
    assert_eq!(seen.len(), 4, "every kind must be covered: {seen:?}");
}
