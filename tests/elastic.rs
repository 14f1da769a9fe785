//! Elastic training end to end (issue 23), on the main job under `mpirun`: the launcher
//! restarting a job whose rank was killed or hangs, a restart on fewer ranks, a ZeRO-2 run
//! resumed on other ranks with ZeRO-1, and two hosts (network namespaces) training over TCP.
//! Each ends with the `params_sha256` of the uninterrupted run or of one process, bit for bit.
//! They need `--features mpi` and Open MPI (`cargo build --release --features mpi --example
//! train_gpt --example launch`, then `cargo test --release --features mpi --test elastic`);
//! the two-host test also needs root and network namespaces, and runs only when asked
//! (`-- --ignored two_hosts`, as CI does).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

mod common;

use common::{JOB_TIMEOUT, assert_success, example, mpirun, sha_of};

use common::SMALL_JOB as JOB;

fn binary(name: &str) -> PathBuf {
    example(name).unwrap_or_else(|| {
        panic!("examples/{name} is not built (`cargo test --release --features mpi` builds it)")
    })
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// The job's arguments with checkpoints every `every` steps in `dir`, and `extra`.
fn checkpointed(dir: &Path, every: &str, extra: &[&str]) -> Vec<String> {
    let mut args = strings(&JOB);
    args.extend(strings(&["--checkpoint-every", every, "--checkpoint-dir"]));
    args.push(dir.display().to_string());
    args.extend(strings(extra));
    args
}

/// The pid of the process of rank `rank` of a job whose command line mentions `marker`
/// (its checkpoint folder).
fn rank_pid(marker: &str, rank: usize) -> Option<u32> {
    let wanted = format!("OMPI_COMM_WORLD_RANK={rank}\0");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            let is_rank = String::from_utf8_lossy(&cmdline).contains(marker)
                && String::from_utf8_lossy(&environ).contains(&wanted)
                && String::from_utf8_lossy(&cmdline).contains("train_gpt");
            is_rank.then_some(pid)
        })
}

/// Waits until `path` exists (the job still running), then for rank `rank`'s process.
fn wait_for(job: &mut Child, path: &Path, marker: &str, rank: usize) -> u32 {
    let start = Instant::now();
    loop {
        assert!(
            start.elapsed() < JOB_TIMEOUT,
            "{} never appeared",
            path.display()
        );
        assert!(
            job.try_wait().unwrap().is_none(),
            "the job ended before {} appeared",
            path.display()
        );
        if path.exists()
            && let Some(pid) = rank_pid(marker, rank)
        {
            return pid;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `launch` with `launcher` flags over the job (checkpoints every 5 steps, and `job`), and
/// the `faults`: once checkpoint `step` exists, `signal` to the job's rank `rank`. Returns how
/// the launcher ended, its output read from files (a pipe nobody reads could fill and stall it).
fn launch_with_faults(launcher: &[&str], job: &[&str], faults: &[(usize, usize, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let checkpoints = dir.path().join("ck");
    let marker = checkpoints.display().to_string();
    let mut child = Command::new(binary("launch"))
        .args(launcher)
        .args([
            "--restart-delay",
            "0.5",
            "--mpirun-arg=--oversubscribe",
            "--mpirun-arg=--bind-to",
            "--mpirun-arg=none",
            "--",
        ])
        .arg(binary("train_gpt"))
        .args(checkpointed(&checkpoints, "5", job))
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .stdout(File::create(dir.path().join("stdout")).unwrap())
        .stderr(File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .expect("the launcher starts");
    for &(step, rank, signal) in faults {
        let path = checkpoints.join(format!("step-{step:08}"));
        let pid = wait_for(&mut child, &path, &marker, rank);
        let sent = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill {signal} {pid}");
    }
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > JOB_TIMEOUT {
            let _ = child.kill();
            panic!("the launcher hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: std::fs::read(dir.path().join("stdout")).unwrap(),
        stderr: std::fs::read(dir.path().join("stderr")).unwrap(),
    }
}

fn uninterrupted(ranks: usize, extra: &[&str]) -> String {
    let mut args = JOB.to_vec();
    args.extend(extra);
    let full = mpirun(ranks, false, &[], &binary("train_gpt"), &args);
    assert_success(&full, "the uninterrupted run");
    sha_of(&full)
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "a multi-process test: build with `--features mpi` (and install mpirun)"
)]
fn the_launcher_restarts_a_killed_and_a_hung_job_to_the_same_hash() {
    skip_unless_mpi!();
    let full = uninterrupted(2, &[]);
    // Attempt 1: rank 1 killed after step 20. Attempt 2 resumes from step 20 or so; once it is
    // past step 60 its rank 0 stops (SIGSTOP: alive, never answering), and rank 1's next
    // collective times out. Attempt 3 finishes.
    let out = launch_with_faults(
        &["--np", "2", "--max-restarts", "2"],
        &["--collective-timeout", "10"],
        &[(20, 1, "-KILL"), (60, 0, "-STOP")],
    );
    assert_success(&out, "the launcher");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("attempt 3 of 3 on 2 rank(s)"), "{stderr}");
    assert!(
        stderr.contains("did not finish within its timeout of 10s"),
        "the hang ended by the collective's timeout: {stderr}"
    );
    assert_eq!(
        stderr.matches("resumed run").count(),
        2,
        "both restarts resumed: {stderr}"
    );
    assert_eq!(sha_of(&out), full, "killed, hung, restarted twice");
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "a multi-process test: build with `--features mpi` (and install mpirun)"
)]
fn the_launcher_finishes_on_fewer_ranks_with_the_same_hash() {
    skip_unless_mpi!();
    let full = uninterrupted(2, &["--zero-stage", "1"]);
    let out = launch_with_faults(
        &["--np", "2", "--min-ranks", "1", "--accum", "1"],
        &["--zero-stage", "1"],
        &[(20, 1, "-KILL")],
    );
    assert_success(&out, "the launcher");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("attempt 2 of 4 on 1 rank(s)"), "{stderr}");
    assert!(stderr.contains("--accum 2 --resume"), "{stderr}");
    assert!(
        stderr.contains("resumed on 1 rank(s) × 2 micro-batch(es)"),
        "{stderr}"
    );
    assert_eq!(sha_of(&out), full, "2 ranks killed, finished on 1");
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "a multi-process test: build with `--features mpi` (and install mpirun)"
)]
fn zero2_on_four_ranks_resumes_on_two_with_zero1_bit_for_bit() {
    skip_unless_mpi!();
    let bin = binary("train_gpt");
    let dir = tempfile::tempdir().unwrap();
    let four = dir.path().join("four");
    let mut args = checkpointed(&four, "150", &["--zero-stage", "2"]);
    set(&mut args, "--batch", "8");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let full = mpirun(4, false, &[], &bin, &refs);
    assert_success(&full, "4 ranks with ZeRO-2");
    // Back to step 150, then on 2 ranks with ZeRO-1 accumulating 2 micro-batches each.
    std::fs::remove_dir_all(four.join("step-00000300")).unwrap();
    let mut resumed = args.clone();
    set(&mut resumed, "--zero-stage", "1");
    resumed.extend(strings(&[
        "--accum",
        "2",
        "--exact-accumulation",
        "--resume",
    ]));
    let refs: Vec<&str> = resumed.iter().map(String::as_str).collect();
    let two = mpirun(2, false, &[], &bin, &refs);
    assert_success(&two, "resumed on 2 ranks");
    let stderr = String::from_utf8_lossy(&two.stderr);
    assert!(
        stderr.contains(
            "written by 4 rank(s) × 1 micro-batch(es) on a 1 × 1 grid, resumed on 2 rank(s) × 2"
        ),
        "{stderr}"
    );
    assert_eq!(
        sha_of(&two),
        sha_of(&full),
        "4 ranks ZeRO-2 -> 2 ranks ZeRO-1"
    );
}

/// `flag`'s value in `args` set to `value` (appended when it is not there: clap refuses a flag
/// given twice).
fn set(args: &mut Vec<String>, flag: &str, value: &str) {
    match args.iter().position(|a| a == flag) {
        Some(at) if at + 1 < args.len() => args[at + 1] = value.to_string(),
        _ => args.extend(strings(&[flag, value])),
    }
}

// ------------------------------------------------------------------------------------------
// Two hosts on one machine: two network namespaces joined by a veth pair, addresses from the
// documentation range 192.0.2.0/24 that exist only inside them; mpirun in the first reaches the
// second through a launch agent (`ip netns exec`), and the ranks talk over TCP only.

/// The namespaces; removed (with the veth pair inside them) when dropped.
struct Hosts {
    names: [String; 2],
}

impl Hosts {
    const ADDRESSES: [&str; 2] = ["192.0.2.1", "192.0.2.2"];

    fn create() -> Result<Self, String> {
        let id = std::process::id() % 100_000;
        let hosts = Self {
            names: [format!("kiln{id}a"), format!("kiln{id}b")],
        };
        let [a, b] = &hosts.names;
        let (va, vb) = (format!("kv{id}a"), format!("kv{id}b"));
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", a],
            vec!["netns", "add", b],
            vec!["link", "add", &va, "type", "veth", "peer", "name", &vb],
            vec!["link", "set", &va, "netns", a],
            vec!["link", "set", &vb, "netns", b],
            vec!["-n", a, "addr", "add", "192.0.2.1/24", "dev", &va],
            vec!["-n", b, "addr", "add", "192.0.2.2/24", "dev", &vb],
            vec!["-n", a, "link", "set", &va, "up"],
            vec!["-n", b, "link", "set", &vb, "up"],
            vec!["-n", a, "link", "set", "lo", "up"],
            vec!["-n", b, "link", "set", "lo", "up"],
        ];
        for step in steps {
            let out = Command::new("ip")
                .args(&step)
                .output()
                .map_err(|e| format!("`ip` does not run ({e}): install iproute2"))?;
            if !out.status.success() {
                return Err(format!(
                    "`ip {}` failed (root and network namespaces are needed): {}",
                    step.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(hosts)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

#[test]
#[ignore = "needs root and network namespaces: run with `-- --ignored two_hosts` (CI does)"]
fn two_hosts_train_over_tcp_as_one_process() {
    skip_unless_mpi!();
    let hosts = Hosts::create().unwrap_or_else(|why| panic!("two hosts cannot be made: {why}"));
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("agent.sh");
    std::fs::write(
        &agent,
        format!(
            "#!/bin/sh\n# mpirun's launch agent: `agent HOST COMMAND...` runs COMMAND on HOST, \
             the namespace with that address.\nhost=\"$1\"; shift\ncase \"$host\" in\n  {}) ns={};;\n  \
             {}) ns={};;\n  *) echo \"unknown host $host\" >&2; exit 1;;\nesac\nexec ip netns exec \"$ns\" sh -c \"$*\"\n",
            Hosts::ADDRESSES[0], hosts.names[0], Hosts::ADDRESSES[1], hosts.names[1]
        ),
    )
    .unwrap();
    let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&agent, executable).unwrap();
    let hostfile = dir.path().join("hosts");
    std::fs::write(
        &hostfile,
        format!(
            "{} slots=1\n{} slots=1\n",
            Hosts::ADDRESSES[0],
            Hosts::ADDRESSES[1]
        ),
    )
    .unwrap();
    let bin = binary("train_gpt");
    let mut command = Command::new("ip");
    command
        .args(["netns", "exec", &hosts.names[0], "mpirun", "-np", "2"])
        .arg("--hostfile")
        .arg(&hostfile)
        .args(["--mca", "plm_rsh_agent"])
        .arg(&agent)
        .args(["--mca", "btl", "tcp,self"])
        .args(["--mca", "btl_tcp_if_include", "192.0.2.0/24"])
        .args(["--mca", "oob_tcp_if_include", "192.0.2.0/24"])
        // Each rank reports the address it runs on, so the test sees two hosts.
        .args(["sh", "-c"])
        .arg(format!(
            "ip -brief -4 addr show | grep -o '192\\.0\\.2\\.[0-9]*' | sed 's/^/host address: /' >&2; exec {} \"$@\"",
            bin.display()
        ))
        .arg("train_gpt")
        .args(JOB)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    let two = common::run_with_timeout(command);
    assert_success(&two, "two hosts");
    let stderr = String::from_utf8_lossy(&two.stderr);
    for address in Hosts::ADDRESSES {
        assert!(
            stderr.contains(&format!("host address: {address}")),
            "a rank on {address}: {stderr}"
        );
    }
    let one = Command::new(&bin)
        .args(JOB)
        .args(["--accum", "2"])
        .env_remove("OMPI_COMM_WORLD_SIZE")
        .output()
        .unwrap();
    assert_success(&one, "one process");
    assert_eq!(sha_of(&two), sha_of(&one), "two hosts = one process");
    drop(hosts);
}

/// What cannot resume is refused by name: another global batch, a grid the model does not
/// divide into, an owner map that leaves a parameter out or disagrees with the shards, a
/// missing optimizer shard.
#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "a multi-process test: build with `--features mpi` (and install mpirun)"
)]
fn checkpoints_that_cannot_resume_here_are_refused_by_name() {
    skip_unless_mpi!();
    let bin = binary("train_gpt");
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    let mut args = checkpointed(&ck, "20", &["--zero-stage", "1"]);
    set(&mut args, "--max-steps", "40");
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_success(&mpirun(2, false, &[], &bin, &refs), "2 ranks with ZeRO-1");
    let resume = |ranks: usize, extra: &[&str]| -> String {
        let mut args = args.clone();
        args.extend(strings(extra));
        args.push("--resume".into());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = if ranks == 1 {
            Command::new(&bin).args(&refs).output().unwrap()
        } else {
            mpirun(ranks, false, &[], &bin, &refs)
        };
        assert!(
            !out.status.success(),
            "resuming on {ranks} with {extra:?} must fail"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    let err = resume(3, &[]);
    assert!(
        err.contains("a global batch of 2 micro-batches")
            && err.contains("this run has 3 × 1 = 3: the global batch must stay the same"),
        "{err}"
    );
    let err = resume(3, &["--tensor-parallel", "3"]);
    assert!(
        err.contains(
            "the number of heads (2) must be a positive multiple of the tensor-parallel size 3"
        ),
        "{err}"
    );

    // The owner map of the newest checkpoint, edited.
    let manifest = ck.join("step-00000040").join("manifest.json");
    let original = std::fs::read_to_string(&manifest).unwrap();
    let edit = |change: &dyn Fn(&mut Vec<serde_json::Value>)| {
        let mut json: serde_json::Value = serde_json::from_str(&original).unwrap();
        let owners = json["optimizer_owners"]
            .as_array_mut()
            .expect("an owner map");
        change(owners);
        std::fs::write(&manifest, serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    };
    edit(&|owners| {
        owners.remove(0);
    });
    let err = resume(1, &["--accum", "2"]);
    assert!(
        err.contains("the ZeRO owner map gives no optimizer shard to parameter `"),
        "{err}"
    );
    edit(&|owners| {
        let shard = owners[0][1].as_u64().unwrap();
        owners[0][1] = (1 - shard).into();
    });
    let err = resume(1, &["--accum", "2"]);
    assert!(err.contains("which the owner map gives to shard"), "{err}");
    std::fs::write(&manifest, &original).unwrap();

    for step in ["step-00000020", "step-00000040"] {
        std::fs::remove_file(ck.join(step).join("optimizer-rank1.bpk")).unwrap();
    }
    let err = resume(1, &["--accum", "2"]);
    assert!(
        err.contains("no usable checkpoint") && err.contains("step-00000040/optimizer-rank1.bpk"),
        "{err}"
    );
}

/// Every F32 tensor of a safetensors file, by name (the format: an 8-byte header length, a JSON
/// header of names, dtypes, shapes and offsets, then the data).
fn safetensors(path: &Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let data = &bytes[8 + len..];
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .map(|(name, entry)| {
            assert_eq!(entry["dtype"], "F32", "{name}");
            let at = |i: usize| entry["data_offsets"][i].as_u64().unwrap() as usize;
            let values = data[at(0)..at(1)]
                .chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (name.clone(), values)
        })
        .collect()
}

/// The largest difference between two exported models' parameters.
fn max_difference(a: &Path, b: &Path) -> f32 {
    let (a, b) = (safetensors(a), safetensors(b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    a.iter()
        .flat_map(|(name, x)| x.iter().zip(&b[name]).map(|(x, y)| (x - y).abs()))
        .fold(0.0, f32::max)
}

/// A checkpoint of a 2 × 2 (tensor × pipeline) grid resumes on a 1 × 2 grid and on one
/// process: the optimizer state was gathered whole and is cut again for the new grid; 30 more
/// AdamW steps end within the model-parallel tests' tolerance of the uninterrupted run (the
/// grids add in other orders, so not bit for bit).
#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "a multi-process test: build with `--features mpi` (and install mpirun)"
)]
fn a_tensor_and_pipeline_checkpoint_resumes_on_other_grids() {
    skip_unless_mpi!();
    let bin = binary("train_gpt");
    let dir = tempfile::tempdir().unwrap();
    let job = |ck: &Path, out: &Path, extra: &[&str]| -> Vec<String> {
        let mut args = checkpointed(ck, "30", extra);
        for (flag, value) in [
            ("--max-steps", "60"),
            ("--batch", "8"),
            ("--eval-every", "30"),
        ] {
            set(&mut args, flag, value);
        }
        args.extend(strings(&["--accum", "2", "--export-hf"]));
        args.push(out.display().to_string());
        args
    };
    let run = |ranks: usize, args: Vec<String>, what: &str| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = if ranks == 1 {
            Command::new(&bin).args(&refs).output().unwrap()
        } else {
            mpirun(ranks, false, &[], &bin, &refs)
        };
        assert_success(&out, what);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let (ck, full) = (dir.path().join("ck"), dir.path().join("full"));
    let grid = ["--tensor-parallel", "2", "--pipeline-parallel", "2"];
    run(4, job(&ck, &full, &grid), "the 2 × 2 grid");
    std::fs::remove_dir_all(ck.join("step-00000060")).unwrap();
    for (ranks, extra, name) in [
        (2, &["--pipeline-parallel", "2"][..], "pipeline"),
        (1, &[][..], "one"),
    ] {
        let ck_copy = dir.path().join(format!("ck-{name}"));
        common::copy_folder(&ck, &ck_copy);
        let out = dir.path().join(name);
        let mut args = job(&ck_copy, &out, extra);
        args.push("--resume".into());
        let stderr = run(ranks, args, name);
        assert!(
            stderr.contains("resharded: written by 1 rank(s) × 2 micro-batch(es) on a 2 × 2 grid"),
            "{stderr}"
        );
        let diff = max_difference(
            &full.join("model.safetensors"),
            &out.join("model.safetensors"),
        );
        assert!(diff <= 1e-4, "2 × 2 → {name}: parameters differ by {diff}");
    }
}
