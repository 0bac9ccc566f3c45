//! Per-op wall time of one tape: where a forward and backward spend their time, by op name —
//! `torch.profiler`'s "self CPU time by op" table, without a global registry.
//!
//! Forward: every op ends by recording its output on the tape, so an op is charged the wall time
//! from the previous op's record to its own (model glue between two ops — a reshape, a slice of a
//! parameter map — is charged to the op that follows it). Backward: each node's backward call is
//! timed on its own. CUDA launches are asynchronous, so on a GPU the times mean something only
//! with `ENGRAM_CUDA_SYNC=1` (every launch waits).

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Default, Debug, PartialEq)]
pub struct OpTime {
    pub fwd_calls: u64,
    pub fwd: Duration,
    pub bwd_calls: u64,
    pub bwd: Duration,
}

impl OpTime {
    pub fn total(&self) -> Duration {
        self.fwd + self.bwd
    }
}

/// The per-op times of one or more profiled tapes ([`Profile::merge`] adds them up).
#[derive(Clone, Debug, Default)]
pub struct Profile {
    ops: HashMap<&'static str, OpTime>,
}

impl Profile {
    pub fn get(&self, op: &str) -> Option<OpTime> {
        self.ops.get(op).copied()
    }

    /// Ops by total time, largest first (ties by name, so the order is stable).
    pub fn rows(&self) -> Vec<(&'static str, OpTime)> {
        let mut rows: Vec<_> = self.ops.iter().map(|(k, v)| (*k, *v)).collect();
        rows.sort_by(|a, b| b.1.total().cmp(&a.1.total()).then(a.0.cmp(b.0)));
        rows
    }

    pub fn total(&self) -> Duration {
        self.ops.values().map(OpTime::total).sum()
    }

    pub fn merge(&mut self, other: &Profile) {
        for (name, t) in &other.ops {
            let e = self.ops.entry(name).or_default();
            e.fwd_calls += t.fwd_calls;
            e.fwd += t.fwd;
            e.bwd_calls += t.bwd_calls;
            e.bwd += t.bwd;
        }
    }
}

impl fmt::Display for Profile {
    /// A table: op, forward calls and ms, backward calls and ms, total ms and share.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let all = ms(self.total()).max(f64::MIN_POSITIVE);
        writeln!(f, "{:<18} {:>7} {:>10} {:>7} {:>10} {:>10} {:>6}", "op", "fwd n", "fwd ms", "bwd n", "bwd ms", "total ms", "%")?;
        for (name, t) in self.rows() {
            writeln!(
                f,
                "{name:<18} {:>7} {:>10.1} {:>7} {:>10.1} {:>10.1} {:>6.1}",
                t.fwd_calls,
                ms(t.fwd),
                t.bwd_calls,
                ms(t.bwd),
                ms(t.total()),
                100.0 * ms(t.total()) / all
            )?;
        }
        write!(f, "{:<18} {:>7} {:>10} {:>7} {:>10} {:>10.1} {:>6.1}", "all", "", "", "", "", all, 100.0)
    }
}

/// The live recorder a profiled tape holds.
pub(crate) struct Recorder {
    pub(crate) profile: Profile,
    last: Instant,
}

impl Recorder {
    pub(crate) fn new() -> Self {
        Recorder { profile: Profile::default(), last: Instant::now() }
    }

    /// Charge the time since the previous forward record to `op`.
    pub(crate) fn forward(&mut self, op: &'static str) {
        let now = Instant::now();
        let e = self.profile.ops.entry(op).or_default();
        e.fwd_calls += 1;
        e.fwd += now - self.last;
        self.last = now;
    }

    /// Charge the next forward record from now (a checkpointed call's rerun in backward).
    pub(crate) fn restart(&mut self) {
        self.last = Instant::now();
    }

    pub(crate) fn backward(&mut self, op: &'static str, took: Duration) {
        let e = self.profile.ops.entry(op).or_default();
        e.bwd_calls += 1;
        e.bwd += took;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use crate::{ops, Tape, Tensor};

    fn input(n: usize, seed: u64) -> Tensor {
        let v: Vec<f32> = crate::util::Rng::new(seed).normal_vec(n).into_iter().map(|x| x as f32).collect();
        Tensor::from_vec(v, &[n / 64, 64]).unwrap()
    }

    #[test]
    fn counts_every_forward_and_backward_call_and_stays_within_wall_time() {
        let x = input(64 * 48, 1);
        let w = input(64 * 64, 2).requires_grad();
        let tape = Tape::training(7).profiled();
        let t0 = Instant::now();
        let mut h = x.clone();
        for _ in 0..3 {
            h = ops::gelu(&tape, &ops::linear(&tape, &h, &w, None).unwrap()).unwrap();
        }
        let targets = Tensor::from_ids((0..48).map(|i| i % 64).collect(), &[48]).unwrap();
        let loss = ops::cross_entropy(&tape, &h, &targets).unwrap();
        tape.backward(&loss).unwrap();
        let wall = t0.elapsed();
        let p = tape.profile().expect("profiled tape");
        let lin = p.get("linear").unwrap();
        let gelu = p.get("gelu").unwrap();
        let ce = p.get("cross_entropy").unwrap();
        assert_eq!((lin.fwd_calls, lin.bwd_calls, gelu.fwd_calls, gelu.bwd_calls), (3, 3, 3, 3));
        assert_eq!((ce.fwd_calls, ce.bwd_calls), (1, 1));
        assert!(lin.fwd > std::time::Duration::ZERO && lin.bwd > std::time::Duration::ZERO);
        assert!(p.total() <= wall, "profiled {:?} > wall {:?}", p.total(), wall);
        assert_eq!(p.rows().len(), 3);
        let table = p.to_string();
        assert!(table.contains("linear") && table.lines().count() == 5, "{table}");

        // Inference tapes record nothing but are still timed; unprofiled tapes report nothing.
        let inf = Tape::inference().profiled();
        ops::gelu(&inf, &x).unwrap();
        assert_eq!(inf.profile().unwrap().get("gelu").unwrap().fwd_calls, 1);
        assert!(Tape::training(1).profile().is_none());

        let mut sum = p.clone();
        sum.merge(&inf.profile().unwrap());
        assert_eq!(sum.get("gelu").unwrap().fwd_calls, 4);
    }

    /// Checkpointed calls are timed by op name: their forward, their rerun in backward (as
    /// forward calls, as torch.profiler shows a recomputation) and their ops' backwards; the
    /// checkpoint node itself keeps only what none of them took.
    #[test]
    fn checkpointed_calls_are_timed_by_the_ops_inside() {
        let x = input(64 * 48, 3);
        let ws: Vec<Tensor> = (0..3).map(|i| input(64 * 64, 10 + i).requires_grad()).collect();
        let block: crate::autograd::CheckpointFn = std::rc::Rc::new(|t: &Tape, v: &[Tensor]| ops::gelu(t, &ops::linear(t, &v[0], &v[1], None)?));
        let tape = Tape::training(7).checkpointing(true).profiled();
        let t0 = Instant::now();
        let mut h = x.clone();
        for w in &ws {
            h = tape.checkpoint("block", &[&h, w], block.clone()).unwrap();
        }
        let targets = Tensor::from_ids((0..48).map(|i| i % 64).collect(), &[48]).unwrap();
        let loss = ops::cross_entropy(&tape, &h, &targets).unwrap();
        tape.backward(&loss).unwrap();
        let wall = t0.elapsed();
        let p = tape.profile().unwrap();
        let (lin, gelu, blk) = (p.get("linear").unwrap(), p.get("gelu").unwrap(), p.get("block").unwrap());
        assert_eq!((lin.fwd_calls, lin.bwd_calls, gelu.fwd_calls, gelu.bwd_calls), (6, 3, 6, 3), "forward, rerun, backward");
        assert_eq!((blk.fwd_calls, blk.bwd_calls), (3, 3));
        assert!(lin.fwd > std::time::Duration::ZERO && lin.bwd > std::time::Duration::ZERO);
        assert!(blk.bwd < lin.bwd, "the checkpoint node keeps its overhead only ({:?} vs linear's {:?})", blk.bwd, lin.bwd);
        assert!(p.total() <= wall, "profiled {:?} > wall {:?}", p.total(), wall);
    }
}
