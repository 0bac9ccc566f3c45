//! `embedding_int8`: a lookup in an embedding table stored as int8 rows, for CPU inference with
//! `--int8` (the word-embedding table is the largest tensor of a small BERT: MiniLM's is 47 MB of
//! its 87). Each row `v` holds `q[v, c] = round(table[v, c] / s[v])` in [-127, 127] with
//! `s[v] = max_c |table[v, c]| / 127`; a lookup returns `s[v] · q[v, :]` in f32 — the dequantized
//! row, off from the f32 one by at most `s[v] / 2` per element. Inference only: no backward.

use rayon::prelude::*;

use super::linear_int8::{quantize_row, NoBackward};
use crate::autograd::Tape;
use crate::error::{shape_err, value_err, Error, Result};
use crate::tensor::{Buf, DType, Tensor};

/// An embedding table `(V, C)` quantized row by row for [`embedding_int8`].
#[derive(Clone, Debug)]
pub struct Int8Rows {
    rows: usize,
    cols: usize,
    q: Vec<i8>,
    scale: Vec<f32>,
}

impl Int8Rows {
    /// Quantize an f32 CPU table `(V, C)`; refuses NaN and infinite values (naming the element).
    pub fn quantize(table: &Tensor) -> Result<Int8Rows> {
        const OP: &str = "embedding_int8";
        if table.shape().len() != 2 || table.numel() == 0 {
            return shape_err(OP, format!("table must be a non-empty (V, C) matrix, got {:?}", table.shape()));
        }
        if table.dtype() != DType::F32 || table.is_cuda() {
            return Err(Error::DType { op: OP, dtype: table.dtype(), detail: "quantizes f32 tables on the CPU".into() });
        }
        let mut q = Int8Rows::empty(table.shape()[1])?;
        q.push_rows(table.data::<f32>(OP)?)?;
        Ok(q)
    }

    /// A table of `cols` columns and no rows yet, to be filled by [`Int8Rows::push_rows`] (a
    /// loader quantizes a table piece by piece as it reads it, never holding it in f32).
    pub fn empty(cols: usize) -> Result<Int8Rows> {
        if cols == 0 {
            return shape_err("embedding_int8", "a table needs at least one column");
        }
        Ok(Int8Rows { rows: 0, cols, q: Vec::new(), scale: Vec::new() })
    }

    /// Quantize and append whole rows (`block.len()` a multiple of C); refuses NaN and infinite
    /// values, naming the element.
    pub fn push_rows(&mut self, block: &[f32]) -> Result<()> {
        const OP: &str = "embedding_int8";
        let cols = self.cols;
        if !block.len().is_multiple_of(cols) {
            return shape_err(OP, format!("{} values are not whole rows of {cols}", block.len()));
        }
        if let Some(i) = block.iter().position(|v| !v.is_finite()) {
            return value_err(OP, format!("table element [{}, {}] is {}", self.rows + i / cols, i % cols, block[i]));
        }
        let n = block.len() / cols;
        let (q0, s0) = (self.q.len(), self.scale.len());
        self.q.resize(q0 + block.len(), 0);
        self.scale.resize(s0 + n, 0.0);
        // The linear layer's row quantizer (the rows are finite, checked above).
        self.q[q0..].par_chunks_mut(cols).zip(self.scale[s0..].par_iter_mut()).zip(block.par_chunks(cols)).for_each(|((qr, s), tr)| *s = quantize_row(tr, qr));
        self.rows += n;
        Ok(())
    }

    /// `(V, C)`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// Bytes held (codes and scales).
    pub fn bytes(&self) -> usize {
        self.q.len() + 4 * self.rows
    }

    /// The dequantized table, row-major `(V, C)`.
    pub fn dequantize(&self) -> Vec<f32> {
        self.q.chunks(self.cols.max(1)).zip(&self.scale).flat_map(|(r, &s)| r.iter().map(move |&q| s * q as f32)).collect()
    }
}

/// `dequant(table)[ids]` — [`embedding`](super::embedding) on an int8 table. `ids` (any shape,
/// I64); output `(…ids, C)` f32. Records nothing (there is no backward).
pub fn embedding_int8(tape: &Tape, ids: &Tensor, table: &Int8Rows) -> Result<Tensor> {
    const OP: &str = "embedding_int8";
    let idx = ids.ids(OP)?;
    let (v, c) = (table.rows, table.cols);
    if let Some((pos, bad)) = idx.iter().enumerate().find(|(_, &i)| i < 0 || i as usize >= v) {
        return value_err(OP, format!("id {bad} at position {pos} is outside the table of {v} rows"));
    }
    let mut shape = ids.shape().to_vec();
    shape.push(c);
    let mut out = vec![0f32; idx.len() * c];
    out.par_chunks_mut(c).zip(idx.par_iter()).for_each(|(row, &i)| {
        let (q, s) = (&table.q[i as usize * c..][..c], table.scale[i as usize]);
        row.iter_mut().zip(q).for_each(|(o, &qv)| *o = s * qv as f32);
    });
    Ok(tape.record(OP, &[ids], Buf::F32(out), shape, |_| NoBackward(OP)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::Rng;

    #[test]
    fn lookup_returns_the_dequantized_rows_within_half_a_step() {
        let (v, c) = (37, 19);
        let mut rng = Rng::new(4);
        let mut t: Vec<f32> = (0..v * c).map(|_| rng.normal() as f32 * 0.05).collect();
        t[5 * c..6 * c].iter_mut().for_each(|x| *x = 0.0); // an all-zero row
        t[7 * c + 3] = 2.0; // a row with one large value
        let table = Tensor::from_vec(t.clone(), &[v, c]).unwrap();
        let q = Int8Rows::quantize(&table).unwrap();
        let ids = Tensor::from_ids(vec![7, 0, 5, 36, 7], &[5]).unwrap();
        let out = embedding_int8(&Tape::inference(), &ids, &q).unwrap();
        assert_eq!(out.shape(), [5, c]);
        let got = out.to_f64_vec();
        for (n, &id) in [7usize, 0, 5, 36, 7].iter().enumerate() {
            let s = q.scale[id] as f64;
            for k in 0..c {
                let (g, want) = (got[n * c + k], t[id * c + k] as f64);
                assert!((g - want).abs() <= s / 2.0 * 1.0001 + 1e-9, "row {id} col {k}: {g} vs {want} (step {s})");
                assert_eq!(g as f32, q.scale[id] * q.q[id * c + k] as f32, "exactly the dequantized value");
            }
        }
        assert!(got[2 * c..3 * c].iter().all(|&x| x == 0.0), "the zero row stays zero");
        assert_eq!(got[..c], got[4 * c..]);
        assert!(q.bytes() < v * c * 4 / 3);
    }

    #[test]
    fn pushing_rows_piece_by_piece_equals_quantizing_whole() {
        let mut rng = Rng::new(8);
        let t: Vec<f32> = (0..50 * 7).map(|_| rng.normal() as f32).collect();
        let whole = Int8Rows::quantize(&Tensor::from_vec(t.clone(), &[50, 7]).unwrap()).unwrap();
        let mut pieces = Int8Rows::empty(7).unwrap();
        for block in [&t[..7], &t[7..140], &t[140..]] {
            pieces.push_rows(block).unwrap();
        }
        assert_eq!((pieces.rows, &pieces.q, &pieces.scale), (whole.rows, &whole.q, &whole.scale));
        assert!(pieces.push_rows(&t[..5]).unwrap_err().to_string().contains("not whole rows"));
        let e = pieces.push_rows(&[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, f32::NAN]).unwrap_err().to_string();
        assert!(e.contains("[50, 6] is NaN"), "{e}");
    }

    #[test]
    fn bad_ids_and_tables_are_errors() {
        let q = Int8Rows::quantize(&Tensor::from_vec(vec![0.5f32; 6], &[3, 2]).unwrap()).unwrap();
        let e = embedding_int8(&Tape::inference(), &Tensor::from_ids(vec![0, 3], &[2]).unwrap(), &q).unwrap_err().to_string();
        assert!(e.contains("id 3 at position 1"), "{e}");
        let e = Int8Rows::quantize(&Tensor::from_vec(vec![0.5f32, f32::INFINITY], &[1, 2]).unwrap()).unwrap_err().to_string();
        assert!(e.contains("[0, 1] is inf"), "{e}");
        assert!(Int8Rows::quantize(&Tensor::from_vec(vec![0.5f32; 2], &[2]).unwrap()).is_err());
    }
}
