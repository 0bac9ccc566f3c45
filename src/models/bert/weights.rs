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
    read_safetensors_with(path, |_, t| Ok(Some(t)))
}

/// Like [`read_safetensors`], handing each tensor to `keep` as soon as it is converted: what it
/// returns is kept, `None` drops it (it has taken what it needs, e.g. an int8 copy), so loading
/// never holds more than the kept tensors plus one. An error from `keep` names the file.
pub fn read_safetensors_with(
    path: impl AsRef<Path>,
    mut keep: impl FnMut(&str, Tensor) -> std::result::Result<Option<Tensor>, String>,
) -> Result<BTreeMap<String, Tensor>> {
    let path = path.as_ref();
    let mmap = map(path)?;
    let st = parse(path, &mmap)?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let bytes = view.data();
        // The file's pages are dropped as soon as they are converted (MiB by MiB), so loading
        // peaks at about one copy of the weights instead of the file and the copy — and a large
        // tensor (MiniLM's 47 MB word embeddings) does not sit in memory twice while it converts.
        let drop_pages = |b: &[u8]| {
            let offset = b.as_ptr() as usize - mmap.as_ptr() as usize;
            // SAFETY: a read-only private file mapping that is never written: MADV_DONTNEED
            // only drops resident pages, and a later read (a neighbour sharing a page) faults
            // the same file contents back in. Advice is best effort; its error is ignored.
            let _ = unsafe { mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, b.len()) };
        };
        let t = match view.dtype() {
            Dtype::F32 => Tensor::from_vec(convert::<4>(bytes, f32::from_le_bytes, drop_pages), &shape),
            Dtype::F16 => Tensor::from_vec(convert::<2>(bytes, |b| half::f16::from_le_bytes(b).to_f32(), drop_pages), &shape),
            Dtype::BF16 => Tensor::from_vec(convert::<2>(bytes, |b| half::bf16::from_le_bytes(b).to_f32(), drop_pages), &shape),
            Dtype::F64 => Tensor::from_vec(convert::<8>(bytes, |b| f64::from_le_bytes(b) as f32, drop_pages), &shape),
            Dtype::I64 => Tensor::from_ids(bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect(), &shape),
            Dtype::I32 => Tensor::from_ids(bytes.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as i64).collect(), &shape),
            other => return file_err(path, format!("tensor {name}: stored dtype {other:?} is not supported (f32, f16, bf16, f64, i64, i32)")),
        };
        drop_pages(bytes);
        match t.map_err(|e| e.to_string()).and_then(|t| keep(&name, t)) {
            Ok(Some(t)) => {
                out.insert(name.to_string(), t);
            }
            Ok(None) => {}
            Err(e) => return file_err(path, format!("tensor {name}: {e}")),
        }
    }
    Ok(out)
}

/// Little-endian N-byte values to f32, a MiB of the file at a time, handing each converted piece
/// to `done` (which drops its pages).
fn convert<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f32, done: impl Fn(&[u8])) -> Vec<f32> {
    let mut out = Vec::with_capacity(bytes.len() / N);
    for piece in bytes.chunks((1 << 20) / N * N) {
        out.extend(piece.chunks_exact(N).map(|b| f(b.try_into().expect("N bytes"))));
        done(piece);
    }
    out
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
