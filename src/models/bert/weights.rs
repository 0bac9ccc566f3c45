//! Reading and writing safetensors checkpoints by Hugging Face name.
//!
//! Files are memory-mapped; stored f32, f16, bf16 (and f64) tensors become f32 tensors; integer
//! tensors (buffers such as `position_ids`) are returned as i64. Every error names the file and
//! the tensor.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::error::{file_err, Result};
use crate::tensor::Tensor;

/// Every tensor of a safetensors file, by its stored name.
pub fn read_safetensors(path: impl AsRef<Path>) -> Result<BTreeMap<String, Tensor>> {
    let path = path.as_ref();
    let mmap = map(path)?;
    let st = parse(path, &mmap)?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let bytes = view.data();
        let t = match view.dtype() {
            Dtype::F32 => Tensor::from_vec(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect::<Vec<f32>>(), &shape),
            Dtype::F16 => Tensor::from_vec(
                bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect::<Vec<f32>>(),
                &shape,
            ),
            Dtype::BF16 => Tensor::from_vec(
                bytes.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect::<Vec<f32>>(),
                &shape,
            ),
            Dtype::F64 => Tensor::from_vec(
                bytes.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect::<Vec<f32>>(),
                &shape,
            ),
            Dtype::I64 => Tensor::from_ids(bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect(), &shape),
            Dtype::I32 => Tensor::from_ids(bytes.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as i64).collect(), &shape),
            other => return file_err(path, format!("tensor {name}: stored dtype {other:?} is not supported (f32, f16, bf16, f64, i64, i32)")),
        };
        // The file's pages of this tensor are not needed again: drop them now, so loading peaks
        // at about one copy of the weights (plus one tensor) instead of the file and the copy.
        let offset = bytes.as_ptr() as usize - mmap.as_ptr() as usize;
        // SAFETY: a read-only private file mapping that is never written: MADV_DONTNEED only
        // drops resident pages, and a later read (the next tensor sharing a page) faults the
        // same file contents back in. Advice is best effort; its error is ignored.
        let _ = unsafe { mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, bytes.len()) };
        match t {
            Ok(t) => {
                out.insert(name.to_string(), t);
            }
            Err(e) => return file_err(path, format!("tensor {name}: {e}")),
        }
    }
    Ok(out)
}

/// Write f32 tensors (moved to the host as needed) to a safetensors file atomically: a
/// temporary file in the same directory, fsync, rename.
pub fn write_safetensors(path: impl AsRef<Path>, tensors: &BTreeMap<String, Tensor>, metadata: Option<std::collections::HashMap<String, String>>) -> Result<()> {
    let path = path.as_ref();
    let mut host: Vec<(String, Vec<u8>, Vec<usize>, Dtype)> = Vec::new();
    for (name, t) in tensors {
        let t = t.to_cpu()?;
        let (bytes, dtype) = match t.buf() {
            crate::Buf::F32(v) => (v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(), Dtype::F32),
            crate::Buf::I64(v) => (v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(), Dtype::I64),
            crate::Buf::F64(v) => (v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect::<Vec<u8>>(), Dtype::F32),
            crate::Buf::Cuda(_) => unreachable!("moved to the host above"),
        };
        host.push((name.clone(), bytes, t.shape().to_vec(), dtype));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = host
        .iter()
        .map(|(n, b, s, d)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("consistent view")))
        .collect();
    let data = match safetensors::serialize(views, metadata) {
        Ok(d) => d,
        Err(e) => return file_err(path, format!("cannot serialise the weights: {e}")),
    };
    crate::util::write_atomic(path, &data)
}

/// Name, stored dtype and shape of every tensor in a safetensors file (header only).
pub fn describe_safetensors(path: impl AsRef<Path>) -> Result<Vec<(String, String, Vec<usize>)>> {
    let path = path.as_ref();
    let mmap = map(path)?;
    let st = parse(path, &mmap)?;
    let mut v: Vec<(String, String, Vec<usize>)> =
        st.tensors().into_iter().map(|(n, t)| (n.to_string(), format!("{:?}", t.dtype()), t.shape().to_vec())).collect();
    v.sort();
    Ok(v)
}

fn map(path: &Path) -> Result<memmap2::Mmap> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return file_err(path, format!("cannot open the weights: {e}")),
    };
    // SAFETY: the map is read-only and lives only while the file is being read; a concurrent
    // truncation of the file by another process is the one way this could fault.
    match unsafe { memmap2::Mmap::map(&file) } {
        Ok(m) => Ok(m),
        Err(e) => file_err(path, format!("cannot map the weights: {e}")),
    }
}

fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>> {
    match SafeTensors::deserialize(bytes) {
        Ok(s) => Ok(s),
        Err(e) => file_err(path, format!("not a valid safetensors file: {e}")),
    }
}
