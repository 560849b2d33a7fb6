//! Kernel microbenchmarks: time, achieved FLOP/s or GB/s, and the fraction
//! of the device's peak. `cargo bench -- [FILTER] [--peak-tflops X]
//! [--peak-tensor-tflops X] [--peak-gbps X] [--reps N]`.
//!
//! On a CPU adapter (lavapipe) shapes are scaled down so the whole run takes
//! a few minutes; on a GPU they are the model-sized shapes (Qwen3-4B:
//! hidden 2560, intermediate 9728, 32/8 heads of 128, vocab 151,936,
//! 2048 tokens for training, 1 for decode).

mod harness;

#[path = "kernels/attention.rs"]
mod attention;
#[path = "kernels/elementwise.rs"]
mod elementwise;
#[path = "kernels/matmul.rs"]
mod matmul;
#[path = "kernels/ops_a.rs"]
mod ops_a;
#[path = "kernels/ops_c.rs"]
mod ops_c;

fn main() {
    let mut b = match harness::Bench::from_args() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    elementwise::run(&mut b);
    matmul::run(&mut b);
    matmul::run_gemv(&mut b);
    ops_a::run(&mut b);
    attention::run(&mut b);
    ops_c::run(&mut b);
    b.finish();
}
