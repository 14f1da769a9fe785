//! LoRA over an int8 base (issue 22), on the peft Llama fixture: the int8 model computes the
//! f32 model's logits to int8 accuracy, its adapters' gradients point where the f32 ones do, the
//! base weighs a quarter of its f32 bytes, and training the adapters over it lowers the loss.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Device, Int, Tensor, TensorData};
use kiln_compress::{ActivationQuant, QuantConfig, quantize_lora_base};
use kiln_dist::flat::{Layout, read_params};
use kiln_model::gpt::Gpt;
use kiln_model::hf::peft::load_adapter;
use kiln_model::hf::{HfModel, load_pretrained};
use kiln_model::linear::LinearLayer;
use kiln_model::lora::LoraLinear;
use kiln_model::loss::cross_entropy;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// The peft Llama fixture's adapters on its base, the output layer frozen again (the fixture
/// trains it whole, which an int8 layer cannot).
fn lora(device: &Device) -> Gpt<LoraLinear> {
    let HfModel::Llama(base) = load_pretrained(fixture("llama3_gqa"), device).unwrap() else {
        panic!("a Llama fixture")
    };
    let (mut model, _) = load_adapter(base, fixture("lora_llama")).unwrap();
    model.lm_head = model.lm_head.map(|head| head.no_grad());
    model
}

fn ids(device: &Device) -> Tensor<2, Int> {
    let rows: Vec<i64> = (0..2 * 9).map(|i| (i * 7 + 3) % 64).collect();
    Tensor::from_data(TensorData::new(rows, [2, 9]), device)
}

fn loss<L: LinearLayer>(model: &Gpt<LoraLinear<L>>, x: Tensor<2, Int>) -> Tensor<1> {
    let t = x.dims()[1];
    let logits = model.forward(x.clone()).unwrap().narrow(1, 0, t - 1);
    cross_entropy(logits, x.narrow(1, 1, t - 1), None)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[test]
fn adapters_over_an_int8_base_compute_and_train_like_over_f32() {
    let device = Device::flex().autodiff();
    let f32_model = lora(&device);
    let int8 =
        quantize_lora_base(&f32_model, &QuantConfig::new(), ActivationQuant::Dynamic).unwrap();
    let x = ids(&device);

    // Logits to int8 accuracy: a few percent of their size (weights and activations both
    // rounded to 8 bits, in a model of width 32).
    let a = values(f32_model.forward(x.clone()).unwrap());
    let b = values(int8.forward(x.clone()).unwrap());
    let rms = |w: &[f32]| (w.iter().map(|p| p * p).sum::<f32>() / w.len() as f32).sqrt();
    let error: Vec<f32> = a.iter().zip(&b).map(|(p, q)| p - q).collect();
    let relative = rms(&error) / rms(&a);
    eprintln!("int8 logits: relative RMS error {relative:.4}");
    assert!(
        relative < 0.05 && relative > 0.0,
        "relative RMS error {relative}"
    );

    // The adapters' gradients, flattened, point the same way (cosine > 0.99).
    let flat = |g: &GradientsParams, adapters: Vec<(String, &kiln_model::lora::LoraAdapter)>| {
        adapters
            .into_iter()
            .flat_map(|(_, a)| {
                [a.lora_a.id, a.lora_b.id]
                    .into_iter()
                    .flat_map(|id| values(Tensor::<2>::from_inner(g.get::<2>(id).unwrap())))
            })
            .collect::<Vec<f32>>()
    };
    let g32 = GradientsParams::from_grads(loss(&f32_model, x.clone()).backward(), &f32_model);
    let g8 = GradientsParams::from_grads(loss(&int8, x.clone()).backward(), &int8);
    let (u, v) = (flat(&g32, f32_model.adapters()), flat(&g8, int8.adapters()));
    let dot: f32 = u.iter().zip(&v).map(|(p, q)| p * q).sum();
    let norm = |w: &[f32]| w.iter().map(|p| p * p).sum::<f32>().sqrt();
    let cosine = dot / (norm(&u) * norm(&v));
    assert!(cosine > 0.99, "gradient cosine {cosine}");
    assert!(norm(&v) > 0.0);

    // The base: int8 weights a quarter of the f32 ones (plus a scale and zero point per row).
    let f32_bytes: usize = f32_model
        .linears()
        .iter()
        .map(|(_, l)| 4 * l.base.weight.shape().num_elements())
        .sum();
    let int8_bytes: usize = int8.linears().iter().map(|(_, l)| l.base.nbytes()).sum();
    assert!(
        int8_bytes * 10 < f32_bytes * 3,
        "{int8_bytes} vs {f32_bytes} bytes"
    );

    // Training the adapters over the int8 base lowers the loss; the int8 weights stay.
    let frozen = read_params(&int8, &Layout::frozen(&int8)).unwrap();
    let mut model = int8;
    let mut optimizer = SgdConfig::new().init();
    let first = values(loss(&model, x.clone()))[0];
    for _ in 0..20 {
        let l = loss(&model, x.clone());
        let g = GradientsParams::from_grads(l.backward(), &model);
        model = optimizer.step(0.5, model, g);
    }
    let last = values(loss(&model, x.clone()))[0];
    assert!(last < 0.9 * first, "loss {first} -> {last}");
    assert_eq!(
        read_params(&model, &Layout::frozen(&model)).unwrap(),
        frozen
    );
}
