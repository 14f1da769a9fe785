//! What the multi-process tests share: refusing to pass without MPI, launching this test binary
//! again under `mpirun` (its ignored `child` test, told what to do through the environment),
//! and a hang guard.

#![allow(dead_code)] // Each test binary uses its own subset.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The scenario a child runs (set by the parent).
pub const CHILD: &str = "KILN_MPI_CHILD";
/// Where rank 0 of a child writes what it computed.
pub const OUT: &str = "KILN_MPI_OUT";
/// How long a job may take before it counts as hung.
pub const JOB_TIMEOUT: Duration = Duration::from_secs(240);

/// Why these tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if !cfg!(feature = "mpi") {
        return Some("this test binary was built without `--features mpi`".into());
    }
    match Command::new("mpirun").arg("--version").output() {
        Ok(out) if out.status.success() => None,
        _ => Some("`mpirun` is not installed (apt-get install openmpi-bin libopenmpi-dev)".into()),
    }
}

/// Fails the test when it cannot run: without `--features mpi` the multi-process tests are
/// ignored (`cfg_attr`), so a test that gets here with MPI built in but no `mpirun` would
/// otherwise count as passed without having run.
#[macro_export]
macro_rules! skip_unless_mpi {
    () => {
        if let Some(reason) = $crate::common::skip_reason() {
            panic!("a multi-process test cannot run: {reason}");
        }
    };
}

/// `mpirun -np ranks` of `program args`, with the environment `env`; `tcp` forces the
/// transport used between machines. Fails the test if the job outlives [`JOB_TIMEOUT`].
pub fn mpirun(
    ranks: usize,
    tcp: bool,
    env: &[(&str, String)],
    program: &Path,
    args: &[&str],
) -> Output {
    let mut command = Command::new("mpirun");
    command
        .args([
            "-np",
            &ranks.to_string(),
            "--oversubscribe",
            "--bind-to",
            "none",
        ])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    if tcp {
        command.args(["--mca", "btl", "tcp,self"]);
    }
    for (key, value) in env {
        command.args(["-x", &format!("{key}={value}")]);
    }
    command.arg(program).args(args);
    run_with_timeout(command)
}

pub fn run_with_timeout(mut command: Command) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mpirun starts");
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
            child
                .stdout
                .take()
                .unwrap()
                .read_to_end(&mut stdout)
                .unwrap();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_end(&mut stderr)
                .unwrap();
            return Output {
                status,
                stdout,
                stderr,
            };
        }
        if start.elapsed() > JOB_TIMEOUT {
            let _ = child.kill();
            panic!("the job hung for {JOB_TIMEOUT:?}: {command:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs the `child` test of this binary as `ranks` processes, in `scenario`, with settings.
pub fn launch(ranks: usize, tcp: bool, scenario: &str, settings: &[(&str, String)]) -> Output {
    let mut env = vec![(CHILD, scenario.to_string())];
    env.extend(settings.iter().cloned());
    let me = std::env::current_exe().expect("the test binary");
    mpirun(
        ranks,
        tcp,
        &env,
        &me,
        &[
            "--exact",
            "child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ],
    )
}

pub fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The largest elementwise difference of two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Held by every test that trains in this process: the device's generator is one per process,
/// and two test threads seeding and drawing from it at once would build different models and
/// draw different dropout masks.
static IN_PROCESS: Mutex<()> = Mutex::new(());

/// Takes [`IN_PROCESS`] (a panicked holder does not poison it for the others).
pub fn in_process() -> MutexGuard<'static, ()> {
    IN_PROCESS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The main job, small: 300 steps of a 2-layer GPT on addition, about a second on 2 ranks.
pub const SMALL_JOB: [&str; 16] = [
    "--max-steps",
    "300",
    "--seed",
    "3",
    "--batch",
    "16",
    "--d-model",
    "64",
    "--layers",
    "2",
    "--heads",
    "2",
    "--eval-every",
    "100",
    "--accuracy-problems",
    "10",
];

/// `target/<profile>/examples/<name>`, built with this test binary's features (`cargo test`
/// builds the examples).
pub fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("examples").join(name);
    bin.exists().then_some(bin)
}

/// The `params_sha256` the main job printed.
pub fn sha_of(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("params_sha256: "))
        .unwrap_or_else(|| {
            panic!(
                "no params_sha256 in:\n{stdout}\n{}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
        .to_string()
}

/// `src` copied into the new folder `dst`, files only, one level of folders deep (a checkpoint
/// folder).
pub fn copy_folder(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_folder(&entry.path(), &to);
        } else {
            std::fs::copy(entry.path(), to).unwrap();
        }
    }
}
