//! Embedding lookup with scatter-add backward.

use rayon::prelude::*;

use super::last_dim;
use crate::autograd::{Backward, GradSink, Tape};
use crate::error::{shape_err, value_err, Result};
use crate::float::Float;
use crate::tensor::{Buf, Tensor};
use crate::with_float;

/// `table[ids]` — `torch.nn.functional.embedding(ids, table, padding_idx)`. `ids` (any shape, I64),
/// `table (V, C)`; output `(…ids, C)`. Rows at `padding_idx` receive no gradient, as in PyTorch
/// (HF BERT builds its word embeddings with `padding_idx = pad_token_id`).
pub fn embedding(tape: &Tape, ids: &Tensor, table: &Tensor, padding_idx: Option<i64>) -> Result<Tensor> {
    const OP: &str = "embedding";
    if table.rank() != 2 {
        return shape_err(OP, format!("table must be (V, C), got {:?}", table.shape()));
    }
    let (v, c) = (table.shape()[0], last_dim(OP, table)?);
    #[cfg(feature = "cuda")]
    if ids.is_cuda() || table.is_cuda() {
        return cuda::embedding(tape, ids, table, padding_idx, v, c);
    }
    let idx = ids.ids(OP)?;
    if let Some((pos, bad)) = idx.iter().enumerate().find(|(_, &i)| i < 0 || i as usize >= v) {
        return value_err(OP, format!("id {bad} at position {pos} is outside the table of {v} rows"));
    }
    let mut shape = ids.shape().to_vec();
    shape.push(c);
    with_float!(OP, table.dtype(), T => {
        let t = table.data::<T>(OP)?;
        let mut out = vec![T::ZERO; idx.len() * c];
        out.par_chunks_mut(c).zip(idx.par_iter()).for_each(|(row, &i)| row.copy_from_slice(&t[i as usize * c..][..c]));
        Ok(tape.record(OP, &[ids, table], T::wrap(out), shape, |_| EmbeddingBwd::<T> { c, padding_idx, _t: Default::default() }))
    })
}

struct EmbeddingBwd<T> {
    c: usize,
    padding_idx: Option<i64>,
    _t: std::marker::PhantomData<T>,
}

impl<T: Float> Backward for EmbeddingBwd<T> {
    // dtable[ids[n]] += dy[n] for every position n (repeated ids accumulate).
    fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
        let idx = inputs[0].ids("embedding")?;
        let dy = T::slice(dout).expect("dout dtype");
        let c = self.c;
        sink.accumulate::<T>(&inputs[1], |dt| {
            for (&i, g) in idx.iter().zip(dy.chunks_exact(c)) {
                if Some(i) == self.padding_idx {
                    continue;
                }
                dt[i as usize * c..][..c].iter_mut().zip(g).for_each(|(a, b)| *a += *b);
            }
        })
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! CUDA path (kernels/embedding.cu).
    use crate::autograd::{Backward, GradSink, Tape};
    use crate::device::cuda::{cfg_1d, check_cuda, dout_f32, ids_host, launch, wrap, CudaDev};
    use crate::error::{value_err, Result};
    use crate::tensor::{Buf, Tensor};

    const OP: &str = "embedding";

    pub(super) fn embedding(tape: &Tape, ids: &Tensor, table: &Tensor, padding_idx: Option<i64>, v: usize, c: usize) -> Result<Tensor> {
        check_cuda(OP, &[ids, table])?;
        if let Some((pos, bad)) = ids_host(ids, OP)?.into_iter().enumerate().find(|&(_, i)| i < 0 || i as usize >= v) {
            return value_err(OP, format!("id {bad} at position {pos} is outside the table of {v} rows"));
        }
        let dev = CudaDev::get()?;
        let (n, ci) = (ids.numel() as i64, c as i32);
        let mut out = dev.alloc::<f32>(ids.numel() * c)?;
        launch!(dev, "embedding", "embedding_fwd_v1", cfg_1d(ids.numel() * c); &mut out, ids.cuda_i64(OP)?, table.cuda_f32(OP)?, &n, &ci)?;
        let mut shape = ids.shape().to_vec();
        shape.push(c);
        Ok(tape.record(OP, &[ids, table], wrap(out), shape, |_| EmbeddingBwd { c, padding_idx }))
    }

    struct EmbeddingBwd {
        c: usize,
        padding_idx: Option<i64>,
    }

    impl Backward for EmbeddingBwd {
        fn backward(&self, inputs: &[Tensor], dout: &Buf, sink: &mut GradSink) -> Result<()> {
            let dev = CudaDev::get()?;
            let ids = &inputs[0];
            let dy = dout_f32(dout, OP)?;
            let (n, ci) = (ids.numel() as i64, self.c as i32);
            let (pad, has_pad) = (self.padding_idx.unwrap_or(-1), self.padding_idx.is_some() as i32);
            let idd = ids.cuda_i64(OP)?;
            sink.accumulate_cuda(&inputs[1], |dt| {
                launch!(dev, "embedding", "embedding_bwd_v1", cfg_1d(ids.numel() * self.c); dt, dy, idd, &n, &ci, &pad, &has_pad)
            })
        }
    }
}
