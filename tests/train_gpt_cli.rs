//! The main job's command line: the run config it prints and reads, flags that do not apply,
//! the saved model folder. These run `examples/train_gpt`, which `cargo test` builds beside this
//! test; run alone (`--test train_gpt_cli`) without it, they say loudly that they were skipped.

use std::path::PathBuf;
use std::process::{Command, Output};

use kiln::prelude::*;

/// `target/<profile>/examples/train_gpt`.
fn train_gpt() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("examples").join("train_gpt");
    bin.exists().then_some(bin)
}

macro_rules! binary_or_skip {
    () => {
        match train_gpt() {
            Some(bin) => bin,
            None => {
                // Straight to the process's stderr: the test harness captures `eprintln!`.
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** SKIPPED: examples/train_gpt is not built (`cargo test --release --workspace` builds it) ***\n"
                );
                return;
            }
        }
    };
}

fn run(bin: &PathBuf, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env_remove("OMPI_COMM_WORLD_SIZE")
        .output()
        .expect("train_gpt runs")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The addition task fixes its context: `--block` there is an error, not silently ignored.
#[test]
fn block_on_the_addition_task_is_refused() {
    let bin = binary_or_skip!();
    let output = run(&bin, &["--block", "5", "--max-steps", "1"]);
    let (_, stderr) = text(&output);
    assert!(!output.status.success(), "must fail");
    assert!(stderr.contains("--block applies to text data"), "{stderr}");
}

/// `--print-config` prints the whole run; read back with one flag over it, only that field
/// changes; a partial file with a typo names the field.
#[test]
fn the_printed_config_round_trips_and_flags_override_it() {
    let bin = binary_or_skip!();
    let printed = run(&bin, &["--print-config"]);
    let (toml_text, stderr) = text(&printed);
    assert!(printed.status.success(), "{stderr}");
    let full: toml::Value = toml::from_str(&toml_text).expect("TOML");
    assert_eq!(
        full["trainer"]["max_steps"].as_integer(),
        Some(kiln::recipe::ADDITION_STEPS as i64)
    );
    assert_eq!(full["model"]["n_layer"].as_integer(), Some(2));
    assert_eq!(full["optimizer"]["AdamW"]["beta_2"].as_float(), Some(0.95));
    assert_eq!(full["data"].as_str(), Some("Addition"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("run.toml");
    std::fs::write(&file, &toml_text).unwrap();
    let again = run(
        &bin,
        &[
            "--config",
            file.to_str().unwrap(),
            "--max-steps",
            "5",
            "--print-config",
        ],
    );
    let (again_text, stderr) = text(&again);
    assert!(again.status.success(), "{stderr}");
    let mut again: toml::Value = toml::from_str(&again_text).unwrap();
    assert_eq!(again["trainer"]["max_steps"].as_integer(), Some(5));
    again["trainer"]["max_steps"] = full["trainer"]["max_steps"].clone();
    assert_eq!(again, full, "only max_steps changed");

    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "[trainer]\nbatchsize = 8\n").unwrap();
    let refused = run(
        &bin,
        &["--config", typo.to_str().unwrap(), "--print-config"],
    );
    let (_, stderr) = text(&refused);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("unknown field `trainer.batchsize`"),
        "{stderr}"
    );
}

/// `--save` writes a folder that `kiln::saved::load` reads back without a closure, the
/// tokenizer included for text data.
#[test]
fn a_saved_text_model_loads_with_its_tokenizer() {
    let bin = binary_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, "a small corpus of text to train on. ".repeat(60)).unwrap();
    let saved = dir.path().join("model");
    let output = run(
        &bin,
        &[
            "--data",
            corpus.to_str().unwrap(),
            "--block",
            "16",
            "--max-steps",
            "3",
            "--batch",
            "4",
            "--d-model",
            "16",
            "--layers",
            "1",
            "--heads",
            "2",
            "--samples",
            "1",
            "--save",
            saved.to_str().unwrap(),
        ],
    );
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let loaded = kiln::saved::load::<GptConfig>(&saved, &Device::flex()).unwrap();
    let tokenizer = loaded
        .tokenizer
        .expect("a text model is saved with its tokenizer");
    assert_eq!(tokenizer.vocab_size(), loaded.config.vocab_size);
    assert_eq!(loaded.config.block_size, 16);
    let prompt = tokenizer.encode("a small").unwrap();
    let out = loaded
        .model
        .generate(&[prompt], &GenerateConfig::new().with_max_new_tokens(3))
        .unwrap();
    assert_eq!(out[0].len(), 10);
}

/// A run folder is locked while a run uses it: a second run fails at once, naming the holder.
/// Killed with SIGKILL, the run leaves no stale lock; a new run in its folder is refused (the
/// checkpoints are kept) until `--overwrite` replaces them.
#[test]
fn a_run_folder_is_locked_and_a_killed_run_leaves_no_stale_lock() {
    let bin = binary_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let args = |steps: &'static str| {
        vec![
            "--max-steps".to_string(),
            steps.into(),
            "--batch".into(),
            "4".into(),
            "--d-model".into(),
            "16".into(),
            "--layers".into(),
            "1".into(),
            "--heads".into(),
            "2".into(),
            "--checkpoint-every".into(),
            "5".into(),
            // No evaluation, so no early stopping: the first run lives until it is killed.
            "--eval-every".into(),
            "1000000".into(),
            "--accuracy-problems".into(),
            "1".into(),
            "--run-dir".into(),
            run_dir.display().to_string(),
        ]
    };
    // The first run's stderr, to say why it ended if it did.
    let first_err = dir.path().join("first.stderr");
    let mut first = Command::new(&bin)
        .args(args("1000000"))
        .env_remove("OMPI_COMM_WORLD_SIZE")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&first_err).unwrap())
        .spawn()
        .expect("train_gpt starts");
    // Any checkpoint: at the fused kernels' speed the step-5 one is pruned within
    // milliseconds, between two looks.
    let checkpoints = run_dir.join("checkpoints");
    let has_checkpoint = || {
        std::fs::read_dir(&checkpoints).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("step-"))
        })
    };
    let start = std::time::Instant::now();
    while !has_checkpoint() {
        assert!(
            start.elapsed().as_secs() < 300,
            "no checkpoint appeared in 5 minutes"
        );
        if let Some(status) = first.try_wait().unwrap() {
            panic!(
                "the first run ended ({status}):\n{}",
                std::fs::read_to_string(&first_err).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut resume = args("1000000");
    resume.push("--resume".into());
    let resume: Vec<&str> = resume.iter().map(String::as_str).collect();
    let second = run(&bin, &resume);
    let (_, stderr) = text(&second);
    assert!(!second.status.success(), "the folder is in use");
    assert!(stderr.contains("is in use by another run"), "{stderr}");
    assert!(
        stderr.contains(&format!("\"pid\":{}", first.id())),
        "{stderr}"
    );

    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    // The first run went on checkpointing (and pruning) until the kill: what it left.
    let left: Vec<PathBuf> = std::fs::read_dir(run_dir.join("checkpoints"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("step-")
        })
        .collect();
    assert!(!left.is_empty(), "the killed run left checkpoints");
    let fresh: Vec<String> = args("3");
    let fresh: Vec<&str> = fresh.iter().map(String::as_str).collect();
    let refused = run(&bin, &fresh);
    let (_, stderr) = text(&refused);
    assert!(
        !refused.status.success(),
        "another run's checkpoints are there"
    );
    assert!(stderr.contains("--overwrite"), "{stderr}");
    assert!(left.iter().all(|p| p.exists()), "and they are kept");

    let mut overwrite = fresh.clone();
    overwrite.push("--overwrite");
    let replaced = run(&bin, &overwrite);
    let (stdout, stderr) = text(&replaced);
    assert!(replaced.status.success(), "{stdout}\n{stderr}");
    assert!(
        left.iter().all(|p| !p.exists()),
        "the killed run's checkpoints are replaced"
    );
    assert!(run_dir.join("checkpoints").join("step-00000003").exists());
}

/// Issue 14: `--block 18446744073709551615` made `seq_len + 1` wrap in the packed dataset and
/// the run panicked; it is now an error naming the ceiling.
#[test]
fn block_of_u64_max_is_an_error_not_a_panic() {
    let bin = binary_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.txt");
    std::fs::write(&corpus, "a small corpus of text to train on. ".repeat(60)).unwrap();
    let output = run(
        &bin,
        &[
            "--data",
            corpus.to_str().unwrap(),
            "--block",
            "18446744073709551615",
            "--max-steps",
            "1",
        ],
    );
    let (stdout, stderr) = text(&output);
    assert!(!output.status.success(), "{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("ceiling"), "{stderr}");
}
