//! Fine-tune a HuggingFace checkpoint with LoRA, and get a peft adapter and a merged model:
//!
//! ```text
//! cargo run --release --example finetune -- --model-dir HF_DIR --data FILE \
//!     [--lora-r 8 --lora-alpha 16 --lora-dropout 0.05 --target q_proj,v_proj] [--rslora] \
//!     [--int8-base] --max-steps N --save-adapter DIR [--merge-export DIR]
//! cargo run --release --example finetune -- --help
//! ```
//!
//! `HF_DIR` is a GPT-2 or Llama-family folder (`config.json`, safetensors weights,
//! `tokenizer.json`). `FILE` is a text file (packed into windows of `--block` tokens, the loss on
//! every token) or a `.jsonl` of `{"prompt": ..., "completion": ...}` lines (one sequence per
//! pair, the loss on the completion only; `kiln::data::completion`); the last `--val-fraction`
//! is held out. The adapters are configured as HF peft's `LoraConfig` (`kiln::model::lora`), or
//! start from a peft adapter folder (`--adapter`). The base is frozen: only the adapters train,
//! get optimizer state and go into checkpoints. `--int8-base` quantizes the base layers to int8
//! (QLoRA's idea with kiln's int8: the base in a quarter of its f32 memory).
//!
//! It prints peft's `print_trainable_parameters` line and the held-out loss before and after,
//! and writes the adapter (`--save-adapter`: `PeftModel.from_pretrained(base, DIR)` loads it)
//! and the base with the adapters merged in (`--merge-export`: a transformers folder with the
//! tokenizer). The run is one `RunConfig` (`--print-config`, `--config`): `kiln::recipe::lora`
//! (QLoRA's optimizer settings) with the flags over it; `--run-dir` and `--resume` continue a
//! killed run exactly, as for any kiln run. At the end it prints `adapter_sha256:`, a hash of
//! every trainable value.

use kiln::base::OutputDir;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::data::dataset::Dataset;
use burn::module::{Module, ModuleVisitor, Param};
use clap::Parser;
use kiln::compress::{ActivationQuant, QuantConfig, quantize_lora_base};
use kiln::data::{CompletionBatcher, CompletionDataset};
use kiln::dist::flat::Layout;
use kiln::model::hf::peft::{load_adapter, save_adapter};
use kiln::model::linear::ToLinear;
use kiln::model::lora::{LoraConfig, LoraLinear, TargetModules};
use kiln::prelude::*;
use kiln::train::evaluate::evaluate;
use sha2::{Digest, Sha256};

/// Fine-tune a HuggingFace decoder with LoRA adapters.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The base model: a HuggingFace folder (GPT-2, Llama, Qwen2, Mistral) with tokenizer.json.
    #[arg(long, value_name = "HF_DIR")]
    model_dir: PathBuf,
    /// Training data: a text file, or a .jsonl of {"prompt", "completion"} lines.
    #[arg(long, value_name = "FILE")]
    data: PathBuf,
    /// Start from this peft adapter folder (its config replaces the --lora-* flags).
    #[arg(long, value_name = "DIR")]
    adapter: Option<PathBuf>,
    /// The adapters' rank (peft's `r`).
    #[arg(long)]
    lora_r: Option<usize>,
    /// The scaling numerator (peft's `lora_alpha`).
    #[arg(long)]
    lora_alpha: Option<f64>,
    /// Dropout on the adapters' input.
    #[arg(long)]
    lora_dropout: Option<f64>,
    /// Modules to adapt, by transformers' names, comma-separated (`q_proj,v_proj`; GPT-2:
    /// `c_attn,c_proj,c_fc`; `all-linear`); default peft's for the model type.
    #[arg(long, value_delimiter = ',')]
    target: Option<Vec<String>>,
    /// rsLoRA's scaling, lora_alpha/√r.
    #[arg(long)]
    rslora: bool,
    /// Modules trained whole beside the adapters (`lm_head`, `embed_tokens`).
    #[arg(long, value_delimiter = ',')]
    modules_to_save: Option<Vec<String>>,
    /// Quantize the frozen base layers to int8 (per-channel weights, dynamic activations).
    #[arg(long)]
    int8_base: bool,
    /// A run config (.json or .toml), complete or partial; the flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the run config (TOML) and exit.
    #[arg(long)]
    print_config: bool,
    /// Optimizer steps.
    #[arg(long, alias = "steps")]
    max_steps: Option<usize>,
    /// Sequences per micro-batch.
    #[arg(long)]
    batch: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    accum: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Tokens per training sequence (at most the model's context).
    #[arg(long)]
    block: Option<usize>,
    /// Fraction of the data held out for the loss before and after.
    #[arg(long)]
    val_fraction: Option<f64>,
    /// Seed of the adapters' initialization, the data order and dropout.
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
    /// Report progress every N steps.
    #[arg(long)]
    log_every: Option<usize>,
    /// Write a checkpoint every N steps.
    #[arg(long)]
    checkpoint_every: Option<usize>,
    /// Run folder: run.json, metrics.jsonl, plot.svg and the checkpoints.
    #[arg(long)]
    run_dir: Option<String>,
    /// Continue from the newest usable checkpoint of --run-dir.
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Start a new run in a folder that holds another run, deleting it.
    #[arg(long)]
    overwrite: bool,
    /// Resume although the data differs from the checkpoint's (fixed or extended on purpose).
    #[arg(long, requires = "resume")]
    allow_data_change: bool,
    /// Write the trained adapter here as a peft adapter folder.
    #[arg(long, value_name = "DIR")]
    save_adapter: Option<PathBuf>,
    /// Write the base with the adapters merged in here, as a transformers folder.
    #[arg(long, value_name = "DIR")]
    merge_export: Option<PathBuf>,
    /// Write --save-adapter and --merge-export into folders that hold files kiln did not write
    /// (they are left alone; same-named ones are replaced). Without it such a folder is refused
    /// before training starts, naming the files.
    #[arg(long)]
    force: bool,
}

/// The output folder `dir`, forced when the user said `--force`.
fn output(dir: &Path, force: bool) -> OutputDir {
    if force {
        OutputDir::forced(dir)
    } else {
        OutputDir::new(dir)
    }
}

/// The model of a fine-tuning run: the base folder and the adapters on it.
#[derive(burn::config::Config, Debug)]
struct FinetuneModel {
    /// The base model's HuggingFace folder.
    model_dir: String,
    /// The adapters.
    lora: LoraConfig,
    /// A peft adapter folder the adapters start from.
    adapter: Option<String>,
    /// Whether the base layers are int8.
    int8_base: bool,
}

/// The data of a fine-tuning run.
#[derive(burn::config::Config, Debug)]
struct FinetuneData {
    /// A text file or a JSONL of prompt–completion pairs.
    path: String,
    /// Tokens per sequence.
    block: usize,
    /// The held-out fraction.
    val_fraction: f64,
}

type FinetuneRun = RunConfig<FinetuneModel, FinetuneData>;

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}

/// The run: QLoRA's recipe, the config file over it, the flags over both.
fn run_config(args: &Args, context: usize) -> kiln::Result<FinetuneRun> {
    let lora = LoraConfig::new()
        .with_r(8)
        .with_lora_alpha(16.0)
        .with_lora_dropout(0.05);
    let model = FinetuneModel::new(args.model_dir.display().to_string(), lora, false);
    let data = FinetuneData::new(args.data.display().to_string(), context.min(256), 0.1);
    let mut run = kiln::recipe::lora(model, data, 2e-4, 200);
    run.trainer = run
        .trainer
        .with_batch_size(8)
        .with_log_every(10)
        .with_eval_every(0);
    if let Some(path) = &args.config {
        run = run.merge_file(path)?;
    }
    let model = &mut run.model;
    model.model_dir = args.model_dir.display().to_string();
    model.int8_base |= args.int8_base;
    if let Some(dir) = &args.adapter {
        model.adapter = Some(dir.display().to_string());
    }
    let lora = &mut model.lora;
    set(&mut lora.r, args.lora_r);
    set(&mut lora.lora_alpha, args.lora_alpha);
    set(&mut lora.lora_dropout, args.lora_dropout);
    lora.use_rslora |= args.rslora;
    if let Some(target) = &args.target {
        lora.target_modules = Some(match target.as_slice() {
            [one] if one.eq_ignore_ascii_case("all-linear") => TargetModules::Pattern(one.clone()),
            names => TargetModules::Names(names.to_vec()),
        });
    }
    set(&mut lora.modules_to_save, args.modules_to_save.clone());
    run.data.path = args.data.display().to_string();
    set(&mut run.data.block, args.block);
    set(&mut run.data.val_fraction, args.val_fraction);
    let t = &mut run.trainer;
    if let Some(steps) = args.max_steps {
        t.max_steps = Some(steps);
    }
    set(&mut t.batch_size, args.batch);
    set(&mut t.grad_accumulation, args.accum);
    set(&mut t.seed, args.seed);
    set(&mut t.precision, args.precision);
    set(&mut t.recompute, args.recompute);
    set(&mut t.log_every, args.log_every);
    set(&mut t.checkpoint_every, args.checkpoint_every);
    if args.run_dir.is_some() {
        t.run_dir = args.run_dir.clone();
    }
    t.resume |= args.resume;
    t.overwrite |= args.overwrite;
    t.allow_data_change |= args.allow_data_change;
    if let Some(lr) = args.lr {
        run.schedule = run.schedule.with_peak_lr(lr)?;
    }
    if run.data.block > context || run.data.block < 2 {
        return Err(kiln::Error::Usage(format!(
            "--block {} is not in 2..={context} (the model's context)",
            run.data.block
        )));
    }
    Ok(run)
}

/// Training and held-out batches from the run's data file.
fn data(
    run: &FinetuneRun,
    tokenizer: &Tokenizer,
) -> kiln::Result<(BatchSource<LmBatch>, BatchSource<LmBatch>, String)> {
    let path = Path::new(&run.data.path);
    let fraction = run.data.val_fraction;
    let jsonl = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"));
    if jsonl {
        let (pairs, report) = CompletionDataset::from_jsonl(path, tokenizer, run.data.block)?;
        let (train, held) = pairs.split_off(fraction);
        let described = format!(
            "{} prompt-completion pairs ({} held out; {} cut to {} tokens, {} skipped)",
            report.kept,
            held.len(),
            report.truncated,
            run.data.block,
            report.skipped
        );
        let tokenizer = tokenizer.fingerprint()?;
        let batches = |d: CompletionDataset| {
            let fingerprint = format!("{} tokenizer {tokenizer}", d.fingerprint());
            BatchSource::new(d, CompletionBatcher).with_fingerprint(fingerprint)
                as BatchSource<LmBatch>
        };
        return Ok((batches(train), batches(held), described));
    }
    let text = kiln::data::read_text_file(path)?;
    let ids = tokenizer.encode(&text)?;
    let held = ((ids.len() as f64 * fraction) as usize).min(ids.len());
    let (train, eval) = ids.split_at(ids.len() - held);
    let block = run.data.block;
    // Too short a split names itself and the flags that change it.
    let windows = |ids: &[u32], split: &str, fix: String| {
        PackedLmDataset::from_tokens(ids.to_vec(), block).map_err(|e| match e {
            kiln::data::DataError::NotEnoughTokens { tokens, needed } => {
                kiln::Error::Usage(format!(
                    "the {split} split of {} has {tokens} tokens, fewer than one window of \
                     {needed} (--block {block} + 1): {fix}",
                    path.display()
                ))
            }
            other => other.into(),
        })
    };
    let train = windows(
        train,
        "training",
        "use more text or a smaller --block".into(),
    )?;
    let eval = windows(
        eval,
        "held-out",
        format!("raise --val-fraction (now {fraction}) or lower --block"),
    )?;
    let described = format!(
        "{} tokens of text in {} windows of {}",
        ids.len(),
        train.len(),
        run.data.block
    );
    let tokenizer = tokenizer.fingerprint()?;
    let fingerprint = |d: &PackedLmDataset| format!("{} tokenizer {tokenizer}", d.fingerprint());
    let (train_fp, eval_fp) = (fingerprint(&train), fingerprint(&eval));
    Ok((
        BatchSource::new(train, LmBatcher).with_fingerprint(train_fp),
        BatchSource::new(eval, LmBatcher).with_fingerprint(eval_fp),
        described,
    ))
}

fn main() -> kiln::Result<()> {
    let args = Args::parse();
    let device = kiln::device::from_flag(args.device.as_deref())?;
    let hf_config = kiln::model::hf::gpt_config_of(&args.model_dir)?;
    let run = run_config(&args, hf_config.block_size)?;
    if args.print_config {
        print!("{}", run.to_toml()?);
        return Ok(());
    }
    // The output folders are checked before training, not after hours of it.
    for dir in args.save_adapter.iter().chain(&args.merge_export) {
        output(dir, args.force).claim(&[])?;
    }
    let tokenizer = Tokenizer::from_file(Path::new(&run.model.model_dir).join("tokenizer.json"))?;
    if tokenizer.vocab_size() > hf_config.vocab_size {
        return Err(kiln::Error::Usage(format!(
            "the tokenizer has {} tokens, more than the model's vocabulary of {}",
            tokenizer.vocab_size(),
            hf_config.vocab_size
        )));
    }
    let (train, eval, described) = data(&run, &tokenizer)?;

    // The model: the base, frozen, with the adapters (new ones drawn from the run's seed, or a
    // peft adapter's).
    device.seed(run.trainer.seed);
    let base = kiln::model::hf::load_pretrained_gpt(&run.model.model_dir, &hf_config, &device)?;
    let (model, lora) = match &run.model.adapter {
        Some(dir) => load_adapter(base, dir)?,
        None => (base.with_lora(&run.model.lora)?, run.model.lora.clone()),
    };
    println!("{described}");
    if run.model.int8_base {
        let int8 = quantize_lora_base(&model, &QuantConfig::new(), ActivationQuant::Dynamic)?;
        // The f32 base goes: the int8 one is the point.
        drop(model);
        finetune(&args, &run, &lora, int8, train, eval, &device)
    } else {
        finetune(&args, &run, &lora, model, train, eval, &device)
    }
}

/// Trains `model` (f32 or int8 base) and writes what the flags ask for.
fn finetune<L>(
    args: &Args,
    run: &FinetuneRun,
    lora: &LoraConfig,
    model: Gpt<LoraLinear<L>>,
    train: BatchSource<LmBatch>,
    eval: BatchSource<LmBatch>,
    device: &Device,
) -> kiln::Result<()>
where
    L: ToLinear + 'static,
{
    let (trainable, total) = model.trainable_parameters();
    println!(
        "trainable params: {trainable} || all params: {total} || trainable%: {:.4}",
        100.0 * trainable as f64 / total.max(1) as f64
    );
    let batch = run.trainer.batch_size;
    let eval_device = device.clone();
    let before = evaluate(&model, &eval, batch, None, &eval_device)?;
    println!("held-out loss before: {:.4}", before.loss);
    let start = Instant::now();
    let outcome = Trainer::new(run, train)?
        .with_eval(eval.clone())
        .fit(model, device)?;
    if let Some(step) = outcome.resumed_from {
        println!("resumed from step {step}");
    }
    println!(
        "trained {} steps in {:.1}s",
        outcome.state.step,
        start.elapsed().as_secs_f64()
    );
    let model = outcome.model;
    let after = evaluate(&model, &eval, batch, None, &eval_device)?;
    println!("held-out loss after: {:.4}", after.loss);
    if let Some(dir) = &args.save_adapter {
        save_adapter(
            &model,
            lora,
            Some(&run.model.model_dir),
            output(dir, args.force),
        )?;
        println!("adapter saved to {}", dir.display());
    }
    if let Some(dir) = &args.merge_export {
        let merged = model.merge_and_unload();
        let out = output(dir, args.force);
        kiln::model::hf::save_pretrained(&merged, out.clone())?;
        let tokenizer = Path::new(&run.model.model_dir).join("tokenizer.json");
        let bytes =
            kiln::base::limits::read_bounded(&tokenizer, &kiln::base::limits::TEXT_FILE_BYTES)?;
        out.write("tokenizer.json", &bytes)?;
        println!("merged model exported to {}", dir.display());
    }
    println!("adapter_sha256: {}", trainable_sha256(&model));
    Ok(())
}

/// SHA-256 over every trainable value, in module order.
fn trainable_sha256<M: Module>(model: &M) -> String {
    struct Hash<'a>(Sha256, &'a Layout, usize);
    impl ModuleVisitor for Hash<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(Some(_)) = self.1.by_visit.get(self.2) {
                self.0.update(param.val().to_data().as_bytes());
            }
            self.2 += 1;
        }
    }
    let layout = Layout::trainable(model);
    let mut hash = Hash(Sha256::new(), &layout, 0);
    model.visit(&mut hash);
    hash.0
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
