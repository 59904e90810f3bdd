//! Learning-rate schedules with PyTorch's semantics (step = number of optimizer steps taken).

/// A learning-rate schedule.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum LrSchedule {
    /// A fixed learning rate.
    Constant {
        /// Learning rate.
        lr: f64,
    },
    /// `torch.optim.lr_scheduler.OneCycleLR` with cosine annealing: from max_lr/div_factor up to
    /// max_lr over pct_start of the steps, then down; with `three_phase` it returns to the
    /// initial rate and then anneals to initial/final_div_factor (the final annihilation phase).
    /// Like PyTorch (`cycle_momentum=True`, its default) it also cycles Adam's β1 inversely to
    /// the rate: from max_momentum down to base_momentum while the rate rises, and back.
    OneCycle {
        /// Peak learning rate.
        max_lr: f64,
        /// Total steps of the cycle (the rate stays at its final value afterwards).
        total_steps: usize,
        /// Fraction of steps spent increasing.
        #[serde(default = "pct_default")]
        pct_start: f64,
        /// initial = max_lr / div_factor.
        #[serde(default = "div_default")]
        div_factor: f64,
        /// final = initial / final_div_factor.
        #[serde(default = "final_div_default")]
        final_div_factor: f64,
        /// Three phases (up, down to initial, annihilation) instead of two.
        #[serde(default)]
        three_phase: bool,
        /// Cycle Adam's β1 between max_momentum and base_momentum (PyTorch's default); without
        /// it β1 stays 0.9.
        #[serde(default = "yes")]
        cycle_momentum: bool,
        /// β1 at the peak learning rate.
        #[serde(default = "base_momentum_default")]
        base_momentum: f64,
        /// β1 at the start and end of the cycle.
        #[serde(default = "max_momentum_default")]
        max_momentum: f64,
    },
    /// `CyclicLR` in mode "triangular2": triangles between base_lr and max_lr whose amplitude
    /// halves every cycle.
    Cyclic {
        /// Lower rate.
        base_lr: f64,
        /// Upper rate of the first cycle.
        max_lr: f64,
        /// Steps of the rising half-cycle.
        step_size_up: usize,
    },
    /// `MultiStepLR`: lr × gamma^(number of milestones reached).
    MultiStep {
        /// Initial rate.
        lr: f64,
        /// Steps at which the rate is multiplied by gamma.
        milestones: Vec<usize>,
        /// Factor.
        gamma: f64,
    },
    /// Keras `CosineDecay` with alpha 0: lr·½(1 + cos(π·min(step, decay_steps)/decay_steps)),
    /// zero from decay_steps on.
    Cosine {
        /// Initial rate.
        lr: f64,
        /// Steps to reach zero.
        decay_steps: usize,
    },
    /// `CosineAnnealingLR(T_max = epochs, eta_min = 0)` stepped once per epoch (AllShowers):
    /// epoch e (0-based) runs at lr·½(1 + cos(π e / epochs)). `steps_per_epoch` is filled in by
    /// the model from its training set (0 in a preset).
    CosineEpochs {
        /// Initial rate.
        lr: f64,
        /// T_max.
        epochs: usize,
        /// Optimizer steps per epoch.
        #[serde(default)]
        steps_per_epoch: usize,
    },
}

fn pct_default() -> f64 {
    0.3
}
fn div_default() -> f64 {
    25.0
}
fn final_div_default() -> f64 {
    1e4
}
fn yes() -> bool {
    true
}
fn base_momentum_default() -> f64 {
    0.85
}
fn max_momentum_default() -> f64 {
    0.95
}

/// Adam's β1 when no schedule changes it (PyTorch's and burn's default).
pub const DEFAULT_BETA1: f64 = 0.9;

fn cos_anneal(start: f64, end: f64, pct: f64) -> f64 {
    end + (start - end) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0)
}

impl LrSchedule {
    /// Checks the rates and step counts (finite, positive learning rates up to 10; no zero-step
    /// cycles), naming the bad key.
    pub fn validate(&self) -> Result<(), String> {
        let rate = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 && v <= 10.0 {
                Ok(())
            } else {
                Err(format!(
                    "{name} must be a learning rate in (0, 10], got {v}"
                ))
            }
        };
        let factor = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{name} must be a positive number, got {v}"))
            }
        };
        match self {
            LrSchedule::Constant { lr } => rate("lr", *lr),
            LrSchedule::OneCycle {
                max_lr,
                pct_start,
                div_factor,
                final_div_factor,
                base_momentum,
                max_momentum,
                ..
            } => {
                rate("max_lr", *max_lr)?;
                factor("div_factor", *div_factor)?;
                factor("final_div_factor", *final_div_factor)?;
                if !(*pct_start > 0.0 && *pct_start < 1.0) {
                    return Err(format!("pct_start must be in (0, 1), got {pct_start}"));
                }
                for (name, b) in [
                    ("base_momentum", base_momentum),
                    ("max_momentum", max_momentum),
                ] {
                    if !(*b >= 0.0 && *b < 1.0) {
                        return Err(format!("{name} must be an Adam beta1 in [0, 1), got {b}"));
                    }
                }
                Ok(())
            }
            LrSchedule::Cyclic {
                base_lr,
                max_lr,
                step_size_up,
            } => {
                rate("base_lr", *base_lr)?;
                rate("max_lr", *max_lr)?;
                if *step_size_up == 0 {
                    return Err("step_size_up must be > 0".into());
                }
                Ok(())
            }
            LrSchedule::MultiStep { lr, gamma, .. } => {
                rate("lr", *lr)?;
                factor("gamma", *gamma)
            }
            LrSchedule::Cosine { lr, decay_steps } => {
                rate("lr", *lr)?;
                if *decay_steps == 0 {
                    return Err("decay_steps must be > 0".into());
                }
                Ok(())
            }
            LrSchedule::CosineEpochs { lr, epochs, .. } => {
                rate("lr", *lr)?;
                if *epochs == 0 {
                    return Err("epochs must be > 0".into());
                }
                Ok(())
            }
        }
    }

    /// Learning rate for optimizer step `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        match self {
            LrSchedule::Constant { lr } => *lr,
            LrSchedule::OneCycle {
                max_lr,
                div_factor,
                final_div_factor,
                three_phase,
                ..
            } => {
                let initial = max_lr / div_factor;
                let min = initial / final_div_factor;
                let (phase, pct) = self.one_cycle_phase(step);
                let ends: &[(f64, f64)] = if *three_phase {
                    &[(initial, *max_lr), (*max_lr, initial), (initial, min)]
                } else {
                    &[(initial, *max_lr), (*max_lr, min)]
                };
                cos_anneal(ends[phase].0, ends[phase].1, pct)
            }
            LrSchedule::Cyclic {
                base_lr,
                max_lr,
                step_size_up,
            } => {
                let ss = (*step_size_up).max(1) as f64;
                let s = step as f64;
                let cycle = (1.0 + s / (2.0 * ss)).floor();
                let x = (s / ss - 2.0 * cycle + 1.0).abs();
                base_lr + (max_lr - base_lr) * (1.0 - x).max(0.0) / 2f64.powf(cycle - 1.0)
            }
            LrSchedule::MultiStep {
                lr,
                milestones,
                gamma,
            } => lr * gamma.powi(milestones.iter().filter(|&&m| step >= m).count() as i32),
            LrSchedule::Cosine { lr, decay_steps } => {
                let d = (*decay_steps).max(1);
                cos_anneal(*lr, 0.0, step.min(d) as f64 / d as f64)
            }
            LrSchedule::CosineEpochs {
                lr,
                epochs,
                steps_per_epoch,
            } => {
                let e = step / (*steps_per_epoch).max(1);
                let t = (*epochs).max(1) as f64;
                lr * (1.0 + (std::f64::consts::PI * e as f64 / t).cos()) / 2.0
            }
        }
    }

    /// Adam's β1 for optimizer step `step`, where the schedule sets it (OneCycle with
    /// cycle_momentum, as PyTorch's OneCycleLR): max_momentum → base_momentum while the rate
    /// rises, back to max_momentum while it falls (three phases: stays at max_momentum during
    /// the annihilation).
    pub fn beta1(&self, step: usize) -> Option<f64> {
        match self {
            LrSchedule::OneCycle {
                cycle_momentum: true,
                base_momentum,
                max_momentum,
                ..
            } => {
                let (phase, pct) = self.one_cycle_phase(step);
                let (a, b) = match phase {
                    0 => (*max_momentum, *base_momentum),
                    1 => (*base_momentum, *max_momentum),
                    _ => (*max_momentum, *max_momentum),
                };
                Some(cos_anneal(a, b, pct))
            }
            _ => None,
        }
    }

    /// OneCycle's phase at `step` and the fraction of it done (PyTorch's phase end steps:
    /// pct_start·total − 1, then 2·pct_start·total − 2 with three phases, then total − 1).
    fn one_cycle_phase(&self, step: usize) -> (usize, f64) {
        let LrSchedule::OneCycle {
            total_steps,
            pct_start,
            three_phase,
            ..
        } = self
        else {
            return (0, 0.0);
        };
        let total = *total_steps as f64;
        let s = (step.min(total_steps.saturating_sub(1))) as f64;
        let up_end = pct_start * total - 1.0;
        let ends: &[f64] = if *three_phase {
            &[up_end, 2.0 * pct_start * total - 2.0, total - 1.0]
        } else {
            &[up_end, total - 1.0]
        };
        let mut start_step = 0.0;
        for (i, &end_step) in ends.iter().enumerate() {
            if s <= end_step || i == ends.len() - 1 {
                let pct = ((s - start_step) / (end_step - start_step)).clamp(0.0, 1.0);
                return (i, if pct.is_finite() { pct } else { 1.0 });
            }
            start_step = end_step;
        }
        (ends.len() - 1, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1e-30)
    }

    #[test]
    fn cosine_epochs_steps_once_per_epoch_as_pytorch() {
        // PyTorch: CosineAnnealingLR(T_max=200) after e scheduler steps: 1e-3 (1 + cos(πe/200))/2.
        let s = LrSchedule::CosineEpochs {
            lr: 1e-3,
            epochs: 200,
            steps_per_epoch: 7,
        };
        assert!(close(s.lr(0), 1e-3) && close(s.lr(6), 1e-3));
        assert!(close(
            s.lr(7),
            1e-3 * (1.0 + (std::f64::consts::PI / 200.0).cos()) / 2.0
        ));
        assert!(close(s.lr(700), 5e-4));
        assert!(s.lr(199 * 7) > 0.0 && s.lr(199 * 7) < 1e-7);
    }

    #[test]
    fn one_cycle_matches_pytorch_closed_form() {
        let s = LrSchedule::OneCycle {
            max_lr: 1e-3,
            total_steps: 100,
            pct_start: 0.3,
            div_factor: 25.0,
            final_div_factor: 1e4,
            three_phase: false,
            cycle_momentum: true,
            base_momentum: 0.85,
            max_momentum: 0.95,
        };
        assert!(close(s.lr(0), 4e-5));
        // Peak at step pct*total - 1 = 29.
        assert!(close(s.lr(29), 1e-3));
        // Half-way down the cosine: (max + min)/2 at step 29 + 35 = 64.
        assert!(close(s.lr(64), (1e-3 + 4e-9) / 2.0));
        assert!(close(s.lr(99), 4e-9));
        assert!(close(s.lr(500), 4e-9));
        // Three phases: back to initial at 2*30-2 = 58, then annihilation to initial/1e4.
        let t = LrSchedule::OneCycle {
            max_lr: 1e-4,
            total_steps: 100,
            pct_start: 0.3,
            div_factor: 10.0,
            final_div_factor: 10.0,
            three_phase: true,
            cycle_momentum: true,
            base_momentum: 0.85,
            max_momentum: 0.95,
        };
        assert!(close(t.lr(29), 1e-4));
        assert!(close(t.lr(58), 1e-5));
        assert!(close(t.lr(99), 1e-6));
        assert!(t.lr(70) < 1e-5 && t.lr(70) > 1e-6);
        // β1 as PyTorch's OneCycleLR(cycle_momentum=True): 0.95 at the start, 0.85 at the
        // peak, back to 0.95 at the end (half-way 0.90); three phases hold 0.95 at the end.
        assert!(close(s.beta1(0).unwrap(), 0.95));
        assert!(close(s.beta1(29).unwrap(), 0.85));
        assert!(close(s.beta1(64).unwrap(), 0.90));
        assert!(close(s.beta1(99).unwrap(), 0.95));
        assert!(close(t.beta1(29).unwrap(), 0.85));
        assert!(close(t.beta1(58).unwrap(), 0.95));
        assert!(close(t.beta1(80).unwrap(), 0.95));
        // torch 2.15 OneCycleLR(max_lr=1e-4, total_steps=100, div 10, final 10, three_phase):
        assert!(close(t.beta1(40).unwrap(), 0.8814930922330042));
        assert_eq!(LrSchedule::Constant { lr: 1e-3 }.beta1(3), None);
        let mut fixed = s.clone();
        if let LrSchedule::OneCycle { cycle_momentum, .. } = &mut fixed {
            *cycle_momentum = false;
        }
        assert_eq!(fixed.beta1(29), None);
    }

    #[test]
    fn cyclic_triangular2_halves_each_cycle() {
        let s = LrSchedule::Cyclic {
            base_lr: 0.5e-4,
            max_lr: 2e-3,
            step_size_up: 10,
        };
        assert!(close(s.lr(0), 0.5e-4));
        assert!(close(s.lr(10), 2e-3));
        assert!(close(s.lr(20), 0.5e-4));
        assert!(close(s.lr(30), 0.5e-4 + (2e-3 - 0.5e-4) / 2.0));
        assert!(close(s.lr(50), 0.5e-4 + (2e-3 - 0.5e-4) / 4.0));
        assert!(close(s.lr(5), 0.5e-4 + (2e-3 - 0.5e-4) / 2.0));
    }

    #[test]
    fn multistep_and_serde() {
        let s = LrSchedule::MultiStep {
            lr: 1.0,
            milestones: vec![10, 20],
            gamma: 0.1,
        };
        assert_eq!(s.lr(9), 1.0);
        assert!(close(s.lr(10), 0.1));
        assert!(close(s.lr(25), 0.01));
        let txt = r#"{"type":"one_cycle","max_lr":0.001,"total_steps":50}"#;
        let p: LrSchedule = serde_json::from_str(txt).unwrap();
        assert!(
            matches!(p, LrSchedule::OneCycle { pct_start, div_factor, .. } if pct_start == 0.3 && div_factor == 25.0)
        );
    }

    /// Keras CosineDecay(3e-4, 100): hand values at 0, a quarter, half, the end and beyond.
    #[test]
    fn cosine_decay_hand_values() {
        let s = LrSchedule::Cosine {
            lr: 3e-4,
            decay_steps: 100,
        };
        assert!(close(s.lr(0), 3e-4));
        assert!(close(
            s.lr(25),
            3e-4 * 0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2)
        ));
        assert!(close(s.lr(50), 1.5e-4));
        assert_eq!(s.lr(100), 0.0);
        assert_eq!(s.lr(1000), 0.0);
        assert!(s.beta1(10).is_none());
        let bad = LrSchedule::Cosine {
            lr: 1e-3,
            decay_steps: 0,
        };
        assert!(bad.validate().unwrap_err().contains("decay_steps"));
    }
}
