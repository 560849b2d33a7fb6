use boomgpu::ops::elementwise;

use crate::harness::{Bench, Bound};

pub fn run(b: &mut Bench) {
    // Residual add over a 2048 × 2560 activation (Qwen3-4B training shape).
    let n = if b.small() { 256 * 2560 } else { 2048 * 2560 };
    let g = &b.gpu;
    let (Ok(x), Ok(y)) = (
        g.upload_f32("x", &[n], &vec![1.0; n]),
        g.upload_f32("y", &[n], &vec![2.0; n]),
    ) else {
        println!("elementwise: upload failed");
        return;
    };
    b.run(
        &format!("add_inplace n={n}"),
        n as f64,
        12.0 * n as f64,
        Bound::Memory,
        |rec| elementwise::add_inplace(rec, &x, 1.0, &y),
    );
}
