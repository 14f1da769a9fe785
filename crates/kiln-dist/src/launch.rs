//! Restarts: run a job under `mpirun` and, when it fails, run it again from its newest
//! checkpoint (torchrun's `--max-restarts` on top of mpirun).
//!
//! A rank that exits with an error, is killed by a signal, or hangs (its peers' collectives
//! time out, [`crate::watchdog`]) ends the whole `mpirun` job with a failure. The launcher then
//! starts the job again with the resume flag, up to `max_restarts` times; kiln's trainer
//! resumes from the newest complete checkpoint, so the restarted run continues the failed one
//! exactly. With `min_ranks` below `ranks`, each failure is taken as a lost machine: the next
//! attempt runs on the largest number of ranks below the last one (and not below `min_ranks`)
//! that divides the global batch, with the accumulation that keeps it (`ranks ×
//! accumulation` micro-batches per step), which the trainer resumes bit for bit
//! (`docs/distributed.md`). A job that succeeds, or a launcher that is itself interrupted
//! (Ctrl-C reaches mpirun and the launcher alike), is not restarted.

use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use crate::error::{DistError, Result};

/// One job and how to restart it.
#[derive(Clone, Debug)]
pub struct LaunchConfig {
    /// Ranks of the first attempt (`mpirun -np`).
    pub ranks: usize,
    /// The fewest ranks a restart may run on; `None`: every attempt on `ranks`.
    pub min_ranks: Option<usize>,
    /// Restarts after the first attempt (torchrun's `--max-restarts`).
    pub max_restarts: usize,
    /// The job's micro-batches per step on `ranks` ranks. Needed to shrink (`min_ranks` below
    /// `ranks`): the launcher then passes `accumulation_flag` to every attempt, replacing the
    /// job's own.
    pub accumulation: Option<usize>,
    /// The program that starts the ranks (`mpirun`).
    pub mpirun: PathBuf,
    /// Arguments to it before `-np` (`--mca btl tcp,self`, a hostfile, ...).
    pub mpirun_args: Vec<String>,
    /// The job's program and its arguments.
    pub program: PathBuf,
    /// The job's arguments.
    pub args: Vec<String>,
    /// The job's flag that resumes from its newest checkpoint, added to every restart.
    pub resume_flag: String,
    /// The job's flag for gradient accumulation.
    pub accumulation_flag: String,
    /// A pause before each restart, for the failed ranks' processes to be gone (and their
    /// lock on the run folder with them).
    pub restart_delay: Duration,
}

impl LaunchConfig {
    /// `program args` on `ranks` ranks, never restarted; kiln's flags (`--resume`, `--accum`).
    pub fn new(ranks: usize, program: impl Into<PathBuf>, args: Vec<String>) -> Self {
        Self {
            ranks,
            min_ranks: None,
            max_restarts: 0,
            accumulation: None,
            mpirun: "mpirun".into(),
            mpirun_args: Vec::new(),
            program: program.into(),
            args,
            resume_flag: "--resume".into(),
            accumulation_flag: "--accum".into(),
            restart_delay: Duration::from_secs(1),
        }
    }

    /// The settings' errors, naming the field.
    pub fn validate(&self) -> Result<()> {
        let invalid = |m: String| Err(DistError::InvalidArgument(m));
        if self.ranks == 0 {
            return invalid("ranks must be at least 1".into());
        }
        if let Some(min) = self.min_ranks {
            if min == 0 || min > self.ranks {
                return invalid(format!(
                    "min_ranks must be between 1 and ranks ({}), not {min}",
                    self.ranks
                ));
            }
            if min < self.ranks && self.accumulation.is_none() {
                return invalid(format!(
                    "min_ranks {min} below ranks {} needs the job's accumulation (--accum), so \
                     that a restart on fewer ranks keeps the global batch",
                    self.ranks
                ));
            }
        }
        if self.restart_delay > Duration::from_secs(3600) {
            return invalid(format!(
                "restart_delay must be at most an hour, not {:?}",
                self.restart_delay
            ));
        }
        if self.accumulation == Some(0) {
            return invalid("accumulation must be at least 1".into());
        }
        Ok(())
    }

    /// Micro-batches per step of the whole job.
    fn global_batch(&self) -> Option<usize> {
        self.accumulation.map(|a| a.saturating_mul(self.ranks))
    }

    /// The ranks of the attempt after one on `ranks` failed.
    pub fn ranks_after_failure(&self, ranks: usize) -> usize {
        match (self.min_ranks, self.global_batch()) {
            (Some(min), Some(global)) => (min..ranks)
                .rev()
                .find(|r| global % r == 0)
                .unwrap_or(ranks),
            _ => ranks,
        }
    }

    /// The job's arguments for an attempt on `ranks` ranks: its own, without the accumulation
    /// flag when the launcher sets it, then the resume flag on a restart.
    pub fn job_args(&self, ranks: usize, restart: bool) -> Vec<String> {
        let mut args = Vec::with_capacity(self.args.len() + 3);
        let managed = self.global_batch();
        let with_value = format!("{}=", self.accumulation_flag);
        let mut skip_value = false;
        for arg in &self.args {
            if std::mem::take(&mut skip_value) {
                continue;
            }
            if managed.is_some() && *arg == self.accumulation_flag {
                skip_value = true;
                continue;
            }
            if managed.is_some() && arg.starts_with(&with_value) {
                continue;
            }
            args.push(arg.clone());
        }
        if let Some(global) = managed {
            args.push(self.accumulation_flag.clone());
            args.push((global / ranks).to_string());
        }
        if restart && !args.contains(&self.resume_flag) {
            args.push(self.resume_flag.clone());
        }
        args
    }
}

/// What one attempt was.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// Its ranks.
    pub ranks: usize,
    /// How `mpirun` ended.
    pub status: ExitStatus,
}

/// Runs the job, restarting it as `config` says; returns every attempt, the last one the
/// success, or an error when the last allowed attempt failed too.
pub fn launch(config: &LaunchConfig, mut report: impl FnMut(&str)) -> Result<Vec<Attempt>> {
    config.validate()?;
    let mut attempts: Vec<Attempt> = Vec::new();
    let mut ranks = config.ranks;
    loop {
        let restart = !attempts.is_empty();
        let args = config.job_args(ranks, restart);
        report(&format!(
            "attempt {} of {} on {ranks} rank(s): {} {}",
            attempts.len() + 1,
            config.max_restarts + 1,
            config.program.display(),
            args.join(" ")
        ));
        let status = Command::new(&config.mpirun)
            .args(&config.mpirun_args)
            .args(["-np", &ranks.to_string()])
            .arg(&config.program)
            .args(&args)
            .status()
            .map_err(|e| DistError::Backend {
                backend: "mpi",
                message: format!("cannot start {}: {e}", config.mpirun.display()),
            })?;
        attempts.push(Attempt { ranks, status });
        if status.success() {
            return Ok(attempts);
        }
        if interrupted(&status) {
            return Err(DistError::Backend {
                backend: "mpi",
                message: format!("the job was interrupted ({status}): not restarted"),
            });
        }
        if attempts.len() > config.max_restarts {
            return Err(DistError::Backend {
                backend: "mpi",
                message: format!(
                    "the job failed {} time(s), the last with {status}; no restarts left \
                     (max_restarts {})",
                    attempts.len(),
                    config.max_restarts
                ),
            });
        }
        let next = config.ranks_after_failure(ranks);
        report(&format!(
            "the job failed ({status}); restarting from its newest checkpoint on {next} rank(s)"
        ));
        ranks = next;
        std::thread::sleep(config.restart_delay);
    }
}

/// Whether `mpirun` was stopped by the user (SIGINT, SIGTERM), not by a failing rank.
fn interrupted(status: &ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    matches!(status.signal(), Some(2 | 15))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> LaunchConfig {
        LaunchConfig::new(4, "job", args.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn restarts_shrink_to_divisors_of_the_global_batch_not_below_the_minimum() {
        let mut c = config(&[]);
        assert_eq!(c.ranks_after_failure(4), 4, "no min_ranks: the same ranks");
        c.min_ranks = Some(2);
        c.accumulation = Some(3); // 12 micro-batches per step
        assert_eq!(c.ranks_after_failure(4), 3);
        assert_eq!(c.ranks_after_failure(3), 2);
        assert_eq!(c.ranks_after_failure(2), 2, "never below min_ranks");
        c.accumulation = Some(1);
        c.min_ranks = Some(3); // 4 micro-batches: 3 does not divide them
        assert_eq!(c.ranks_after_failure(4), 4);
    }

    #[test]
    fn the_job_gets_the_accumulation_that_keeps_the_global_batch_and_resume_on_restarts() {
        let mut c = config(&["--seed", "3", "--accum", "2", "--accum=5", "--batch", "8"]);
        assert_eq!(
            c.job_args(4, false),
            ["--seed", "3", "--accum", "2", "--accum=5", "--batch", "8"],
            "not managed: the job's own flags"
        );
        c.min_ranks = Some(1);
        c.accumulation = Some(2);
        assert_eq!(
            c.job_args(2, true),
            ["--seed", "3", "--batch", "8", "--accum", "4", "--resume"]
        );
        c.args.push("--resume".into());
        assert_eq!(
            c.job_args(4, true)
                .iter()
                .filter(|a| *a == "--resume")
                .count(),
            1
        );
    }

    #[test]
    fn settings_that_cannot_work_are_named() {
        let mut c = config(&[]);
        c.min_ranks = Some(2);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("min_ranks 2") && e.contains("--accum"), "{e}");
        c.min_ranks = Some(5);
        assert!(c.validate().unwrap_err().to_string().contains("min_ranks"));
        c.min_ranks = None;
        c.ranks = 0;
        assert!(c.validate().unwrap_err().to_string().contains("ranks"));
    }
}
