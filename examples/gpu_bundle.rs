//! The programs a GPU machine runs, in one binary: GPU machines reach no network and take
//! 64 MiB of carried files, and every CUDA binary links LLVM statically (about 135 MiB each),
//! so `scripts/build_cuda_offline.sh` builds this one and `scripts/gpu_check.sh` calls it under
//! the name of the program it should be (busybox style, through symlinks):
//!
//! ```text
//! gpu_bundle report --device cuda --device wgpu --parity   # what each device is, parity with flex
//! train_gpt ... / bench_gpt ... / bench_generate ... / hf_logits ...   (symlinks to gpu_bundle)
//! ```
//!
//! `report` prints one JSON object and exits non-zero when a device is missing, is a software
//! rasterizer, or disagrees with flex beyond `kiln::device::parity`'s tolerances.

#[path = "bench_generate.rs"]
mod bench_generate;
#[path = "bench_gpt.rs"]
mod bench_gpt;
#[path = "hf_logits.rs"]
mod hf_logits;
#[path = "train_gpt.rs"]
mod train_gpt;

use clap::Parser;
use kiln::device::{describe, from_name, parity};
use serde_json::{Value, json};

/// `gpu_bundle report`: which adapter each device name opens, and its parity with flex.
#[derive(Parser, Debug)]
#[command(version)]
enum Command {
    /// Opens each device and prints what it is as JSON.
    Report {
        /// A device name (`cuda`, `wgpu`, `wgpu:cpu`, ...); repeatable.
        #[arg(long = "device", required = true)]
        devices: Vec<String>,
        /// Also run the flex parity check (a small GPT's step, a BERT forward) on each.
        #[arg(long)]
        parity: bool,
    },
}

fn main() -> kiln::Result<()> {
    let program = std::env::args_os()
        .next()
        .and_then(|p| {
            std::path::Path::new(&p)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    match program.as_str() {
        "train_gpt" => train_gpt::main(),
        "bench_gpt" => bench_gpt::main(),
        "bench_generate" => bench_generate::main(),
        "hf_logits" => hf_logits::main(),
        _ => {
            let Command::Report { devices, parity } = Command::parse();
            let (report, ok) = report(&devices, parity);
            println!("{}", serde_json::to_string_pretty(&report).expect("JSON"));
            if ok {
                Ok(())
            } else {
                Err(kiln::Error::Usage(
                    "a device is missing, not a GPU, or disagrees with flex (see the report)"
                        .into(),
                ))
            }
        }
    }
}

fn report(names: &[String], with_parity: bool) -> (Value, bool) {
    let mut ok = true;
    let mut devices = Vec::new();
    for name in names {
        let mut entry = json!({ "device": name });
        match from_name(name).and_then(|device| Ok((describe(&device)?, device))) {
            Err(e) => {
                ok = false;
                entry["error"] = json!(e.to_string());
            }
            Ok((adapter, device)) => {
                entry["adapter"] = json!(adapter);
                if with_parity {
                    let started = std::time::Instant::now();
                    match parity::measure(&device) {
                        Ok(p) => {
                            let failures = p.failures();
                            ok &= failures.is_empty();
                            entry["parity"] = json!(p);
                            entry["parity_failures"] = json!(failures);
                        }
                        Err(e) => {
                            ok = false;
                            entry["parity_error"] = json!(e.to_string());
                        }
                    }
                    entry["parity_seconds"] = json!(started.elapsed().as_secs_f64());
                }
            }
        }
        devices.push(entry);
    }
    (
        json!({ "kiln": env!("CARGO_PKG_VERSION"), "devices": devices }),
        ok,
    )
}
