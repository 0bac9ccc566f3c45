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
    read_safetensors_with(path, |_, s| s.tensor().map(Some))
}

/// One stored tensor, not yet converted, as [`read_safetensors_with`] hands it over:
/// [`Stored::tensor`] converts it whole; [`Stored::float_pieces`] gives its values as f32 a piece
/// at a time, so a consumer that keeps something smaller (an int8 copy) never holds it whole.
pub struct Stored<'a> {
    shape: Vec<usize>,
    dtype: Dtype,
    bytes: &'a [u8],
    drop_pages: &'a dyn Fn(&[u8]),
}

impl Stored<'_> {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// f32, f16, bf16 or f64 (converted to f32); the rest are integer buffers.
    pub fn is_float(&self) -> bool {
        matches!(self.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16 | Dtype::F64)
    }

    /// The tensor: floats as f32, integers as i64.
    pub fn tensor(&self) -> std::result::Result<Tensor, String> {
        let (bytes, shape) = (self.bytes, &self.shape);
        let t = match self.dtype {
            Dtype::I64 => Tensor::from_ids(bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect(), shape),
            Dtype::I32 => Tensor::from_ids(bytes.chunks_exact(4).map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as i64).collect(), shape),
            _ => {
                let mut v = Vec::with_capacity(shape.iter().product());
                self.float_pieces(1, |p| {
                    v.extend_from_slice(p);
                    Ok(())
                })?;
                Tensor::from_vec(v, shape)
            }
        };
        t.map_err(|e| e.to_string())
    }

    /// The values as f32 in file order, handed to `f` about a MiB of the file at a time, in
    /// pieces of whole multiples of `unit` elements (e.g. one row); each piece's file pages are
    /// dropped once it is converted.
    pub fn float_pieces(&self, unit: usize, mut f: impl FnMut(&[f32]) -> std::result::Result<(), String>) -> std::result::Result<(), String> {
        let unit = unit.max(1);
        let mut run = |n: usize, conv: &dyn Fn(&[u8]) -> f32| {
            let mut buf = Vec::new();
            for piece in self.bytes.chunks(((1 << 20) / n / unit).max(1) * unit * n) {
                buf.clear();
                buf.extend(piece.chunks_exact(n).map(conv));
                (self.drop_pages)(piece);
                f(&buf)?;
            }
            Ok(())
        };
        match self.dtype {
            Dtype::F32 => run(4, &|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))),
            Dtype::F16 => run(2, &|b| half::f16::from_le_bytes(b.try_into().expect("2 bytes")).to_f32()),
            Dtype::BF16 => run(2, &|b| half::bf16::from_le_bytes(b.try_into().expect("2 bytes")).to_f32()),
            Dtype::F64 => run(8, &|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32),
            other => Err(format!("stored dtype {other:?} is not supported (f32, f16, bf16, f64, i64, i32)")),
        }
    }
}

/// Like [`read_safetensors`], handing each stored tensor to `keep` before it is converted: the
/// tensor it returns is kept, `None` keeps nothing (it has taken what it needs, e.g. an int8
/// copy), so loading never holds more than the kept tensors plus one. An error from `keep`
/// names the file and the tensor.
pub fn read_safetensors_with(
    path: impl AsRef<Path>,
    mut keep: impl FnMut(&str, &Stored) -> std::result::Result<Option<Tensor>, String>,
) -> Result<BTreeMap<String, Tensor>> {
    let path = path.as_ref();
    let mmap = map(path)?;
    let st = parse(path, &mmap)?;
    let mut out = BTreeMap::new();
    // The file's pages are dropped as soon as they are converted (MiB by MiB), so loading peaks
    // at about one copy of the weights instead of the file and the copy — and a large tensor
    // (MiniLM's 47 MB word embeddings) does not sit in memory twice while it converts.
    let drop_pages = |b: &[u8]| {
        let offset = b.as_ptr() as usize - mmap.as_ptr() as usize;
        // SAFETY: a read-only private file mapping that is never written: MADV_DONTNEED only
        // drops resident pages, and a later read (a neighbour sharing a page) faults the same
        // file contents back in. Advice is best effort; its error is ignored.
        let _ = unsafe { mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, b.len()) };
    };
    for (name, view) in st.tensors() {
        let stored = Stored { shape: view.shape().to_vec(), dtype: view.dtype(), bytes: view.data(), drop_pages: &drop_pages };
        let kept = keep(&name, &stored);
        drop_pages(stored.bytes);
        match kept {
            Ok(Some(t)) => {
                out.insert(name.to_string(), t);
            }
            Ok(None) => {}
            Err(e) => return file_err(path, format!("tensor {name}: {e}")),
        }
    }
    Ok(out)
}

/// Write f32 tensors (moved to the host as needed) to a safetensors file atomically: a
/// temporary file in the same directory, fsync, rename.
pub fn write_safetensors(path: impl AsRef<Path>, tensors: &BTreeMap<String, Tensor>, metadata: Option<std::collections::HashMap<String, String>>) -> Result<()> {
    write_safetensors_as(path, tensors, metadata, StoreDtype::F32)
}

/// How floating-point tensors are stored: f32, or rounded to bf16 or f16 (nearest even) — half
/// the bytes, as `model.to(torch.bfloat16).save_pretrained()` writes them. Integers stay i64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreDtype {
    F32,
    Bf16,
    F16,
}

impl StoreDtype {
    /// The `torch_dtype` name transformers writes into config.json.
    pub fn torch_name(self) -> &'static str {
        match self {
            StoreDtype::F32 => "float32",
            StoreDtype::Bf16 => "bfloat16",
            StoreDtype::F16 => "float16",
        }
    }
}

/// [`write_safetensors`] with floats stored as `dtype`.
pub fn write_safetensors_as(path: impl AsRef<Path>, tensors: &BTreeMap<String, Tensor>, metadata: Option<std::collections::HashMap<String, String>>, dtype: StoreDtype) -> Result<()> {
    let path = path.as_ref();
    // Host tensors are written straight from their buffers, one at a time (f32 and i64 borrowed
    // as little-endian bytes): a checkpoint never exists whole in memory a second time. Device
    // tensors are copied to the host first.
    let host: Vec<(&String, Tensor)> = tensors.iter().map(|(n, t)| Ok((n, t.to_cpu()?))).collect::<Result<_>>()?;
    let views = host.iter().map(|(n, t)| (n.as_str(), HostView(t, dtype)));
    crate::util::write_atomic_with(path, |tmp| {
        safetensors::serialize_to_file(views, metadata, tmp).map_err(|e| match e {
            safetensors::SafeTensorError::IoError(io) => io,
            other => std::io::Error::other(format!("cannot serialise the weights: {other}")),
        })
    })
}

/// The bytes of a slice of plain numbers (f32, i64: no padding, every byte initialised).
#[cfg(target_endian = "little")]
fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: the pointer and length cover exactly `v`'s memory, which lives as long as the
    // returned slice; u8 has alignment 1 and every byte of an f32 or i64 is initialised.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// A host tensor as safetensors sees it: floats as the given dtype (f32, f64 narrowed), or i64,
/// little-endian.
struct HostView<'a>(&'a Tensor, StoreDtype);

impl HostView<'_> {
    fn is_int(&self) -> bool {
        matches!(self.0.buf(), crate::Buf::I64(_))
    }
}

impl safetensors::View for HostView<'_> {
    fn dtype(&self) -> Dtype {
        match (self.is_int(), self.1) {
            (true, _) => Dtype::I64,
            (false, StoreDtype::F32) => Dtype::F32,
            (false, StoreDtype::Bf16) => Dtype::BF16,
            (false, StoreDtype::F16) => Dtype::F16,
        }
    }

    fn shape(&self) -> &[usize] {
        self.0.shape()
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        use std::borrow::Cow;
        if !self.is_int() && self.1 != StoreDtype::F32 {
            let narrow = |x: f32| match self.1 {
                StoreDtype::Bf16 => half::bf16::from_f32(x).to_le_bytes(),
                _ => half::f16::from_f32(x).to_le_bytes(),
            };
            return Cow::Owned(match self.0.buf() {
                crate::Buf::F32(v) => v.iter().flat_map(|&x| narrow(x)).collect(),
                crate::Buf::F64(v) => v.iter().flat_map(|&x| narrow(x as f32)).collect(),
                _ => unreachable!("floats are f32 or f64 on the host"),
            });
        }
        match self.0.buf() {
            #[cfg(target_endian = "little")]
            crate::Buf::F32(v) => Cow::Borrowed(as_bytes(v)),
            #[cfg(target_endian = "little")]
            crate::Buf::I64(v) => Cow::Borrowed(as_bytes(v)),
            #[cfg(not(target_endian = "little"))]
            crate::Buf::F32(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            #[cfg(not(target_endian = "little"))]
            crate::Buf::I64(v) => Cow::Owned(v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            crate::Buf::F64(v) => Cow::Owned(v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect()),
            crate::Buf::Cuda(_) => unreachable!("write_safetensors copies device tensors to the host first"),
        }
    }

    fn data_len(&self) -> usize {
        self.0.numel() * self.dtype().bitsize() / 8
    }
}

/// `engram convert`: the model directory `src` written to `out` with its weights stored as
/// `dtype` (`model.safetensors`; tensor names kept), `config.json`'s `torch_dtype` (and `dtype`)
/// set to match, and every other file (tokenizer, memory, …) copied. Returns the weight file's
/// bytes before and after.
pub fn convert_checkpoint(src: &Path, out: &Path, dtype: StoreDtype) -> Result<(u64, u64)> {
    let weights = src.join("model.safetensors");
    let config = src.join("config.json");
    if !weights.is_file() || !config.is_file() {
        return file_err(src, "is not a model directory (needs config.json and model.safetensors)");
    }
    let same = |a: &Path, b: &Path| a.canonicalize().ok().is_some_and(|a| b.canonicalize().ok() == Some(a));
    if same(src, out) {
        return file_err(out, "is the source directory: convert writes a new one");
    }
    let tensors = read_safetensors(&weights)?;
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&config).map_err(|e| crate::Error::File { path: config.display().to_string(), detail: e.to_string() })?,
    )
    .map_err(|e| crate::Error::File { path: config.display().to_string(), detail: format!("not valid JSON: {e}") })?;
    let Some(obj) = cfg.as_object_mut() else { return file_err(&config, "is not a JSON object") };
    obj.insert("torch_dtype".into(), serde_json::json!(dtype.torch_name()));
    if obj.contains_key("dtype") {
        obj.insert("dtype".into(), serde_json::json!(dtype.torch_name()));
    }
    std::fs::create_dir_all(out).map_err(|e| crate::Error::File { path: out.display().to_string(), detail: format!("cannot create: {e}") })?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    write_safetensors_as(out.join("model.safetensors"), &tensors, Some(meta), dtype)?;
    crate::util::write_atomic(&out.join("config.json"), serde_json::to_string_pretty(&cfg).expect("config serialises").as_bytes())?;
    copy_tree(src, out, &["model.safetensors", "config.json"])?;
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    Ok((size(&weights), size(&out.join("model.safetensors"))))
}

/// Copy the files under `src` (sub-directories too, e.g. sentence-transformers' `1_Pooling/`)
/// into `out`, except the top-level names in `skip`.
fn copy_tree(src: &Path, out: &Path, skip: &[&str]) -> Result<()> {
    let err = |p: &Path, e: std::io::Error| crate::Error::File { path: p.display().to_string(), detail: e.to_string() };
    for e in std::fs::read_dir(src).map_err(|e| err(src, e))?.flatten() {
        let (p, name) = (e.path(), e.file_name());
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        if p.is_dir() {
            std::fs::create_dir_all(out.join(&name)).map_err(|e| err(&out.join(&name), e))?;
            copy_tree(&p, &out.join(&name), &[])?;
        } else if p.is_file() {
            let bytes = std::fs::read(&p).map_err(|e| err(&p, e))?;
            crate::util::write_atomic(&out.join(&name), &bytes)?;
        }
    }
    Ok(())
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
