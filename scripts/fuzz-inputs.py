#!/usr/bin/env python3
"""Input fuzzing of the engram binary: corrupted copies of a model directory (safetensors header
bytes, truncation, header length; config.json values, deletions and types; tokenizer.json
truncation and vocabulary ids) through `embed` and `predict`, and corrupted training files (CSV
and CoNLL: flipped and inserted bytes, truncation, duplicated or deleted lines) through
`finetune`. A run passes when every call exits 0 (accepted) or 1/2 (a reported error): a panic
(101) or a signal is a bug. Not part of the test command; the standard library only.

    cargo build --release && python3 scripts/fuzz-inputs.py [--bin target/release/engram] [--seed 1] [--n 300]
"""
import argparse, json, os, random, shutil, subprocess, tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(binary, args):
    try:
        p = subprocess.run([binary] + args, capture_output=True, text=True, timeout=120)
        return p.returncode, p.stderr[-600:]
    except subprocess.TimeoutExpired:
        return "timeout", ""


def model_mutants(binary, rng, n, tmp):
    src = os.path.join(ROOT, "weights/tiny-bert")
    cfg0 = json.load(open(f"{src}/config.json"))
    bad = 0
    for i in range(n):
        d = os.path.join(tmp, f"m{i}")
        shutil.copytree(src, d)
        kind = rng.choice(["st_header", "st_trunc", "st_len", "cfg_val", "cfg_del", "tok_trunc", "tok_flip", "cfg_type"])
        st = f"{d}/model.safetensors"
        b = bytearray(open(st, "rb").read())
        hl = int.from_bytes(b[:8], "little")
        if kind == "st_header":
            for _ in range(rng.randint(1, 4)):
                b[rng.randrange(8, 8 + hl)] = rng.randrange(256)
            open(st, "wb").write(b)
        elif kind == "st_trunc":
            open(st, "wb").write(b[: rng.randrange(len(b))])
        elif kind == "st_len":
            v = rng.choice([0, 1, hl - 1, hl + 1, 2**40, 2**64 - 1, rng.randrange(2**32)])
            b[:8] = v.to_bytes(8, "little")
            open(st, "wb").write(b)
        elif kind in ("cfg_val", "cfg_del", "cfg_type"):
            cfg = dict(cfg0)
            k = rng.choice(list(cfg.keys()))
            if kind == "cfg_del":
                del cfg[k]
            elif kind == "cfg_val":
                cfg[k] = rng.choice([0, -1, 1, 2**31, 2**63 - 1, 1e30, 0.5, 3, 7, 10**6])
            else:
                cfg[k] = rng.choice(["x", None, [], {}, True])
            json.dump(cfg, open(f"{d}/config.json", "w"))
        elif kind == "tok_trunc":
            t = open(f"{d}/tokenizer.json").read()
            open(f"{d}/tokenizer.json", "w").write(t[: rng.randrange(len(t))])
        else:
            t = json.load(open(f"{d}/tokenizer.json"))
            vocab = t["model"]["vocab"]
            vocab[rng.choice(list(vocab.keys()))] = rng.choice([-1, 10**9, 135, 134, "x"])
            json.dump(t, open(f"{d}/tokenizer.json", "w"))
        for args in (["embed", "--model", d, "hello world the cat"], ["predict", "--model", d, "hello world"]):
            rc, err = run(binary, args)
            if rc not in (0, 1, 2):
                bad += 1
                print(f"BAD model mutant {i} ({kind}), {args[0]}: exit {rc}\n{err}", flush=True)
                break
        shutil.rmtree(d, ignore_errors=True)
    return bad


def data_mutants(binary, rng, n, tmp):
    fx = os.path.join(ROOT, "tests/fixtures/data")
    bad = 0
    for i in range(n):
        task, tr, dv = rng.choice([("classify", "tiny_train.csv", "tiny_dev.csv"), ("ner", "tiny_train.conll", "tiny_dev.conll")])
        d = os.path.join(tmp, f"d{i}")
        os.makedirs(d)
        data = bytearray(open(f"{fx}/{tr}", "rb").read())
        kind = rng.choice(["flip", "trunc", "insert", "dupe_line", "delete_line", "bytes"])
        if kind == "flip":
            for _ in range(rng.randint(1, 5)):
                data[rng.randrange(len(data))] = rng.choice(b',\t\n"\r x\xff\x00')
        elif kind == "trunc":
            data = data[: rng.randrange(len(data))]
        elif kind == "insert":
            j = rng.randrange(len(data))
            data[j:j] = rng.choice([b'"', b"\n\n\n", b",,,", b"\t", b"\xef\xbb\xbf", b"\x00", b"-100", b"O O O"])
        elif kind == "bytes":
            j = rng.randrange(len(data))
            data[j:j] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 20)))
        else:
            lines = data.split(b"\n")
            j = rng.randrange(len(lines))
            if kind == "dupe_line":
                lines.insert(j, lines[j])
            else:
                del lines[j]
            data = bytearray(b"\n".join(lines))
        ext = tr.split(".")[-1]
        open(f"{d}/train.{ext}", "wb").write(data)
        args = ["finetune", "--model", os.path.join(ROOT, "weights/tiny-bert"), "--task", task, "--train", f"{d}/train.{ext}",
                "--dev", f"{fx}/{dv}", "--out", f"{d}/out", "--epochs", "1", "--batch-size", "8", "--max-length", "16"]
        rc, err = run(binary, args)
        if rc not in (0, 1, 2):
            bad += 1
            print(f"BAD data mutant {i} ({kind}, {task}): exit {rc}\n{err}", flush=True)
        shutil.rmtree(d, ignore_errors=True)
    return bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/engram"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--n", type=int, default=300, help="model mutants (half as many data mutants)")
    a = ap.parse_args()
    rng = random.Random(a.seed)
    with tempfile.TemporaryDirectory(prefix="engram-fuzz-") as tmp:
        bm = model_mutants(a.bin, rng, a.n, tmp)
        bd = data_mutants(a.bin, rng, a.n // 2, tmp)
    print(f"{a.n} model-directory mutants: {bm} bad; {a.n // 2} training-file mutants: {bd} bad")
    raise SystemExit(1 if bm + bd else 0)


if __name__ == "__main__":
    main()
