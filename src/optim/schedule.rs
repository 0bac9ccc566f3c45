//! Learning-rate schedules.

/// Linear warmup from 0 to `base_lr` over `warmup` steps, then linear decay to 0 at `total` —
/// `transformers.get_linear_schedule_with_warmup`. `lr(step)` is the rate for the update that
/// follows `step` completed updates (so the very first update uses `lr(0)`, which is 0 when
/// warming up, exactly as with `LambdaLR`).
#[derive(Debug, Clone, Copy)]
pub struct LinearWarmupDecay {
    pub base_lr: f64,
    pub warmup: u64,
    pub total: u64,
}

impl LinearWarmupDecay {
    pub fn lr(&self, step: u64) -> f64 {
        let factor = if step < self.warmup {
            step as f64 / self.warmup.max(1) as f64
        } else {
            (self.total.saturating_sub(step) as f64 / self.total.saturating_sub(self.warmup).max(1) as f64).max(0.0)
        };
        self.base_lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay_like_transformers() {
        let s = LinearWarmupDecay { base_lr: 1.0, warmup: 2, total: 6 };
        let got: Vec<f64> = (0..7).map(|i| s.lr(i)).collect();
        assert_eq!(got, vec![0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0]);
    }
}
