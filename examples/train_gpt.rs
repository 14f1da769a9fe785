//! The main job: train a small GPT from scratch on the CPU, with kiln's Trainer.
//!
//! ```text
//! cargo run --release --example train_gpt                       # 3-digit addition, held-out accuracy
//! cargo run --release --example train_gpt -- --data FILE.txt     # character-level LM on a text file
//! cargo run --release --example train_gpt -- --data DIR          # a folder written by prepare_data
//! cargo run --release --example train_gpt -- --print-config > run.toml
//! cargo run --release --example train_gpt -- --config run.toml --max-steps 300
//! cargo run --release --example train_gpt -- --export-hf out/gpt2   # + a transformers folder
//! cargo run --release --example train_gpt -- --arch llama --kv-heads 2   # a Llama-architecture model
//! cargo run --release --example train_gpt -- --init-from HF_DIR --data FILE.txt --block 256
//! cargo run --release --example train_gpt -- --help
//! ```
//!
//! The run is one [`RunConfig`]: `kiln::recipe::addition` (GPT-3's recipe scaled down) unless
//! `--config FILE` (JSON or TOML, complete or partial) says otherwise; every flag overrides one
//! field of it, `--print-config` prints the result. The addition task (`kiln::data::addition`)
//! is `123+456=` followed by the reversed 4-digit sum; about 2% of all pairs are held out, and
//! the final accuracy is exact match on held-out problems, decoded greedily with the KV cache.
//!
//! At the end it prints `params_sha256: <hex>`, a hash of every parameter's bytes: a run
//! killed at any moment and restarted with `--resume` prints the same hash as an uninterrupted
//! one. Progress goes to stderr, results to stdout.
//!
//! `--arch llama` trains a Llama-architecture decoder (RMSNorm, rotary positions, SwiGLU,
//! grouped-query attention with `--kv-heads`) with Llama's optimizer settings
//! (`kiln::recipe::llama`); `--init-from` starts from a HuggingFace checkpoint (GPT-2, Llama,
//! Qwen2, Mistral) instead of random weights: full fine-tuning or continued pre-training on
//! text tokenized with the checkpoint's own `tokenizer.json`.
//!
//! Data parallel: built with `--features mpi` and launched by `mpirun -np N` (or `srun`), every
//! rank trains on its own `--batch` sequences of each step and rank 0 prints; `mpirun -np 2
//! train_gpt --batch 32` takes the steps of `train_gpt --batch 32 --accum 2`, bit for bit
//! (`docs/distributed.md`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::data::dataset::Dataset;
use burn::module::{ModuleVisitor, Param};
use clap::Parser;
use kiln::base::OutputDir;
use kiln::data::addition::{AdditionBatcher, AdditionDataset};
use kiln::dist::{PipelineSchedule, ProcessGroup, ReduceDtype};
use kiln::prelude::*;
use sha2::{Digest, Sha256};

/// The decoder's architecture.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Arch {
    /// GPT-2: LayerNorm, learned positions, a GELU MLP, multi-head attention, biases.
    Gpt2,
    /// Llama: RMSNorm, rotary positions, SwiGLU, grouped-query attention, no biases.
    Llama,
}

/// Train a GPT: on 3-digit addition (the default), a text file or a prepared folder.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The architecture of a model trained from scratch (the sizes are the run config's).
    #[arg(long, value_enum, conflicts_with = "init_from")]
    arch: Option<Arch>,
    /// Key/value heads per block (grouped-query attention; 1: multi-query); must divide the
    /// heads.
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Start from this HuggingFace checkpoint (a folder with config.json and safetensors
    /// weights: GPT-2, Llama, Qwen2 or Mistral) instead of random weights; text data is
    /// tokenized with its tokenizer.json.
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// A run config (.json or .toml), complete or partial; the flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the run config (TOML) and exit.
    #[arg(long)]
    print_config: bool,
    /// Training data: a text file (character-level) or a folder written by prepare_data.
    /// Without it, the addition task.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Fraction of a text file held out for evaluation.
    #[arg(long)]
    val_fraction: Option<f64>,
    /// Optimizer steps.
    #[arg(long, alias = "steps")]
    max_steps: Option<usize>,
    /// Sequences per micro-batch.
    #[arg(long)]
    batch: Option<usize>,
    /// Micro-batches per optimizer step (gradient accumulation; under pipeline parallelism,
    /// the pipeline's micro-batches).
    #[arg(long, alias = "micro-batches")]
    accum: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Model width.
    #[arg(long)]
    d_model: Option<usize>,
    /// Transformer blocks.
    #[arg(long)]
    layers: Option<usize>,
    /// Attention heads per block.
    #[arg(long)]
    heads: Option<usize>,
    /// Context length (text data only: the addition task fixes it).
    #[arg(long)]
    block: Option<usize>,
    /// Seed of the weights, the data order and dropout.
    #[arg(long)]
    seed: Option<u64>,
    /// Backend: flex, wgpu, vulkan[:N], metal, cuda[:N] or auto; defaults to $KILN_DEVICE, else flex.
    #[arg(long)]
    device: Option<String>,
    /// Compute precision.
    #[arg(long, value_enum)]
    precision: Option<Precision>,
    /// Activation recomputation.
    #[arg(long, value_enum)]
    recompute: Option<Recompute>,
    /// Evaluate every N steps.
    #[arg(long)]
    eval_every: Option<usize>,
    /// Report progress every N steps.
    #[arg(long)]
    log_every: Option<usize>,
    /// Write a checkpoint every N steps.
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Checkpoint folder (default: RUN_DIR/checkpoints, else checkpoints/train_gpt).
    #[arg(long)]
    checkpoint_dir: Option<String>,
    /// Run folder: run.json, metrics.jsonl, plot.svg and the checkpoints.
    #[arg(long)]
    run_dir: Option<String>,
    /// Continue from the newest usable checkpoint.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Start a new run in a folder that holds another run's checkpoints or metrics, deleting
    /// them (without it, such a folder is refused).
    #[arg(long)]
    overwrite: bool,
    /// Resume although the data differs from the checkpoint's (fixed or extended on purpose).
    #[arg(long, requires = "resume")]
    allow_data_change: bool,
    /// Text samples to print after training (text data only).
    #[arg(long)]
    samples: Option<usize>,
    /// Held-out problems for the final accuracy (addition only).
    #[arg(long, default_value_t = 1000)]
    accuracy_problems: usize,
    /// ZeRO stage under mpirun: 1 shards the optimizer state across the ranks, 2 the reduced
    /// gradients too.
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=2))]
    zero_stage: Option<u64>,
    /// Gradient bucket size under mpirun, in MB.
    #[arg(long)]
    bucket_mb: Option<f64>,
    /// The dtype gradients travel in under mpirun.
    #[arg(long, value_enum)]
    reduce_dtype: Option<ReduceDtype>,
    /// Under mpirun with --accum above 1: each micro-batch's gradients reduced apart and added
    /// in one process's order, so that any ranks × accumulation of the same global batch gives
    /// the same bits (costs --accum gradient copies per rank and as much more traffic).
    #[arg(long)]
    exact_accumulation: bool,
    /// Under mpirun: ranks each block's matrices are split across (Megatron's tensor
    /// parallelism); must divide the heads and the MLP width.
    #[arg(long)]
    tensor_parallel: Option<usize>,
    /// Under mpirun: pipeline stages the blocks are cut into.
    #[arg(long)]
    pipeline_parallel: Option<usize>,
    /// The pipeline's schedule.
    #[arg(long, value_enum)]
    schedule: Option<PipelineSchedule>,
    /// Under mpirun: seconds a collective may wait for the other ranks before it ends the job
    /// (a peer that died or hangs; 0: wait for ever).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(0..=86_400))]
    collective_timeout: u64,
    /// Save the trained model into this folder with its config (and tokenizer for text data):
    /// `kiln::saved::load::<GptConfig>(dir, &device)` reads it back.
    #[arg(long)]
    save: Option<PathBuf>,
    /// Also write the trained model as a HuggingFace folder (config.json, model.safetensors,
    /// and tokenizer.json for text data), loadable by transformers: `GPT2LMHeadModel`, or
    /// `LlamaForCausalLM` (`Qwen2ForCausalLM`, `MistralForCausalLM`) for the Llama family.
    #[arg(long)]
    export_hf: Option<PathBuf>,
    /// Write --save and --export-hf into folders that hold files kiln did not write (they are
    /// left alone; same-named ones are replaced). Without it such a folder is refused before
    /// training starts, naming the files.
    #[arg(long)]
    force: bool,
}

/// The output folder `dir`, forced when the user said `--force`.
fn output(dir: &std::path::Path, force: bool) -> OutputDir {
    if force {
        OutputDir::forced(dir)
    } else {
        OutputDir::new(dir)
    }
}

/// Where the run's data comes from: part of the run config.
#[derive(burn::config::Config, Debug, PartialEq)]
enum GptData {
    /// 3-digit addition (`kiln::data::addition`).
    Addition,
    /// A text file, character-level, the last `val_fraction` held out.
    Text {
        /// The file.
        path: String,
        /// Held-out fraction.
        val_fraction: f64,
    },
    /// A folder written by `prepare_data` (token shards, `tokenizer.json`, a `val` split).
    Prepared {
        /// The folder.
        dir: String,
    },
}

type GptRun = RunConfig<GptConfig, GptData>;

/// The run: the recipe, the config file over it, the flags over both.
fn run_config(args: &Args) -> kiln::Result<GptRun> {
    let recipe = kiln::recipe::addition(kiln::recipe::ADDITION_STEPS);
    let base = GptRun::new(
        recipe.model,
        GptData::Addition,
        recipe.optimizer,
        recipe.schedule,
        recipe.trainer,
    );
    let mut run = match &args.config {
        Some(path) => base.merge_file(path)?,
        None => base,
    };
    if let Some(path) = &args.data {
        let path = path.display().to_string();
        run.data = if Path::new(&path).is_dir() {
            GptData::Prepared { dir: path }
        } else {
            GptData::Text {
                path,
                val_fraction: 0.05,
            }
        };
    }
    let text = !matches!(run.data, GptData::Addition);
    let not_for_addition = [
        ("--block", args.block.is_some()),
        ("--samples", args.samples.is_some()),
        ("--val-fraction", args.val_fraction.is_some()),
    ];
    if let Some((flag, _)) = not_for_addition.iter().find(|(_, set)| *set && !text) {
        return Err(kiln::Error::Usage(format!(
            "{flag} applies to text data (--data); the addition task fixes its own"
        )));
    }
    match (&mut run.data, args.val_fraction) {
        (GptData::Text { val_fraction, .. }, Some(f)) => *val_fraction = f,
        (GptData::Prepared { .. }, Some(_)) => {
            return Err(kiln::Error::Usage(
                "--val-fraction applies to a text file; a prepared folder has its own val split"
                    .into(),
            ));
        }
        _ => {}
    }

    if args.arch == Some(Arch::Llama) {
        // The run's sizes in Llama's architecture, with Llama's optimizer settings.
        let m = &run.model;
        let kv = if m.n_head.is_multiple_of(2) {
            m.n_head / 2
        } else {
            m.n_head
        };
        let model = kiln::recipe::llama_model(
            m.vocab_size,
            m.block_size,
            m.n_layer,
            m.d_model,
            m.n_head,
            kv,
        );
        run.optimizer = kiln::recipe::llama(model.clone(), (), 1.0, 1).optimizer;
        run.model = model;
    }
    if let Some(dir) = &args.init_from {
        let model_flags = [
            ("--d-model", args.d_model.is_some()),
            ("--layers", args.layers.is_some()),
            ("--heads", args.heads.is_some()),
            ("--kv-heads", args.kv_heads.is_some()),
        ];
        if let Some((flag, _)) = model_flags.iter().find(|(_, set)| *set) {
            return Err(kiln::Error::Usage(format!(
                "{flag} changes the model, and --init-from gives it (the checkpoint's config)"
            )));
        }
        if !text {
            return Err(kiln::Error::Usage(
                "--init-from trains on text (--data FILE or DIR) tokenized with the checkpoint's tokenizer; the addition task has its own 14-token vocabulary".into(),
            ));
        }
        run.model = kiln::model::hf::gpt_config_of(dir)?;
    }
    let model = &mut run.model;
    set(&mut model.d_model, args.d_model);
    set(&mut model.n_layer, args.layers);
    set(&mut model.n_head, args.heads);
    if args.kv_heads.is_some() {
        model.n_kv_head = args.kv_heads;
    }
    set(&mut model.block_size, args.block);
    let t = &mut run.trainer;
    if let Some(steps) = args.max_steps {
        t.max_steps = Some(steps);
    }
    set(&mut t.batch_size, args.batch);
    set(&mut t.grad_accumulation, args.accum);
    set(&mut t.seed, args.seed);
    set(&mut t.precision, args.precision);
    set(&mut t.recompute, args.recompute);
    set(&mut t.eval_every, args.eval_every);
    set(&mut t.log_every, args.log_every);
    set(&mut t.checkpoint_every, args.checkpoint_every);
    if args.checkpoint_dir.is_some() {
        t.checkpoint_dir = args.checkpoint_dir.clone();
    }
    if args.run_dir.is_some() {
        t.run_dir = args.run_dir.clone();
    }
    t.resume |= args.resume;
    t.overwrite |= args.overwrite;
    t.allow_data_change |= args.allow_data_change;
    let dp = &mut t.data_parallel;
    if let Some(stage) = args.zero_stage {
        dp.zero_stage = stage as usize;
    }
    set(&mut dp.bucket_mb, args.bucket_mb);
    set(&mut dp.reduce_dtype, args.reduce_dtype);
    dp.exact_accumulation |= args.exact_accumulation;
    let mp = &mut t.model_parallel;
    set(&mut mp.tensor_parallel, args.tensor_parallel);
    set(&mut mp.pipeline_parallel, args.pipeline_parallel);
    set(&mut mp.schedule, args.schedule);
    if (t.resume || t.checkpoint_every > 0) && t.checkpoint_dir.is_none() && t.run_dir.is_none() {
        t.checkpoint_dir = Some("checkpoints/train_gpt".into());
    }
    if let Some(lr) = args.lr {
        run.schedule = run.schedule.with_peak_lr(lr)?;
    }
    Ok(run)
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}

/// Training and held-out data of a text run, with its tokenizer: a text file's own
/// (character-level), or `init_from`'s `tokenizer.json` when the model comes from a checkpoint.
fn text_data(
    data: &GptData,
    block: usize,
    init_from: Option<&Path>,
) -> kiln::Result<(Tokenizer, PackedLmDataset, PackedLmDataset)> {
    Ok(match data {
        GptData::Prepared { dir } => {
            let tokenizer = Tokenizer::from_file(Path::new(dir).join("tokenizer.json"))?;
            let train = PackedLmDataset::open(dir, block)?;
            let eval = PackedLmDataset::open_split(dir, "val", block).map_err(|e| {
                kiln::Error::Usage(format!(
                    "{e}: the `val` split is too small for one window; rerun prepare_data with a larger --val-fraction"
                ))
            })?;
            (tokenizer, train, eval)
        }
        GptData::Text { path, val_fraction } => {
            let text = kiln::data::read_text_file(path)?;
            let tokenizer = match init_from {
                Some(dir) => Tokenizer::from_file(dir.join("tokenizer.json"))?,
                None => Tokenizer::char_level(&text)?,
            };
            let ids = tokenizer.encode(&text)?;
            let held_out = ((ids.len() as f64 * val_fraction) as usize).min(ids.len());
            let (train, eval) = ids.split_at(ids.len() - held_out);
            // Too short a split names itself and the flags that change it.
            let windows = |ids: &[u32], split: &str, fix: String| {
                PackedLmDataset::from_tokens(ids.to_vec(), block).map_err(|e| match e {
                    kiln::data::DataError::NotEnoughTokens { tokens, needed } => {
                        kiln::Error::Usage(format!(
                            "the {split} split of {path} has {tokens} tokens, fewer than one \
                             window of {needed} (--block {block} + 1): {fix}"
                        ))
                    }
                    other => other.into(),
                })
            };
            (
                tokenizer,
                windows(
                    train,
                    "training",
                    "use more text or a smaller --block".into(),
                )?,
                windows(
                    eval,
                    "held-out",
                    format!("raise --val-fraction (now {val_fraction}) or lower --block"),
                )?,
            )
        }
        GptData::Addition => unreachable!("text_data is called for text runs"),
    })
}

pub fn main() -> kiln::Result<()> {
    let args = Args::parse();
    // Under mpirun/srun: this rank of the world (a build without `--features mpi` says so).
    let timeout = (args.collective_timeout > 0)
        .then(|| std::time::Duration::from_secs(args.collective_timeout));
    let group = ProcessGroup::from_env()?.with_timeout(timeout);
    match train(&args, &group) {
        Err(e) if group.size() > 1 => {
            // The other ranks may be waiting in a collective: end the whole job.
            eprintln!("rank {}: error: {e}", group.rank());
            group.abort(1)
        }
        result => result,
    }
}

fn train(args: &Args, group: &ProcessGroup) -> kiln::Result<()> {
    let mut run = run_config(args)?;
    // The output folders are checked before training, not after hours of it.
    if group.is_main() {
        for dir in args.save.iter().chain(&args.export_hf) {
            output(dir, args.force).claim(&[])?;
        }
    }
    // One GPU per process on a machine: `cuda` means `cuda:{local rank}`.
    let device = match args.device.as_deref() {
        Some("cuda") if group.size() > 1 => {
            kiln::device::from_name(&format!("cuda:{}", group.local_rank()))?
        }
        name => kiln::device::from_flag(name)?,
    };
    // Results go to stdout on rank 0 only.
    let main = group.is_main();

    // Text runs also keep their tokenizer and the first token of a few training windows, to
    // start the samples printed at the end.
    let (train, eval, text, train_len) = match &run.data {
        GptData::Addition => (
            BatchSource::new(AdditionDataset::train(), AdditionBatcher),
            BatchSource::new(AdditionDataset::held_out(), AdditionBatcher),
            None,
            AdditionDataset::train().len(),
        ),
        data => {
            let init_from = args.init_from.as_deref();
            let (tokenizer, train, eval) = text_data(data, run.model.block_size, init_from)?;
            match init_from {
                // The vocabulary is the checkpoint's: the tokenizer's ids must fit it.
                Some(dir) if tokenizer.vocab_size() > run.model.vocab_size => {
                    return Err(kiln::Error::Usage(format!(
                        "the data's tokenizer has {} tokens, more than the vocabulary of {} ({})",
                        tokenizer.vocab_size(),
                        run.model.vocab_size,
                        dir.display()
                    )));
                }
                Some(_) => {}
                // From scratch, the vocabulary is the data's.
                None => run.model.vocab_size = tokenizer.vocab_size(),
            }
            let len = train.len();
            let starts = (0..args.samples.unwrap_or(3))
                .map(|i| Ok(train.window(i * 7 % len)?[0]))
                .collect::<kiln::Result<Vec<u32>>>()?;
            // Checkpoints recognise the data (and its tokenizer) by these.
            let vocab = tokenizer.fingerprint()?;
            let fingerprint =
                |d: &PackedLmDataset| format!("{} tokenizer {vocab}", d.fingerprint());
            let (train_fp, eval_fp) = (fingerprint(&train), fingerprint(&eval));
            (
                BatchSource::new(train, LmBatcher).with_fingerprint(train_fp),
                BatchSource::new(eval, LmBatcher).with_fingerprint(eval_fp),
                Some((tokenizer, starts)),
                len,
            )
        }
    };
    if args.print_config {
        if main {
            print!("{}", run.to_toml()?);
        }
        return Ok(());
    }

    device.seed(run.trainer.seed);
    let gpt = match &args.init_from {
        Some(dir) => kiln::model::hf::load_pretrained_gpt(dir, &run.model, &device)?,
        None => run.model.init(&device)?,
    };
    if main && device != Device::flex() {
        // Which card (or software rasterizer) the figures below come from.
        println!("adapter: {}", kiln::device::describe(&device)?);
    }
    if main {
        println!(
            "GPT with {} parameters on {} ({train_len} training sequences), {} steps of {} rank(s) x {} x {}",
            gpt.num_params(),
            match &run.data {
                GptData::Addition => "3-digit addition".to_string(),
                GptData::Text { path, .. } => path.clone(),
                GptData::Prepared { dir } => dir.clone(),
            },
            run.trainer.max_steps.unwrap_or_default(),
            group.size(),
            run.trainer.grad_accumulation,
            run.trainer.batch_size
        );
    }
    let start = Instant::now();
    let outcome = Trainer::new(&run, train)?
        .with_eval(eval)
        .with_process_group(group.clone())
        .fit(gpt, &device)?;
    if !main {
        return Ok(());
    }
    if let Some(step) = outcome.resumed_from {
        println!("resumed from step {step}");
    }
    if let Some((step, metrics)) = &outcome.eval {
        println!("held-out at step {step} (the weights kept): {metrics}");
    }
    println!(
        "trained {} steps in {:.1}s",
        outcome.state.step,
        start.elapsed().as_secs_f64()
    );
    let gpt = outcome.model;

    match &text {
        None => {
            let accuracy =
                kiln::recipe::addition_accuracy(&gpt, args.accuracy_problems, run.trainer.seed)?;
            println!("held-out accuracy: {accuracy:.4}");
        }
        Some((tokenizer, starts)) => {
            for (i, &first) in starts.iter().enumerate() {
                let config = GenerateConfig::new()
                    .with_max_new_tokens(run.model.block_size - 1)
                    .with_do_sample(true)
                    .with_temperature(0.8)
                    .with_top_k(Some(20))
                    .with_seed(run.trainer.seed + i as u64);
                let out = gpt.generate(&[vec![first]], &config)?;
                println!("--- sample {} ---\n{}", i + 1, tokenizer.decode(&out[0])?);
            }
        }
    }
    if let Some(dir) = &args.save {
        kiln::saved::save(
            output(dir, args.force),
            &gpt,
            &run.model,
            text.as_ref().map(|(t, _)| t),
        )?;
        println!("saved to {}", dir.display());
    }
    if let Some(dir) = &args.export_hf {
        let out = output(dir, args.force);
        kiln::model::hf::save_pretrained(&gpt, out.clone())?;
        if let Some((tokenizer, _)) = &text {
            out.write("tokenizer.json", tokenizer.to_json()?.as_bytes())?;
        }
        println!("exported for transformers to {}", dir.display());
    }
    println!("params_sha256: {}", params_sha256(&gpt));
    Ok(())
}

/// SHA-256 over every parameter's bytes, in module order.
fn params_sha256(gpt: &Gpt) -> String {
    struct Hash(Sha256);
    impl ModuleVisitor for Hash {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.0.update(param.val().to_data().as_bytes());
        }
    }
    let mut hash = Hash(Sha256::new());
    gpt.visit(&mut hash);
    hash.0
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
