//! BERT the way it was meant to be used: masked-LM pre-training on unlabeled text, then
//! fine-tuning a sequence classifier on a few labeled examples.
//!
//! ```text
//! cargo run --release --example train_bert
//! cargo run --release --example train_bert -- --data corpus.txt --classify labeled.jsonl
//! ```
//!
//! The default corpus is generated in code: sentences like `the warm garden helps the kind
//! river`, where every sentiment word of a sentence agrees (all positive or all negative). The
//! classification task is that sentiment. The labeled training set only uses *half* of the
//! sentiment words; the test set only the *other* half. A classifier trained from scratch on the
//! labels has never seen the test words; a pre-trained one has learned from the unlabeled text
//! that `awful` keeps company with `cruel` and `bitter`, and transfers. The example prints the
//! test accuracy of both.
//!
//! With `--data FILE` the masked-LM corpus is a text file (one sequence per line), and with
//! `--classify FILE` (JSONL or CSV with `text` and `label`) the labeled data, split 80/20.
//!
//! Options: `--pretrain-steps N --finetune-steps N --batch N --hidden N --layers N --heads N
//! --seed S --device NAME`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use burn::data::dataset::InMemDataset;
use kiln::data::{
    ClassificationBatcher, ClassificationData, ClassificationDataset, ClassificationExample,
    MlmBatcher, MlmConfig, MlmDataset, Tokenizer, WithSpecialTokens,
};
use kiln::optim::{AdamWConfig, WarmupDecayConfig};
use kiln::prelude::*;
use kiln::train::{BatchSource, EvalMetrics, Trainer, TrainerConfig};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

struct Args {
    data: Option<String>,
    classify: Option<String>,
    pretrain_steps: usize,
    finetune_steps: usize,
    batch: usize,
    hidden: usize,
    layers: usize,
    heads: usize,
    seed: u64,
    device: String,
}

impl Args {
    fn parse() -> Result<Self, String> {
        let mut args = Args {
            data: None,
            classify: None,
            pretrain_steps: 1200,
            finetune_steps: 150,
            batch: 64,
            hidden: 64,
            layers: 2,
            heads: 4,
            seed: 7,
            device: std::env::var(kiln::device::DEVICE_ENV).unwrap_or_else(|_| "flex".into()),
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let value = it.next().ok_or(format!("{flag} needs a value"))?;
            let num = |v: &str| {
                v.parse::<usize>()
                    .map_err(|_| format!("{flag}: `{v}` is not a number"))
            };
            match flag.as_str() {
                "--data" => args.data = Some(value),
                "--classify" => args.classify = Some(value),
                "--pretrain-steps" => args.pretrain_steps = num(&value)?,
                "--finetune-steps" => args.finetune_steps = num(&value)?,
                "--batch" => args.batch = num(&value)?,
                "--hidden" => args.hidden = num(&value)?,
                "--layers" => args.layers = num(&value)?,
                "--heads" => args.heads = num(&value)?,
                "--seed" => args.seed = num(&value)? as u64,
                "--device" => args.device = value,
                other => return Err(format!("unknown argument `{other}`")),
            }
        }
        Ok(args)
    }
}

// ---------------------------------------------------------------------------------------------
// The generated corpus.

const POSITIVE_ADJ: [&str; 8] = [
    "good", "bright", "happy", "warm", "kind", "calm", "sweet", "lovely",
];
const NEGATIVE_ADJ: [&str; 8] = [
    "bad", "dark", "sad", "cold", "cruel", "angry", "bitter", "awful",
];
const POSITIVE_VERB: [&str; 6] = ["loves", "likes", "enjoys", "praises", "helps", "admires"];
const NEGATIVE_VERB: [&str; 6] = ["hates", "fears", "ruins", "blames", "hurts", "mocks"];
const NOUNS: [&str; 10] = [
    "dog", "cat", "day", "house", "song", "garden", "friend", "city", "river", "book",
];

/// A sentence whose sentiment words all agree; `half` picks which half of each word list the
/// sentiment words come from (`None`: any).
fn sentence(rng: &mut StdRng, positive: bool, half: Option<usize>) -> String {
    fn pick<'a>(rng: &mut StdRng, words: &[&'a str], half: Option<usize>) -> &'a str {
        let words = match half {
            Some(h) => &words[h * words.len() / 2..(h + 1) * words.len() / 2],
            None => words,
        };
        words.choose(rng).expect("non-empty")
    }
    let (adj, verb) = if positive {
        (&POSITIVE_ADJ[..], &POSITIVE_VERB[..])
    } else {
        (&NEGATIVE_ADJ[..], &NEGATIVE_VERB[..])
    };
    format!(
        "the {} {} {} the {} {}",
        pick(rng, adj, half),
        NOUNS.choose(rng).expect("non-empty"),
        pick(rng, verb, half),
        pick(rng, adj, half),
        NOUNS.choose(rng).expect("non-empty"),
    )
}

fn labeled(rng: &mut StdRng, n: usize, half: usize) -> Vec<ClassificationExample> {
    (0..n)
        .map(|_| {
            let positive = rng.random_bool(0.5);
            ClassificationExample {
                text: sentence(rng, positive, Some(half)),
                label: positive as usize,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------

fn bert_config(args: &Args, vocab: usize, max_len: usize) -> BertConfig {
    BertConfig::new(vocab)
        .with_hidden_size(args.hidden)
        .with_num_hidden_layers(args.layers)
        .with_num_attention_heads(args.heads)
        .with_intermediate_size(args.hidden * 4)
        .with_max_position_embeddings(max_len)
        .with_hidden_dropout_prob(0.0)
        .with_attention_probs_dropout_prob(0.0)
}

fn trainer_config(args: &Args, steps: usize) -> TrainerConfig {
    TrainerConfig::new()
        .with_max_steps(Some(steps))
        .with_batch_size(args.batch)
        .with_eval_every(steps)
        .with_eval_items(Some(2000))
        .with_log_every((steps / 6).max(1))
        .with_seed(args.seed)
}

/// Masked-LM pre-training: BERT's recipe (AdamW, warmup then linear decay), scaled down.
fn pretrain(
    args: &Args,
    config: &BertConfig,
    tokenizer: &Tokenizer,
    corpus: Vec<Vec<u32>>,
    device: &Device,
) -> Result<BertForMaskedLm, String> {
    let special = tokenizer.bert_special_tokens().map_err(|e| e.to_string())?;
    let split = corpus.len() * 9 / 10;
    let masked = |ids: Vec<Vec<u32>>, seed: u64| {
        let with_special = WithSpecialTokens::new(InMemDataset::new(ids), special.cls, special.sep);
        let mlm = MlmConfig::for_bert(tokenizer.vocab_size(), special, seed);
        MlmDataset::new(with_special, mlm).map_err(|e| e.to_string())
    };
    let train = BatchSource::new(
        masked(corpus[..split].to_vec(), args.seed)?,
        MlmBatcher::new(special.pad),
    );
    let eval = BatchSource::new(
        masked(corpus[split..].to_vec(), args.seed + 1)?,
        MlmBatcher::new(special.pad),
    );
    device.seed(args.seed);
    let model = config.init_masked_lm(device).map_err(|e| e.to_string())?;
    let optimizer = AdamWConfig::new().init(&model).map_err(|e| e.to_string())?;
    let steps = args.pretrain_steps;
    let schedule = WarmupDecayConfig::new(1e-3, steps / 10)
        .with_total_steps(Some(steps))
        .init()
        .map_err(|e| e.to_string())?;
    let outcome = Trainer::new(trainer_config(args, steps), optimizer, schedule, train)
        .map_err(|e| e.to_string())?
        .with_eval(eval)
        .fit(model, device)
        .map_err(|e| e.to_string())?;
    if let Some(EvalMetrics {
        loss,
        accuracy: Some(acc),
        ..
    }) = outcome.last_eval
    {
        println!("masked-LM held-out: loss {loss:.4}, masked-token accuracy {acc:.4}");
    }
    Ok(outcome.model)
}

/// Fine-tunes `model` on `train` and returns the accuracy on `test`.
fn finetune(
    args: &Args,
    model: BertForSequenceClassification,
    tokenizer: &Arc<Tokenizer>,
    train: Vec<ClassificationExample>,
    test: Vec<ClassificationExample>,
    max_len: usize,
    device: &Device,
) -> Result<f64, String> {
    let special = tokenizer.bert_special_tokens().map_err(|e| e.to_string())?;
    let dataset = |examples| {
        ClassificationDataset::new(examples, tokenizer.clone(), max_len).map_err(|e| e.to_string())
    };
    let batch = args.batch.min(train.len());
    let train = BatchSource::new(dataset(train)?, ClassificationBatcher::new(special.pad));
    let test = BatchSource::new(dataset(test)?, ClassificationBatcher::new(special.pad));
    let optimizer = AdamWConfig::new().init(&model).map_err(|e| e.to_string())?;
    let steps = args.finetune_steps;
    let schedule = WarmupDecayConfig::new(5e-4, steps / 10)
        .with_total_steps(Some(steps))
        .init()
        .map_err(|e| e.to_string())?;
    let config = trainer_config(args, steps).with_batch_size(batch);
    let outcome = Trainer::new(config, optimizer, schedule, train)
        .map_err(|e| e.to_string())?
        .with_eval(test)
        .fit(model, device)
        .map_err(|e| e.to_string())?;
    outcome
        .last_eval
        .and_then(|m| m.accuracy)
        .ok_or_else(|| "no evaluation ran".to_string())
}

fn run(args: &Args) -> Result<(), String> {
    let device = kiln::device::from_name(&args.device)
        .map_err(|e| e.to_string())?
        .autodiff();
    let mut rng = StdRng::seed_from_u64(args.seed);
    // Unlabeled text for pre-training, and labeled train/test sets.
    let (corpus_text, train_examples, test_examples) = match (&args.data, &args.classify) {
        (None, None) => {
            let corpus: Vec<String> = (0..20_000)
                .map(|_| {
                    let positive = rng.random_bool(0.5);
                    sentence(&mut rng, positive, None)
                })
                .collect();
            (
                corpus,
                labeled(&mut rng, 200, 0),
                labeled(&mut rng, 1000, 1),
            )
        }
        (Some(data), Some(classify)) => {
            let text = std::fs::read_to_string(data).map_err(|e| format!("{data}: {e}"))?;
            let corpus: Vec<String> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(String::from)
                .collect();
            let mut examples = ClassificationData::load(classify, false)
                .map_err(|e| e.to_string())?
                .examples;
            let cut = examples.len() * 4 / 5;
            let test = examples.split_off(cut);
            (corpus, examples, test)
        }
        _ => return Err("--data and --classify go together".into()),
    };

    let tokenizer =
        Tokenizer::train_wordpiece(corpus_text.iter(), 200, true).map_err(|e| e.to_string())?;
    let tokenizer = Arc::new(tokenizer);
    let corpus: Vec<Vec<u32>> = corpus_text
        .iter()
        .map(|s| tokenizer.encode(s))
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let max_len = corpus.iter().map(Vec::len).max().unwrap_or(0) + 2;
    let config = bert_config(args, tokenizer.vocab_size(), max_len.max(8));
    println!(
        "corpus: {} sequences, WordPiece vocabulary {}; {} labeled training and {} test examples",
        corpus.len(),
        tokenizer.vocab_size(),
        train_examples.len(),
        test_examples.len()
    );

    let start = Instant::now();
    println!("--- masked-LM pre-training ---");
    let mlm = pretrain(args, &config, &tokenizer, corpus, &device)?;
    println!("--- fine-tuning the pre-trained encoder ---");
    device.seed(args.seed + 2);
    let mut classifier = config
        .init_classifier(2, &device)
        .map_err(|e| e.to_string())?;
    let mut encoder = mlm.bert;
    encoder.pooler = classifier.bert.pooler.clone();
    classifier.bert = encoder;
    let pretrained = finetune(
        args,
        classifier,
        &tokenizer,
        train_examples.clone(),
        test_examples.clone(),
        config.max_position_embeddings,
        &device,
    )?;
    println!("--- the same fine-tuning from scratch ---");
    device.seed(args.seed + 2);
    let scratch_model = config
        .init_classifier(2, &device)
        .map_err(|e| e.to_string())?;
    let scratch = finetune(
        args,
        scratch_model,
        &tokenizer,
        train_examples,
        test_examples,
        config.max_position_embeddings,
        &device,
    )?;
    println!("classification test accuracy, pre-trained: {pretrained:.4}");
    println!("classification test accuracy, from scratch: {scratch:.4}");
    println!("total {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}

fn main() -> ExitCode {
    match Args::parse().and_then(|args| run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}
