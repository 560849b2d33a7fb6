//! The HTTP side of `boomgpu serve` (axum on tokio): routes, API keys, the
//! bounded queue, JSON and server-sent-event responses. No GPU work here:
//! each request becomes one [`Job`] per prompt on the worker's channel, and
//! its events become the response.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use super::api::{ApiError, ChatRequest, CompletionRequest, Prompt, Sampling};
use super::worker::{Catalogue, Event, Finished, Input, Job};
use crate::ops::sample::SampleParams;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: Mutex<Option<Sender<Job>>>,
    catalogue: Catalogue,
    api_key: Option<String>,
    pending: Arc<AtomicUsize>,
    max_queue: usize,
    next_id: AtomicU64,
    created: u64,
}

impl AppState {
    pub fn new(
        jobs: Sender<Job>,
        catalogue: Catalogue,
        api_key: Option<String>,
        pending: Arc<AtomicUsize>,
        max_queue: usize,
    ) -> AppState {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        AppState {
            inner: Arc::new(Inner {
                jobs: Mutex::new(Some(jobs)),
                catalogue,
                api_key,
                pending,
                max_queue,
                next_id: AtomicU64::new(1),
                created,
            }),
        }
    }

    /// Stop taking jobs: the worker ends once the running ones have.
    pub fn close(&self) {
        self.inner.jobs.lock().expect("not poisoned").take();
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut r = (status, Json(self.body())).into_response();
        if self.status == 429 {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

/// The routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .fallback(|| async {
            ApiError {
                status: 404,
                message: "No such route: use /v1/models, /v1/completions, \
                          /v1/chat/completions or /health"
                    .into(),
                kind: "invalid_request_error",
                param: None,
                code: None,
            }
        })
        .with_state(state)
}

async fn health(State(s): State<AppState>) -> Json<Value> {
    Json(json!({
        "status": "ok",
        "queued_or_running": s.inner.pending.load(Ordering::SeqCst),
        "models": s.inner.catalogue.sizes.len(),
    }))
}

fn check_key(s: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &s.inner.api_key else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(g) if g.trim() == key => Ok(()),
        _ => Err(ApiError::unauthorized()),
    }
}

async fn models(State(s): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    check_key(&s, &headers)?;
    let data: Vec<Value> = s
        .inner
        .catalogue
        .sizes
        .iter()
        .map(|m| {
            json!({
                "id": m.id, "object": "model", "created": s.inner.created,
                "owned_by": "boomgpu", "aliases": m.aliases, "layers": m.layers,
                "params": m.params,
            })
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::body_error(format!("The body is not valid JSON: {e}")))
}

fn size_of(s: &AppState, model: &str) -> Result<usize, ApiError> {
    let c = &s.inner.catalogue;
    c.find(model)
        .ok_or_else(|| ApiError::not_found(model, &c.known()))
}

fn sample_params(p: &Sampling) -> SampleParams {
    SampleParams {
        temperature: p.temperature,
        top_k: p.top_k,
        top_p: p.top_p,
        min_p: 0.0,
        repetition_penalty: 1.0,
    }
}

/// Queue one job; its events, or 429 when the queue is full.
fn submit(
    s: &AppState,
    make: impl FnOnce(tokio::sync::mpsc::UnboundedSender<Event>) -> Job,
) -> Result<UnboundedReceiver<Event>, ApiError> {
    let inner = &s.inner;
    let queued = inner.pending.fetch_add(1, Ordering::SeqCst);
    if queued >= inner.max_queue {
        inner.pending.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::busy(queued));
    }
    let (tx, rx) = unbounded_channel();
    let job = make(tx);
    let sent = match inner.jobs.lock().expect("not poisoned").as_ref() {
        Some(j) => j.send(job).is_ok(),
        None => false,
    };
    if !sent {
        inner.pending.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::unavailable());
    }
    Ok(rx)
}

/// Wait for a job to start (or be refused).
async fn started(rx: &mut UnboundedReceiver<Event>) -> Result<usize, ApiError> {
    match rx.recv().await {
        Some(Event::Started { prompt_tokens }) => Ok(prompt_tokens),
        Some(Event::Failed(e)) => Err(e),
        _ => Err(ApiError::server(
            "the worker stopped before the request started",
        )),
    }
}

/// Wait for a started job's end.
async fn finished(rx: &mut UnboundedReceiver<Event>) -> Result<Finished, ApiError> {
    loop {
        match rx.recv().await {
            Some(Event::Text(_)) | Some(Event::Started { .. }) => {}
            Some(Event::Done(f)) => return Ok(*f),
            Some(Event::Failed(e)) => return Err(e),
            None => return Err(ApiError::server("the worker stopped during the request")),
        }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn sse(events: UnboundedReceiver<Value>) -> Response {
    let stream = futures_util::stream::unfold((events, false), |(mut rx, done)| async move {
        if done {
            return None;
        }
        match rx.recv().await {
            Some(v) => Some((
                Ok::<_, Infallible>(SseEvent::default().data(v.to_string())),
                (rx, false),
            )),
            None => Some((Ok(SseEvent::default().data("[DONE]")), (rx, true))),
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Pass one job's events on as stream chunks: `text` for each piece,
/// `done` for the end. False when the job failed (its error body was sent)
/// or the client is gone.
async fn relay(
    rx: &mut UnboundedReceiver<Event>,
    tx: &tokio::sync::mpsc::UnboundedSender<Value>,
    text: impl Fn(&str) -> Value,
    done: impl FnOnce(&Finished) -> Value,
) -> bool {
    loop {
        let v = match rx.recv().await {
            Some(Event::Text(t)) => text(&t),
            Some(Event::Done(f)) => return tx.send(done(&f)).is_ok(),
            Some(Event::Failed(e)) => {
                let _ = tx.send(e.body());
                return false;
            }
            Some(Event::Started { .. }) => continue,
            None => return false,
        };
        if tx.send(v).is_err() {
            return false;
        }
    }
}

async fn completions(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_key(&s, &headers)?;
    let r = CompletionRequest::parse(&parse_body(&body)?)?;
    let size = size_of(&s, &r.model)?;
    let n = s.inner.next_id.fetch_add(1, Ordering::SeqCst);
    let id = format!("cmpl-{n}");
    let queued_at = Instant::now();
    let mut rxs = Vec::with_capacity(r.prompts.len());
    for (i, p) in r.prompts.iter().enumerate() {
        let rx = submit(&s, |events| Job {
            request_id: if r.prompts.len() == 1 {
                id.clone()
            } else {
                format!("{id}.{i}")
            },
            size,
            input: Input::Prompt(p.clone()),
            max_tokens: r.sampling.max_tokens,
            sampling: sample_params(&r.sampling),
            seed: r.sampling.seed,
            stop: r.sampling.stop.clone(),
            ignore_eos: r.sampling.ignore_eos,
            logprobs: r.logprobs,
            echo: r.echo,
            events,
            queued_at,
        })?;
        rxs.push(rx);
    }
    let model = s.inner.catalogue.sizes[size].id.clone();
    let created = now_secs();
    let mut prompt_tokens = 0;
    for rx in rxs.iter_mut() {
        prompt_tokens += started(rx).await?;
    }
    if r.sampling.stream {
        let (tx, out) = unbounded_channel::<Value>();
        let echo = r.echo;
        let prompts = r.prompts.clone();
        tokio::spawn(async move {
            for (i, mut rx) in rxs.into_iter().enumerate() {
                let chunk = |text: &str, lp: Value, reason: Value| {
                    json!({"id": id, "object": "text_completion", "created": created,
                        "model": model, "choices": [{"text": text, "index": i,
                        "logprobs": lp, "finish_reason": reason}]})
                };
                if echo {
                    if let Prompt::Text(t) = &prompts[i] {
                        if tx.send(chunk(t, Value::Null, Value::Null)).is_err() {
                            return;
                        }
                    }
                }
                let ok = relay(
                    &mut rx,
                    &tx,
                    |t| chunk(t, Value::Null, Value::Null),
                    |f| {
                        let lp = f.logprobs.as_ref().map_or(Value::Null, |l| l.to_json());
                        chunk("", lp, json!(f.finish_reason))
                    },
                )
                .await;
                if !ok {
                    return;
                }
            }
        });
        return Ok(sse(out));
    }
    let mut choices = Vec::with_capacity(rxs.len());
    let mut completion_tokens = 0;
    for (i, rx) in rxs.iter_mut().enumerate() {
        let f = finished(rx).await?;
        completion_tokens += f.completion_tokens;
        choices.push(json!({
            "text": f.text, "index": i,
            "logprobs": f.logprobs.as_ref().map_or(Value::Null, |l| l.to_json()),
            "finish_reason": f.finish_reason,
        }));
    }
    Ok(Json(json!({
        "id": id, "object": "text_completion", "created": created, "model": model,
        "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }))
    .into_response())
}

async fn chat(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_key(&s, &headers)?;
    let r = ChatRequest::parse(&parse_body(&body)?)?;
    let size = size_of(&s, &r.model)?;
    let n = s.inner.next_id.fetch_add(1, Ordering::SeqCst);
    let id = format!("chatcmpl-{n}");
    let mut rx = submit(&s, |events| Job {
        request_id: id.clone(),
        size,
        input: Input::Chat(r.messages.clone()),
        max_tokens: r.sampling.max_tokens,
        sampling: sample_params(&r.sampling),
        seed: r.sampling.seed,
        stop: r.sampling.stop.clone(),
        ignore_eos: r.sampling.ignore_eos,
        logprobs: r.logprobs,
        echo: false,
        events,
        queued_at: Instant::now(),
    })?;
    let model = s.inner.catalogue.sizes[size].id.clone();
    let created = now_secs();
    let prompt_tokens = started(&mut rx).await?;
    if r.sampling.stream {
        let (tx, out) = unbounded_channel::<Value>();
        tokio::spawn(async move {
            let chunk = |delta: Value, reason: Value| {
                json!({"id": id, "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": [{"index": 0, "delta": delta,
                    "logprobs": null, "finish_reason": reason}]})
            };
            if tx
                .send(chunk(
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                ))
                .is_err()
            {
                return;
            }
            relay(
                &mut rx,
                &tx,
                |t| chunk(json!({"content": t}), Value::Null),
                |f| {
                    let mut last = chunk(json!({}), json!(f.finish_reason));
                    last["usage"] = json!({"prompt_tokens": prompt_tokens,
                        "completion_tokens": f.completion_tokens,
                        "total_tokens": prompt_tokens + f.completion_tokens});
                    last
                },
            )
            .await;
        });
        return Ok(sse(out));
    }
    let f = finished(&mut rx).await?;
    Ok(Json(json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f.text},
                     "logprobs": f.logprobs.as_ref().map_or(Value::Null, |l| l.to_chat_json()),
                     "finish_reason": f.finish_reason}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": f.completion_tokens,
                  "total_tokens": prompt_tokens + f.completion_tokens},
    }))
    .into_response())
}
