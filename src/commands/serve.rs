//! `boomgpu serve`: load a teacher and its student once (or one plain
//! model) and serve every size behind one OpenAI-compatible endpoint.
//!
//! The GPU, the models and the tokenizer live on one worker thread
//! (`serve::worker`), which loads them and reports the catalogue of sizes
//! back before the HTTP server (`serve::http`, axum on a small tokio
//! runtime) starts listening. SIGINT or SIGTERM stops accepting
//! connections, lets running requests finish, and returns.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use super::common::{load_model, open_gpu, Pair};
use super::order::{self, OrderChoice};
use crate::boomerang::PatchPlan;
use crate::error::{Error, Result};
use crate::gpu::{format_bytes, GpuOptions};
use crate::infer::chat::ChatTemplate;
use crate::serve::http::{router, AppState};
use crate::serve::worker::{self, Catalogue, Models, Size};

/// What to serve.
#[derive(Clone, Debug)]
pub enum ServeTarget {
    Model(String),
    Pair {
        teacher: String,
        student: String,
        order: OrderChoice,
        params: Option<crate::boomerang::PruneParams>,
    },
}

#[derive(Clone, Debug)]
pub struct ServeArgs {
    pub target: ServeTarget,
    pub host: String,
    pub port: u16,
    pub api_key: Option<String>,
    /// Context (prompt + answer) of every request; `None`: min(4096, the model's).
    pub ctx: Option<usize>,
    /// Requests advanced together.
    pub max_batch: usize,
    /// Requests queued or running before 429.
    pub max_queue: usize,
    pub json_log: bool,
    /// dtype of every request's KV cache (f16 or f32).
    pub kv_dtype: crate::gpu::DType,
}

/// The name sizes are called by: the teacher folder's name, lower case.
fn family_name(dir: &std::path::Path) -> String {
    let n = dir
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_else(|| "model".into());
    let n: String = n
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if n.is_empty() {
        "model".into()
    } else {
        n
    }
}

/// Load everything on the worker thread.
fn load(gpu_opts: &GpuOptions, a: &ServeArgs) -> Result<Models> {
    let gpu = open_gpu(gpu_opts)?;
    let (decoders, sizes, tokenizer, cfg) = match &a.target {
        ServeTarget::Model(r) => {
            let m = load_model(&gpu, r, false)?;
            let name = family_name(&m.dir);
            let tok = m.tokenizer.ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: no tokenizer.json; serve needs it",
                    m.dir.display()
                ))
            })?;
            let size = Size {
                id: name,
                aliases: vec!["model".into()],
                layers: m.decoder.layers.len(),
                params: m.decoder.params(),
            };
            (vec![m.decoder], vec![size], tok, m.cfg)
        }
        ServeTarget::Pair {
            teacher,
            student,
            order: choice,
            params,
        } => {
            let pair = Pair::load(&gpu, teacher, student, *params)?;
            let order = order::for_pair(&gpu, &pair, choice, None)?;
            let name = family_name(&pair.teacher.dir);
            let s = &pair.student.decoder;
            let n = s.layers.len();
            let mut decoders = vec![s.clone()];
            let mut sizes = vec![Size {
                id: format!("{name}-l{n}"),
                aliases: vec!["student".into()],
                layers: n,
                params: s.params(),
            }];
            let p = PatchPlan::max_k(&pair.plan, order.direction);
            for k in 0..=p {
                let (plan, dec) = pair.patched(k, &order)?;
                let layers = plan.num_layers();
                let mut aliases = vec![format!("{name}-k{k}")];
                if plan.is_teacher {
                    aliases.push("teacher".into());
                }
                // k = 0 has the student's layer count.
                let id = if layers == n && !plan.is_teacher {
                    format!("{name}-l{layers}-k{k}")
                } else {
                    format!("{name}-l{layers}")
                };
                sizes.push(Size {
                    id,
                    aliases,
                    layers,
                    params: dec.params(),
                });
                decoders.push(dec);
            }
            eprintln!(
                "teacher + student on the GPU: {} ({} sizes share these tensors)",
                format_bytes(pair.union_bytes()),
                sizes.len()
            );
            let tok = pair.teacher.tokenizer.ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: no tokenizer.json; serve needs it",
                    pair.teacher.dir.display()
                ))
            })?;
            (decoders, sizes, tok, pair.teacher.cfg)
        }
    };
    let decoders = decoders
        .into_iter()
        .map(|d| d.with_kv_dtype(a.kv_dtype))
        .collect::<Result<Vec<_>>>()?;
    let max_pos = cfg.max_position_embeddings;
    let ctx = a.ctx.unwrap_or_else(|| super::fit::default_ctx(max_pos));
    if ctx == 0 || ctx > max_pos {
        return Err(Error::Invalid(format!(
            "--ctx {ctx}: give 1..={max_pos} (the model's max_position_embeddings)"
        )));
    }
    let template = ChatTemplate::from_tokenizer(&tokenizer)?;
    let catalogue = Catalogue {
        sizes,
        ctx,
        vocab: decoders[0].head.rows(),
    };
    Ok(Models {
        gpu,
        decoders,
        eos_ids: cfg.eos_token_ids.clone(),
        tokenizer,
        template,
        catalogue,
        json_log: a.json_log,
    })
}

/// Run the server until SIGINT or SIGTERM.
pub fn run(gpu_opts: &GpuOptions, a: &ServeArgs) -> Result<()> {
    if a.max_batch == 0 || a.max_queue == 0 {
        return Err(Error::Invalid(
            "--max-batch and --max-queue must be at least 1".into(),
        ));
    }
    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let pending = Arc::new(AtomicUsize::new(0));
    let worker_pending = pending.clone();
    let (opts, args) = (gpu_opts.clone(), a.clone());
    let worker = std::thread::Builder::new()
        .name("boomgpu-gpu".into())
        .spawn(move || match load(&opts, &args) {
            Ok(models) => {
                let _ = ready_tx.send(Ok(models.catalogue.clone()));
                worker::run(models, jobs_rx, args.max_batch, worker_pending);
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        })
        .map_err(|e| Error::Invalid(format!("could not start the GPU thread: {e}")))?;
    let catalogue = ready_rx
        .recv()
        .map_err(|_| Error::Invalid("the GPU thread stopped while loading".into()))??;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("could not start the HTTP runtime: {e}")))?;
    let state = AppState::new(
        jobs_tx,
        catalogue.clone(),
        a.api_key.clone(),
        pending,
        a.max_queue,
    );
    let addr = format!("{}:{}", a.host, a.port);
    let served =
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .map_err(|e| Error::Invalid(format!("could not listen on {addr}: {e}")))?;
            let local = listener
                .local_addr()
                .map_err(|e| Error::Invalid(format!("{addr}: {e}")))?;
            eprintln!(
            "serving {} model(s) on http://{local}/v1 (context {} tokens, {} requests at once, \
             queue {}{})",
            catalogue.sizes.len(),
            catalogue.ctx,
            a.max_batch,
            a.max_queue,
            if a.api_key.is_some() { ", API key required" } else { "" }
        );
            for s in &catalogue.sizes {
                eprintln!(
                    "  {:<24} {:>3} layers, {:>8.1}M parameters{}",
                    s.id,
                    s.layers,
                    s.params as f64 / 1e6,
                    if s.aliases.is_empty() {
                        String::new()
                    } else {
                        format!("  (also: {})", s.aliases.join(", "))
                    }
                );
            }
            // The port line last: scripts wait for it.
            eprintln!("listening on {local}");
            axum::serve(listener, router(state.clone()))
                .with_graceful_shutdown(shutdown_signal())
                .await
                .map_err(|e| Error::Invalid(format!("the HTTP server failed: {e}")))
        });
    state.close();
    drop(state);
    drop(rt);
    let _ = worker.join();
    served?;
    eprintln!("stopped: every request answered");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("stopping: no new connections; finishing the requests in flight");
}
