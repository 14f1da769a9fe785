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
//! `--classify FILE` (JSONL or CSV with `text` and `label`) the labeled data, split 80/20; the
//! classifier has as many classes as the labels name. `--help` lists the options. Both stages
//! train with `kiln::recipe::bert`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use burn::data::dataset::InMemDataset;
use clap::Parser;
use kiln::base::seed;
use kiln::data::{
    ClassificationBatcher, ClassificationData, ClassificationDataset, ClassificationExample,
    MlmBatcher, MlmConfig, MlmDataset, Tokenizer, WithSpecialTokens,
};
use kiln::prelude::*;
use rand::seq::IndexedRandom;
use rand::{Rng, RngCore};

/// Pre-train a BERT with masked LM, then fine-tune a classifier, against one from scratch.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Unlabeled text for pre-training, one sequence per line (with --classify).
    #[arg(long, requires = "classify")]
    data: Option<PathBuf>,
    /// Labeled data (JSONL or CSV with `text` and `label`), split 80/20 (with --data).
    #[arg(long, requires = "data")]
    classify: Option<PathBuf>,
    /// Masked-LM optimizer steps.
    #[arg(long, default_value_t = 1200)]
    pretrain_steps: usize,
    /// Fine-tuning optimizer steps.
    #[arg(long, default_value_t = 150)]
    finetune_steps: usize,
    /// Sequences per batch.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Model width.
    #[arg(long, default_value_t = 64)]
    hidden: usize,
    /// Encoder layers.
    #[arg(long, default_value_t = 2)]
    layers: usize,
    /// Attention heads per layer.
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Seed of the corpus, the weights, the masking and the data order.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Backend; defaults to $KILN_DEVICE, else flex.
    #[arg(long)]
    device: Option<String>,
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
fn sentence(rng: &mut impl RngCore, positive: bool, half: Option<usize>) -> String {
    fn pick<'a>(rng: &mut impl RngCore, words: &[&'a str], half: Option<usize>) -> &'a str {
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

fn labeled(rng: &mut impl RngCore, n: usize, half: usize) -> Vec<ClassificationExample> {
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

/// BERT's recipe (AdamW, warmup then linear decay), scaled down, for `steps` steps.
fn bert_run(args: &Args, config: &BertConfig, peak_lr: f64, steps: usize) -> RunConfig<BertConfig> {
    let mut run = kiln::recipe::bert(config.clone(), (), peak_lr, steps);
    run.trainer = run
        .trainer
        .with_batch_size(args.batch)
        .with_eval_every(steps)
        .with_eval_items(Some(2000))
        .with_log_every((steps / 6).max(1))
        .with_seed(args.seed);
    run
}

/// Masked-LM pre-training.
fn pretrain(
    args: &Args,
    config: &BertConfig,
    tokenizer: &Tokenizer,
    corpus: Vec<Vec<u32>>,
    device: &Device,
) -> kiln::Result<BertForMaskedLm> {
    let special = tokenizer.bert_special_tokens()?;
    let split = corpus.len() * 9 / 10;
    let masked = |ids: Vec<Vec<u32>>, seed: u64| {
        let with_special = WithSpecialTokens::new(InMemDataset::new(ids), special.cls, special.sep);
        let mlm = MlmConfig::for_bert(tokenizer.vocab_size(), special, seed);
        MlmDataset::new(with_special, mlm)
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
    let model = config.init_masked_lm(device)?;
    let run = bert_run(args, config, 1e-3, args.pretrain_steps);
    let outcome = Trainer::new(&run, train)?
        .with_eval(eval)
        .fit(model, device)?;
    if let Some((_, metrics)) = &outcome.eval {
        println!("masked-LM held-out: {metrics} (accuracy: of the masked tokens)");
    }
    Ok(outcome.model)
}

/// Fine-tunes `model` on `train` and returns the accuracy on `test`.
fn finetune(
    args: &Args,
    config: &BertConfig,
    model: BertForSequenceClassification,
    tokenizer: &Arc<Tokenizer>,
    (train, test): (Vec<ClassificationExample>, Vec<ClassificationExample>),
    device: &Device,
) -> kiln::Result<f64> {
    let special = tokenizer.bert_special_tokens()?;
    let max_len = config.max_position_embeddings;
    let dataset = |examples| ClassificationDataset::new(examples, tokenizer.clone(), max_len);
    let batch = args.batch.min(train.len());
    let train = BatchSource::new(dataset(train)?, ClassificationBatcher::new(special.pad));
    let test = BatchSource::new(dataset(test)?, ClassificationBatcher::new(special.pad));
    let mut run = bert_run(args, config, 5e-4, args.finetune_steps);
    run.trainer = run.trainer.with_batch_size(batch);
    let outcome = Trainer::new(&run, train)?
        .with_eval(test)
        .fit(model, device)?;
    outcome
        .eval
        .and_then(|(_, m)| m.accuracy)
        .ok_or_else(|| kiln::Error::Usage("no evaluation ran".into()))
}

fn main() -> kiln::Result<()> {
    let args = Args::parse();
    let device = kiln::device::from_flag(args.device.as_deref())?.autodiff();
    let mut rng = seed::rng(args.seed);
    // Unlabeled text for pre-training, and labeled train/test sets.
    let (corpus_text, train_examples, test_examples) = match (&args.data, &args.classify) {
        (Some(data), Some(classify)) => {
            let text = kiln::data::read_text_file(data)?;
            let corpus: Vec<String> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(String::from)
                .collect();
            let mut examples = ClassificationData::load(classify, false)?.examples;
            let cut = examples.len() * 4 / 5;
            let test = examples.split_off(cut);
            (corpus, examples, test)
        }
        _ => {
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
    };
    // As many classes as the labels name.
    let num_labels = train_examples
        .iter()
        .chain(&test_examples)
        .map(|e| e.label + 1)
        .max()
        .unwrap_or(0)
        .max(2);

    let tokenizer = Arc::new(Tokenizer::train_wordpiece(corpus_text.iter(), 200, true)?);
    let corpus: Vec<Vec<u32>> = corpus_text
        .iter()
        .map(|s| tokenizer.encode(s))
        .collect::<Result<_, _>>()?;
    let max_len = corpus.iter().map(Vec::len).max().unwrap_or(0) + 2;
    let config = bert_config(&args, tokenizer.vocab_size(), max_len.max(8));
    println!(
        "corpus: {} sequences, WordPiece vocabulary {}; {} labeled training and {} test examples, {num_labels} classes",
        corpus.len(),
        tokenizer.vocab_size(),
        train_examples.len(),
        test_examples.len()
    );

    let start = Instant::now();
    println!("--- masked-LM pre-training ---");
    let mlm = pretrain(&args, &config, &tokenizer, corpus, &device)?;
    println!("--- fine-tuning the pre-trained encoder ---");
    device.seed(args.seed + 2);
    let mut classifier = config.init_classifier(num_labels, &device)?;
    let mut encoder = mlm.bert;
    encoder.pooler = classifier.bert.pooler.clone();
    classifier.bert = encoder;
    let data = (train_examples, test_examples);
    let pretrained = finetune(
        &args,
        &config,
        classifier,
        &tokenizer,
        data.clone(),
        &device,
    )?;
    println!("--- the same fine-tuning from scratch ---");
    device.seed(args.seed + 2);
    let scratch_model = config.init_classifier(num_labels, &device)?;
    let scratch = finetune(&args, &config, scratch_model, &tokenizer, data, &device)?;
    println!("classification test accuracy, pre-trained: {pretrained:.4}");
    println!("classification test accuracy, from scratch: {scratch:.4}");
    println!("total {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}
