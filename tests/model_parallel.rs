//! Tensor and pipeline parallelism against one process holding the same weights. Each test
//! runs this binary's ignored `child` test under `mpirun` (see `common`); every rank also
//! builds the whole model and checks its own part against it. They need the `mpi` feature and
//! Open MPI (`cargo test --release --features mpi --test model_parallel`); without them each
//! test says loudly that it was skipped.

mod common;

use burn::data::dataset::InMemDataset;
use burn::module::{ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use common::{CHILD, OUT, assert_success, in_process, launch, max_abs_diff};
use kiln::base::{MlmBatch, TrainModel};
use kiln::data::addition::{AdditionBatcher, AdditionDataset, VOCAB_SIZE};
use kiln::data::mlm::{MlmBatcher, MlmConfig, MlmDataset};
use kiln::dist::PipelineSchedule;
use kiln::dist::flat::{Layout, read_params};
use kiln::dist::{
    ModelParallelConfig, ModelSplit, ParallelModel, ProcessGrid, ProcessGroup, TensorSplit,
};
use kiln::model::bert::{BertConfig, BertForMaskedLm, BertInput};
use kiln::optim::{AdamWConfig, OptimizerConfig, ScheduleConfig};
use kiln::prelude::*;
use kiln::train::checkpoint::CheckpointDir;
use kiln::train::param_ids::stable_param_ids;
use kiln::train::{BatchSource, RunConfig, Trainer, TrainerConfig};
use rand::Rng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What a child does: read the scenario and run it on this rank.
#[test]
#[ignore = "a rank of the multi-process tests: they run it under mpirun"]
fn child() {
    let scenario = std::env::var(CHILD).expect("run by the model_parallel tests under mpirun");
    let world = ProcessGroup::from_env().expect("a process group");
    let shape = |t: usize, p: usize| {
        ModelParallelConfig::new()
            .with_tensor_parallel(t)
            .with_pipeline_parallel(p)
    };
    let n = world.size();
    match scenario.as_str() {
        "tensor_gpt" => tensor_parallel_matches(world, shape(n, 1), gpt_case, true),
        "tensor_llama" => tensor_parallel_matches(world, shape(n, 1), llama_case, true),
        "tensor_bert" => tensor_parallel_matches(world, shape(n, 1), bert_case, false),
        "gather_pipeline" => gathered_whole(world, shape(1, n)),
        "gather_grid" => gathered_whole(world, shape(2, n / 2)),
        "train" => train_child(world),
        "resume" => resume_child(world),
        "train_bert" => bert_child(world),
        other => panic!("unknown scenario {other}"),
    }
}

fn gpt_config() -> GptConfig {
    GptConfig::new(37)
        .with_block_size(12)
        .with_n_layer(4)
        .with_n_head(4)
        .with_d_model(32)
        .with_d_ff(Some(48))
}

/// The whole model, the same on every rank (the device is seeded), with kiln's stable ids.
fn whole_gpt(seed: u64, device: &Device) -> Gpt {
    device.seed(seed);
    stable_param_ids(gpt_config().init(device).unwrap())
}

/// Ids in range, the same on every rank.
fn ids(batch: usize, seq: usize, vocab: usize, salt: usize, device: &Device) -> Tensor<2, Int> {
    let values: Vec<i64> = (0..batch * seq)
        .map(|i| ((i * 7 + salt * 13 + i * i) % vocab) as i64)
        .collect();
    Tensor::from_data(TensorData::new(values, [batch, seq]), device)
}

/// One batch through a model: its logits and its loss.
type Run<M> = Box<dyn Fn(&M) -> (Tensor<3>, Tensor<1>)>;

/// A model and the batch it is checked on.
type Case<M> = fn(&Device) -> (M, Run<M>);

fn gpt_case(device: &Device) -> (Gpt, Run<Gpt>) {
    let batch = LmBatch {
        inputs: ids(3, 10, 37, 1, device),
        targets: ids(3, 10, 37, 2, device),
    };
    let run = move |model: &Gpt| {
        let logits = model.forward(batch.inputs.clone()).unwrap();
        let loss = model.forward_step(&batch).unwrap().loss;
        (logits, loss)
    };
    (whole_gpt(7, device), Box::new(run))
}

/// A Llama-shaped decoder: RMSNorm, rotary positions with llama3 scaling, SwiGLU, 4 query
/// heads of width 10 over 2 key/value heads (each tensor-parallel rank of 2 keeps one whole),
/// q/k/v biases (Qwen2's), an untied head.
fn llama_config(vocab: usize) -> GptConfig {
    GptConfig::new(vocab)
        .with_block_size(12)
        .with_n_layer(4)
        .with_n_head(4)
        .with_n_kv_head(Some(2))
        .with_head_dim(Some(10))
        .with_d_model(32)
        .with_d_ff(Some(48))
        .with_positions(PositionEncoding::Rotary)
        .with_rope_scaling(Some(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8,
        }))
        .with_ff_kind(FeedForwardKind::SwiGlu)
        .with_norm(Some(NormKind::RmsNorm))
        .with_bias(false)
        .with_qkv_bias(Some(true))
        .with_tie_embeddings(false)
}

fn llama_case(device: &Device) -> (Gpt, Run<Gpt>) {
    let batch = LmBatch {
        inputs: ids(3, 10, 37, 1, device),
        targets: ids(3, 10, 37, 2, device),
    };
    let run = move |model: &Gpt| {
        let logits = model.forward(batch.inputs.clone()).unwrap();
        let loss = model.forward_step(&batch).unwrap().loss;
        (logits, loss)
    };
    device.seed(9);
    let model = stable_param_ids(llama_config(37).init(device).unwrap());
    (model, Box::new(run))
}

fn bert_case(device: &Device) -> (BertForMaskedLm, Run<BertForMaskedLm>) {
    device.seed(11);
    let config = BertConfig::new(29)
        .with_hidden_size(24)
        .with_num_hidden_layers(2)
        .with_num_attention_heads(4)
        .with_intermediate_size(40)
        .with_max_position_embeddings(16)
        .with_hidden_dropout_prob(0.0)
        .with_attention_probs_dropout_prob(0.0);
    let model = stable_param_ids(config.init_masked_lm(device).unwrap());
    let input_ids = ids(2, 9, 29, 3, device);
    // The second sequence is padded after 6 tokens; labels on a few real tokens.
    let padding = Tensor::<2, Int>::from_data(
        TensorData::new(
            (0..18).map(|i| i64::from(i >= 15)).collect::<Vec<_>>(),
            [2, 9],
        ),
        device,
    )
    .equal_elem(1);
    let labels: Vec<i64> = (0..18)
        .map(|i| {
            if i % 3 == 0 && i < 15 {
                (i % 29) as i64
            } else {
                -100
            }
        })
        .collect();
    let batch = MlmBatch {
        input_ids: input_ids.clone(),
        token_type_ids: input_ids.zeros_like(),
        padding_mask: padding,
        labels: Tensor::from_data(TensorData::new(labels, [2, 9]), device),
    };
    let run = move |model: &BertForMaskedLm| {
        let input = BertInput {
            input_ids: batch.input_ids.clone(),
            token_type_ids: Some(batch.token_type_ids.clone()),
            attention_mask: Some(batch.padding_mask.clone().bool_not().int()),
        };
        let logits = model.forward(input).unwrap();
        let loss = model.forward_step(&batch).unwrap().loss;
        (logits, loss)
    };
    (model, Box::new(run))
}

/// Largest difference between two tensors, relative to the larger's scale (at least 1).
fn relative_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let values = |t: Tensor<D>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
    let (a, b) = (values(a), values(b));
    let scale = a.iter().chain(&b).fold(1.0f32, |m, x| m.max(x.abs()));
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
        / scale
}

/// Tensor-parallel logits and every gradient of this rank's shard within 1e-5 of the whole
/// model's on one process.
fn tensor_parallel_matches<M: ParallelModel + TrainModel<B> + Clone, B>(
    world: ProcessGroup,
    shape: ModelParallelConfig,
    case: Case<M>,
    vocab_split: bool,
) where
    B: kiln::base::Batch,
{
    let device = Device::flex().autodiff();
    let (whole, run) = case(&device);
    let grid = ProcessGrid::new(world, &shape).unwrap();
    let mp = ModelSplit::new(grid, whole.num_blocks()).unwrap();
    let part = mp.partition(whole.clone()).unwrap();

    let (whole_logits, whole_loss) = run(&whole);
    let (part_logits, part_loss) = run(&part);
    // Under the vocabulary split a rank's logits are its slice of the vocabulary.
    let (whole_logits, part_logits) = if vocab_split {
        let [.., vocab] = whole_logits.dims();
        let rows = part_logits.dims()[2];
        let start = mp.grid().tensor().rank() * rows;
        let real = rows.min(vocab - start);
        (
            whole_logits.narrow(2, start, real),
            part_logits.narrow(2, 0, real),
        )
    } else {
        (whole_logits, part_logits)
    };
    let logits_diff = relative_diff(whole_logits, part_logits);
    assert!(logits_diff <= 1e-5, "logits differ by {logits_diff:e}");
    let whole_grads = GradientsParams::from_grads(whole_loss.clone().backward(), &whole);
    let part_grads = GradientsParams::from_grads(part_loss.clone().backward(), &part);
    let loss_diff = relative_diff(whole_loss, part_loss);
    assert!(loss_diff <= 1e-6, "losses differ by {loss_diff:e}");

    let mut compare = CompareGrads {
        splits: part.tensor_splits().into_iter().collect(),
        rank: mp.grid().tensor().rank(),
        whole: &whole_grads,
        part: &part_grads,
        checked: 0,
        split: 0,
        vocab: 0,
    };
    part.visit(&mut compare);
    assert!(compare.split > 0, "no parameter was split");
    assert_eq!(
        compare.vocab > 0,
        vocab_split,
        "the vocabulary is split when the case says so"
    );
    assert!(
        compare.checked > compare.split,
        "replicated parameters were checked"
    );
}

struct CompareGrads<'a> {
    splits: HashMap<ParamId, TensorSplit>,
    rank: usize,
    whole: &'a GradientsParams,
    part: &'a GradientsParams,
    checked: usize,
    split: usize,
    /// Parameters split along the vocabulary.
    vocab: usize,
}

impl ModuleVisitor for CompareGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let whole = self.whole.get::<D>(param.id);
        let part = self.part.get::<D>(param.id);
        let (Some(whole), Some(part)) = (whole, part) else {
            assert!(
                self.part.get::<D>(param.id).is_none(),
                "a gradient the whole model lacks: {:?}",
                param.id
            );
            return;
        };
        let (expected, part) = match self.splits.get(&param.id) {
            Some(TensorSplit::Dim(dim)) => {
                self.split += 1;
                let len = part.dims()[*dim];
                (whole.narrow(*dim, self.rank * len, len), part)
            }
            Some(&TensorSplit::Padded { dim, len }) => {
                // The vocabulary: this rank's rows, then padding that gets no gradient.
                self.split += 1;
                self.vocab += 1;
                let rows = part.dims()[dim];
                let start = self.rank * rows;
                let real = rows.min(len - start);
                if rows > real {
                    let padding = part.clone().narrow(dim, real, rows - real);
                    let largest: f32 = padding.abs().max().into_scalar();
                    assert_eq!(largest, 0.0, "the padding rows get no gradient");
                }
                (whole.narrow(dim, start, real), part.narrow(dim, 0, real))
            }
            Some(TensorSplit::FirstRank) | None => (whole, part),
        };
        let diff = relative_diff(expected, part);
        assert!(
            diff <= 1e-5,
            "gradient of {:?} differs by {diff:e}",
            param.id
        );
        self.checked += 1;
    }
}

/// Every parameter of a module on the host, by id.
fn host_params<M: Module>(model: &M) -> HashMap<ParamId, (Vec<usize>, Vec<f32>)> {
    struct Host(HashMap<ParamId, (Vec<usize>, Vec<f32>)>);
    impl ModuleVisitor for Host {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let t = param.val();
            let values = t.to_data().convert::<f32>().try_to_vec::<f32>().unwrap();
            self.0.insert(param.id, (t.dims().to_vec(), values));
        }
    }
    let mut host = Host(HashMap::new());
    model.visit(&mut host);
    host.0
}

/// Cut into parts and gathered again, the whole model comes back bit for bit on rank 0
/// (into a template of other weights).
fn gathered_whole(world: ProcessGroup, shape: ModelParallelConfig) {
    let device = Device::flex();
    let whole = whole_gpt(7, &device);
    let template = world.is_main().then(|| whole_gpt(8, &device));
    let grid = ProcessGrid::new(world.clone(), &shape).unwrap();
    let mp = ModelSplit::new(grid, whole.num_blocks()).unwrap();
    let part = mp.partition(whole.clone()).unwrap();
    // Each stage holds its blocks only.
    let blocks = mp.part().stage.blocks.clone();
    assert_eq!(part.blocks.len(), blocks.len());
    let gathered = mp.gather(&part, template).unwrap();
    assert_eq!(gathered.is_some(), world.is_main());
    if let Some(gathered) = gathered {
        assert_eq!(host_params(&gathered), host_params(&whole));
    }
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "a multi-process test: build with `--features mpi` (and install mpirun)"
)]
fn tensor_parallel_gpt_matches_one_process() {
    skip_unless_mpi!();
    for ranks in [2, 4] {
        let output = launch(ranks, false, "tensor_gpt", &[]);
        assert_success(&output, &format!("tensor-parallel GPT on {ranks} ranks"));
    }
    // Grouped-query attention: 2 key/value heads, one whole per rank.
    let output = launch(2, false, "tensor_llama", &[]);
    assert_success(&output, "tensor-parallel Llama on 2 ranks");
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "a multi-process test: build with `--features mpi` (and install mpirun)"
)]
fn tensor_parallel_bert_matches_one_process() {
    skip_unless_mpi!();
    let output = launch(2, false, "tensor_bert", &[]);
    assert_success(&output, "tensor-parallel BERT on 2 ranks");
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "a multi-process test: build with `--features mpi` (and install mpirun)"
)]
fn parts_gather_into_the_whole_model() {
    skip_unless_mpi!();
    for (ranks, scenario) in [
        (2, "gather_pipeline"),
        (4, "gather_pipeline"),
        (4, "gather_grid"),
    ] {
        let output = launch(ranks, false, scenario, &[]);
        assert_success(&output, &format!("{scenario} on {ranks} ranks"));
    }
}

// ------------------------------------------------------------------------------------------
// Training: the Trainer on a grid against one process.

/// How a training job is cut, and which model it trains.
#[derive(Clone, Copy, Debug)]
struct Grid {
    tensor: usize,
    pipeline: usize,
    schedule: PipelineSchedule,
    micro_batches: usize,
    /// A Llama-shaped decoder ([`llama_config`]) instead of GPT-2's.
    llama: bool,
}

impl Grid {
    fn env(&self, out: &Path) -> Vec<(&'static str, String)> {
        vec![
            ("KILN_MP_TENSOR", self.tensor.to_string()),
            ("KILN_MP_PIPELINE", self.pipeline.to_string()),
            ("KILN_MP_SCHEDULE", format!("{:?}", self.schedule)),
            ("KILN_MP_MICRO", self.micro_batches.to_string()),
            ("KILN_MP_LLAMA", self.llama.to_string()),
            (OUT, out.display().to_string()),
        ]
    }

    fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).unwrap();
        Self {
            tensor: var("KILN_MP_TENSOR").parse().unwrap(),
            pipeline: var("KILN_MP_PIPELINE").parse().unwrap(),
            schedule: match var("KILN_MP_SCHEDULE").as_str() {
                "GPipe" => PipelineSchedule::GPipe,
                _ => PipelineSchedule::OneFOneB,
            },
            micro_batches: var("KILN_MP_MICRO").parse().unwrap(),
            llama: var("KILN_MP_LLAMA").parse().unwrap(),
        }
    }
}

/// A 4-block GPT (GPT-2's or a Llama-shaped one) for the addition task; the same on every
/// rank.
fn addition_gpt(llama: bool, device: &Device) -> Gpt {
    device.seed(5);
    let config = if llama {
        llama_config(VOCAB_SIZE)
    } else {
        GptConfig::new(VOCAB_SIZE)
            .with_block_size(12)
            .with_n_layer(4)
            .with_n_head(4)
            .with_d_model(32)
    };
    config.init(device).unwrap()
}

/// 20 AdamW steps (clipped on the global norm) on `grid`, checkpointed into `checkpoints`;
/// the trained model (whole on rank 0) and its held-out loss.
fn train(world: &ProcessGroup, grid: Grid, checkpoints: &Path) -> (Gpt, f64) {
    let (model, loss, _) = train_from(world, grid, checkpoints, 20, false);
    (model, loss)
}

/// [`train`] with checkpoints every `checkpoint_every` steps, resuming from the newest one;
/// also the step it resumed from.
fn train_from(
    world: &ProcessGroup,
    grid: Grid,
    checkpoints: &Path,
    checkpoint_every: usize,
    resume: bool,
) -> (Gpt, f64, Option<usize>) {
    let device = Device::flex();
    let trainer = trainer_config(grid)
        .with_checkpoint_every(checkpoint_every)
        .with_resume(resume)
        .with_checkpoint_dir(Some(checkpoints.display().to_string()));
    let run = adamw_run(trainer);
    let data = BatchSource::new(AdditionDataset::train(), AdditionBatcher);
    let eval = BatchSource::new(AdditionDataset::held_out(), AdditionBatcher);
    let outcome = Trainer::new(&run, data)
        .unwrap()
        .with_eval(eval)
        .with_process_group(world.clone())
        .fit(addition_gpt(grid.llama, &device), &device)
        .unwrap();
    let loss = outcome.last_eval.unwrap().1.loss;
    (outcome.model, loss, outcome.resumed_from)
}

/// 20 steps of `grid.micro_batches` micro-batches of 8, clipped at 0.5, cut by `grid`.
fn trainer_config(grid: Grid) -> TrainerConfig {
    TrainerConfig::new()
        .with_max_steps(Some(20))
        .with_batch_size(8)
        .with_grad_accumulation(grid.micro_batches)
        .with_clip_grad_norm(Some(0.5))
        .with_eval_items(Some(64))
        .with_quiet(true)
        .with_model_parallel(
            ModelParallelConfig::new()
                .with_tensor_parallel(grid.tensor)
                .with_pipeline_parallel(grid.pipeline)
                .with_schedule(grid.schedule),
        )
}

fn adamw_run(trainer: TrainerConfig) -> RunConfig<(), ()> {
    RunConfig::new(
        (),
        (),
        OptimizerConfig::from(AdamWConfig::new()),
        ScheduleConfig::Constant(3e-3),
        trainer,
    )
}

fn params<M: Module>(model: &M) -> Vec<f32> {
    read_params(model, &Layout::of(model)).unwrap()
}

fn train_child(world: ProcessGroup) {
    let grid = Grid::from_env();
    let out = PathBuf::from(std::env::var(OUT).unwrap());
    let (model, loss) = train(&world, grid, &out.with_extension("checkpoints"));
    if world.is_main() {
        let bytes: Vec<u8> = params(&model)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        std::fs::write(&out, bytes).unwrap();
        std::fs::write(out.with_extension("loss"), loss.to_string()).unwrap();
    }
}

/// Trains on `ranks` ranks cut by `grid`: rank 0's whole model, its held-out loss, and the
/// checkpoint folder the job wrote.
fn train_in_parallel(ranks: usize, tcp: bool, grid: Grid, dir: &Path) -> (Vec<f32>, f64, PathBuf) {
    let out = dir.join(format!(
        "{}x{}-{:?}",
        grid.tensor, grid.pipeline, grid.schedule
    ));
    let output = launch(ranks, tcp, "train", &grid.env(&out));
    assert_success(&output, &format!("training {grid:?} on {ranks} ranks"));
    let values = std::fs::read(&out)
        .unwrap()
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let loss = std::fs::read_to_string(out.with_extension("loss"))
        .unwrap()
        .parse()
        .unwrap();
    (values, loss, out.with_extension("checkpoints"))
}

/// A run on a grid matches one process within 1e-4 after 20 AdamW steps, and the checkpoint it
/// wrote (the whole model, gathered) loads in one process with the same weights and logits.
/// `tcp` forces the transport used between machines. Returns the run's parameters.
fn grid_matches_one_process(ranks: usize, tcp: bool, grid: Grid) -> Vec<f32> {
    let _alone = in_process();
    let dir = tempfile::tempdir().unwrap();
    let single = Grid {
        tensor: 1,
        pipeline: 1,
        ..grid
    };
    let (reference, reference_loss) =
        train(&ProcessGroup::single(), single, &dir.path().join("one"));
    let reference = params(&reference);
    let initial = params(&addition_gpt(grid.llama, &Device::flex()));
    assert!(
        max_abs_diff(&initial, &reference) > 1e-2,
        "training moved the weights"
    );

    let (values, loss, checkpoints) = train_in_parallel(ranks, tcp, grid, dir.path());
    let diff = max_abs_diff(&values, &reference);
    eprintln!("{grid:?} on {ranks} ranks: parameters within {diff:e} of one process");
    assert!(diff <= 1e-4, "{grid:?}: parameters differ by {diff:e}");
    assert!(
        (loss - reference_loss).abs() <= 1e-4,
        "{grid:?}: held-out loss {loss} vs {reference_loss}"
    );

    // The checkpoint: the whole model, loadable without any grid.
    let (checkpoint, skipped) = CheckpointDir::new(&checkpoints, 3)
        .latest()
        .unwrap()
        .unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    let device = Device::flex();
    let loaded = checkpoint
        .load_model(addition_gpt(grid.llama, &device))
        .unwrap();
    assert_eq!(
        params(&loaded),
        values,
        "the checkpoint holds the returned model"
    );
    let ids = ids(4, 12, VOCAB_SIZE, 5, &device);
    let template = addition_gpt(grid.llama, &device);
    let layout = Layout::of(&template);
    let expected = kiln::dist::flat::write_params(template, &layout, &reference, |_| true);
    let logits_diff = relative_diff(
        loaded.forward(ids.clone()).unwrap(),
        expected.forward(ids).unwrap(),
    );
    assert!(
        logits_diff <= 1e-4,
        "{grid:?}: logits differ by {logits_diff:e}"
    );
    values
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "a multi-process test: build with `--features mpi` (and install mpirun)"
)]
fn tensor_parallel_training_matches_one_process() {
    skip_unless_mpi!();
    let _ = grid_matches_one_process(
        2,
        false,
        Grid {
            tensor: 2,
            pipeline: 1,
            schedule: PipelineSchedule::OneFOneB,
            micro_batches: 2,
            llama: false,
        },
    );
}

/// Two stages of a pipeline, four micro-batches: GPipe and 1F1B match one process accumulating
/// four, and each other bit for bit (the same passes in another order).
#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "a multi-process test: build with `--features mpi` (and install mpirun)"
)]
fn pipeline_training_matches_one_process() {
    skip_unless_mpi!();
    let grid = |schedule| Grid {
        tensor: 1,
        pipeline: 2,
        schedule,
        micro_batches: 4,
        llama: false,
    };
    let gpipe = grid_matches_one_process(2, false, grid(PipelineSchedule::GPipe));
    let one_f_one_b = grid_matches_one_process(2, false, grid(PipelineSchedule::OneFOneB));
    assert!(
        gpipe == one_f_one_b,
        "GPipe and 1F1B differ by {:e}",
        max_abs_diff(&gpipe, &one_f_one_b)
    );
}

/// The 3-D grid's model-parallel plane: 2 tensor-parallel ranks × 2 stages (4 processes, over
/// shared memory with GPT-2, and over TCP, the transport between machines, with a Llama-shaped
/// decoder: grouped-query attention with one key/value head per tensor-parallel rank, RMSNorm,
/// SwiGLU, rotary positions), and 4 stages with 8 micro-batches.
#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "a multi-process test: build with `--features mpi` (and install mpirun)"
)]
fn tensor_and_pipeline_grid_matches_one_process() {
    skip_unless_mpi!();
    for (tensor, pipeline, micro_batches, tcp, llama) in [
        (2, 2, 4, false, false),
        (2, 2, 4, true, true),
        (1, 4, 8, false, false),
    ] {
        let _ = grid_matches_one_process(
            4,
            tcp,
            Grid {
                tensor,
                pipeline,
                schedule: PipelineSchedule::OneFOneB,
                micro_batches,
                llama,
            },
        );
    }
}

/// A run on a grid stopped at step 10 and resumed (its checkpoint: the whole model, each
/// rank's optimizer state) ends with the uninterrupted run's weights, bit for bit.
fn resume_child(world: ProcessGroup) {
    let grid = Grid::from_env();
    let out = PathBuf::from(std::env::var(OUT).unwrap());
    let checkpoints = out.with_extension("checkpoints");
    let (full, _, _) = train_from(&world, grid, &checkpoints, 10, false);
    world.barrier().unwrap();
    if world.is_main() {
        std::fs::remove_dir_all(checkpoints.join("step-00000020")).unwrap();
    }
    world.barrier().unwrap();
    let (resumed, _, from) = train_from(&world, grid, &checkpoints, 10, true);
    assert_eq!(from, Some(10), "resumed from the step-10 checkpoint");
    if world.is_main() {
        let (full, resumed) = (params(&full), params(&resumed));
        assert!(
            full == resumed,
            "{grid:?}: the resumed run differs by {:e}",
            max_abs_diff(&full, &resumed)
        );
        std::fs::write(&out, b"resumed").unwrap();
    }
}

#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "a multi-process test: build with `--features mpi` (and install mpirun)"
)]
fn a_model_parallel_run_resumes_exactly() {
    skip_unless_mpi!();
    let dir = tempfile::tempdir().unwrap();
    let grid = Grid {
        tensor: 2,
        pipeline: 2,
        schedule: PipelineSchedule::OneFOneB,
        micro_batches: 2,
        llama: false,
    };
    let out = dir.path().join("resume");
    let output = launch(4, false, "resume", &grid.env(&out));
    assert_success(&output, "a 2 x 2 run resumed from step 10");
    assert_eq!(std::fs::read(&out).unwrap(), b"resumed");
}

/// BERT's masked-LM model (its word embeddings tied to the decoder) on random sequences.
fn bert_training(world: &ProcessGroup, grid: Grid) -> Vec<f32> {
    let device = Device::flex();
    device.seed(3);
    let vocab = 40;
    let model = BertConfig::new(vocab)
        .with_hidden_size(32)
        .with_num_hidden_layers(4)
        .with_num_attention_heads(4)
        .with_intermediate_size(64)
        .with_max_position_embeddings(16)
        .with_hidden_dropout_prob(0.0)
        .with_attention_probs_dropout_prob(0.0)
        .init_masked_lm(&device)
        .unwrap();
    let mut rng = kiln::base::seed::rng(9);
    let sequences: Vec<Vec<u32>> = (0..400)
        .map(|i| {
            let len = 6 + i % 7;
            (0..len)
                .map(|_| rng.random_range(4..vocab as u32))
                .collect()
        })
        .collect();
    let masked = |seed| {
        let config = MlmConfig::new(vocab, 3, vec![0, 1, 2, 3]).with_seed(seed);
        MlmDataset::new(InMemDataset::new(sequences.clone()), config).unwrap()
    };
    let data = BatchSource::new(masked(1), MlmBatcher::new(0));
    let eval = BatchSource::new(masked(2), MlmBatcher::new(0));
    let outcome = Trainer::new(&adamw_run(trainer_config(grid)), data)
        .unwrap()
        .with_eval(eval)
        .with_process_group(world.clone())
        .fit(model, &device)
        .unwrap();
    params(&outcome.model)
}

fn bert_child(world: ProcessGroup) {
    let values = bert_training(&world, Grid::from_env());
    if world.is_main() {
        let out = PathBuf::from(std::env::var(OUT).unwrap());
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(out, bytes).unwrap();
    }
}

/// BERT on 2 stages and on a 2 × 2 grid: the masked-LM decoder's tied word embeddings are
/// summed between the first and last stage; 20 steps within 1e-4 of one process.
#[test]
#[cfg_attr(
    not(feature = "mpi"),
    ignore = "a multi-process test: build with `--features mpi` (and install mpirun)"
)]
fn bert_on_a_grid_matches_one_process() {
    skip_unless_mpi!();
    let _alone = in_process();
    let one = Grid {
        tensor: 1,
        pipeline: 1,
        schedule: PipelineSchedule::OneFOneB,
        micro_batches: 2,
        llama: false,
    };
    let reference = bert_training(&ProcessGroup::single(), one);
    let dir = tempfile::tempdir().unwrap();
    for (ranks, tensor, pipeline) in [(2, 1, 2), (4, 2, 2)] {
        let grid = Grid {
            tensor,
            pipeline,
            ..one
        };
        let out = dir.path().join(format!("bert-{tensor}x{pipeline}"));
        let output = launch(ranks, false, "train_bert", &grid.env(&out));
        assert_success(&output, &format!("BERT on {grid:?}"));
        let values: Vec<f32> = std::fs::read(&out)
            .unwrap()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let diff = max_abs_diff(&values, &reference);
        eprintln!("BERT {grid:?}: parameters within {diff:e} of one process");
        assert!(diff <= 1e-4, "BERT {grid:?}: parameters differ by {diff:e}");
    }
}
