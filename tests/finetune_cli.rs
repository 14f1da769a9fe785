//! `examples/finetune` (issue 22) on the tiny Llama 3 fixture: prompt–completion pairs lower the
//! held-out loss and give a peft adapter and a merged model that compute the same logits (with
//! `hf_logits --lora` and without); a run killed with SIGKILL and resumed ends with the adapter
//! of an uninterrupted run, bit for bit. These run the examples `cargo test` builds beside this
//! test; run alone (`--test finetune_cli`) without them, they say loudly that they were skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn example(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("examples").join(name);
    bin.exists().then_some(bin)
}

macro_rules! binaries_or_skip {
    () => {
        match (example("finetune"), example("hf_logits")) {
            (Some(finetune), Some(hf_logits)) => (finetune, hf_logits),
            _ => {
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** SKIPPED: examples/finetune and hf_logits are not built (`cargo test --release --workspace` builds them) ***\n"
                );
                return;
            }
        }
    };
}

fn base() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama3_gqa")
}

fn run(bin: &Path, args: &[String]) -> (Output, String) {
    let output = Command::new(bin).args(args).output().expect("runs");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{bin:?} {args:?} failed:\n{text}");
    (output, text)
}

fn value_after(text: &str, label: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no `{label}` in:\n{text}"))
        .trim()
        .to_string()
}

/// Word sequences of the fixture's vocabulary (`w3` ... `w63`): each pair's completion
/// continues its prompt's count.
fn pairs(dir: &Path) -> PathBuf {
    let path = dir.join("pairs.jsonl");
    let lines: Vec<String> = (0..240)
        .map(|i| {
            let s = 3 + (i * 7) % 50;
            let words = |from: usize, n: usize| {
                (from..from + n)
                    .map(|w| format!("w{w}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            format!(
                "{{\"prompt\": \"{}\", \"completion\": \"{}\"}}",
                words(s, 4),
                words(s + 4, 3)
            )
        })
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

fn logits(hf_logits: &Path, model: &Path, lora: Option<&Path>) -> Vec<f64> {
    let mut args = vec![
        "--model-dir".to_string(),
        model.display().to_string(),
        "--input-ids".into(),
        "1,5,9,3,7,2;6,2,8,10,3,12".into(),
    ];
    if let Some(adapter) = lora {
        args.extend(["--lora".into(), adapter.display().to_string()]);
    }
    let (output, _) = run(hf_logits, &args);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    fn flatten(v: &serde_json::Value, out: &mut Vec<f64>) {
        match v {
            serde_json::Value::Array(a) => a.iter().for_each(|x| flatten(x, out)),
            x => out.push(x.as_f64().unwrap()),
        }
    }
    let mut out = Vec::new();
    flatten(&json["logits"], &mut out);
    out
}

#[test]
fn completions_train_and_the_adapter_and_merged_model_agree() {
    let (finetune, hf_logits) = binaries_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let (adapter, merged) = (dir.path().join("adapter"), dir.path().join("merged"));
    let args: Vec<String> = [
        "--model-dir",
        &base().display().to_string(),
        "--data",
        &pairs(dir.path()).display().to_string(),
        "--max-steps",
        "80",
        "--lr",
        "3e-3",
        "--block",
        "16",
        "--batch",
        "8",
        "--target",
        "all-linear",
        "--lora-r",
        "4",
        "--save-adapter",
        &adapter.display().to_string(),
        "--merge-export",
        &merged.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let (_, text) = run(&finetune, &args);
    assert!(text.contains("240 prompt-completion pairs"), "{text}");
    let before: f64 = value_after(&text, "held-out loss before:").parse().unwrap();
    let after: f64 = value_after(&text, "held-out loss after:").parse().unwrap();
    assert!(after < 0.8 * before, "held-out loss {before} -> {after}");
    // peft's count: rank 4 on the 7 projections of 2 blocks, `r·(d_in + d_out)` each, over
    // the fixture's 25,760 parameters.
    let trainable = value_after(&text, "trainable params:");
    assert!(
        trainable.starts_with("4480 || all params: 30240"),
        "{trainable}"
    );

    assert!(adapter.join("adapter_config.json").is_file());
    assert!(merged.join("tokenizer.json").is_file());
    let with_adapter = logits(&hf_logits, &base(), Some(&adapter));
    let from_merged = logits(&hf_logits, &merged, None);
    let plain = logits(&hf_logits, &base(), None);
    let diff = |a: &[f64], b: &[f64]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max)
    };
    assert!(
        diff(&with_adapter, &from_merged) < 1e-4,
        "{}",
        diff(&with_adapter, &from_merged)
    );
    assert!(
        diff(&with_adapter, &plain) > 1e-2,
        "the adapter changed the model"
    );
}

/// A run killed with SIGKILL after a checkpoint, resumed with `--resume`, writes the adapter an
/// uninterrupted run writes, byte for byte.
#[test]
fn a_killed_lora_run_resumes_to_the_same_adapter() {
    let (finetune, _) = binaries_or_skip!();
    let dir = tempfile::tempdir().unwrap();
    let data = pairs(dir.path());
    let args = |name: &str| -> Vec<String> {
        [
            "--model-dir",
            &base().display().to_string(),
            "--data",
            &data.display().to_string(),
            "--max-steps",
            "400",
            "--lr",
            "1e-3",
            "--block",
            "16",
            "--batch",
            "4",
            "--lora-dropout",
            "0.1",
            "--checkpoint-every",
            "20",
            "--log-every",
            "1000",
            "--run-dir",
            &dir.path().join(name).display().to_string(),
            "--save-adapter",
            &dir.path().join(name).join("adapter").display().to_string(),
        ]
        .map(String::from)
        .to_vec()
    };
    let (_, text) = run(&finetune, &args("straight"));
    let expected = value_after(&text, "adapter_sha256:");

    let mut first = Command::new(&finetune)
        .args(args("killed"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let checkpoints = dir.path().join("killed").join("checkpoints");
    let start = std::time::Instant::now();
    loop {
        let any = std::fs::read_dir(&checkpoints).is_ok_and(|e| {
            e.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("step-"))
        });
        if any {
            break;
        }
        assert!(
            first.try_wait().unwrap().is_none(),
            "the run ended before a checkpoint"
        );
        assert!(
            start.elapsed().as_secs() < 120,
            "no checkpoint in 2 minutes"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let mut resume = args("killed");
    resume.push("--resume".into());
    let (_, text) = run(&finetune, &resume);
    let step: usize = value_after(&text, "resumed from step").parse().unwrap();
    assert!(step < 400, "the kill came after the last step ({step})");
    eprintln!("killed and resumed at step {step} of 400");
    assert_eq!(value_after(&text, "adapter_sha256:"), expected);
    let read = |name: &str| {
        std::fs::read(
            dir.path()
                .join(name)
                .join("adapter/adapter_model.safetensors"),
        )
        .unwrap()
    };
    assert_eq!(
        read("killed"),
        read("straight"),
        "the adapter files are the same bytes"
    );
}
