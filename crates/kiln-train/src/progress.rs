//! What the user watches: an indicatif bar with loss, lr, throughput and ETA on a terminal,
//! plain lines every `log_every` steps otherwise (CI logs, files). All of it goes to stderr, so
//! that a program's own results on stdout stay clean.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Progress display for one run.
pub struct Progress {
    bar: Option<ProgressBar>,
    quiet: bool,
    total: usize,
    units: &'static str,
    start: Instant,
    start_step: usize,
    last: Option<(Instant, u64)>,
}

impl Progress {
    /// A display for steps `start_step..total` of a loop whose loss averages over `units`
    /// (`"tokens"`, `"examples"`); silent with `quiet`.
    pub fn new(start_step: usize, total: usize, units: &'static str, quiet: bool) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total as u64).with_position(start_step as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30.cyan/blue} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
                )
                .expect("valid template"),
            );
            bar
        });
        Self {
            bar,
            quiet,
            total,
            units,
            start: Instant::now(),
            start_step,
            last: None,
        }
    }

    /// Reports the state after `step` steps with `units_seen` units; returns the units per
    /// second since the previous report.
    pub fn update(&mut self, step: usize, loss: f64, lr: f64, units_seen: u64) -> Option<f64> {
        let now = Instant::now();
        let rate = self.last.map(|(t, u)| {
            (units_seen.saturating_sub(u)) as f64 / now.duration_since(t).as_secs_f64().max(1e-9)
        });
        self.last = Some((now, units_seen));
        let rate_text = rate.map_or(String::new(), |r| format!(" | {r:.0} {}/s", self.units));
        let message = format!("loss {loss:.4} | lr {lr:.2e}{rate_text}");
        match &self.bar {
            Some(bar) => {
                bar.set_position(step as u64);
                bar.set_message(message);
            }
            None if !self.quiet => {
                let done = step.saturating_sub(self.start_step).max(1) as f64;
                let left = self.total.saturating_sub(step) as f64;
                let eta = Duration::from_secs_f64(self.start.elapsed().as_secs_f64() / done * left);
                eprintln!(
                    "step {step:>6}/{} | {message} | {:.1}s | ETA {}",
                    self.total,
                    self.start.elapsed().as_secs_f64(),
                    clock(eta)
                );
            }
            None => {}
        }
        rate
    }

    /// Prints a line without breaking the bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None if !self.quiet => eprintln!("{line}"),
            None => {}
        }
    }

    /// Ends the display.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

fn clock(d: Duration) -> String {
    let s = d.as_secs();
    format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}
