//! Small shared helpers.

use std::io::Write;
use std::path::Path;

use crate::error::{file_err, Result};

/// Write `data` to `path` atomically: a temporary file beside it, fsync, rename. A crash leaves
/// either the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_atomic_with(path, |tmp| std::fs::File::create(tmp)?.write_all(data))
}

/// [`write_atomic`] for a writer that makes the file itself: `write` creates and fills the
/// temporary path it is given (streaming, so the contents need never be whole in memory), which
/// is then fsynced and renamed over `path`.
pub fn write_atomic_with(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let res = (|| -> std::io::Result<()> {
        write(&tmp)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return file_err(path, format!("cannot write: {e}"));
    }
    Ok(())
}

/// Tunes glibc's allocator for a training/inference loop; call once at start-up from a binary
/// (the `engram` CLI and the benchmarks do). No-op on other C libraries, or when the environment
/// variable `ENGRAM_DEFAULT_MALLOC` is set.
///
/// Every step allocates and frees the same activation-sized buffers (up to tens of MiB). By
/// default glibc gives freed memory back to the kernel (trim above 128 KiB, large blocks via
/// mmap/munmap), so the next step faults every page in again and the kernel zeroes it: measured
/// on MiniLM inference at batch 32, ~500k page faults per 8 forward passes and several percent of
/// the time in the kernel. Keeping up to 1 GiB of freed memory (trim threshold) and serving
/// blocks up to 32 MiB (glibc's maximum) from the heap cut the faults ~8×. The price is that
/// the process holds on to its peak working set, which a loop reuses anyway.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("ENGRAM_DEFAULT_MALLOC").is_some() {
            return;
        }
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_TOP_PAD: i32 = -2;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only adjusts glibc's allocator parameters; it is safe to call at any
        // time, and a rejected value leaves the default in place.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
            mallopt(M_TOP_PAD, 64 << 20);
        }
    }
}

/// Run `f` on a worker of rayon's global pool (here, if this already is one). An op's parallel
/// loop started from outside the pool hands its work to the pool and sleeps until it is done:
/// a wake-up and a context switch per op, tens of microseconds — as much as a small op's work
/// (a layer norm over 128 × 384). Inside the pool the calling worker runs its share at once.
/// MiniLM at batch 1 on two cores: int8 inference 5.5 → 3.8 ms, f32 9.7 → 9.0 ms
/// (`cargo bench --bench bert_cpu`). Inference and fine-tuning on the CPU run through it
/// (MiniLM training, 2 cores: 31 → 35 examples/s at batch 8, 38 → 39.5 at batch 32).
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    rayon::scope(|_| f())
}

/// SplitMix64 generator: seeded and portable; initialisation, shuffling and test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-300);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }

    pub fn normal_vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.normal()).collect()
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Restore the default SIGPIPE action for the command-line tool, so `engram … | head` ends
/// quietly when the reader closes the pipe (as other Unix tools do) instead of panicking on
/// the failed write (Rust ignores SIGPIPE by default).
pub fn default_sigpipe() {
    #[cfg(unix)]
    {
        extern "C" {
            fn signal(signum: i32, handler: usize) -> usize;
        }
        const SIGPIPE: i32 = 13; // Linux, macOS and the BSDs
        const SIG_DFL: usize = 0;
        // SAFETY: installs the default disposition for one signal at start-up, before any
        // thread exists; no handler code runs.
        unsafe {
            signal(SIGPIPE, SIG_DFL);
        }
    }
}

#[cfg(test)]
mod tests {
    /// `on_pool` runs its closure on a pool worker (once, returning its value), and runs a
    /// nested call in place rather than waiting on the pool from inside it.
    #[test]
    fn on_pool_runs_on_a_worker_and_nests() {
        assert!(rayon::current_thread_index().is_none(), "the test harness thread is not a worker");
        let (outer, inner) = super::on_pool(|| (rayon::current_thread_index(), super::on_pool(rayon::current_thread_index)));
        assert!(outer.is_some());
        assert_eq!(inner, outer, "the nested call stays on the same worker");
        let v: Vec<u64> = (0..1000).collect();
        use rayon::prelude::*;
        assert_eq!(super::on_pool(|| v.par_iter().sum::<u64>()), 499_500);
    }
}
