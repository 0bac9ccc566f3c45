//! The `engram` binary end to end: `embed` writes one JSON object per input line, in order, with
//! the embedding the library computes; `inspect` describes a model; bad input exits non-zero with
//! a message naming the file.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn engram(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_engram")).args(args).current_dir(root()).output().expect("run engram");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn embed_writes_jsonl_in_input_order() {
    let input = std::env::temp_dir().join(format!("engram-cli-{}.txt", std::process::id()));
    std::fs::write(&input, "the weather is nice today\n\nhow do i reset my password?\n").unwrap();
    let (ok, stdout, stderr) = engram(&["embed", "--model", "weights/tiny-bert", "--normalize", "--batch-size", "2", "--input", input.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let lines: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).expect("valid JSON line")).collect();
    assert_eq!(lines.len(), 3);
    let texts: Vec<&str> = lines.iter().map(|l| l["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["the weather is nice today", "", "how do i reset my password?"]);
    for l in &lines {
        let e: Vec<f64> = l["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert_eq!(e.len(), 32);
        let norm = e.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "--normalize gives unit vectors, got {norm}");
    }
    assert!(stdout.starts_with("{\"text\":"), "text comes first: {stdout}");
    // Same vectors as the library (batching and padding do not change them).
    let (ok, single, _) = engram(&["embed", "--model", "weights/tiny-bert", "--normalize", "how do i reset my password?"]);
    assert!(ok);
    let a: serde_json::Value = serde_json::from_str(single.trim()).unwrap();
    let (x, y) = (a["embedding"].as_array().unwrap(), lines[2]["embedding"].as_array().unwrap());
    for (p, q) in x.iter().zip(y) {
        assert!((p.as_f64().unwrap() - q.as_f64().unwrap()).abs() < 1e-5, "padding changed an embedding");
    }
}

#[test]
fn inspect_describes_the_model() {
    let (ok, stdout, stderr) = engram(&["inspect", "weights/tiny-bert"]);
    assert!(ok, "{stderr}");
    for needle in ["BertForSequenceClassification", "2 layers, hidden 32", "4 heads", "labels       negative, neutral, positive", "tokenizer    vocab 135"] {
        assert!(stdout.contains(needle), "missing '{needle}' in:\n{stdout}");
    }
}

#[test]
fn bad_input_exits_nonzero_naming_the_file() {
    let (ok, _, stderr) = engram(&["embed", "--model", "weights/does-not-exist", "x"]);
    assert!(!ok && stderr.contains("weights/does-not-exist"), "{stderr}");
    let (ok, _, stderr) = engram(&["embed", "--model", "weights/tiny-bert", "--input", "/no/such/file.txt"]);
    assert!(!ok && stderr.contains("/no/such/file.txt"), "{stderr}");
    // A tokenizer from another checkpoint (ids past the model's vocab_size) names both files.
    let dir = std::env::temp_dir().join(format!("engram-cli-mixed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(root().join("weights/tiny-bert").join(f), dir.join(f)).unwrap();
    }
    let mut tok: serde_json::Value = serde_json::from_slice(&std::fs::read(root().join("weights/tiny-bert/tokenizer.json")).unwrap()).unwrap();
    tok["model"]["vocab"]["zebra"] = serde_json::json!(500);
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();
    for cmd in ["embed", "predict"] {
        let (ok, _, stderr) = engram(&[cmd, "--model", dir.to_str().unwrap(), "a zebra"]);
        assert!(!ok && stderr.contains("tokenizer.json") && stderr.contains("config.json") && stderr.contains("vocab_size = 135"), "{cmd}: {stderr}");
    }
    // Zero batch sizes are errors for both inference commands (not a silent batch of 1), and a
    // data file without an extension says so.
    for cmd in ["embed", "predict"] {
        let (ok, _, stderr) = engram(&[cmd, "--model", "weights/tiny-bert", "--batch-size", "0", "x"]);
        assert!(!ok && stderr.contains("--batch-size must be at least 1") && !stderr.contains("panicked"), "{cmd}: {stderr}");
    }
    let bare = dir.join("devdata");
    std::fs::write(&bare, "text,label\nx,positive\n").unwrap();
    let (ok, _, stderr) = engram(&["eval", "--model", "weights/tiny-bert", "--data", bare.to_str().unwrap()]);
    assert!(!ok && stderr.contains("devdata") && stderr.contains("has no extension"), "{stderr}");
    let (ok, _, stderr) = engram(&["embed", "--model", "weights/tiny-bert", "--device", "cuda", "x"]);
    if !ok {
        assert!(stderr.contains("cuda") || stderr.contains("CUDA"), "{stderr}");
    }
    let (ok, _, stderr) = engram(&["embed", "--model", "weights/tiny-bert", "--int8", "--device", "cuda", "x"]);
    assert!(!ok && stderr.contains("--int8 runs on the CPU"), "{stderr}");
    // bf16 runs on CUDA too: refused only where this build or machine has no CUDA device.
    let (ok, _, stderr) = engram(&["embed", "--model", "weights/tiny-bert", "--bf16", "--device", "cuda", "x"]);
    if !ok {
        assert!((stderr.contains("cuda") || stderr.contains("CUDA")) && !stderr.contains("runs on the CPU"), "{stderr}");
    }
    let (ok, _, stderr) = engram(&["embed", "--model", "weights/tiny-bert", "--bf16", "--int8", "x"]);
    assert!(!ok && stderr.contains("cannot be used with"), "{stderr}");
}

#[test]
fn int8_and_bf16_embeddings_are_close_to_f32_and_not_equal() {
    let text = "how do i reset my password?";
    let vecs: Vec<Vec<f64>> = [&[][..], &["--int8"][..], &["--bf16"][..]]
        .iter()
        .map(|flag| {
            let mut args = vec!["embed", "--model", "weights/tiny-bert", "--normalize"];
            args.extend_from_slice(flag);
            args.push(text);
            let (ok, stdout, stderr) = engram(&args);
            assert!(ok, "{stderr}");
            let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
            v["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
        })
        .collect();
    for (i, name) in [(1, "int8"), (2, "bf16")] {
        let cos: f64 = vecs[0].iter().zip(&vecs[i]).map(|(a, b)| a * b).sum();
        assert!(cos > 0.99 && vecs[0] != vecs[i], "cosine(f32, {name}) = {cos}");
    }
}

#[test]
fn selfcheck_loss_falls() {
    let (ok, stdout, stderr) = engram(&["selfcheck", "--steps", "30"]);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("loss fell"), "{stdout}");
}

/// `--input` in the training formats reads the "text" field or column (and "text_pair"); the same
/// texts given as arguments give the same output. A JSONL line without "text" is an error naming
/// the file and the line (it used to be embedded as its own JSON text).
#[test]
fn input_files_in_the_training_formats_are_read_by_field() {
    let dir = std::env::temp_dir().join(format!("engram-cli-inputs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let texts = ["the weather is nice today", "how do i reset my password, \"now\"?"];
    let jsonl = dir.join("in.jsonl");
    std::fs::write(&jsonl, texts.iter().map(|t| serde_json::json!({ "text": t, "label": "x" }).to_string() + "\n").collect::<String>()).unwrap();
    let csv = dir.join("in.csv");
    std::fs::write(&csv, "label,text\nx,the weather is nice today\ny,\"how do i reset my password, \"\"now\"\"?\"\n").unwrap();
    let (ok, want, stderr) = engram(&["embed", "--model", "weights/tiny-bert", "--", texts[0], texts[1]]);
    assert!(ok, "{stderr}");
    for f in [&jsonl, &csv] {
        let (ok, got, stderr) = engram(&["embed", "--model", "weights/tiny-bert", "--input", f.to_str().unwrap()]);
        assert!(ok, "{}: {stderr}", f.display());
        assert_eq!(got, want, "{}", f.display());
    }
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"fine\"}\n{\"txt\": \"typo\"}\n").unwrap();
    let (ok, stdout, stderr) = engram(&["embed", "--model", "weights/tiny-bert", "--input", bad.to_str().unwrap()]);
    assert!(!ok && stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("bad.jsonl") && stderr.contains("line 2") && stderr.contains("\"text\""), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `engram … | head -n1`: when the reader closes the pipe the binary ends quietly (SIGPIPE's
/// default action, as other Unix tools do), not with a panic about a failed write.
#[cfg(unix)]
#[test]
fn a_closed_output_pipe_ends_the_binary_quietly() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let texts: Vec<String> = (0..4000).map(|i| format!("text number {i}")).collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["embed", "--model", "weights/tiny-bert"])
        .args(&texts)
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run engram");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap(); // then dropped: the pipe closes
    assert!(first.starts_with("{\"text\":\"text number 0\""), "{first}");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
}

/// A `--bf16` fine-tuning run computes the same bits whichever bf16 kernel runs it: `vdpbf16ps`
/// (where the CPU has AVX512_BF16), the f32 GEMM on rounded, pair-swapped operands (every other
/// CPU), and the portable scalar loop (the reference). So a bf16 model is reproducible across
/// machines. Each kernel is chosen once per process, hence one `engram finetune` per kernel. The
/// runs also take transformers' spellings of the schedule and AdamW flags.
#[test]
fn bf16_fine_tuning_is_bit_identical_across_kernels() {
    let data = root().join("tests/fixtures/data");
    let run = |kernel: &str| -> Vec<u8> {
        let out = std::env::temp_dir().join(format!("engram-cli-bf16-{kernel}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_engram"));
        cmd.args(["finetune", "--model", "weights/tiny-bert", "--task", "classify", "--bf16", "--quiet", "--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--seed", "5"])
            .args(["--lr-scheduler", "constant_with_warmup", "--warmup-steps", "1", "--adam-beta2", "0.98", "--adam-epsilon", "1e-6"])
            .arg("--train")
            .arg(data.join("tiny_train.csv"))
            .arg("--dev")
            .arg(data.join("tiny_dev.csv"))
            .arg("--out")
            .arg(&out)
            .current_dir(root());
        if !kernel.is_empty() {
            cmd.env("ENGRAM_GEMM_BF16", kernel);
        }
        let o = cmd.output().expect("run engram");
        assert!(o.status.success(), "{kernel}: {}", String::from_utf8_lossy(&o.stderr));
        let m: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("metrics.json")).unwrap()).unwrap();
        let lrs: Vec<f64> = m["learning_rate_per_step"].as_array().unwrap().iter().map(|e| e[1].as_f64().unwrap()).collect();
        assert!(lrs.len() > 2 && lrs[0] == 0.0 && lrs[1..].iter().all(|&l| l == 1e-3), "constant_with_warmup over one step: {lrs:?}");
        std::fs::read(out.join("model.safetensors")).unwrap()
    };
    let reference = run("portable");
    for kernel in ["", "f32"] {
        assert!(run(kernel) == reference, "kernel {kernel:?}: the fine-tuned weights differ from the portable kernel's");
    }
}

/// `engram convert --dtype bf16|f16`: every float tensor stored as the nearest bf16/f16 of the
/// original (bit for bit what `half` rounds to), integers kept, the file about half the size,
/// `torch_dtype` in config.json, the tokenizer copied, and the converted model predicts as the
/// original does (to rounding); converting into the source directory is refused.
#[test]
fn convert_stores_weights_in_bf16_or_f16() {
    use engram::models::bert::weights::{describe_safetensors, read_safetensors};
    let src = root().join("weights/tiny-bert");
    let orig = read_safetensors(src.join("model.safetensors")).unwrap();
    for (dtype, stored, round) in [
        ("bf16", "BF16", (|x: f32| half::bf16::from_f32(x).to_f32()) as fn(f32) -> f32),
        ("f16", "F16", |x: f32| half::f16::from_f32(x).to_f32()),
    ] {
        let out = std::env::temp_dir().join(format!("engram-convert-{dtype}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let (ok, _, stderr) = engram(&["convert", "--model", src.to_str().unwrap(), "--out", out.to_str().unwrap(), "--dtype", dtype]);
        assert!(ok, "{stderr}");
        let conv = read_safetensors(out.join("model.safetensors")).unwrap();
        assert_eq!(conv.len(), orig.len());
        for (name, t) in &orig {
            let (a, b) = (t.to_f64_vec(), conv[name].to_f64_vec());
            let is_float = describe_safetensors(src.join("model.safetensors")).unwrap().iter().any(|(n, d, _)| n == name && d == "F32");
            for (x, y) in a.iter().zip(&b) {
                let want = if is_float { round(*x as f32) as f64 } else { *x };
                assert!(want.to_bits() == y.to_bits(), "{dtype} {name}: {x} stored as {y}, want {want}");
            }
        }
        let kinds: Vec<String> = describe_safetensors(out.join("model.safetensors")).unwrap().into_iter().map(|(_, d, _)| d).collect();
        assert!(kinds.iter().all(|d| d == stored || d == "I64") && kinds.iter().any(|d| d == stored), "{kinds:?}");
        let (before, after) = (std::fs::metadata(src.join("model.safetensors")).unwrap().len(), std::fs::metadata(out.join("model.safetensors")).unwrap().len());
        assert!(after * 10 < before * 6, "{dtype}: {before} → {after} bytes");
        let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["torch_dtype"], if dtype == "bf16" { "bfloat16" } else { "float16" });
        assert!(std::fs::read(out.join("tokenizer.json")).unwrap() == std::fs::read(src.join("tokenizer.json")).unwrap());
        let emb = |m: &Path| -> Vec<f64> {
            let (ok, stdout, stderr) = engram(&["embed", "--model", m.to_str().unwrap(), "--normalize", "how do i reset my password?"]);
            assert!(ok, "{stderr}");
            let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
            v["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
        };
        let (e0, e1) = (emb(&src), emb(&out));
        let cos: f64 = e0.iter().zip(&e1).map(|(a, b)| a * b).sum();
        assert!(cos > 0.999 && e0 != e1, "{dtype}: cosine {cos}");
    }
    let (ok, _, stderr) = engram(&["convert", "--model", src.to_str().unwrap(), "--out", src.to_str().unwrap(), "--dtype", "bf16"]);
    assert!(!ok && stderr.contains("source directory"), "{stderr}");
    let (ok, _, stderr) = engram(&["convert", "--model", "/nonexistent/m", "--out", "/tmp/x", "--dtype", "bf16"]);
    assert!(!ok && stderr.contains("/nonexistent/m") && stderr.contains("model directory"), "{stderr}");
}

/// A flag given twice takes its last value, so `scripts/run.sh --epochs 3` (appended to the
/// script's own `--epochs 1`) trains 3 epochs instead of failing on the repeat.
#[test]
fn a_repeated_finetune_flag_takes_its_last_value() {
    let out = std::env::temp_dir().join(format!("engram-cli-repeat-{}", std::process::id()));
    let d = root().join("tests/fixtures/data");
    let (train, dev) = (d.join("tiny_train.csv"), d.join("tiny_dev.csv"));
    let (ok, _, stderr) = engram(&[
        "finetune", "--model", "weights/tiny-bert", "--task", "classify", "--train", train.to_str().unwrap(), "--dev", dev.to_str().unwrap(),
        "--out", out.to_str().unwrap(), "--epochs", "1", "--max-length", "16", "--epochs", "2", "--quiet", "--class-weights", "neg=2",
    ]);
    assert!(ok, "{stderr}");
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    let epochs = m["epochs"].as_array().map(|e| e.len()).unwrap_or_else(|| panic!("{m}"));
    assert_eq!(epochs, 2, "{m}");
    // --class-weights reaches the run (saved with its arguments); a malformed one is a usage error.
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("checkpoint/training_args.json")).unwrap()).unwrap();
    assert_eq!(saved["class_weights"], serde_json::json!({"given": [["neg", 2.0]]}), "{saved}");
    let (ok, _, stderr) = engram(&["finetune", "--model", "weights/tiny-bert", "--task", "classify", "--train", "x.csv", "--dev", "y.csv", "--out", "z", "--class-weights", "neg:2"]);
    assert!(!ok && stderr.contains("--class-weights") && stderr.contains("LABEL=WEIGHT"), "{stderr}");
    let _ = std::fs::remove_dir_all(&out);
}

/// The NER flags reach the library from the command line: `--label-all-tokens` and
/// `--aggregation` are saved with the run and shown on its model card; `eval` and `predict`
/// take `--aggregation`; a sequence model refuses it.
#[test]
fn ner_sub_token_flags_reach_training_eval_and_predict() {
    let out = std::env::temp_dir().join(format!("engram-cli-label-all-{}", std::process::id()));
    let d = root().join("tests/fixtures/data");
    let (train, dev) = (d.join("tiny_train.conll"), d.join("tiny_dev.conll"));
    let (ok, _, stderr) = engram(&[
        "finetune", "--model", "weights/tiny-bert", "--task", "ner", "--train", train.to_str().unwrap(), "--dev", dev.to_str().unwrap(),
        "--out", out.to_str().unwrap(), "--epochs", "1", "--label-all-tokens", "--aggregation", "average", "--eval-batch-size", "3", "--quiet",
    ]);
    assert!(ok, "{stderr}");
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("checkpoint/training_args.json")).unwrap()).unwrap();
    assert_eq!((&saved["label_all_tokens"], &saved["aggregation"], &saved["eval_batch_size"]), (&serde_json::json!(true), &serde_json::json!("average"), &serde_json::json!(3)));
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.contains("- label_all_tokens: true") && card.contains("- aggregation_strategy: average") && card.contains("- eval_batch_size: 3"), "{card}");
    let (ok, json, stderr) = engram(&["eval", "--model", out.to_str().unwrap(), "--data", dev.to_str().unwrap(), "--aggregation", "max"]);
    assert!(ok && stderr.contains("--aggregation max"), "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["metrics"]["aggregation"], "max");
    let (ok, line, stderr) = engram(&["predict", "--model", out.to_str().unwrap(), "--aggregation", "max", "the brown fox"]);
    assert!(ok, "{stderr}");
    let p: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(p["tags"].as_array().map(|t| t.len()), Some(3), "{p}");
    let (ok, _, stderr) = engram(&["predict", "--model", "weights/tiny-bert", "--aggregation", "average", "x"]);
    assert!(!ok && stderr.contains("--aggregation") && !stderr.contains("panicked"), "{stderr}");
    let (ok, _, stderr) = engram(&["predict", "--model", out.to_str().unwrap(), "--aggregation", "mean", "x"]);
    assert!(!ok && stderr.contains("first") && stderr.contains("average"), "an unknown strategy lists the known ones: {stderr}");
    let _ = std::fs::remove_dir_all(&out);
}

/// `--threads N` sizes the kernels' pool, and the results do not depend on it: the kernels split
/// work into fixed blocks, not per thread (MiniLM when installed, else the tiny BERT).
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let minilm = root().join("weights/cache/all-MiniLM-L6-v2");
    let model = if minilm.join("model.safetensors").is_file() { minilm.to_str().unwrap().to_string() } else { "weights/tiny-bert".to_string() };
    let texts: Vec<String> = (0..40).map(|i| format!("sentence number {i} says something {} about the weather", "rather ".repeat(i % 7))).collect();
    let mut args = vec!["embed", "--model", model.as_str()];
    args.extend(texts.iter().map(|s| s.as_str()));
    let run = |threads: &str| {
        let mut a = vec!["--threads", threads];
        a.extend(&args);
        let (ok, stdout, stderr) = engram(&a);
        assert!(ok, "{stderr}");
        stdout
    };
    let one = run("1");
    assert_eq!(one.lines().count(), 40);
    assert_eq!(run("2"), one, "--threads 2 changed an embedding");
    assert_eq!(run("3"), one, "--threads 3 changed an embedding");
    let (ok, _, stderr) = engram(&["--threads", "0", "inspect", "weights/tiny-bert"]);
    assert!(!ok && stderr.contains("--threads"), "{stderr}");
}

/// `--input -` streams: each batch of lines is answered while stdin stays open (a pipe from a
/// long-running producer gets its results as it goes), and the rest at the end of input.
#[test]
fn stdin_input_is_answered_a_batch_at_a_time() {
    use std::io::{BufRead, BufReader, Write};
    let mut child = Command::new(env!("CARGO_BIN_EXE_engram"))
        .args(["embed", "--model", "weights/tiny-bert", "--input", "-", "--batch-size", "2"])
        .current_dir(root())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    writeln!(stdin, "first line\nsecond line").unwrap();
    stdin.flush().unwrap();
    let wait = std::time::Duration::from_secs(60);
    for want in ["first line", "second line"] {
        let got: serde_json::Value = serde_json::from_str(&rx.recv_timeout(wait).expect("a full batch is answered before stdin closes")).unwrap();
        assert_eq!(got["text"], want);
    }
    writeln!(stdin, "third line").unwrap();
    drop(stdin);
    let got: serde_json::Value = serde_json::from_str(&rx.recv_timeout(wait).expect("the last, partial batch at the end of input")).unwrap();
    assert_eq!(got["text"], "third line");
    assert!(child.wait().unwrap().success());
}
