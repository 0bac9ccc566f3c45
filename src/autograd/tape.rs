//! The tape: a list of nodes in the order ops ran (a topological order), walked in reverse.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use super::grads::{GradSink, Grads};
use super::profile::{Profile, Recorder};
use crate::error::{Error, Result};
use crate::tensor::{Buf, DType, Tensor, TensorId};

/// The backward half of an op: given the gradient of its output, accumulate (`+=`) the gradients
/// of its inputs into the sink. The struct implementing it holds what forward saved.
pub trait Backward {
    fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()>;

    /// Bytes this backward keeps besides its input tensors (saved probabilities, row
    /// statistics…), for [`Tape::held_bytes`].
    fn saved_bytes(&self) -> usize {
        0
    }
}

/// The function a [`Tape::checkpoint`] node runs, in forward and again in backward.
pub type CheckpointFn = std::rc::Rc<dyn Fn(&Tape, &[Tensor]) -> Result<Tensor>>;

/// Backward of a checkpointed function: rerun it on a recording tape that replays the forward's
/// dropout calls, from fresh leaves sharing the inputs' data, and hand their gradients on.
struct CheckpointBwd {
    f: CheckpointFn,
    seed: u64,
    bf16: bool,
    start: u64,
    /// The profiled tape's recorder: the rerun's ops, forward and backward, are timed by name.
    profile: Option<Rc<RefCell<Recorder>>>,
}

impl Backward for CheckpointBwd {
    fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
        let mut tape = Tape::replay(self.seed, self.start, self.bf16, true);
        if let Some(r) = &self.profile {
            // The rerun's first op is charged from here, not from the forward's last record.
            r.borrow_mut().restart();
            tape.profile = Some(r.clone());
        }
        let leaves: Vec<Tensor> = inputs.iter().map(|t| if t.is_tracked() { t.requires_grad() } else { t.clone() }).collect();
        let y = (self.f)(&tape, &leaves)?;
        let mut grads = tape.backward_buf(&y, dout.clone())?;
        for (orig, leaf) in inputs.iter().zip(&leaves) {
            if let Some(g) = grads.take(leaf) {
                sink.add_owned(orig, g)?;
            }
        }
        Ok(())
    }
}

struct Node {
    name: &'static str,
    inputs: Vec<Tensor>,
    output: TensorId,
    op: Box<dyn Backward>,
}

/// One forward pass. `Tape::training(seed)` records every op that touches a tracked tensor and
/// enables dropout (seeded by `seed` and the op's position); `Tape::inference()` records and saves
/// nothing and makes dropout the identity.
pub struct Tape {
    training: bool,
    /// False on a [`Tape::no_grad`] tape: dropout is on but nothing is recorded.
    grad: bool,
    seed: u64,
    dropout_calls: Cell<u64>,
    nodes: RefCell<Vec<Node>>,
    /// Per-op wall times when built with [`Tape::profiled`] (shared with the tapes that run
    /// checkpointed calls, so their ops are timed by name too).
    profile: Option<Rc<RefCell<Recorder>>>,
    /// Linear layers' f32 GEMMs in bf16 on the CPU ([`Tape::bf16`]).
    bf16: bool,
    /// Models run their layers through [`Tape::checkpoint`] ([`Tape::checkpointing`]).
    checkpointing: bool,
}

impl Tape {
    pub fn training(seed: u64) -> Tape {
        Tape { training: true, grad: true, seed, dropout_calls: Cell::new(0), nodes: RefCell::new(Vec::new()), profile: None, bf16: false, checkpointing: false }
    }

    /// Training-mode forward (dropout on, seeded like [`Tape::training`]) that records and saves
    /// nothing — `torch.no_grad()` under `model.train()`. Truncated backpropagation through time
    /// runs the segments before the truncation point on one.
    pub fn no_grad(seed: u64) -> Tape {
        Tape { training: true, grad: false, seed, dropout_calls: Cell::new(0), nodes: RefCell::new(Vec::new()), profile: None, bf16: false, checkpointing: false }
    }

    pub fn inference() -> Tape {
        Tape { training: false, grad: false, seed: 0, dropout_calls: Cell::new(0), nodes: RefCell::new(Vec::new()), profile: None, bf16: false, checkpointing: false }
    }

    /// A [`Tape::no_grad`] twin of this tape (an inference tape stays inference), with a dropout
    /// stream of its own derived from this tape's seed.
    pub fn frozen(&self) -> Tape {
        let t = if self.training { Tape::no_grad(crate::ops::dropout::mix_seed(self.seed, u64::MAX)) } else { Tape::inference() };
        t.bf16(self.bf16).checkpointing(self.checkpointing)
    }

    /// This tape with bf16 autocast on (`on`) — `torch.autocast("cpu", dtype=torch.bfloat16)`
    /// for the products that dominate: every f32 `linear` rounds its operands to bf16 and sums
    /// the exact products in f32, forward and both backward GEMMs (`ops::gemm_bf16` on the CPU,
    /// the `gemm_v3_bf16` tensor-core kernel on CUDA). Everything else (attention, softmax,
    /// layer norm, GELU, losses, gradients and the optimizer) stays f32, and so do parameters.
    /// f64 tensors are never cast.
    pub fn bf16(mut self, on: bool) -> Tape {
        self.bf16 = on;
        self
    }

    pub fn is_bf16(&self) -> bool {
        self.bf16
    }

    /// This tape with gradient (activation) checkpointing on: models run each encoder layer
    /// through [`Tape::checkpoint`], so a step keeps one layer input per layer instead of every
    /// activation, and recomputes each layer once in backward — transformers'
    /// `gradient_checkpointing_enable()`. Results are bit for bit those of a plain tape, except
    /// that gradients of a tensor used in several checkpointed calls (shared or reused weights)
    /// are summed per call first, so they agree to rounding.
    pub fn checkpointing(mut self, on: bool) -> Tape {
        self.checkpointing = on;
        self
    }

    pub fn is_checkpointing(&self) -> bool {
        self.checkpointing
    }

    /// `f(self, inputs)` without recording what happens inside: one node (`name`) whose backward
    /// runs `f` again on a recording tape — the same seed, the same dropout calls, so the same
    /// masks — and backpropagates through that rerun into `inputs`. Every tensor `f` uses that
    /// needs a gradient must come in through `inputs` (it gets them in that order). Without
    /// tracked inputs, or on a tape that records nothing, it is just `f(self, inputs)`.
    pub fn checkpoint(&self, name: &'static str, inputs: &[&Tensor], f: CheckpointFn) -> Result<Tensor> {
        let owned: Vec<Tensor> = inputs.iter().map(|t| (*t).clone()).collect();
        if !self.tracks(inputs) {
            return f(self, &owned);
        }
        // Only a recording tape tracks anything, and only a training tape records.
        let (seed, bf16, start) = (self.seed, self.bf16, self.dropout_calls.get());
        let mut sub = Tape::replay(seed, start, bf16, false);
        sub.profile.clone_from(&self.profile);
        let y = f(&sub, &owned)?;
        self.dropout_calls.set(sub.dropout_calls.get());
        let out = y.requires_grad();
        let profile = self.profile.clone();
        self.push(name, inputs, &out, Box::new(CheckpointBwd { f, seed, bf16, start, profile }));
        Ok(out)
    }

    /// A training tape seeded `seed` whose dropout calls count from `start` — a checkpointed
    /// call's forward (`grad` false: records nothing) or its rerun in backward (`grad` true).
    /// Never checkpoints; profiled by its caller.
    fn replay(seed: u64, start: u64, bf16: bool, grad: bool) -> Tape {
        Tape { training: true, grad, seed, dropout_calls: Cell::new(start), nodes: RefCell::new(Vec::new()), profile: None, bf16, checkpointing: false }
    }

    /// This tape, timing every op it sees (forward and backward; see [`Profile`]). The clock of
    /// the first op starts here.
    pub fn profiled(mut self) -> Tape {
        self.profile = Some(Rc::new(RefCell::new(Recorder::new())));
        self
    }

    /// The per-op times so far (None unless built with [`Tape::profiled`]).
    pub fn profile(&self) -> Option<Profile> {
        self.profile.as_ref().map(|r| r.borrow().profile.clone())
    }

    pub fn is_training(&self) -> bool {
        self.training
    }

    /// Number of recorded nodes (0 on an inference tape).
    pub fn len(&self) -> usize {
        self.nodes.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the recorded nodes hold for backward: the distinct tensors they keep (activations
    /// and parameters alike) plus what their backwards saved besides (attention probabilities,
    /// row statistics) — what a training step keeps alive between forward and backward.
    pub fn held_bytes(&self) -> usize {
        let mut seen = std::collections::HashSet::new();
        let nodes = self.nodes.borrow();
        let tensors: usize = nodes.iter().flat_map(|n| n.inputs.iter()).filter(|t| seen.insert(t.id())).map(|t| t.numel() * t.dtype().size_in_bytes()).sum();
        tensors + nodes.iter().map(|n| n.op.saved_bytes()).sum::<usize>()
    }

    /// Names of the recorded ops, in forward order (for debugging and tests).
    pub fn op_names(&self) -> Vec<&'static str> {
        self.nodes.borrow().iter().map(|n| n.name).collect()
    }

    /// A fresh seed for the next dropout call: a function of the tape seed and the call index,
    /// so a step replays exactly.
    pub(crate) fn next_dropout_seed(&self) -> u64 {
        let i = self.dropout_calls.get();
        self.dropout_calls.set(i + 1);
        crate::ops::dropout::mix_seed(self.seed, i)
    }

    /// Wrap `data` as the output of op `name`. When training and any input is tracked, the output
    /// is tracked and a node is recorded with the backward made by `save` (called only then, with
    /// the output, so inference saves nothing).
    pub(crate) fn record<B: Backward + 'static>(
        &self,
        name: &'static str,
        inputs: &[&Tensor],
        data: Buf,
        shape: Vec<usize>,
        save: impl FnOnce(&Tensor) -> B,
    ) -> Tensor {
        let tracked = self.grad && inputs.iter().any(|t| t.is_tracked());
        let out = Tensor::from_parts(data, shape, tracked);
        if tracked {
            let op = Box::new(save(&out));
            self.push_node(name, inputs, &out, op);
        }
        if let Some(r) = &self.profile {
            r.borrow_mut().forward(name);
        }
        out
    }

    /// Like [`Tape::record`] for an output whose tensor already exists (views).
    pub(crate) fn push(&self, name: &'static str, inputs: &[&Tensor], out: &Tensor, op: Box<dyn Backward>) {
        self.push_node(name, inputs, out, op);
        if let Some(r) = &self.profile {
            r.borrow_mut().forward(name);
        }
    }

    fn push_node(&self, name: &'static str, inputs: &[&Tensor], out: &Tensor, op: Box<dyn Backward>) {
        self.nodes.borrow_mut().push(Node {
            name,
            inputs: inputs.iter().map(|t| (*t).clone()).collect(),
            output: out.id(),
            op,
        });
    }

    pub(crate) fn tracks(&self, inputs: &[&Tensor]) -> bool {
        self.grad && inputs.iter().any(|t| t.is_tracked())
    }

    /// Backward from a scalar loss (upstream gradient 1).
    pub fn backward(&self, loss: &Tensor) -> Result<Grads> {
        if loss.numel() != 1 {
            return Err(Error::Autograd(format!(
                "backward needs a scalar loss, got shape {:?}; use backward_with",
                loss.shape()
            )));
        }
        let one = match loss.dtype() {
            DType::F64 => Tensor::from_vec(vec![1.0f64], loss.shape())?,
            _ => Tensor::from_vec(vec![1.0f32], loss.shape())?,
        }
        .to_device(loss.device())?;
        self.backward_buf(loss, one.buf().clone())
    }

    /// Backward from `out` with upstream gradient `dout` (same shape and dtype).
    pub fn backward_with(&self, out: &Tensor, dout: &Tensor) -> Result<Grads> {
        if out.shape() != dout.shape() || out.dtype() != dout.dtype() || out.device() != dout.device() {
            return Err(Error::Autograd(format!(
                "upstream gradient {:?} {:?} on {:?} does not match output {:?} {:?} on {:?}",
                dout.shape(),
                dout.dtype(),
                dout.device(),
                out.shape(),
                out.dtype(),
                out.device()
            )));
        }
        self.backward_buf(out, dout.buf().clone())
    }

    /// The reverse walk. Consumes the recorded nodes: each is dropped right after its backward,
    /// freeing what it saved; the gradient of an intermediate is dropped once it has been used.
    fn backward_buf(&self, out: &Tensor, dout: Buf) -> Result<Grads> {
        if !out.is_tracked() {
            return Err(Error::Autograd(
                "the output does not depend on any tracked tensor (inference tape, or no input requires grad)"
                    .into(),
            ));
        }
        let nodes = std::mem::take(&mut *self.nodes.borrow_mut());
        let mut map: HashMap<TensorId, Buf> = HashMap::new();
        map.insert(out.id(), dout);
        for node in nodes.into_iter().rev() {
            let Some(d) = map.remove(&node.output) else { continue };
            let mut sink = GradSink::new(&mut map);
            // What a checkpointed call's rerun records by op name is not the node's own time.
            let t0 = self.profile.as_ref().map(|r| (Instant::now(), r.borrow().profile.total()));
            node.op.backward(&node.inputs, &d, &mut sink).map_err(|e| match e {
                Error::Autograd(m) => Error::Autograd(format!("{} backward: {m}", node.name)),
                other => other,
            })?;
            if let (Some(r), Some((t0, before))) = (&self.profile, t0) {
                let mut r = r.borrow_mut();
                let inner = r.profile.total() - before;
                r.backward(node.name, t0.elapsed().saturating_sub(inner));
            }
        }
        Ok(Grads::from_map(map))
    }
}
