//! Throughput of kiln-data's cleaning and deduplication, in MB/s of raw text, on all cores
//! (rayon; set `RAYON_NUM_THREADS` to change). Three configurations run in the same process,
//! alternating over rounds: cleaning only (the baseline), cleaning + exact dedup, and cleaning
//! + exact + MinHash-LSH near dedup (the default).
//!
//! ```text
//! cargo run --release --example bench_data -- [--mb 32] [--rounds 3] [--batch-docs 4096] [--num-perm 256]
//! cargo run --release --example bench_data -- --help
//! ```
//!
//! The corpus is generated in code (`kiln::data::synthetic`): English-like documents of 60-300
//! words with 10% exact and 10% near duplicates planted.

use std::time::Instant;

use clap::Parser;
use clap::builder::RangedU64ValueParser;
use kiln::data::synthetic::{SyntheticConfig, planted_corpus};
use kiln::data::{CleanConfig, CorpusPipeline, DedupConfig, DedupMode};

/// Time kiln-data's cleaning and deduplication (MB/s of raw text) on a generated corpus.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Size of the generated corpus in MB (planted duplicates included).
    #[arg(long, default_value_t = 32, value_parser = positive())]
    mb: usize,
    /// Rounds of the three configurations (the median is reported).
    #[arg(long, default_value_t = 3, value_parser = positive())]
    rounds: usize,
    /// Documents per parallel batch.
    #[arg(long, default_value_t = 4096, value_parser = positive())]
    batch_docs: usize,
    /// MinHash signature length of the near dedup.
    #[arg(long, default_value_t = DedupConfig::new().num_perm, value_parser = positive())]
    num_perm: usize,
}

/// A count of at least 1.
fn positive() -> RangedU64ValueParser<usize> {
    RangedU64ValueParser::new().range(1..)
}

/// CPU seconds (user + system) this process has used so far, from `/proc/self/stat` (Linux;
/// `None` elsewhere). Wall-clock MB/s depends on what else the machine runs; MB per CPU-second
/// does much less.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

fn main() -> kiln::Result<()> {
    let args = Args::parse();
    let (mb, rounds, batch, num_perm) = (args.mb, args.rounds, args.batch_docs, args.num_perm);
    // A --num-perm outside its sound range is an error before the corpus is generated.
    CorpusPipeline::new(
        CleanConfig::new(),
        DedupConfig::new().with_num_perm(num_perm),
    )?;
    // About 1.6 KB per document at the default lengths; copies add 20%.
    let unique = mb * 1_000_000 / 1600 * 10 / 12;
    let corpus = planted_corpus(&SyntheticConfig {
        unique_docs: unique,
        exact_copies: unique / 10,
        near_copies: unique / 10,
        ..Default::default()
    });
    let bytes: usize = corpus.documents.iter().map(String::len).sum();
    println!(
        "corpus: {} documents, {:.1} MB; threads: {}",
        corpus.documents.len(),
        bytes as f64 / 1e6,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let modes = [
        ("clean only (baseline)", DedupMode::None),
        ("clean + exact dedup", DedupMode::Exact),
        ("clean + exact + near dedup", DedupMode::Near),
    ];
    let mut results = vec![Vec::new(); modes.len()];
    for round in 1..=rounds {
        for (m, (name, mode)) in modes.iter().enumerate() {
            let mut pipeline = CorpusPipeline::new(
                CleanConfig::new(),
                DedupConfig::new().with_mode(*mode).with_num_perm(num_perm),
            )?;
            let (start, cpu_start) = (Instant::now(), cpu_seconds());
            let mut kept = 0;
            for chunk in corpus.documents.chunks(batch) {
                kept += pipeline.process(chunk.to_vec()).len();
            }
            let secs = start.elapsed().as_secs_f64();
            let rate = bytes as f64 / 1e6 / secs;
            let cpu = cpu_seconds().zip(cpu_start).map(|(b, a)| b - a);
            let r = pipeline.report();
            println!(
                "round {round} {name:<28} {secs:6.2} s {rate:7.1} MB/s  {:6.1} MB per CPU-s  kept {kept} \
                 (exact {}, near {})",
                cpu.map_or(f64::NAN, |c| bytes as f64 / 1e6 / c.max(0.01)),
                r.dedup.exact_duplicates,
                r.dedup.near_duplicates
            );
            results[m].push((
                rate,
                cpu.map_or(f64::NAN, |c| bytes as f64 / 1e6 / c.max(0.01)),
            ));
        }
    }
    println!();
    for ((name, _), runs) in modes.iter().zip(results) {
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let wall = median(runs.iter().map(|r| r.0).collect());
        let per_cpu = median(runs.iter().map(|r| r.1).collect());
        println!("median {name:<28} {wall:7.1} MB/s  {per_cpu:6.1} MB per CPU-s");
    }
    Ok(())
}
