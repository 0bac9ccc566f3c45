//! The emulated CUDA device itself (`--features cuda-emu`, kernels/emu/driver.cpp): what a GPU
//! refuses or faults on must be refused or fault here too, named by kernel — otherwise a
//! `--device cuda` test passing on it would prove less than it claims. Without the feature every
//! test here says it was skipped.

#[cfg(not(feature = "cuda-emu"))]
#[test]
fn emulated_device_tests_skipped_without_the_feature() {
    eprintln!("SKIPPED: emulated CUDA device tests: build with --features cuda-emu");
}

#[cfg(feature = "cuda-emu")]
mod emulated {
    use engram::device::cuda::{cfg_1d, cfg_rows, CudaDev, LaunchConfig};
    use engram::Result;

    fn scale(dev: &CudaDev, cfg: LaunchConfig, n_buf: usize, n_kernel: i64) -> Result<()> {
        let x = dev.htod(&vec![1.0f32; n_buf])?;
        let mut y = dev.alloc::<f32>(n_buf)?;
        let s = 2.0f32;
        engram::cuda_launch!(dev, "elementwise", "scale_fwd_v1", cfg; &mut y, &x, &s, &n_kernel)?;
        let got = dev.dtoh(&y, n_buf)?;
        assert!(got.iter().all(|&v| v == 2.0), "scale_fwd_v1 on the emulated device");
        Ok(())
    }

    #[test]
    fn the_emulated_device_is_what_runs() {
        let dev = CudaDev::get().unwrap();
        assert!(dev.describe().contains("emulator"), "{}", dev.describe());
        scale(&dev, cfg_1d(1000), 1000, 1000).unwrap();
    }

    #[test]
    fn launches_a_gpu_would_refuse_are_errors() {
        let dev = CudaDev::get().unwrap();
        // More threads than a block may have.
        let e = scale(&dev, cfg_rows(4, 2048, 0), 1000, 1000).unwrap_err().to_string();
        assert!(e.contains("scale_fwd_v1") && e.contains("INVALID_VALUE"), "{e}");
        // More threads than the kernel's __launch_bounds__(128).
        let x = dev.zeros::<f32>(64 * 64).unwrap();
        let mut c = dev.zeros::<f32>(64 * 64).unwrap();
        let (m, n, k, ta, tb, acc) = (64i32, 64i32, 64i32, 0i32, 0i32, 0i32);
        let (sa, sb, sc) = (0i64, 0i64, 0i64);
        let mut gemm = |threads: u32| -> Result<()> {
            let cfg = LaunchConfig { grid_dim: (1, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
            engram::cuda_launch!(dev, "matmul", "gemm_v2_64", cfg; &mut c, &x, &x, &m, &n, &k, &ta, &tb, &sa, &sb, &sc, &acc)
        };
        let e = gemm(256).unwrap_err().to_string();
        assert!(e.contains("gemm_v2_64"), "{e}");
        gemm(128).unwrap();
        // Dynamic shared memory over the 48 KiB default without raising the kernel's limit.
        let e = scale(&dev, cfg_rows(4, 256, 64 * 1024), 1000, 1000).unwrap_err().to_string();
        assert!(e.contains("INVALID_VALUE"), "{e}");
        // …and the same launch within the limits runs.
        scale(&dev, cfg_rows(4, 256, 1024), 1000, 1000).unwrap();
    }

    /// Run as a child process by the next test: a kernel told the buffers are longer than they are.
    #[test]
    #[ignore = "the child process of out_of_bounds_access_stops_with_the_kernels_name"]
    fn child_writes_past_a_buffer() {
        let dev = CudaDev::get().unwrap();
        let _ = scale(&dev, cfg_1d(2000), 1000, 2000);
        eprintln!("child: the out-of-bounds launch returned");
    }

    /// Run as a child process by the next test (with ENGRAM_EMU_GUARD=front): an embedding lookup
    /// of id -1, which reads the row before the table.
    #[test]
    #[ignore = "the child process of out_of_bounds_access_stops_with_the_kernels_name"]
    fn child_reads_before_a_buffer() {
        let dev = CudaDev::get().unwrap();
        let ids = dev.htod(&[0i64, -1]).unwrap();
        let table = dev.htod(&vec![1.0f32; 8 * 100]).unwrap();
        let mut out = dev.alloc::<f32>(2 * 100).unwrap();
        let (n, c) = (2i64, 100i32);
        let mut lookup = || -> Result<()> { engram::cuda_launch!(dev, "embedding", "embedding_fwd_v1", cfg_1d(200); &mut out, &ids, &table, &n, &c) };
        let _ = lookup();
        eprintln!("child: the out-of-bounds launch returned");
    }

    /// Run as a child process by the next test: one float written past the end of a 1001-float
    /// buffer — inside its rounding to 16 bytes, so no guard page is hit.
    #[test]
    #[ignore = "the child process of out_of_bounds_access_stops_with_the_kernels_name"]
    fn child_writes_one_past_a_buffer() {
        let dev = CudaDev::get().unwrap();
        let x = dev.htod(&vec![1.0f32; 1002]).unwrap();
        let mut y = dev.alloc::<f32>(1001).unwrap();
        let (s, n) = (2.0f32, 1002i64);
        let mut launch = || -> Result<()> { engram::cuda_launch!(dev, "elementwise", "scale_fwd_v1", cfg_1d(1002); &mut y, &x, &s, &n) };
        let _ = launch();
        eprintln!("child: the out-of-bounds launch returned");
    }

    fn child(name: &str, guard: &str) -> (bool, String) {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", name, "--nocapture", "--test-threads=1"])
            .env("ENGRAM_EMU_GUARD", guard)
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    #[test]
    fn out_of_bounds_access_stops_with_the_kernels_name() {
        // (child test, guard placement, what its stderr must say)
        let cases: [(&str, &str, &[&str]); 3] = [
            ("child_writes_past_a_buffer", "back", &["kernel scale_fwd_v1 accessed address", "past the end of a 4000-byte buffer"]),
            ("child_writes_one_past_a_buffer", "back", &["kernel scale_fwd_v1 wrote past the end of a 4004-byte buffer (at byte 4004)"]),
            ("child_reads_before_a_buffer", "front", &["kernel embedding_fwd_v1 accessed address", "before the start of a 3200-byte buffer"]),
        ];
        for (name, guard, needles) in cases {
            let (ok, stderr) = child(&format!("emulated::{name}"), guard);
            assert!(!ok, "{name}: the out-of-bounds kernel did not fail:\n{stderr}");
            for needle in needles {
                assert!(stderr.contains(needle), "{name}: no {needle:?} in\n{stderr}");
            }
            assert!(!stderr.contains("child: the out-of-bounds launch returned"), "{name}: {stderr}");
        }
    }
}
