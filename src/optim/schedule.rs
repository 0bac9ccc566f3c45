//! Learning-rate schedules: transformers' `get_scheduler` types (`lr_scheduler_type`).

use serde::{Deserialize, Serialize};

/// The shape of a schedule after its linear warmup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Linear decay to 0 at `total` — `get_linear_schedule_with_warmup` (Trainer's default).
    #[default]
    Linear,
    /// Half a cosine from 1 to 0 at `total` — `get_cosine_schedule_with_warmup` (0.5 cycles).
    Cosine,
    /// 1 throughout, warmup ignored — `get_constant_schedule`.
    Constant,
    /// 1 after the warmup — `get_constant_schedule_with_warmup`.
    ConstantWithWarmup,
}

impl ScheduleKind {
    /// transformers' name (`lr_scheduler_type`).
    pub fn name(self) -> &'static str {
        match self {
            ScheduleKind::Linear => "linear",
            ScheduleKind::Cosine => "cosine",
            ScheduleKind::Constant => "constant",
            ScheduleKind::ConstantWithWarmup => "constant_with_warmup",
        }
    }
}

/// A warmup over `warmup` steps (linear from 0), then `kind`'s shape to `total`. `lr(step)` is
/// the rate for the update that follows `step` completed updates (so the very first update uses
/// `lr(0)`, which is 0 when warming up, exactly as with `LambdaLR`). Past `total` each kind goes
/// on as transformers' lambda does (linear stays 0; the cosine turns back up).
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    pub warmup: u64,
    pub total: u64,
}

impl Schedule {
    /// `get_linear_schedule_with_warmup`.
    pub fn linear(base_lr: f64, warmup: u64, total: u64) -> Self {
        Schedule { kind: ScheduleKind::Linear, base_lr, warmup, total }
    }

    pub fn lr(&self, step: u64) -> f64 {
        self.base_lr * self.factor(step)
    }

    /// lr / base_lr after `step` updates.
    pub fn factor(&self, step: u64) -> f64 {
        let warm = |s: u64| s as f64 / self.warmup.max(1) as f64;
        // The lambdas' float arithmetic, in their order.
        let after = self.total as f64 - self.warmup as f64;
        match self.kind {
            ScheduleKind::Constant => 1.0,
            _ if step < self.warmup => warm(step),
            ScheduleKind::ConstantWithWarmup => 1.0,
            ScheduleKind::Linear => ((self.total as f64 - step as f64) / after.max(1.0)).max(0.0),
            ScheduleKind::Cosine => {
                let progress = (step - self.warmup) as f64 / after.max(1.0);
                (0.5 * (1.0 + (std::f64::consts::PI * 0.5 * 2.0 * progress).cos())).max(0.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay_like_transformers() {
        let s = Schedule::linear(1.0, 2, 6);
        let got: Vec<f64> = (0..7).map(|i| s.lr(i)).collect();
        assert_eq!(got, vec![0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0]);
    }
}
