//! The `engram` command line.
//!
//! Today it runs the engine self-check (`engram` or `engram selfcheck`): a one-layer encoder built
//! from engram's ops learns a small sequence task with AdamW on the CPU, and the command reports
//! what is not built yet. `finetune`, `eval`, `predict`, `embed` and `inspect` arrive with the
//! BERT and trainer work.

use std::process::ExitCode;
use std::time::Instant;

use engram::optim::{clip_grad_norm, hf_param_groups, AdamW, AdamWConfig, LinearWarmupDecay};
use engram::testing::Rng;
use engram::{ops, Result, Tape, Tensor};

const USAGE: &str = "usage: engram [selfcheck] [--steps N] [--seed S]\n\n\
  selfcheck   train a tiny encoder on the CPU and show the loss falling (the default)\n\
  --steps N   optimizer steps (default 60)\n\
  --seed S    initialisation and dropout seed (default 0)\n\n\
Not built yet: finetune, eval, predict, embed, inspect (BERT loading and the trainer), the CUDA backend.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut steps, mut seed) = (60u64, 0u64);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |flag: &str| -> std::result::Result<u64, String> {
            let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            v.parse().map_err(|_| format!("{flag}: '{v}' is not a non-negative integer"))
        };
        let parsed = match a.as_str() {
            "selfcheck" => Ok(()),
            "--steps" => num("--steps").map(|v| steps = v),
            "--seed" => num("--seed").map(|v| seed = v),
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "-V" | "--version" => {
                println!("engram {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            other => Err(format!("unknown argument '{other}'")),
        };
        if let Err(e) = parsed {
            eprintln!("engram: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    match selfcheck(steps, seed) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("engram: selfcheck failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Task: sequences of random tokens 2..V; label 1 when token 1 ("the fact") occurs anywhere,
/// which needs attention to find. Sequences have random lengths with key padding.
fn batch(rng: &mut Rng, b: usize, t: usize, v: u64) -> Result<(Tensor, Tensor, Tensor)> {
    let (mut ids, mut mask, mut labels) = (vec![0i64; b * t], vec![0i64; b * t], vec![0i64; b]);
    for i in 0..b {
        let len = 3 + rng.below(t as u64 - 2) as usize;
        let positive = rng.below(2) == 1;
        for j in 0..len {
            ids[i * t + j] = 2 + rng.below(v - 2) as i64;
            mask[i * t + j] = 1;
        }
        if positive {
            ids[i * t + rng.below(len as u64) as usize] = 1;
        }
        labels[i] = positive as i64;
    }
    Ok((Tensor::from_ids(ids, &[b, t])?, Tensor::from_ids(mask, &[b, t])?, Tensor::from_ids(labels, &[b])?))
}

fn selfcheck(steps: u64, seed: u64) -> Result<bool> {
    let (v, t, c, nh, b) = (16usize, 12usize, 32usize, 4usize, 32usize);
    let mut rng = Rng::new(seed);
    let mut init = |shape: &[usize], std: f64| -> Result<Tensor> {
        let n = shape.iter().product();
        Tensor::from_vec(rng.normal_vec(n).into_iter().map(|x| (x * std) as f32).collect::<Vec<f32>>(), shape)
    };
    let ones = |n: usize| Tensor::from_vec(vec![1f32; n], &[n]);
    let zeros = |n: usize| Tensor::from_vec(vec![0f32; n], &[n]);
    let mut named: Vec<(String, Tensor)> = vec![
        ("embeddings.word_embeddings.weight".into(), init(&[v, c], 0.5)?),
        ("embeddings.position_embeddings.weight".into(), init(&[t, c], 0.5)?),
        ("embeddings.LayerNorm.weight".into(), ones(c)?),
        ("embeddings.LayerNorm.bias".into(), zeros(c)?),
    ];
    for n in ["query", "key", "value", "output", "intermediate", "ffn_output"] {
        let (o, i) = match n {
            "intermediate" => (4 * c, c),
            "ffn_output" => (c, 4 * c),
            _ => (c, c),
        };
        named.push((format!("{n}.weight"), init(&[o, i], 1.0 / (i as f64).sqrt())?));
        named.push((format!("{n}.bias"), zeros(o)?));
    }
    for n in ["attention.LayerNorm", "output.LayerNorm"] {
        named.push((format!("{n}.weight"), ones(c)?));
        named.push((format!("{n}.bias"), zeros(c)?));
    }
    named.push(("classifier.weight".into(), init(&[2, c], 0.1)?));
    named.push(("classifier.bias".into(), zeros(2)?));
    for (_, p) in named.iter_mut() {
        *p = p.requires_grad();
    }
    let n_params: usize = named.iter().map(|(_, p)| p.numel()).sum();
    println!("engram {} — engine self-check (CPU, f32)", env!("CARGO_PKG_VERSION"));
    println!("  a one-layer encoder ({n_params} parameters) learns \"does token 1 occur?\" over padded sequences");

    let sched = LinearWarmupDecay { base_lr: 3e-3, warmup: steps / 10, total: steps };
    let mut opt = AdamW::new(AdamWConfig::default());
    let mut data_rng = Rng::new(seed ^ 0x5eed);
    let (eval_ids, eval_mask, eval_labels) = batch(&mut Rng::new(seed ^ 0xe7a1), 256, t, v as u64)?;
    let start = Instant::now();
    let acc0 = accuracy(&named, &eval_ids, &eval_mask, &eval_labels, nh)?;
    let mut first_loss = None;
    let mut last_loss = 0.0;
    for step in 0..steps {
        let (ids, mask, labels) = batch(&mut data_rng, b, t, v as u64)?;
        let tape = Tape::training(seed.wrapping_add(step));
        let logits = forward(&tape, &named, &ids, &mask, nh, 0.1)?;
        let loss = ops::cross_entropy(&tape, &logits, &labels)?;
        let mut grads = tape.backward(&loss)?;
        let params: Vec<&Tensor> = named.iter().map(|(_, p)| p).collect();
        let norm = clip_grad_norm(&mut grads, &params, 1.0)?;
        let lr = sched.lr(step);
        let mut groups = hf_param_groups(named.iter_mut().map(|(n, p)| (n.clone(), p)).collect(), 0.01);
        opt.step(&mut groups, &grads, lr)?;
        last_loss = loss.item()?;
        first_loss.get_or_insert(last_loss);
        if step % 10 == 0 || step + 1 == steps {
            println!("  step {step:>4}  loss {last_loss:.4}  grad-norm {norm:.3}  lr {lr:.2e}");
        }
    }
    let acc1 = accuracy(&named, &eval_ids, &eval_mask, &eval_labels, nh)?;
    println!(
        "  held-out accuracy {:.1}% -> {:.1}% in {:.2} s",
        100.0 * acc0,
        100.0 * acc1,
        start.elapsed().as_secs_f64()
    );
    let ok = steps == 0 || first_loss.is_some_and(|f| last_loss < f);
    println!("  self-check: {}", if ok { "loss fell — engine core OK" } else { "LOSS DID NOT FALL" });
    println!("\nNot built yet: BERT checkpoints (inspect, embed), the trainer (finetune, eval, predict), the CUDA backend.");
    Ok(ok)
}

fn forward(tape: &Tape, p: &[(String, Tensor)], ids: &Tensor, mask: &Tensor, nh: usize, drop: f64) -> Result<Tensor> {
    let w = |n: &str| &p.iter().find(|(k, _)| k == n).expect("parameter exists").1;
    let lin = |x: &Tensor, n: &str| ops::linear(tape, x, w(&format!("{n}.weight")), Some(w(&format!("{n}.bias"))));
    let (b, t) = (ids.shape()[0], ids.shape()[1]);
    let pos = Tensor::from_ids((0..b * t).map(|i| (i % t) as i64).collect(), &[b, t])?;
    let x = ops::add(
        tape,
        &ops::embedding(tape, ids, w("embeddings.word_embeddings.weight"), Some(0))?,
        &ops::embedding(tape, &pos, w("embeddings.position_embeddings.weight"), None)?,
    )?;
    let x = ops::layer_norm(tape, &x, w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"), 1e-12)?; // (B, T, C)
    let c = x.shape()[2];
    let heads = |n: &str| -> Result<Tensor> { ops::split_heads(tape, &lin(&x, n)?, nh) };
    let a = ops::attention(tape, &heads("query")?, &heads("key")?, &heads("value")?, Some(mask), 1.0 / ((c / nh) as f64).sqrt())?;
    let a = ops::dropout(tape, &lin(&ops::merge_heads(tape, &a)?, "output")?, drop)?;
    let x = ops::layer_norm(tape, &ops::add(tape, &x, &a)?, w("attention.LayerNorm.weight"), w("attention.LayerNorm.bias"), 1e-12)?;
    let f = lin(&ops::gelu(tape, &lin(&x, "intermediate")?)?, "ffn_output")?;
    let x = ops::layer_norm(tape, &ops::add(tape, &x, &f)?, w("output.LayerNorm.weight"), w("output.LayerNorm.bias"), 1e-12)?;
    lin(&ops::tanh(tape, &ops::mean_pool(tape, &x, mask)?)?, "classifier") // (B, 2)
}

fn accuracy(p: &[(String, Tensor)], ids: &Tensor, mask: &Tensor, labels: &Tensor, nh: usize) -> Result<f64> {
    let logits = forward(&Tape::inference(), p, ids, mask, nh, 0.0)?.to_f64_vec();
    let labels = labels.ids("accuracy")?;
    let hits = labels.iter().enumerate().filter(|&(i, &l)| (logits[2 * i + 1] > logits[2 * i]) == (l == 1)).count();
    Ok(hits as f64 / labels.len() as f64)
}
