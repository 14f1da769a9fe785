//! The main job's command line keeps nothing-lost promises (issue 26): a device as `--data` is
//! refused at once, an output folder holding a user's files is refused before training starts
//! (and `--force` writes beside them), a split too short for one window names itself and the
//! flags that fix it. These run `examples/train_gpt`, which `cargo test` builds beside this
//! test.

use std::path::PathBuf;
use std::process::{Command, Output};

/// `target/<profile>/examples/train_gpt`, which `cargo test --workspace` builds.
fn train_gpt() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|p| p.parent())
        .unwrap()
        .join("examples")
        .join("train_gpt");
    assert!(
        bin.exists(),
        "{} is not built: run `cargo test --release --workspace`",
        bin.display()
    );
    bin
}

fn run(args: &[&str]) -> (Output, String) {
    let output = Command::new(train_gpt())
        .args(args)
        .env_remove("OMPI_COMM_WORLD_SIZE")
        .output()
        .expect("train_gpt runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output, text)
}

#[cfg(unix)]
#[test]
fn a_device_as_data_is_refused_at_once() {
    let started = std::time::Instant::now();
    let (output, text) = run(&["--data", "/dev/zero", "--max-steps", "1"]);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("/dev/zero") && text.contains("a device"),
        "{text}"
    );
    assert!(started.elapsed().as_secs() < 30, "it read the device");
}

#[test]
fn a_save_folder_with_a_users_files_is_refused_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("model");
    std::fs::create_dir_all(&save).unwrap();
    std::fs::write(save.join("config.json"), "mine").unwrap();
    let save_arg = save.display().to_string();
    let (output, text) = run(&["--max-steps", "2", "--save", &save_arg]);
    assert!(!output.status.success(), "{text}");
    assert!(
        text.contains("did not write") && text.contains("config.json"),
        "{text}"
    );
    assert!(!text.contains("params_sha256"), "it trained first: {text}");
    assert_eq!(
        std::fs::read_to_string(save.join("config.json")).unwrap(),
        "mine"
    );

    std::fs::write(save.join("notes.txt"), "keep").unwrap();
    std::fs::remove_file(save.join("config.json")).unwrap();
    let (output, text) = run(&["--max-steps", "2", "--save", &save_arg, "--force"]);
    assert!(output.status.success(), "{text}");
    assert!(save.join("model.bpk").exists());
    assert_eq!(
        std::fs::read_to_string(save.join("notes.txt")).unwrap(),
        "keep"
    );
}

#[test]
fn a_held_out_split_too_short_names_the_split_and_the_flags() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("text.txt");
    std::fs::write(
        &data,
        "a short text, long enough for training windows only. ".repeat(4),
    )
    .unwrap();
    let data_arg = data.display().to_string();
    let (output, text) = run(&[
        "--data",
        &data_arg,
        "--block",
        "12",
        "--val-fraction",
        "0.05",
        "--max-steps",
        "1",
    ]);
    assert!(!output.status.success(), "{text}");
    assert!(text.contains("held-out split"), "{text}");
    assert!(text.contains("--val-fraction"), "{text}");
}
